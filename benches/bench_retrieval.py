"""Retrieval decoding cost: exact top-k over a code table at catalogue scale, and TIGER's beam
search against the parallel decoder's exact top-k per user.

    pytest benches/bench_retrieval.py --benchmark-json=benches/retrieval.json

Top-k: one user (B = 1), M = 3 and 7 codes of K = 256, N = 1M and 10M items; the Rust
engine's streamed `topk_codes` against torch (gather-sum over the whole table, then
`torch.topk`) and our chunked torch version, on the same log-probabilities, results compared.
Decoding: a small TIGER (3 levels + suffix) and a parallel decoder at the benchmark's
catalogue size (12,101 items), per user, batch 1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import moc_fast as mf
from moc_fast.retrieval.models import ParallelDecoder
from moc_fast.retrieval.tiger import TIGER
from moc_fast.retrieval.topk import topk_by_codes

K, TOP = 256, 10


@pytest.fixture(scope="module")
def tables():
    rng = np.random.default_rng(0)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def get(n: int, m: int) -> np.ndarray:
        if (n, m) not in cache:
            cache[(n, m)] = rng.integers(0, K, (n, m), dtype=np.uint8)
        return cache[(n, m)]

    return get


def _torch_full(logp: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain torch way: every item's score, then topk."""
    flat = logp.reshape(logp.shape[0], -1)
    scores = flat[:, codes[:, 0]]
    for j in range(1, codes.shape[1]):
        scores = scores + flat[:, codes[:, j] + j * K]
    s, i = scores.topk(TOP, dim=1)
    return i, s


@pytest.mark.parametrize("n", [1_000_000, 10_000_000])
@pytest.mark.parametrize("m", [3, 7])
@pytest.mark.parametrize("impl", ["moc_fast", "torch-full", "torch-chunked"])
def test_topk_over_codes(benchmark, tables, n, m, impl):
    benchmark.group = f"exact top-{TOP}, 1 user, N={n:,}, M={m}"
    codes = tables(n, m)
    logp = torch.randn(1, m, K).log_softmax(-1)
    if impl == "moc_fast":
        _, scores = benchmark.pedantic(mf.topk_codes, args=(logp.numpy(), codes, TOP), rounds=5)
    else:
        wide = torch.from_numpy(codes.astype(np.int64))  # torch indexes with int64
        fn = _torch_full if impl == "torch-full" else lambda lp, c: topk_by_codes(lp, c, TOP)
        _, scores = benchmark.pedantic(fn, args=(logp, wide), rounds=5)
    _, ref = mf.topk_codes(logp.numpy(), codes, TOP)
    # The same k best scores (items may differ among exact ties: torch.topk does not break
    # them by index; 10M items over 256^M tuples collide often at M = 3).
    np.testing.assert_array_equal(np.asarray(scores), ref)


@pytest.fixture(scope="module")
def decoders():
    rng = np.random.default_rng(1)
    n = 12_101
    ids = mf.resolve_collisions(rng.integers(0, K, (n, 3)))
    torch.manual_seed(0)
    tiger = TIGER(torch.as_tensor(ids), [K, K, K, int(ids[:, 3].max()) + 1], dim=64, layers=2,
                  heads=2).eval()  # fmt: skip
    moc = ParallelDecoder(torch.as_tensor(rng.integers(0, K, (n, 3))), K, dim=64).eval()
    history = torch.as_tensor(rng.integers(0, n, (1, 20)))
    return tiger, moc, history


@pytest.mark.parametrize("decoder", ["tiger-beam20", "parallel-exact"])
def test_decode_one_user(benchmark, decoders, decoder):
    benchmark.group = "decode top-10 for one user, 12,101 items"
    tiger, moc, history = decoders
    with torch.no_grad():
        if decoder == "tiger-beam20":
            items, invalid = benchmark.pedantic(tiger.recommend, args=(history, TOP),
                                                kwargs={"beam": 20}, rounds=5)  # fmt: skip
            assert invalid == 0
        else:
            items, _ = benchmark.pedantic(moc.topk, args=(history, TOP), rounds=5)
    assert items.shape == (1, TOP) and (items >= 0).all()
