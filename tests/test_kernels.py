"""The fused Triton MoC embedding against its torch reference: forward and every gradient."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moc_fast.kernels import ACTIVATIONS, MODES, moc_embedding, moc_embedding_torch

pytestmark = pytest.mark.skipif(
    not __import__("moc_fast.kernels").kernels.triton_available(), reason="triton not installed"
)


def _params(m, k, e, r, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(m, k, e, generator=g).to(dtype),
        (torch.randn(m * e, r, generator=g) / (m * e) ** 0.5).to(dtype),
        (0.1 * torch.randn(r, generator=g)).to(dtype),
        (torch.randn(r, m * e, generator=g) / r**0.5).to(dtype),
        (0.1 * torch.randn(m * e, generator=g)).to(dtype),
    ]


def _compare(b, m, k, e, r, mode, act, seed=0, tol=1e-5):
    g = torch.Generator().manual_seed(seed + 1)
    codes = torch.randint(0, k, (b, m), generator=g)
    params = _params(m, k, e, r, seed=seed)
    p1 = [p.clone().requires_grad_() for p in params]
    p2 = [p.clone().requires_grad_() for p in params]
    out = moc_embedding(codes, *p1, mode=mode, activation=act)
    ref = moc_embedding_torch(codes, *p2, mode=mode, activation=act)
    assert out.shape == (b, m, e)
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol * ref.abs().max().item())
    dout = torch.randn(out.shape, generator=g)
    (out * dout).sum().backward()
    (ref * dout).sum().backward()
    for name, a, c in zip(("tables", "w_down", "b_down", "w_up", "b_up"), p1, p2, strict=True):
        if c.grad is None:
            assert a.grad is None or mode == "none", name
            continue
        scale = c.grad.abs().max().item() + 1e-12
        err = (a.grad - c.grad).abs().max().item() / scale
        assert err < tol, f"{name}: relative error {err}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize(
    ("b", "m", "k", "e", "r"),
    [(1, 1, 1, 1, 1), (37, 3, 11, 5, 7), (130, 7, 256, 16, 56), (65, 2, 1000, 64, 17)],
)
def test_kernel_matches_reference(b, m, k, e, r, mode, act):
    _compare(b, m, k, e, r, mode, act)


@settings(deadline=None, max_examples=15)
@given(
    b=st.integers(1, 100),
    m=st.integers(1, 7),
    k=st.integers(1, 50),
    e=st.integers(1, 20),
    r=st.integers(1, 40),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 1000),
)
def test_kernel_matches_reference_on_random_shapes(b, m, k, e, r, mode, seed):
    _compare(b, m, k, e, r, mode, "relu", seed)


def test_bf16_tables_are_upcast_before_the_dot():
    codes = torch.randint(0, 20, (50, 3))
    params = _params(3, 20, 8, 12, dtype=torch.bfloat16)
    out = moc_embedding(codes, *params, mode="gate", activation="relu")
    assert out.dtype == torch.bfloat16
    ref = moc_embedding_torch(codes, *[p.float() for p in params], mode="gate", activation="relu")
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("mode", ["gate", "residual"])
def test_reference_gradcheck(mode):
    codes = torch.randint(0, 4, (6, 3))
    params = [p.double().requires_grad_() for p in _params(3, 4, 2, 3)]
    assert torch.autograd.gradcheck(
        lambda *ps: moc_embedding_torch(codes, *ps, mode=mode, activation="silu"), params
    )
