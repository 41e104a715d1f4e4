"""The fused Triton MoC embedding against its torch reference: forward and every gradient.

On a machine without a GPU the kernels run in Triton's interpreter (conftest sets
TRITON_INTERPRET=1), which computes dots in exact fp32: TF32 behaviour is checked against a
reference whose inputs are rounded to TF32, with the tolerance a GPU run must meet.
"""

from __future__ import annotations

import importlib

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
triton = pytest.importorskip("triton")
tl = triton.language
from moc_fast.kernels.moc_embedding_triton import _tf32  # noqa: E402


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


# ---------------------------------------------------------------- defects a GPU would hit


class _GuardedKernels:
    """Stands in for the kernel module: every launch asserts it runs inside the device guard."""

    def __init__(self, real, active):
        self._real, self._active = real, active

    def __getattr__(self, name):
        fn = getattr(self._real, name)
        if not hasattr(fn, "__getitem__"):
            return fn
        active = self._active

        class Launcher:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    assert active, f"{name} launched outside the device guard"
                    return fn[grid](*args, **kwargs)

                return launch

        return Launcher()


@pytest.mark.parametrize("mode", MODES)
def test_every_launch_runs_under_the_tensors_device_guard(monkeypatch, mode):
    import contextlib

    op = importlib.import_module("moc_fast.kernels.moc_embedding")

    active, guarded = [], []

    @contextlib.contextmanager
    def guard(t):
        guarded.append(t.device)
        active.append(True)
        try:
            yield
        finally:
            active.pop()

    monkeypatch.setattr(op, "_device_guard", guard)
    monkeypatch.setattr(op, "_k", _GuardedKernels(op._k, active))
    torch.use_deterministic_algorithms(True)
    try:
        _compare(20, 3, 7, 5, 6, mode, "relu")  # forward, backward and the sorted table grad
    finally:
        torch.use_deterministic_algorithms(False)
    assert len(guarded) == 2  # one guard per op call: forward and backward


def test_device_guard_selects_the_tensors_cuda_device(monkeypatch):
    from types import SimpleNamespace

    op = importlib.import_module("moc_fast.kernels.moc_embedding")

    made = []
    monkeypatch.setattr(torch.cuda, "device", lambda d: made.append(d) or "ctx")
    fake = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 1))
    assert op._device_guard(fake) == "ctx" and made == [torch.device("cuda", 1)]
    with op._device_guard(torch.zeros(1)):  # CPU tensors (the interpreter): no CUDA call
        pass
    assert made == [torch.device("cuda", 1)]


def test_tensors_on_different_devices_are_named():
    params = _params(2, 5, 4, 4)
    with pytest.raises(ValueError, match="codes is on meta but tables is on cpu"):
        moc_embedding(torch.zeros(3, 2, dtype=torch.long, device="meta"), *params)


def test_out_of_range_codes_raise_unless_skipped_and_then_read_zeros():
    m, k, e, r = 3, 6, 4, 5
    params = _params(m, k, e, r)
    codes = torch.tensor([[0, 5, 2], [6, 1, -1], [3, 4, 100]])
    with pytest.raises(ValueError, match="codes out of range: found -1"):
        moc_embedding(codes, *params, "gate", "relu")
    # skipped: an out-of-range code embeds as zeros and gets no gradient, like a zero row K
    dout = torch.randn(3, m, e)
    out, grads = _run(lambda *a, **kw: moc_embedding(*a, **kw, unsafe_skip_checks=True),
                      codes, params, "gate", "relu", dout)  # fmt: skip
    padded = [torch.cat([params[0], torch.zeros(m, 1, e)], 1), *params[1:]]
    fixed = torch.where((codes < 0) | (codes >= k), k, codes)
    ref, ref_grads = _run(moc_embedding_torch, fixed, padded, "gate", "relu", dout)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0], ref_grads[0][:, :k], rtol=1e-5, atol=1e-6)
    for a, c in zip(grads[1:], ref_grads[1:], strict=True):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    torch.use_deterministic_algorithms(True)  # the sorted segment-sum skips them too
    try:
        _, det = _run(lambda *a, **kw: moc_embedding(*a, **kw, unsafe_skip_checks=True),
                      codes, params, "gate", "relu", dout)  # fmt: skip
    finally:
        torch.use_deterministic_algorithms(False)
    torch.testing.assert_close(det[0], ref_grads[0][:, :k], rtol=1e-5, atol=1e-6)


def test_layer_without_code_checks_reads_zeros_on_the_triton_path():
    layer = MoCEmbedding(2, 4, 8, fusion="none", backend="triton", check_codes=False)
    out = layer(torch.tensor([[1, 7]]))
    assert out[0, 1].abs().sum() == 0 and torch.equal(out[0, 0], layer.tables[0, 1])
    with pytest.raises(ValueError, match="codes out of range"):
        MoCEmbedding(2, 4, 8, backend="triton")(torch.tensor([[1, 7]]))


def test_auto_runs_triton_only_on_nvidia_gpus_of_compute_capability_8(monkeypatch):
    from moc_fast.kernels import choose_backend, triton_unsupported_reason

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    assert "compute capability 7.5 < 8.0" in triton_unsupported_reason(cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    assert triton_unsupported_reason(cuda) is None
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    args = (torch.float32, 7, 64, 224, "gate", 65_536)
    assert choose_backend(cuda, *args, compiling=True) == "triton"  # TF32: the model's pick
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert "ROCm" in triton_unsupported_reason(cuda)
    assert choose_backend(cuda, *args, compiling=True) == "torch"
    assert choose_backend(torch.device("cpu"), *args) == "torch"
    layer = MoCEmbedding(7, 16, 64, bottleneck=224)  # auto, CPU tensors: torch
    assert not layer._use_triton(torch.zeros(1, 7, dtype=torch.long))


def test_version_floors_match_the_apis_used():
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=(\d+)\.(\d+)', text)
    assert floor and (int(floor[1]), int(floor[2])) >= (2, 4)  # custom_op, register_fake
    triton_floor = re.search(r'"triton>=(\d+)', text)
    assert triton_floor and int(triton_floor[1]) >= 3  # input_precision


def test_h_is_not_differentiable_and_gets_no_zero_gradient():
    params = [p.requires_grad_() for p in _params(3, 7, 4, 6)]
    out, h = _fwd_op(torch.randint(0, 7, (5, 3)), *params, "gate", "silu")
    assert out.requires_grad and not h.requires_grad
    (out.sum() + h.sum()).backward()  # h's use in the loss sends nothing back
    assert all(p.grad is not None for p in params)


@pytest.mark.parametrize("deterministic", [False, True])
def test_forward_and_backward_never_wait_for_the_device(deterministic):
    """No op whose output size or value the host must read: those sync a GPU and break
    CUDA-graph capture (the deterministic path used unique_consecutive + numel before)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    syncing = {"_local_scalar_dense", "item", "unique_consecutive", "_unique2", "nonzero",
               "is_nonzero", "equal", "masked_select"}  # fmt: skip
    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    op = importlib.import_module("moc_fast.kernels.moc_embedding")
    codes = torch.randint(0, 9, (40, 3))
    tables, w_down, b_down, w_up, b_up = _params(3, 9, 4, 6)
    torch.use_deterministic_algorithms(deterministic)
    try:  # the op's implementations, called directly so the mode sees every aten call
        with Record():
            out, h = op._forward(codes, tables, w_down, b_down, w_up, b_up, "gate", "silu")
            op._backward(torch.ones_like(out), codes, tables, w_down, w_up, b_up, h, "gate",
                         "silu")  # fmt: skip
    finally:
        torch.use_deterministic_algorithms(False)
    assert "sort" in seen if deterministic else "sort" not in seen
    assert not syncing & set(seen), syncing & set(seen)


@triton.jit
def _round_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(y_ptr + i, _tf32(tl.load(x_ptr + i, mask=i < n), "tf32"), mask=i < n)


def test_in_kernel_tf32_rounding_is_round_to_nearest_even():
    g = torch.Generator().manual_seed(3)
    scale = 10.0 ** torch.randint(-30, 30, (1000,), generator=g)
    x = torch.cat([torch.randn(1000, generator=g) * scale,
                   torch.tensor([1.0 + 2**-11, 1.0 + 3 * 2**-11, float("inf"), -float("inf"),
                                 float("nan"), 3.4e38, -0.0, 1e-40])])  # fmt: skip
    y = torch.empty_like(x)
    _round_kernel[(1,)](x, y, x.numel(), BLOCK=1024)
    want = torch.where(torch.isfinite(x), round_to_tf32(x), x)
    assert torch.equal(y.view(torch.int32)[~x.isnan()], want.view(torch.int32)[~x.isnan()])
    assert y[x.isnan()].isnan().all()


class _Tf32Matmul(torch.autograd.Function):
    """a @ b with both operands rounded to TF32 in the forward and in both backward GEMMs: the
    arithmetic the kernels do in TF32 mode, up to the order of fp32 sums."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return round_to_tf32(a) @ round_to_tf32(b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        g = round_to_tf32(g)
        return g @ round_to_tf32(b).T, round_to_tf32(a).T @ g


def _tf32_reference(codes, tables, w_down, b_down, w_up, b_up, mode, activation):
    from moc_fast.kernels.moc_embedding import _act

    m, k, e = tables.shape
    emb = tables[torch.arange(m), codes]  # (B, M, e)
    b = emb.shape[0]
    h = _Tf32Matmul.apply(emb.reshape(b, m * e), w_down) + b_down
    u = (_Tf32Matmul.apply(_act(h, activation), w_up) + b_up).view(b, m, e)
    return emb * torch.sigmoid(u) if mode == "gate" else emb + u


@pytest.mark.parametrize("mode", ["gate", "residual"])
def test_tf32_kernels_round_like_a_reference_that_rounds_every_dot(monkeypatch, mode):
    """Against a reference that rounds each GEMM's operands to nearest, the TF32 kernels agree
    to fp32 reordering error, far closer than to the unrounded reference: they round, and to
    nearest (truncation would sit as far from both). Gradients are looser (1e-4): a reordered
    fp32 sum can land on the other side of a rounding boundary before the next GEMM."""
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    g = torch.Generator().manual_seed(9)
    codes = torch.randint(0, 16, (70, 5), generator=g)
    params = _params(5, 16, 12, 20)
    dout = torch.randn(70, 5, 12, generator=g)
    out, grads = _run(moc_embedding, codes, params, mode, "silu", dout)
    ref, ref_grads = _run(_tf32_reference, codes, params, mode, "silu", dout)
    plain, plain_grads = _run(moc_embedding_torch, codes, params, mode, "silu", dout)
    assert _rel(out, ref) < 1e-6 and _rel(out, plain) > 1e-4
    names = ("tables", "w_down", "b_down", "w_up")  # b_up: a plain sum, never rounded
    for name, a, c, p in zip(names, grads[:4], ref_grads[:4], plain_grads[:4], strict=True):
        assert _rel(a, c) < min(1e-4, _rel(a, p) / 4), name


def test_autotuning_keeps_the_fastest_config_and_never_changes_an_accumulated_result(
    monkeypatch,
):
    """The tuner runs each candidate on the real arguments: an output the kernel adds into
    (the atomic table gradient) must come out as if the kernel had run once."""
    import triton.testing

    op = importlib.import_module("moc_fast.kernels.moc_embedding")
    monkeypatch.setattr(op, "_on_gpu", lambda t: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    calls = []

    class Kernel:  # adds its config's BLOCK_B into the output, like an atomic scatter
        def __getitem__(self, grid):
            def launch(out, **kw):
                calls.append(kw["BLOCK_B"])
                out += kw["BLOCK_B"]

            return launch

    def bench(fn, warmup, rep):
        before = len(calls)
        fn()
        fn()
        return {64: 2.0, 32: 1.0}[calls[before]]  # the 32-row candidate is faster

    monkeypatch.setattr(triton.testing, "do_bench", bench)
    configs = op.launch_configs(3, 16, 24)["_up"]
    out = torch.full((4,), 7.0)
    op._launch("_test", Kernel(), lambda c: (1,), (out,), configs, ("k",), restore=out)
    assert torch.equal(out, torch.full((4,), 7.0 + 32))  # one run, of the faster config
    assert op._TUNED[("_test", "k")] == 1
    op._launch("_test", Kernel(), lambda c: (1,), (out,), configs, ("k",), restore=out)
    assert calls[-1] == 32 and torch.equal(out, torch.full((4,), 7.0 + 64))  # cached: no retune
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    op._launch("_test", Kernel(), lambda c: (1,), (out,), configs, ("new",), restore=out)
    assert calls[-1] == 64 and ("_test", "new") not in op._TUNED  # no timing in a capture


def test_auto_backend_compiles_fullgraph_with_its_choice_as_a_constant(monkeypatch):
    """Under torch.compile the auto choice is made in Python at trace time: with a (faked)
    H100 in TF32 the traced graph holds the Triton op, on the CPU the torch ops."""
    cost = importlib.import_module("moc_fast.kernels.cost_model")
    torch.manual_seed(0)
    layer = MoCEmbedding(3, 16, 8, fusion="gate")  # backend="auto"
    codes = torch.randint(0, 16, (20, 3))
    ref = layer(codes)
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(layer, fullgraph=True, backend=backend)(codes)
    torch.testing.assert_close(out, ref)
    assert not any("moc_embedding" in str(n.target) for n in graphs[-1].graph.nodes)
    monkeypatch.setattr(cost, "triton_unsupported_reason", lambda d: None)
    monkeypatch.setattr(cost, "gpu_for", lambda d: cost.GPUS["H100"])
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    torch._dynamo.reset()
    out = torch.compile(layer, fullgraph=True, backend=backend)(codes)
    assert any("moc_embedding" in str(n.target) for n in graphs[-1].graph.nodes)
    assert _rel(out, ref) < tolerance(torch.float32, tf32=True)
    torch._dynamo.reset()
