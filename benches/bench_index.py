"""Encoding 1M items (D = 384) with a trained MoC indexer (M = 7) on the CPU: the Rust engine
path vs the same encoder with torch's own nearest-codeword search.

    pytest benches/bench_index.py --benchmark-json=benches/index.json

The encoder MLP runs in torch in both; only the nearest-codeword search differs. A second
pair times the search alone on the encoder's latents.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import moc_fast as mf

N_ITEMS = 1_000_000


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_ITEMS, 384), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx = mf.MoCIndexer(num_codebooks=7).fit(x[:20_000], epochs=2, batch_size=1024, progress=False)
    with torch.no_grad():
        z = torch.cat(
            [idx.latents(torch.from_numpy(x[s : s + 65536])) for s in range(0, N_ITEMS, 65536)]
        )
    return idx, x, z


@pytest.mark.parametrize("backend", ["engine", "torch"])
def test_encode_1m(benchmark, trained, backend):
    idx, x, _ = trained
    benchmark.group = "MoC M=7 encode, 1M items, D=384"
    codes = benchmark.pedantic(idx.encode_raw, args=(x,), kwargs={"backend": backend}, rounds=2)
    assert codes.shape == (N_ITEMS, 7)


@pytest.mark.parametrize("backend", ["engine", "torch"])
def test_search_only_1m(benchmark, trained, backend):
    idx, _, z = trained
    benchmark.group = "MoC M=7 nearest-codeword search only, 1M x 7 latents of 32"
    if backend == "engine":
        run = lambda: idx._assign_engine(z)  # noqa: E731
    else:  # chunked like encode_raw: never a whole 1M x K score matrix per codebook
        run = lambda: torch.cat([idx._assign_torch(z[s : s + 65536])  # noqa: E731
                                 for s in range(0, len(z), 65536)])  # fmt: skip
    codes = benchmark.pedantic(run, rounds=3)
    assert tuple(codes.shape) == (N_ITEMS, 7)
