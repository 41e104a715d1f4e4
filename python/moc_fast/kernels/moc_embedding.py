"""Fused MoC embedding: M table gathers + bottleneck fusion, as a registered torch op.

out = fuse(E), E[b, m] = tables[m, codes[b, m]]  (B, M, e), with vec(E) the (B, M·e) view:
- "none":     E
- "gate":     E ⊙ σ(u),  u = act(vec(E) W_down + b_down) W_up + b_up
- "residual": E + u

`moc_embedding` runs the tiled Triton kernels of `moc_embedding_triton` behind the torch ops
`moc_fast::moc_embedding_fwd` / `moc_fast::moc_embedding_bwd` (schema, autograd and fake
implementations registered), so models that use it compile with `torch.compile(fullgraph=True)`
and export with `torch.export`. The forward never writes E: the gathers feed the W_down GEMM
and are repeated in the W_up GEMM's epilogue; only the (B, r) pre-activation h is kept for the
backward. Weight gradients are GEMMs over the batch (per-split partials summed in a fixed
order); table gradients are atomic adds, or a sorted segment-sum when
`torch.are_deterministic_algorithms_enabled()`.

Precision follows torch: fp32 dots are IEEE when `torch.get_float32_matmul_precision()` is
"highest" and TF32 otherwise; bf16/fp16 inputs are upcast to fp32 (TF32 holds them exactly);
accumulation is always fp32. `moc_embedding_torch` is the reference and the CPU path.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("none", "gate", "residual")
ACTIVATIONS = ("relu", "silu", "identity")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Shapes the Triton kernels are built and tested for (tests/test_kernels_compile.py).
MAX_CODEBOOKS, MAX_EMBED_DIM, MAX_BOTTLENECK = 16, 128, 1024

try:  # Triton is optional: CPU-only installs use the torch path.
    import triton

    from moc_fast.kernels import moc_embedding_triton as _k

    _HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only without triton
    _HAVE_TRITON = False


def triton_available() -> bool:
    return _HAVE_TRITON


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _act(x: Tensor, activation: str) -> Tensor:
    if activation == "relu":
        return F.relu(x)
    if activation == "silu":
        return F.silu(x)
    return x


def moc_embedding_torch(
    codes: Tensor,
    tables: Tensor,
    w_down: Tensor | None,
    b_down: Tensor | None,
    w_up: Tensor | None,
    b_up: Tensor | None,
    mode: str = "gate",
    activation: str = "relu",
) -> Tensor:
    """Reference: codes (B, M) int64, tables (M, K, e), w_down (M·e, r), w_up (r, M·e)."""
    m, k, _ = tables.shape
    # 'b m -> b m e' as one embedding lookup into the stacked tables: its CPU backward gives
    # the same bits with any thread count (advanced indexing's accumulate did not).
    offsets = torch.arange(m, device=codes.device) * k
    emb = F.embedding(codes + offsets, tables.reshape(m * k, -1))
    return moc_fuse(emb, w_down, b_down, w_up, b_up, mode, activation)


def moc_fuse(
    emb: Tensor,
    w_down: Tensor | None,
    b_down: Tensor | None,
    w_up: Tensor | None,
    b_up: Tensor | None,
    mode: str = "gate",
    activation: str = "relu",
) -> Tensor:
    """The bottleneck fusion alone, on code embeddings already looked up: `emb (B, M, e)`
    (e.g. pooled by a TorchRec EmbeddingBagCollection) -> `(B, M, e)`."""
    if mode == "none":
        return emb
    b, m, e = emb.shape
    a = _act(emb.reshape(b, m * e) @ w_down + b_down, activation)
    u = (a @ w_up + b_up).view(b, m, e)
    return emb * torch.sigmoid(u) if mode == "gate" else emb + u


def tolerance(dtype: torch.dtype, tf32: bool) -> float:
    """Error bound, relative to the largest reference value, that a correct kernel meets:
    fp32 IEEE only reorders sums; TF32 rounds dot inputs to 10 mantissa bits; bf16/fp16 round
    the output (and the reference's own intermediates)."""
    if dtype == torch.bfloat16:
        return 2e-2
    if dtype == torch.float16:
        return 5e-3
    return 5e-3 if tf32 else 2e-5


def round_to_tf32(x: Tensor) -> Tensor:
    """x with its fp32 mantissa rounded to TF32's 10 bits (round to nearest even)."""
    bits = x.float().contiguous().view(torch.int32)
    bits = (bits + 0xFFF + ((bits >> 13) & 1)) & ~0x1FFF
    return bits.view(torch.float32)


def check_supported(num_codebooks: int, embed_dim: int, bottleneck: int) -> str | None:
    """Why the Triton kernels do not support this shape, or None when they do."""
    if num_codebooks > MAX_CODEBOOKS:
        return f"num_codebooks = {num_codebooks} > {MAX_CODEBOOKS}"
    if embed_dim > MAX_EMBED_DIM:
        return f"embed_dim = {embed_dim} > {MAX_EMBED_DIM}"
    if bottleneck > MAX_BOTTLENECK:
        return f"bottleneck = {bottleneck} > {MAX_BOTTLENECK}"
    return None


# ---------------------------------------------------------------- launch settings


def _block(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def launch_settings(m: int, e: int, r: int) -> dict[str, dict[str, int]]:
    """Block sizes per kernel for a shape: power-of-two tiles of at least 16 (tl.dot) and at
    most 64 × 64 × 32, so shared memory is bounded whatever M, e and r are."""
    me = m * e
    out_me = dict(BLOCK_B=64, BLOCK_N=_block(me, 16, 64), BLOCK_K=_block(r, 16, 32))
    return {
        "_down": dict(BLOCK_B=64, BLOCK_N=_block(r, 16, 64), BLOCK_K=_block(me, 16, 32)),
        "_up": out_me,
        "_bwd_gate": out_me,
        "_bwd_dh": dict(BLOCK_B=64, BLOCK_N=_block(r, 16, 64), BLOCK_K=_block(me, 16, 32)),
        "_bwd_de": out_me,
        "_wgrad_down": dict(BLOCK_I=_block(me, 16, 64), BLOCK_J=_block(r, 16, 64), BLOCK_R=32),
        "_wgrad_up": dict(BLOCK_I=_block(r, 16, 64), BLOCK_J=_block(me, 16, 64), BLOCK_R=32),
        "_segment_sum": dict(BLOCK_S=32, BLOCK_E=triton.next_power_of_2(e)),
    }


NUM_WARPS, NUM_STAGES = 4, 3
_TRITON_TYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def kernel_variants(
    m: int, e: int, r: int, mode: str, activation: str, dtype: torch.dtype, prec: str
) -> list[tuple[str, Any, dict[str, str], dict[str, Any]]]:
    """Every kernel that a forward + backward (atomic and deterministic) launches for this
    configuration, as (name, jit function, signature, constexprs) — what `triton.compile`
    needs to build it ahead of time for any GPU target (tests/test_kernels_compile.py)."""
    t, f32, i64 = "*" + _TRITON_TYPE[dtype], "*fp32", "*i64"
    cfg = launch_settings(m, e, r)
    mode_id, act_id = MODES.index(mode), ACTIVATIONS.index(activation)
    fused, gate = mode != "none", mode == "gate"
    ints = dict.fromkeys(("B", "K", "M", "E", "R"), "i32")
    out: list[tuple[str, Any, dict[str, str], dict[str, Any]]] = []

    def add(name, fn, sig, **constexprs):
        out.append((name, fn, {**sig, **dict.fromkeys(constexprs, "constexpr")}, constexprs))

    ptrs = dict(codes_ptr=i64, tables_ptr=t)
    if fused:
        add("_down", _k._down, {**ptrs, "wd_ptr": t, "bd_ptr": t, "h_ptr": f32, **ints},
            **cfg["_down"], PREC=prec)  # fmt: skip
    add("_up", _k._up, {**ptrs, "h_ptr": f32, "wu_ptr": t, "bu_ptr": t, "out_ptr": t, **ints},
        **cfg["_up"], MODE=mode_id, ACT=act_id, PREC=prec)  # fmt: skip
    du_t = f32 if gate else t
    if gate:
        sig = {**ptrs, "h_ptr": f32, "wu_ptr": t, "bu_ptr": t, "dout_ptr": t, "du_ptr": f32,
               "de_ptr": f32, **ints}  # fmt: skip
        add("_bwd_gate", _k._bwd_gate, sig, **cfg["_bwd_gate"], ACT=act_id, PREC=prec)
    if fused:
        sig = {"du_ptr": du_t, "wu_ptr": t, "h_ptr": f32, "dh_ptr": f32, "B": "i32",
               "ME": "i32", "R": "i32"}  # fmt: skip
        add("_bwd_dh", _k._bwd_dh, sig, **cfg["_bwd_dh"], ACT=act_id, PREC=prec)
    for atomic in (True, False):
        sig = {"codes_ptr": i64, "dh_ptr": f32 if fused else t, "wd_ptr": t, "de_in_ptr": du_t,
               "dtab_ptr": f32, "de_out_ptr": f32, **ints}  # fmt: skip
        add("_bwd_de", _k._bwd_de, sig, **cfg["_bwd_de"], FUSED=fused, ATOMIC=atomic, PREC=prec)
    if fused:
        wints = dict.fromkeys(("B", "NI", "NJ", "K", "M", "E", "ROWS_PER_SPLIT"), "i32")
        sig = {"x_ptr": t, "codes_ptr": i64, "y_ptr": f32, "part_ptr": f32, **wints}
        add("_wgrad_down", _k._wgrad, sig, **cfg["_wgrad_down"], GATHER=True, ACT=act_id,
            PREC=prec)  # fmt: skip
        sig = {"x_ptr": f32, "codes_ptr": i64, "y_ptr": du_t, "part_ptr": f32, **wints}
        add("_wgrad_up", _k._wgrad, sig, **cfg["_wgrad_up"], GATHER=False, ACT=act_id,
            PREC=prec)  # fmt: skip
    sig = {"de_ptr": f32, "order_ptr": i64, "starts_ptr": i64, "keys_ptr": i64, "dtab_ptr": f32,
           "M": "i32", "E": "i32"}  # fmt: skip
    add("_segment_sum", _k._segment_sum, sig, **cfg["_segment_sum"])
    return out


def _prec(dtype: torch.dtype) -> str:
    if dtype != torch.float32:
        return "tf32"  # 16-bit inputs are exact in TF32
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def _launch(fn: Any, grid: tuple[int, ...], *args: Any, **constexprs: Any) -> None:
    fn[grid](*args, **constexprs, num_warps=NUM_WARPS, num_stages=NUM_STAGES)


def _check_device(*tensors: Tensor | None) -> None:
    if not _HAVE_TRITON:
        raise RuntimeError("triton is not installed: use backend='torch'")
    for t in tensors:
        if t is not None and not t.is_cuda and not interpreting():
            raise ValueError(
                f"the Triton MoC kernels need CUDA tensors, got a {t.device.type} tensor: use "
                "backend='torch' on the CPU (or set TRITON_INTERPRET=1 before importing "
                "moc_fast to run the kernels in Triton's interpreter)"
            )


def _forward(
    codes: Tensor,
    tables: Tensor,
    w_down: Tensor | None,
    b_down: Tensor | None,
    w_up: Tensor | None,
    b_up: Tensor | None,
    mode: str,
    activation: str,
) -> tuple[Tensor, Tensor]:
    _check_device(codes, tables, w_down, w_up)
    m, k, e = tables.shape
    b = codes.shape[0]
    fused = mode != "none"
    r = w_down.shape[1] if fused else 0
    out = torch.empty(b, m, e, device=tables.device, dtype=tables.dtype)
    h = torch.empty(b, r, device=tables.device, dtype=torch.float32)
    if b == 0:
        return out, h
    cfg, prec = launch_settings(m, e, max(r, 1)), _prec(tables.dtype)
    mode_id, act_id = MODES.index(mode), ACTIVATIONS.index(activation)
    if fused:
        c = cfg["_down"]
        grid = (triton.cdiv(b, c["BLOCK_B"]), triton.cdiv(r, c["BLOCK_N"]))
        _launch(_k._down, grid, codes, tables, w_down, b_down, h, b, k, m, e, r,
                **c, PREC=prec)  # fmt: skip
    c = cfg["_up"]
    grid = (triton.cdiv(b, c["BLOCK_B"]), triton.cdiv(m * e, c["BLOCK_N"]))
    # never read when mode == "none"
    hh, wu, bu = (h, w_up, b_up) if fused else (tables, tables, tables)
    _launch(_k._up, grid, codes, tables, hh, wu, bu, out, b, k, m, e, max(r, 1),
            **c, MODE=mode_id, ACT=act_id, PREC=prec)  # fmt: skip
    return out, h


def _splits(b: int, tiles: int, block_r: int, device: torch.device) -> int:
    """Row splits of a weight-gradient GEMM: enough programs to fill the GPU twice over."""
    sms = 2
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(2 * sms, tiles), triton.cdiv(b, 4 * block_r)))


def _wgrad(
    x: Tensor, codes: Tensor, y: Tensor, rows_i: int, gather: bool, act_id: int,
    cfg: dict[str, int], k: int, m: int, e: int, prec: str,
) -> Tensor:  # fmt: skip
    """Xᵀ·Y over the batch, (I, J) fp32, from per-split partials summed in a fixed order."""
    b, j = codes.shape[0], y.shape[1]
    tiles = triton.cdiv(rows_i, cfg["BLOCK_I"]) * triton.cdiv(j, cfg["BLOCK_J"])
    splits = _splits(b, tiles, cfg["BLOCK_R"], codes.device)
    per_split = triton.cdiv(triton.cdiv(b, splits), cfg["BLOCK_R"]) * cfg["BLOCK_R"]
    splits = triton.cdiv(b, per_split)
    part = torch.empty(splits, rows_i, j, device=codes.device, dtype=torch.float32)
    grid = (triton.cdiv(rows_i, cfg["BLOCK_I"]), triton.cdiv(j, cfg["BLOCK_J"]), splits)
    _launch(_k._wgrad, grid, x, codes, y, part, b, rows_i, j, k, m, e, per_split,
            **cfg, GATHER=gather, ACT=act_id, PREC=prec)  # fmt: skip
    return part.sum(0)


def _table_grad_sorted(de: Tensor, codes: Tensor, k: int, e: int, cfg: dict[str, int]) -> Tensor:
    """Deterministic table gradient (M, K, e): sort the (codebook, code) keys, one program per
    distinct key sums its rows in sorted order (FBGEMM's sorted segment-reduce)."""
    b, m = codes.shape
    keys = (codes + torch.arange(m, device=codes.device) * k).reshape(-1)
    sorted_keys, order = torch.sort(keys, stable=True)
    uniq, counts = torch.unique_consecutive(sorted_keys, return_counts=True)
    starts = torch.zeros(uniq.numel() + 1, device=codes.device, dtype=torch.int64)
    torch.cumsum(counts, 0, out=starts[1:])
    dtab = torch.zeros(m, k, e, device=codes.device, dtype=torch.float32)
    _launch(_k._segment_sum, (uniq.numel(),), de, order, starts, uniq, dtab,
            m, e, **cfg)  # fmt: skip
    return dtab


def _backward(
    dout: Tensor,
    codes: Tensor,
    tables: Tensor,
    w_down: Tensor | None,
    w_up: Tensor | None,
    b_up: Tensor | None,
    h: Tensor,
    mode: str,
    activation: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    _check_device(dout, codes, tables)
    m, k, e = tables.shape
    b, me = codes.shape[0], m * e
    dev, f32 = tables.device, torch.float32
    fused = mode != "none"
    r = h.shape[1]
    def empty() -> Tensor:
        return torch.empty(0, device=dev, dtype=tables.dtype)

    if b == 0:
        dtab = torch.zeros_like(tables)
        if not fused:
            return dtab, empty(), empty(), empty(), empty()
        return (dtab, torch.zeros_like(w_down), torch.zeros(r, device=dev, dtype=w_down.dtype),
                torch.zeros_like(w_up), torch.zeros_like(b_up))  # fmt: skip
    dout = dout.contiguous()
    cfg, prec = launch_settings(m, e, max(r, 1)), _prec(tables.dtype)
    act_id = ACTIVATIONS.index(activation)
    deterministic = torch.are_deterministic_algorithms_enabled()
    rows = lambda c: triton.cdiv(b, c["BLOCK_B"])  # noqa: E731
    de_direct, du, dh = dout, dout, None  # "none" and "residual": dE_direct = du = dout
    if mode == "gate":
        c = cfg["_bwd_gate"]
        du = torch.empty(b, me, device=dev, dtype=f32)
        de_direct = torch.empty(b, me, device=dev, dtype=f32)
        _launch(_k._bwd_gate, (rows(c), triton.cdiv(me, c["BLOCK_N"])), codes,
                tables, h, w_up, b_up, dout, du, de_direct, b, k, m, e, r,
                **c, ACT=act_id, PREC=prec)  # fmt: skip
    if fused:
        du = du.reshape(b, me)
        c = cfg["_bwd_dh"]
        dh = torch.empty(b, r, device=dev, dtype=f32)
        _launch(_k._bwd_dh, (rows(c), triton.cdiv(r, c["BLOCK_N"])), du, w_up, h, dh,
                b, me, r, **c, ACT=act_id, PREC=prec)  # fmt: skip
    c = cfg["_bwd_de"]
    dtab = torch.zeros(m, k, e, device=dev, dtype=f32)
    de = dtab if not deterministic else torch.empty(b, me, device=dev, dtype=f32)
    _launch(_k._bwd_de, (rows(c), triton.cdiv(me, c["BLOCK_N"])), codes,
            dh if fused else tables, w_down if fused else tables, de_direct, dtab, de,
            b, k, m, e, max(r, 1), **c, FUSED=fused, ATOMIC=not deterministic,
            PREC=prec)  # fmt: skip
    if deterministic:
        dtab = _table_grad_sorted(de, codes, k, e, cfg["_segment_sum"])
    dtab = dtab.to(tables.dtype)
    if not fused:
        return dtab, empty(), empty(), empty(), empty()
    dwd = _wgrad(tables, codes, dh, me, True, act_id, cfg["_wgrad_down"], k, m, e, prec)
    dwu = _wgrad(h, codes, du, r, False, act_id, cfg["_wgrad_up"], k, m, e, prec)
    dbd, dbu = dh.sum(0), du.float().sum(0)
    wdt = w_down.dtype
    return dtab, dwd.to(wdt), dbd.to(wdt), dwu.to(w_up.dtype), dbu.to(b_up.dtype)


# ---------------------------------------------------------------- the torch ops

_fwd_op = torch.library.custom_op(
    "moc_fast::moc_embedding_fwd",
    _forward,
    mutates_args=(),
    schema="(Tensor codes, Tensor tables, Tensor? w_down, Tensor? b_down, Tensor? w_up, "
    "Tensor? b_up, str mode, str activation) -> (Tensor, Tensor)",
)
_bwd_op = torch.library.custom_op(
    "moc_fast::moc_embedding_bwd",
    _backward,
    mutates_args=(),
    schema="(Tensor dout, Tensor codes, Tensor tables, Tensor? w_down, Tensor? w_up, "
    "Tensor? b_up, Tensor h, str mode, str activation) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)


@_fwd_op.register_fake
def _forward_fake(codes, tables, w_down, b_down, w_up, b_up, mode, activation):
    m, _, e = tables.shape
    b = codes.shape[0]
    r = w_down.shape[1] if mode != "none" else 0
    return tables.new_empty(b, m, e), tables.new_empty(b, r, dtype=torch.float32)


@_bwd_op.register_fake
def _backward_fake(dout, codes, tables, w_down, w_up, b_up, h, mode, activation):
    if mode == "none":
        e = [tables.new_empty(0) for _ in range(4)]
        return torch.empty_like(tables), *e
    return (torch.empty_like(tables), torch.empty_like(w_down),
            w_down.new_empty(w_down.shape[1]), torch.empty_like(w_up),
            torch.empty_like(b_up))  # fmt: skip


def _setup_context(ctx, inputs, output):
    codes, tables, w_down, _, w_up, b_up, mode, activation = inputs
    ctx.save_for_backward(codes, tables, w_down, w_up, b_up, output[1])
    ctx.mode, ctx.activation = mode, activation


def _autograd_backward(ctx, dout, _dh):
    codes, tables, w_down, w_up, b_up, h = ctx.saved_tensors
    dtab, dwd, dbd, dwu, dbu = _bwd_op(
        dout, codes, tables, w_down, w_up, b_up, h, ctx.mode, ctx.activation
    )
    if ctx.mode == "none":
        return None, dtab, None, None, None, None, None, None
    return None, dtab, dwd, dbd, dwu, dbu, None, None


_fwd_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def moc_embedding(
    codes: Tensor,
    tables: Tensor,
    w_down: Tensor | None,
    b_down: Tensor | None,
    w_up: Tensor | None,
    b_up: Tensor | None,
    mode: str = "gate",
    activation: str = "relu",
) -> Tensor:
    """The fused Triton version of `moc_embedding_torch` (same signature, same result)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if tables.dtype not in DTYPES:
        raise TypeError(f"tables must be float32, bfloat16 or float16, got {tables.dtype}")
    m, _, e = tables.shape
    r = w_down.shape[1] if mode != "none" else 1
    why = check_supported(m, e, r)
    if why is not None:
        raise ValueError(f"the Triton MoC kernels do not support {why}: use backend='torch'")
    _check_device(codes, tables)
    tensors = [
        t.contiguous() if t is not None else None
        for t in (codes.long(), tables, w_down, b_down, w_up, b_up)
    ]
    if mode == "none":
        tensors[2:] = [None] * 4
    return _fwd_op(*tensors, mode, activation)[0]
