"""Semantic-ID bookkeeping at catalogue scale: 10M items x 4 codes of 256 values.

    pytest benches/bench_codes.py --benchmark-json=benches/codes.json

moc_fast's `resolve_collisions` (rank of each item among earlier items with the same tuple)
and `code_stats` against the best plain numpy: pack the tuple into one int64, then a stable
argsort (ranks) or `np.unique` (distinct tuples and group sizes). Results are compared, not
only timed.
"""

from __future__ import annotations

import numpy as np
import pytest

import moc_fast as mf

N, M, K = 10_000_000, 4, 256


@pytest.fixture(scope="module")
def codes() -> np.ndarray:
    return np.random.default_rng(0).integers(0, K, (N, M))


def _numpy_ranks(codes: np.ndarray) -> np.ndarray:
    key = (codes[:, 0] << 24) | (codes[:, 1] << 16) | (codes[:, 2] << 8) | codes[:, 3]
    order = np.argsort(key, kind="stable")
    sk = key[order]
    starts = np.r_[0, np.flatnonzero(sk[1:] != sk[:-1]) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(sk)]))
    ranks = np.empty(len(key), dtype=np.int64)
    ranks[order] = np.arange(len(key)) - run_start
    return ranks


def _numpy_stats(codes: np.ndarray) -> tuple[int, int]:
    key = (codes[:, 0] << 24) | (codes[:, 1] << 16) | (codes[:, 2] << 8) | codes[:, 3]
    _, counts = np.unique(key, return_counts=True)
    return len(counts), int(counts.max())


@pytest.mark.parametrize("impl", ["moc_fast", "numpy"])
def test_resolve_collisions(benchmark, codes, impl):
    benchmark.group = f"resolve_collisions N={N} M={M}"
    if impl == "moc_fast":
        out = benchmark.pedantic(mf.resolve_collisions, args=(codes,), rounds=3)[:, -1]
    else:
        out = benchmark.pedantic(_numpy_ranks, args=(codes,), rounds=3)
    np.testing.assert_array_equal(out, mf.resolve_collisions(codes)[:, -1])


@pytest.mark.parametrize("impl", ["moc_fast", "numpy"])
def test_code_stats(benchmark, codes, impl):
    benchmark.group = f"code_stats N={N} M={M}"
    if impl == "moc_fast":
        st = benchmark.pedantic(mf.code_stats, args=(codes, K), rounds=3)
        got = (st["unique"], st["max_group"])
    else:
        got = benchmark.pedantic(_numpy_stats, args=(codes,), rounds=3)
    assert got == _numpy_stats(codes)
