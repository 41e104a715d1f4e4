"""The `moc-fast` command line.

The steps connect: `embed` (item texts -> X.npy) -> `index` (X.npy -> indexer file) -> `encode`
(indexer + X.npy -> codes.npy) -> `train` (dataset + codes.npy or indexer -> model, results) ->
`report` (results.csv -> report.md). `study` and `demo` run the whole grid. Only the engine is
needed to start it: verbs that need torch say which extra to install.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import moc_fast as mf
from moc_fast.fileio import atomic_save_npy, atomic_write_bytes
from moc_fast.methods import FAMILY, METHODS, canonical

log = logging.getLogger(__name__)


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
        try:
            from moc_fast.metrics import format_report, index_report

            indexer_cls = mf.MoCIndexer
        except ImportError as exc:
            print(f"\nMoC indexer skipped: {exc}")
            return 0

        print(f"\nMoC indexer (M = {args.levels} parallel codebooks), {args.moc_epochs} epochs:")
        moc = indexer_cls(
            num_codebooks=args.levels, codebook_size=args.codebook_size, seed=args.seed
        )
        moc.fit(x, epochs=args.moc_epochs, batch_size=1024, progress=not args.quiet)
        print(format_report({f"MoC M={args.levels}": index_report(moc, x)}))
    return 0


def load_config(path: str | None) -> dict:
    """A study config file (YAML or JSON) as a dict of StudyConfig keys; {} without a path."""
    if not path:
        return {}
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def _study_config(args: argparse.Namespace, base: dict):
    from moc_fast.study import StudyConfig

    cfg = {**base, **load_config(getattr(args, "config", None))}
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


REPORT_ROWS = 100_000  # `index` reports code quality on at most this many sampled items

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


def _retrieval(args: argparse.Namespace) -> int:
    from moc_fast.retrieval.run import RetrievalConfig, run

    cfg = load_config(args.config)
    for key in ("datasets", "methods"):
        if getattr(args, key, None):
            cfg[key] = getattr(args, key).split(",")
    for key in ("seeds", "moc_scales", "rqvae_levels"):
        if getattr(args, key, None):
            cfg[key] = [int(v) for v in getattr(args, key).split(",")]
    for key in ("epochs", "tiger_epochs", "out", "cold_share"):
        if getattr(args, key, None) is not None:
            cfg[key] = getattr(args, key)
    cfg["progress"] = not args.quiet
    config = RetrievalConfig.from_dict(cfg)
    run(config)
    print((Path(config.out) / "report.md").read_text())
    print(f"results: {Path(config.out) / 'results.csv'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from moc_fast.report import write_report

    path = write_report(args.out)
    print(path.read_text())
    print(f"written: {path}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from moc_fast.data.datasets import open_dataset
    from moc_fast.data.text import embed_texts

    data = open_dataset(args.dataset)
    fields = [f.strip() for f in args.fields.split(",") if f.strip()]
    x = embed_texts(data.item_text(fields), model=args.model, progress=not args.quiet)
    out = args.out if args.out.endswith(".npy") else args.out + ".npy"
    atomic_save_npy(out, x)
    print(f"{data.name}: {x.shape[0]} items x {x.shape[1]} -> {out}")
    return 0


def _load_npy(path: str, what: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{what} {path} is not a readable .npy file: {exc}") from exc


def _embedding_source(path: str, column: str, what: str):
    from moc_fast.index.sources import as_source

    try:
        source = as_source(path, name=what, column=column)
    except FileNotFoundError as exc:
        raise ValueError(f"{what} {path} does not exist") from exc
    if source.num_rows == 0:
        raise ValueError(f"{what} {path} holds no items: expected at least one embedding row")
    return source


def _index(args: argparse.Namespace) -> int:
    from moc_fast.index.sources import seeded_sample
    from moc_fast.metrics import format_report, index_report
    from moc_fast.study import build_indexer

    method = canonical(args.method)
    if method not in FAMILY:
        raise ValueError(f"--method {method!r} has no indexer: expected one of {INDEXED}")
    source = _embedding_source(args.embeddings, args.column, "--embeddings")
    idx = build_indexer(FAMILY[method], args.scale, args.codebook_size, args.seed)
    trained = FAMILY[method] in ("moc", "rqvae")
    kwargs = dict(epochs=args.epochs, device=args.device) if trained else {}
    idx.fit(source, progress=not args.quiet, **kwargs)  # streamed: memory bounded by batches
    if trained:
        idx.cpu()
    if not _writer():
        return 0
    idx.save(args.out)
    sample = seeded_sample(source, REPORT_ROWS, args.seed)
    label = f"{method} {args.scale}x" + (f", on {len(sample)} sampled items" if
                                         len(sample) < (source.num_rows or 0) else "")  # fmt: skip
    print(format_report({label: index_report(idx, sample)}))
    print(f"saved {args.out}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from moc_fast.index import load_indexer

    idx = load_indexer(args.indexer)
    x = _embedding_source(args.input, args.column, "--input")
    codes = idx.encode(x)  # streamed; the collision suffix is one global pass over all items
    out = args.out if args.out.endswith(".npy") else args.out + ".npy"
    atomic_save_npy(out, codes)
    print(f"{type(idx).__name__}: {codes.shape[0]} items x {codes.shape[1]} codes -> {out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from moc_fast.study import StudyConfig, StudyData, cell_key, read_results, train_cell
    from moc_fast.study import write_results as write_csv

    method = canonical(args.method)
    if (args.codes or args.indexer) and method not in FAMILY:
        raise ValueError(f"--codes/--indexer need a code method ({INDEXED}), got {method!r}")
    cfg = StudyConfig(
        datasets=[args.dataset],
        methods=[method],
        scales=[args.scale],
        backbones=[args.backbone],
        epochs=args.epochs,
        patience=args.patience,
        min_epochs=args.min_epochs,
        out=args.out,
        device=args.device,
        progress=not args.quiet,
    )
    ds = StudyData(args.dataset, cfg)
    codes = metrics = None
    if args.codes:
        raw = _load_npy(args.codes, "--codes")
        if not np.issubdtype(raw.dtype, np.integer):
            raise ValueError(f"--codes {args.codes} holds {raw.dtype}; expected integer codes "
                             "(items, M) as `moc-fast encode` writes")  # fmt: skip
        codes = np.array(raw, dtype=np.int64)  # writable copy
    elif args.indexer:
        from moc_fast.index import load_indexer

        x = _load_npy(args.embeddings, "--embeddings") if args.embeddings else ds.embeddings()
        codes = load_indexer(args.indexer).encode(x)
    if codes is not None:
        from moc_fast.metrics import code_report

        if codes.ndim != 2 or codes.min(initial=0) < 0:
            raise ValueError(f"codes must be non-negative integers (items, M), got {codes.shape}")
        rep = code_report(codes, int(codes.max(initial=0)) + 1)
        metrics = {k: rep[k] for k in ("discriminability", "redundancy", "collision_rate")}
        metrics["utilization"] = float(np.mean(rep["utilization"]))
    row, model = train_cell(ds, method, args.scale, args.backbone, args.seed, codes, metrics)
    if not _writer():
        return 0
    out = Path(args.out)
    if model is not None:
        model.cpu().save(out / "model.safetensors")
    atomic_write_bytes(out / "results.json", json.dumps(row, indent=2, default=float).encode())
    rows = [r for r in read_results(out / "results.csv") if cell_key(r) != cell_key(row)]
    write_csv(out / "results.csv", [*rows, row])
    print(json.dumps({k: v for k, v in row.items() if k != "val_curve"}, indent=2, default=float))
    print(f"written: {out / 'results.json'}, {out / 'results.csv'}"
          + (f", {out / 'model.safetensors'}" if model is not None else ""))
    return 0


def _grid_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML or JSON file with StudyConfig keys")
    p.add_argument("--datasets", help="comma-separated dataset folders, or 'synthetic'")
    p.add_argument("--methods", help="comma-separated: " + ", ".join(METHODS))
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


INDEXED = ", ".join(["moc", *FAMILY])


def _logging_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """-v/-q on the main parser and on every verb (SUPPRESS there, so that a verb's default
    does not overwrite `moc-fast -q VERB`)."""
    default = argparse.SUPPRESS if suppress else False
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="log details (INFO level)")  # fmt: skip
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="no progress output")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moc-fast", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"moc-fast {mf.__version__}")
    _logging_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True)

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _logging_options(p, suppress=True)
        return p

    demo = verb("demo", "a small study on the synthetic catalogue (about a minute)")
    _grid_options(demo)
    demo.set_defaults(func=lambda a: _study(a, DEMO))

    retr = verb("retrieval", "run (or resume) the generative next-item retrieval study")
    retr.add_argument("--config", help="YAML/JSON with RetrievalConfig keys")
    retr.add_argument("--datasets", help="comma-separated dataset folders (or 'synthetic')")
    retr.add_argument("--methods", help="comma-separated: popularity, sasrec, parallel-moc, "
                      "parallel-kmeans, tiger-rqvae")  # fmt: skip
    retr.add_argument("--seeds", help="comma-separated seeds")
    retr.add_argument("--moc-scales", dest="moc_scales", help="MoC codebook counts, e.g. 1,3,7")
    retr.add_argument("--rqvae-levels", dest="rqvae_levels", help="RQ-VAE depths, e.g. 3,4")
    retr.add_argument("--epochs", type=int, help="most epochs (SASRec, parallel decoder)")
    retr.add_argument("--tiger-epochs", dest="tiger_epochs", type=int, help="most TIGER epochs")
    retr.add_argument("--cold-share", dest="cold_share", type=float,
                      help="share of items held out of training (cold-start recall)")  # fmt: skip
    retr.add_argument("--out", help="output folder (results.csv, report.md, curves)")
    retr.set_defaults(func=_retrieval)

    study = verb("study", "run (or resume) the scaling study grid")
    _grid_options(study)
    study.set_defaults(func=lambda a: _study(a, {}))

    report = verb("report", "rewrite report.md and plots from a folder's results.csv")
    report.add_argument("--out", default="study_out", help="the study or train folder")
    report.set_defaults(func=_report)

    embed = verb("embed", "embed a dataset's item texts to a .npy file (one row per item)")
    embed.add_argument("--dataset", required=True, help="dataset folder, or 'synthetic'")
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
    embed.add_argument("--out", required=True, help="the .npy file to write")
    embed.set_defaults(func=_embed)

    index = verb("index", "train an indexer on item embeddings and save it")
    index.add_argument("--embeddings", required=True,
                       help=".npy of (N, D) embeddings (memory-mapped), or parquet")  # fmt: skip
    index.add_argument("--column", default="embedding", help="the parquet embedding column")
    index.add_argument("--method", default="moc", help=f"one of: {INDEXED}")
    index.add_argument("--scale", type=int, default=3,
                       help="codebooks (MoC) or levels (RQ-VAE, RQ-k-means)")  # fmt: skip
    index.add_argument("--codebook-size", type=int, default=256, help="codes per codebook")
    index.add_argument("--epochs", type=int, default=30, help="training epochs (VQ indexers)")
    index.add_argument("--seed", type=int, default=0, help="random seed")
    index.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    index.add_argument("--out", required=True, help="the indexer file to write (.safetensors)")
    index.set_defaults(func=_index)

    encode = verb("encode", "turn item embeddings into semantic IDs with a saved indexer")
    encode.add_argument("--indexer", required=True, help="an indexer file from `index`")
    encode.add_argument("--input", required=True,
                        help=".npy of (N, D) embeddings (memory-mapped), or parquet")  # fmt: skip
    encode.add_argument("--column", default="embedding", help="the parquet embedding column")
    encode.add_argument("--out", required=True, help="the .npy of int64 codes to write")
    encode.set_defaults(func=_encode)

    train = verb("train", "train and test one CTR model (one study cell) and save it")
    train.add_argument("--dataset", required=True, help="dataset folder, or 'synthetic'")
    train.add_argument("--method", default="moc-gate", help="one of: " + ", ".join(METHODS))
    train.add_argument("--scale", type=int, default=3,
                       help="embedding sets (me), codebooks or levels")  # fmt: skip
    train.add_argument("--backbone", default="deepfm",
                       help="dnn, deepfm, dcnv2, autoint+ or ipnn")  # fmt: skip
    train.add_argument("--seed", type=int, default=0, help="random seed")
    train.add_argument("--epochs", type=int, default=20, help="max epochs (early stopping)")
    train.add_argument("--patience", type=int, default=3, help="epochs without a better val AUC")
    train.add_argument("--min-epochs", type=int, default=0,
                       help="no early stop before this epoch (a warm-up)")  # fmt: skip
    train.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    train.add_argument("--codes", help="codes .npy from `encode` (one row per dataset item)")
    train.add_argument("--indexer", help="an indexer file from `index` (encodes the items)")
    train.add_argument("--embeddings", help="item embeddings .npy for --indexer (default: "
                       "embed the dataset's texts)")  # fmt: skip
    train.add_argument("--out", default="train_out",
                       help="folder for model.safetensors, results.json, results.csv")  # fmt: skip
    train.set_defaults(func=_train)

    eng = verb("engine-demo", "the Rust engine and a MoC indexer on synthetic vectors")
    eng.add_argument("--items", type=int, default=50_000, help="catalogue size")
    eng.add_argument("--dim", type=int, default=384, help="embedding dimension")
    eng.add_argument("--levels", type=int, default=3, help="residual levels / MoC codebooks")
    eng.add_argument("--codebook-size", type=int, default=256, help="codes per level")
    eng.add_argument("--moc-epochs", type=int, default=5, help="MoC indexer epochs (0: skip)")
    eng.add_argument("--seed", type=int, default=0, help="random seed")
    eng.set_defaults(func=_demo)
    return parser


def _start_distributed(args: argparse.Namespace) -> bool:
    """Under `torchrun` (WORLD_SIZE > 1) join the process group: `index` and `train` then
    train data-parallel (gloo on CPU, nccl on CUDA); only rank 0 writes files."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or args.command not in ("index", "train"):
        return False
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and getattr(args, "device", None) != "cpu"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def _writer() -> bool:
    """Whether this process writes outputs: always, except ranks > 0 under torchrun."""
    return int(os.environ.get("RANK", "0")) == 0 or int(os.environ.get("WORLD_SIZE", "1")) == 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    distributed = _start_distributed(args)
    ok = False
    try:
        code = args.func(args)
        ok = True
        return code
    except Exception as exc:  # one line per failure; -v adds the traceback
        log.info("moc-fast %s failed", args.command, exc_info=True)
        print(f"moc-fast {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    finally:
        if distributed:
            import torch.distributed as dist

            if ok:  # every rank done before any tears gloo down (else a rank can abort)
                dist.barrier()
            # A failed rank must not wait for the others (they may be blocked in a collective
            # it will never join): it leaves at once, and torchrun then stops the rest.
            dist.destroy_process_group()


def _one_line(exc: BaseException) -> str:
    """`exc` as one line; its type is named where the message alone would not say what broke."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    known = (ValueError, FileNotFoundError, ImportError, TypeError)
    return msg if isinstance(exc, known) else f"{type(exc).__name__}: {msg}"


if __name__ == "__main__":
    sys.exit(main())
