"""MoCEmbedding forward + backward, B = 65,536, M = 7, K = 256, e = 16 and 64.

    pytest benches/bench_moc_embedding.py --benchmark-json=benches/moc_embedding.json

On the CPU only the torch paths run (eager and `torch.compile` of the reference); the Triton
kernel needs a GPU: `python benches/gpu_bench.py` runs all three there.
"""

from __future__ import annotations

import pytest
import torch

from moc_fast.kernels import moc_embedding, moc_embedding_torch, triton_available

B, M, K = 65_536, 7, 256
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make(e: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    r = M * e // 2
    codes = torch.randint(0, K, (B, M), generator=g).to(DEVICE)
    params = [
        torch.randn(M, K, e, generator=g),
        torch.randn(M * e, r, generator=g) / (M * e) ** 0.5,
        torch.zeros(r),
        torch.randn(r, M * e, generator=g) / r**0.5,
        torch.zeros(M * e),
    ]
    return codes, [p.to(DEVICE).requires_grad_() for p in params]


def step(fn, codes, params, dout):
    out = fn(codes, *params, "gate", "relu")
    out.backward(dout)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return out


IMPLS = {"torch-eager": moc_embedding_torch}
if DEVICE == "cuda" and triton_available():
    IMPLS["triton"] = moc_embedding


@pytest.mark.parametrize("impl", [*IMPLS, "torch-compile"])
@pytest.mark.parametrize("e", [16, 64])
def test_fwd_bwd(benchmark, impl, e):
    codes, params = make(e)
    dout = torch.randn(B, M, e, device=DEVICE)
    fn = IMPLS.get(impl) or torch.compile(moc_embedding_torch, dynamic=False)
    step(fn, codes, params, dout)  # warm-up (and compile)
    benchmark.group = f"MoCEmbedding fwd+bwd B={B} M={M} K={K} e={e} ({DEVICE})"
    benchmark.pedantic(step, args=(fn, codes, params, dout), rounds=5, warmup_rounds=1)
