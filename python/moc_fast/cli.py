"""The `moc-fast` command line: demo, study, report, embed, index, train, engine-demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import moc_fast as mf
from moc_fast.fileio import atomic_save_npy


def synthetic_embeddings(n: int, d: int, topics: int, seed: int) -> np.ndarray:
    """Synthetic item embeddings (documented as such): unit vectors around `topics` directions,
    with sub-topic structure, like sentence embeddings of a product catalogue."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, d))
    sub = centres[rng.integers(0, topics, 4 * topics)] + 0.5 * rng.standard_normal((4 * topics, d))
    x = sub[rng.integers(0, len(sub), n)] + 0.35 * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def _demo(args: argparse.Namespace) -> int:
    x = synthetic_embeddings(args.items, args.dim, topics=64, seed=args.seed)
    print(
        f"moc_fast {mf.__version__}: {mf.kernel_name()} kernel, {mf.default_num_threads()} threads"
    )
    print(f"synthetic catalogue: {args.items} items x {args.dim}-d embeddings\n")

    t = time.perf_counter()
    cbs, codes, inertia = mf.rq_kmeans(x, levels=args.levels, k=args.codebook_size, seed=args.seed)
    fit_s = time.perf_counter() - t
    print(
        f"RQ-k-means, {args.levels} levels x {args.codebook_size} codes: {fit_s:.2f} s, "
        f"residual energy {inertia / float((x.astype(np.float64) ** 2).sum()):.3f}"
    )

    t = time.perf_counter()
    again, _ = mf.assign_residual(x, cbs)
    enc_s = time.perf_counter() - t
    assert np.array_equal(again, codes)
    print(f"encode: {args.items / enc_s / 1e6:.2f} M items/s (Rust, fused distance + argmin)")

    stats = mf.code_stats(codes, args.codebook_size)
    ids = mf.resolve_collisions(codes)
    print(f"utilization per level: {np.round(stats['utilization'], 3).tolist()}")
    print(f"perplexity per level:  {np.round(stats['perplexity'], 1).tolist()}")
    print(
        f"collision rate {stats['collision_rate']:.4f} (largest group {stats['max_group']}); "
        f"with the suffix code every one of {len({tuple(r) for r in ids.tolist()})} IDs is unique"
    )
    packed = mf.pack_codes(ids, bits=max(8, int(np.ceil(np.log2(max(2, ids.max() + 1))))))
    print(f"first item: codes {ids[0].tolist()} -> packed id {int(packed[0])}")

    if args.moc_epochs:
        from moc_fast.metrics import format_report, index_report

        print(f"\nMoC indexer (M = {args.levels} parallel codebooks), {args.moc_epochs} epochs:")
        moc = mf.MoCIndexer(
            num_codebooks=args.levels, codebook_size=args.codebook_size, seed=args.seed
        )
        moc.fit(x, epochs=args.moc_epochs, batch_size=1024, progress=True)
        print(format_report({f"MoC M={args.levels}": index_report(moc, x)}))
    return 0


def _load_config(path: str | None) -> dict:
    if not path:
        return {}
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def _study_config(args: argparse.Namespace, base: dict):
    from moc_fast.study import StudyConfig

    cfg = {**base, **_load_config(getattr(args, "config", None))}
    for key in ("datasets", "methods", "backbones"):
        if getattr(args, key, None):
            cfg[key] = getattr(args, key).split(",")
    for key in ("scales", "seeds"):
        if getattr(args, key, None):
            cfg[key] = [int(v) for v in getattr(args, key).split(",")]
    for key in ("epochs", "out", "device", "index_epochs", "max_users"):
        if getattr(args, key, None) is not None:
            cfg[key] = getattr(args, key)
    cfg["progress"] = not args.quiet
    return StudyConfig.from_dict(cfg)


DEMO = {
    "datasets": ["synthetic"],
    "methods": ["popularity", "id-only", "me", "rqvae", "moc-gate"],
    "scales": [1, 3],
    "backbones": ["deepfm"],
    "seeds": [0],
    "epochs": 8,
    "index_epochs": 20,
    "batch_size": 1024,
    "codebook_size": 64,
    "out": "demo_out",
}


def _study(args: argparse.Namespace, base: dict) -> int:
    from moc_fast.study import run_study

    cfg = _study_config(args, base)
    run_study(cfg)
    print((Path(cfg.out) / "report.md").read_text())
    print(f"results: {Path(cfg.out) / 'results.csv'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from moc_fast.report import write_report

    print(write_report(args.out).read_text())
    return 0


def _embed(args: argparse.Namespace) -> int:
    from moc_fast.data.datasets import load_dataset
    from moc_fast.data.text import embed_texts

    data = load_dataset(args.dataset)
    fields = [f.strip() for f in args.fields.split(",") if f.strip()]
    x = embed_texts(data.item_text(fields), model=args.model, progress=not args.quiet)
    out = args.out if args.out.endswith(".npy") else args.out + ".npy"
    atomic_save_npy(out, x)
    print(f"{data.name}: {x.shape[0]} items x {x.shape[1]} -> {out}")
    return 0


def _index(args: argparse.Namespace) -> int:
    from moc_fast.metrics import format_report, index_report

    x = np.load(args.embeddings)
    cls = {
        "moc": lambda: mf.MoCIndexer(num_codebooks=args.scale, codebook_size=args.codebook_size),
        "rqvae": lambda: mf.RQVAEIndexer(levels=args.scale, codebook_size=args.codebook_size),
        "kmeans": lambda: mf.KMeansIndexer(args.codebook_size),
        "rq-kmeans": lambda: mf.RQKMeansIndexer(args.scale, args.codebook_size),
    }[args.method]
    idx = cls().fit(x, epochs=args.epochs, progress=not args.quiet)
    idx.save(args.out)
    print(format_report({f"{args.method} {args.scale}": index_report(idx, x)}))
    print(f"saved {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from moc_fast.study import StudyConfig, StudyData, run_cell

    cfg = StudyConfig(
        datasets=[args.dataset],
        methods=[args.method],
        scales=[args.scale],
        backbones=[args.backbone],
        epochs=args.epochs,
        patience=args.patience,
        out=args.out,
        device=args.device,
        progress=not args.quiet,
    )
    row = run_cell(StudyData(args.dataset, cfg), args.method, args.scale, args.backbone, args.seed)
    print(json.dumps(row, indent=2, default=float))
    return 0


def _grid_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML or JSON file with StudyConfig keys")
    p.add_argument("--datasets", help="comma-separated dataset folders, or 'synthetic'")
    p.add_argument("--methods", help="comma-separated: " + ", ".join(_methods()))
    p.add_argument("--scales", help="comma-separated scaling factors, e.g. 1,2,3,7")
    p.add_argument("--backbones", help="comma-separated: dnn, deepfm, dcnv2, autoint+, ipnn")
    p.add_argument("--seeds", help="comma-separated seeds")
    p.add_argument("--epochs", type=int, help="max CTR epochs per cell (early stopping)")
    p.add_argument("--index-epochs", type=int, dest="index_epochs", help="indexer epochs")
    p.add_argument("--out", help="output folder (results.csv, report.md, plots)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument(
        "--max-users",
        type=int,
        dest="max_users",
        help="use a slice: the first N users and the items they touched",
    )


def _methods() -> tuple[str, ...]:
    from moc_fast.study import METHODS

    return METHODS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moc-fast", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="a small study on the synthetic catalogue (minutes)")
    _grid_options(demo)
    demo.set_defaults(func=lambda a: _study(a, DEMO))

    study = sub.add_parser("study", help="run (or resume) the scaling study grid")
    _grid_options(study)
    study.set_defaults(func=lambda a: _study(a, {}))

    report = sub.add_parser("report", help="rewrite report.md and plots from results.csv")
    report.add_argument("--out", default="study_out")
    report.set_defaults(func=_report)

    embed = sub.add_parser("embed", help="embed a dataset's item texts to a .npy file")
    embed.add_argument("--dataset", required=True)
    embed.add_argument(
        "--model",
        default="all-MiniLM-L6-v2",
        help="all-MiniLM-L6-v2 (offline default), hf:PATH (mean-pooled Hugging Face model, "
        "e.g. a decoder LLM), PATH.npy (precomputed) or a sentence-transformers path",
    )
    embed.add_argument(
        "--fields",
        default="title,brand,categories,description",
        help="comma-separated item fields joined into each item's text (those that exist)",
    )
    embed.add_argument("--out", required=True)
    embed.set_defaults(func=_embed)

    index = sub.add_parser("index", help="train an indexer on embeddings and save it")
    index.add_argument("--embeddings", required=True, help=".npy of (N, D) item embeddings")
    index.add_argument("--method", choices=["moc", "rqvae", "kmeans", "rq-kmeans"], default="moc")
    index.add_argument("--scale", type=int, default=3)
    index.add_argument("--codebook-size", type=int, default=256)
    index.add_argument("--epochs", type=int, default=30)
    index.add_argument("--out", required=True)
    index.set_defaults(func=_index)

    train = sub.add_parser("train", help="train and test one CTR model (one study cell)")
    train.add_argument("--dataset", required=True)
    train.add_argument("--method", default="moc-gate")
    train.add_argument("--scale", type=int, default=3)
    train.add_argument("--backbone", default="deepfm")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--patience", type=int, default=3, help="epochs without a better val AUC")
    train.add_argument("--device")
    train.add_argument("--out", default="study_out")
    train.set_defaults(func=_train)

    eng = sub.add_parser(
        "engine-demo", help="the Rust engine and a MoC indexer on synthetic vectors"
    )
    eng.add_argument("--items", type=int, default=50_000, help="catalogue size")
    eng.add_argument("--dim", type=int, default=384, help="embedding dimension")
    eng.add_argument("--levels", type=int, default=3, help="residual levels / MoC codebooks")
    eng.add_argument("--codebook-size", type=int, default=256, help="codes per level")
    eng.add_argument("--moc-epochs", type=int, default=5, help="MoC indexer epochs (0: skip)")
    eng.add_argument("--seed", type=int, default=0)
    eng.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"moc-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
