"""The `moc-fast` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

import numpy as np

import moc_fast as mf


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moc-fast", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="engine + MoC indexer on a synthetic catalogue (under a minute)"
    )
    demo.add_argument("--items", type=int, default=50_000, help="catalogue size")
    demo.add_argument("--dim", type=int, default=384, help="embedding dimension")
    demo.add_argument("--levels", type=int, default=3, help="residual levels")
    demo.add_argument("--codebook-size", type=int, default=256, help="codes per level")
    demo.add_argument(
        "--moc-epochs",
        type=int,
        default=5,
        help="epochs of the MoC indexer trained after the engine demo (0: skip)",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
