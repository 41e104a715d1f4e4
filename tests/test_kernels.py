"""The fused Triton MoC embedding against its torch reference: forward and every gradient.

On a machine without a GPU the kernels run in Triton's interpreter (conftest sets
TRITON_INTERPRET=1), which computes dots in exact fp32: TF32 behaviour is checked against a
reference whose inputs are rounded to TF32, with the tolerance a GPU run must meet.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moc_fast.kernels import (
    ACTIVATIONS,
    MODES,
    moc_embedding,
    moc_embedding_torch,
    tolerance,
    triton_available,
)
from moc_fast.kernels.moc_embedding import _bwd_op, _fwd_op, _prec, round_to_tf32
from moc_fast.nn import CTRModel, MoCEmbedding

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton not installed")


def _params(m, k, e, r, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(m, k, e, generator=g).to(dtype),
        (torch.randn(m * e, r, generator=g) / (m * e) ** 0.5).to(dtype),
        (0.1 * torch.randn(r, generator=g)).to(dtype),
        (torch.randn(r, m * e, generator=g) / r**0.5).to(dtype),
        (0.1 * torch.randn(m * e, generator=g)).to(dtype),
    ]


def _run(fn, codes, params, mode, act, dout):
    ps = [p.clone().requires_grad_() for p in params]
    out = fn(codes, *ps, mode=mode, activation=act)
    out.backward(dout.to(out.dtype))
    return out.detach(), [p.grad for p in ps]


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / (b.float().abs().max() + 1e-12)).item()


def _compare(b, m, k, e, r, mode, act, seed=0, dtype=torch.float32, tol=None, ref_round=None):
    """Kernel vs reference: output and all five gradients within `tol` of the largest value.
    `ref_round` rounds the reference's fp32 inputs (as TF32 would round the kernel's)."""
    g = torch.Generator().manual_seed(seed + 1)
    codes = torch.randint(0, k, (b, m), generator=g)
    params = _params(m, k, e, r, dtype, seed)
    dout = torch.randn(b, m, e, generator=g)
    out, grads = _run(moc_embedding, codes, params, mode, act, dout)
    ref_params = [(ref_round or (lambda t: t))(p.float()) for p in params]
    ref, ref_grads = _run(moc_embedding_torch, codes, ref_params, mode, act, dout)
    tol = tol or tolerance(dtype, tf32=False)
    assert out.shape == (b, m, e) and out.dtype == dtype
    assert _rel(out, ref) < tol, f"output: relative error {_rel(out, ref)}"
    names = ("tables", "w_down", "b_down", "w_up", "b_up")
    for name, a, c in zip(names, grads, ref_grads, strict=True):
        if mode == "none" and name != "tables":
            assert a is None and c is None, name
            continue
        assert a.dtype == dtype, name
        assert _rel(a, c) < tol, f"{name}: relative error {_rel(a, c)}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize(
    ("b", "m", "k", "e", "r"),
    [(1, 1, 1, 1, 1), (37, 3, 11, 5, 7), (130, 7, 256, 16, 56), (65, 2, 1000, 64, 17)],
)
def test_kernel_matches_reference(b, m, k, e, r, mode, act):
    _compare(b, m, k, e, r, mode, act)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("b", "m", "k", "e", "r"),
    [
        (70, 7, 256, 64, 224),  # the shape benches/gpu_bench.py times, several tiles each way
        (3, 16, 300, 128, 1024),  # the largest supported shape: M·e = 2048, r = 1024
        (67, 5, 33, 13, 37),  # M·e = 65 and r = 37: no power of two anywhere
    ],
)
def test_kernel_matches_reference_at_large_and_odd_shapes(b, m, k, e, r, mode):
    _compare(b, m, k, e, r, mode, "silu")


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["gate", "residual"])
def test_16_bit_tables_and_weights_accumulate_in_fp32(dtype, mode):
    _compare(50, 3, 20, 8, 12, mode, "relu", dtype=dtype)


def test_tf32_results_are_within_the_tf32_tolerance(monkeypatch):
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    # silu, not relu: rounding flips relu'(h) where h is within rounding of 0
    _compare(90, 7, 64, 16, 56, "gate", "silu", tol=tolerance(torch.float32, tf32=True),
             ref_round=round_to_tf32)  # fmt: skip


def test_precision_follows_torch(monkeypatch):
    for setting, expected in [("highest", "ieee"), ("high", "tf32"), ("medium", "tf32")]:
        monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda s=setting: s)
        assert _prec(torch.float32) == expected
        assert _prec(torch.bfloat16) == "tf32"  # bf16/fp16 values are exact in TF32


def test_round_to_tf32_keeps_ten_mantissa_bits():
    x = torch.tensor([1.0 + 2**-10, 1.0 + 2**-11 + 2**-12, 1.0 + 2**-12, -3.0])
    torch.testing.assert_close(
        round_to_tf32(x), torch.tensor([1.0 + 2**-10, 1.0 + 2**-10, 1.0, -3.0]), rtol=0, atol=0
    )


def test_deterministic_mode_gives_bitwise_identical_gradients():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 5, (300, 3), generator=g)  # many rows per code
    params = _params(3, 5, 8, 12)
    dout = torch.randn(300, 3, 8, generator=g)
    torch.use_deterministic_algorithms(True)
    try:
        _, g1 = _run(moc_embedding, codes, params, "gate", "relu", dout)
        _, g2 = _run(moc_embedding, codes, params, "gate", "relu", dout)
    finally:
        torch.use_deterministic_algorithms(False)
    _, g_atomic = _run(moc_embedding, codes, params, "gate", "relu", dout)
    for a, b, c in zip(g1, g2, g_atomic, strict=True):
        assert torch.equal(a, b)
        assert _rel(a, c) < 1e-5


def test_table_offsets_past_two_to_the_31_use_int64():
    k, e = (1 << 27) + 3, 16  # K·e > 2^31 elements: 8 GiB of address space, never touched
    tables = torch.empty(1, k, e)
    codes = torch.tensor([[k - 1], [k - 2], [5]])
    for row, code in enumerate(codes[:, 0].tolist()):
        tables[0, code] = (torch.arange(e) + 20.0 * row) / 10
    w_down, w_up = torch.randn(e, 8) / 4, torch.randn(8, e) / 3
    b_down, b_up = torch.zeros(8), torch.zeros(e)
    out = moc_embedding(codes, tables, w_down, b_down, w_up, b_up, "gate", "relu")
    emb = tables[0, codes[:, 0]]
    # the reference indexes a 3-row copy of the touched rows, so its codes are row numbers
    ref = moc_embedding_torch(torch.arange(3)[:, None], emb[None].clone(), w_down, b_down, w_up,
                              b_up, "gate", "relu")  # fmt: skip
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


def test_empty_batch_gives_empty_output_and_gradients():
    params = [p.requires_grad_() for p in _params(3, 7, 4, 6)]
    out = moc_embedding(torch.zeros(0, 3, dtype=torch.long), *params, "gate", "relu")
    assert out.shape == (0, 3, 4)
    out.sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in params)


def test_cpu_tensors_without_the_interpreter_get_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    params = _params(2, 5, 4, 4)
    with pytest.raises(ValueError, match="need CUDA tensors.*backend='torch'"):
        moc_embedding(torch.zeros(3, 2, dtype=torch.long), *params, "gate", "relu")


def test_unsupported_shapes_raise_and_auto_falls_back_to_torch():
    params = _params(17, 3, 2, 4)
    with pytest.raises(ValueError, match="num_codebooks = 17 > 16"):
        moc_embedding(torch.zeros(2, 17, dtype=torch.long), *params, "gate", "relu")
    layer = MoCEmbedding(2, 8, 160, backend="auto")  # e = 160 > 128: the torch path
    assert not layer._use_triton(torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.parametrize("mode", ["gate", "residual"])
def test_ops_pass_opcheck(mode):
    m, k, e, r, b = 3, 11, 5, 7, 19
    codes = torch.randint(0, k, (b, m))
    params = [p.requires_grad_() for p in _params(m, k, e, r)]
    torch.library.opcheck(_fwd_op, (codes, *params, mode, "silu"))
    out, h = (t.detach() for t in _fwd_op(codes, *params, mode, "silu"))
    tables, w_down, _, w_up, b_up = (p.detach() for p in params)
    dout = torch.randn_like(out)
    torch.library.opcheck(_bwd_op, (dout, codes, tables, w_down, w_up, b_up, h, mode, "silu"))


def test_op_without_fusion_passes_opcheck():
    codes = torch.randint(0, 6, (9, 2))
    tables = torch.randn(2, 6, 3, requires_grad=True)
    torch.library.opcheck(_fwd_op, (codes, tables, None, None, None, None, "none", "relu"))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_ctr_model_compiles_fullgraph_and_exports(backend):
    torch.manual_seed(0)
    model = CTRModel([10, 20], embed_dim=8, backbone="deepfm", num_codebooks=3,
                     codebook_size=16, fusion="gate", backend=backend)  # fmt: skip
    x, codes = torch.randint(0, 10, (32, 2)), torch.randint(0, 16, (32, 3))
    model.train(False)
    ref = model(x, codes)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x, codes), ref)
    compiled(x, codes).sum().backward()  # the registered backward runs under compile too
    assert model.codes.tables.grad is not None and model.codes.w_down.grad.abs().sum() > 0
    exported = torch.export.export(model, (x, codes))
    assert any("moc_embedding" in str(n.target) for n in exported.graph.nodes) == (
        backend == "triton"
    )
    torch.testing.assert_close(exported.module()(x, codes), ref)
    bad = codes.clone()
    bad[3, 1] = 16
    with pytest.raises(RuntimeError, match="out of range"):
        exported.module()(x, bad)


@pytest.mark.parametrize("mode", ["gate", "residual"])
def test_reference_gradcheck(mode):
    codes = torch.randint(0, 4, (6, 3))
    params = [p.double().requires_grad_() for p in _params(3, 4, 2, 3)]
    assert torch.autograd.gradcheck(
        lambda *ps: moc_embedding_torch(codes, *ps, mode=mode, activation="silu"), params
    )
