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

import contextlib
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

    # input_precision and tl.cast(..., bitcast=True) as used here need Triton 3.0
    _HAVE_TRITON = int(triton.__version__.split(".")[0]) >= 3
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


# ---------------------------------------------------------------- devices and checks

MIN_CAPABILITY = (8, 0)  # TF32 dots, and the tiles were sized for Ampere's shared memory


def triton_unsupported_reason(device: torch.device) -> str | None:
    """Why the Triton kernels should not run on `device`, or None when they should:
    NVIDIA GPUs of compute capability >= 8.0 only (ROCm is untested, so not chosen)."""
    if not _HAVE_TRITON:
        return "triton >= 3.0 is not installed"
    if device.type != "cuda":
        return f"{device.type} tensors (the kernels need CUDA)"
    if torch.version.hip is not None:
        return "a ROCm GPU (the kernels are built and tested for NVIDIA GPUs only)"
    cc = torch.cuda.get_device_capability(device)
    if tuple(cc) < MIN_CAPABILITY:
        return f"compute capability {cc[0]}.{cc[1]} < 8.0"
    return None


def _check_device(**tensors: Tensor | None) -> None:
    """All tensors on one device the kernels can run on (or the CPU under the interpreter)."""
    if not _HAVE_TRITON:
        raise RuntimeError("triton >= 3.0 is not installed: use backend='torch'")
    named = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")
    if interpreting() and first.device.type == "cpu":
        return
    why = triton_unsupported_reason(first.device)
    if why is not None:
        hint = (" (or set TRITON_INTERPRET=1 before importing moc_fast to run the kernels in "
                "Triton's interpreter)") if first.device.type == "cpu" else ""  # fmt: skip
        raise ValueError(
            f"the Triton MoC kernels need CUDA tensors on an NVIDIA GPU of compute capability "
            f">= 8.0, got {why}: use backend='torch'{hint}"
        )


def _device_guard(t: Tensor) -> Any:
    """Triton launches on the current CUDA device: make it the tensors' device."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def check_codes(codes: Tensor, codebook_size: int, name: str = "codes") -> None:
    """Codes must lie in [0, codebook_size). CPU tensors in eager mode: a host check with a
    precise message. CUDA tensors and torch.compile/export: a device-side assert
    (`torch._assert_async`), which never waits for the GPU, so it is graph-safe."""
    if codes.numel() == 0:
        return
    if codes.is_cuda or torch.compiler.is_compiling():
        ok = ((codes >= 0) & (codes < codebook_size)).all()
        torch._assert_async(ok, f"MoC embedding: {name} out of range [0, {codebook_size})")
        return
    lo, hi = int(codes.min()), int(codes.max())
    if lo < 0 or hi >= codebook_size:
        raise ValueError(
            f"{name} out of range: found {lo if lo < 0 else hi}, expected 0 <= code < "
            f"codebook_size = {codebook_size}"
        )


# ---------------------------------------------------------------- launch configurations


def _block(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def launch_configs(m: int, e: int, r: int) -> dict[str, list[dict[str, int]]]:
    """The pruned config list of each kernel for a shape, default first: power-of-two tiles
    of at least 16 (tl.dot) and at most 64 × 64 with a K step of 16, 2 stages, at most 16
    accumulator elements per thread (64 rows on 8 warps, or 32 rows on 4), and `maxnreg` 255
    so that ptxas never trades spills for occupancy: left to itself it capped some kernels
    at 72-128 registers and spilled 4-16 B; larger tiles spilled up to 144 B even at 255.
    The GEMM kernels get a second candidate that the autotuner times on the GPU. Every entry
    is compiled ahead of time for sm_80 and sm_90 with 0 spills, and its occupancy reported
    (tests/test_kernels_compile.py, `python -m moc_fast.kernels.compile_check`)."""
    be, bn_r, bn_me = _block(e, 16, 64), _block(r, 16, 64), _block(m * e, 16, 64)
    wide = dict(num_warps=8, num_stages=2, maxnreg=255)
    narrow = dict(num_warps=4, num_stages=2, maxnreg=255)

    def gemm(**blocks: int) -> list[dict[str, int]]:
        return [dict(BLOCK_B=64, **blocks, **wide), dict(BLOCK_B=32, **blocks, **narrow)]

    per_codebook = gemm(BLOCK_E=be, BLOCK_K=16)
    return {
        "_down": gemm(BLOCK_N=bn_r, BLOCK_K=16),
        "_up": per_codebook,
        "_bwd_gate": per_codebook,
        "_bwd_dh": gemm(BLOCK_N=bn_r, BLOCK_K=16),
        "_bwd_de": per_codebook,
        "_wgrad_down": [dict(BLOCK_I=be, BLOCK_J=bn_r, BLOCK_R=16, **wide)],
        "_wgrad_up": [dict(BLOCK_I=bn_r, BLOCK_J=bn_me, BLOCK_R=16, **wide)],
        "_segment_sum": [dict(BLOCK_S=32, BLOCK_E=triton.next_power_of_2(e), num_warps=4,
                              num_stages=1, maxnreg=255)],  # fmt: skip
    }


def _blocks(config: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in config.items() if k.startswith("BLOCK")}


def _options(config: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in config.items() if k in ("num_warps", "num_stages", "maxnreg")}


_TRITON_TYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def kernel_variants(
    m: int, e: int, r: int, mode: str, activation: str, dtype: torch.dtype, prec: str
) -> list[tuple[str, Any, dict[str, str], dict[str, Any], dict[str, int]]]:
    """Every kernel × config that a forward + backward (atomic and deterministic) may launch
    for this configuration, as (name, jit function, signature, constexprs, options): what
    `triton.compile` needs to build it ahead of time for any GPU target."""
    t, f32, i64 = "*" + _TRITON_TYPE[dtype], "*fp32", "*i64"
    configs = launch_configs(m, e, r)
    mode_id, act_id = MODES.index(mode), ACTIVATIONS.index(activation)
    fused, gate = mode != "none", mode == "gate"
    ints = dict.fromkeys(("B", "K", "M", "E", "R", "NCOL"), "i32")
    out: list[tuple[str, Any, dict[str, str], dict[str, Any], dict[str, int]]] = []

    def add(name, fn, sig, **constexprs):
        for config in configs[name]:
            cx = {**_blocks(config), **constexprs}
            out.append((name, fn, {**sig, **dict.fromkeys(cx, "constexpr")}, cx,
                        _options(config)))  # fmt: skip

    ptrs = dict(codes_ptr=i64, tables_ptr=t)
    if fused:
        add("_down", _k._down, {**ptrs, "wd_ptr": t, "bd_ptr": t, "h_ptr": f32, **ints},
            PREC=prec)  # fmt: skip
    add("_up", _k._up, {**ptrs, "h_ptr": f32, "wu_ptr": t, "bu_ptr": t, "out_ptr": t, **ints},
        MODE=mode_id, ACT=act_id, PREC=prec)  # fmt: skip
    du_t = f32 if gate else t
    if gate:
        sig = {**ptrs, "h_ptr": f32, "wu_ptr": t, "bu_ptr": t, "dout_ptr": t, "du_ptr": f32,
               "de_ptr": f32, "dtab_ptr": f32, **ints}  # fmt: skip
        for atomic in (True, False):
            add("_bwd_gate", _k._bwd_gate, sig, ACT=act_id, ATOMIC=atomic, PREC=prec)
    if fused:
        sig = {"du_ptr": du_t, "wu_ptr": t, "h_ptr": f32, "dh_ptr": f32, "B": "i32",
               "ME": "i32", "R": "i32", "NCOL": "i32"}  # fmt: skip
        add("_bwd_dh", _k._bwd_dh, sig, ACT=act_id, PREC=prec)
    for atomic in (True, False):
        sig = {"codes_ptr": i64, "dh_ptr": f32 if fused else t, "wd_ptr": t, "de_in_ptr": du_t,
               "dtab_ptr": f32, "de_out_ptr": f32, **ints}  # fmt: skip
        add("_bwd_de", _k._bwd_de, sig, FUSED=fused, ATOMIC=atomic,
            DIRECT=not (gate and atomic), PREC=prec)  # fmt: skip
    if fused:
        wints = dict.fromkeys(("B", "NI", "NJ", "K", "M", "E", "ROWS_PER_SPLIT", "NCOL"), "i32")
        sig = {"x_ptr": t, "codes_ptr": i64, "y_ptr": f32, "part_ptr": f32, "bias_ptr": f32,
               **wints}  # fmt: skip
        add("_wgrad_down", _k._wgrad, sig, GATHER=True, ACT=act_id, PREC=prec)
        sig = {"x_ptr": f32, "codes_ptr": i64, "y_ptr": du_t, "part_ptr": f32, "bias_ptr": f32,
               **wints}  # fmt: skip
        add("_wgrad_up", _k._wgrad, sig, GATHER=False, ACT=act_id, PREC=prec)
    sig = {"de_ptr": f32, "order_ptr": i64, "starts_ptr": i64, "dtab_ptr": f32, "K": "i32",
           "M": "i32", "E": "i32"}  # fmt: skip
    add("_segment_sum", _k._segment_sum, sig)
    return out


def _prec(dtype: torch.dtype) -> str:
    if dtype != torch.float32:
        return "tf32"  # 16-bit inputs are exact in TF32
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def autotune_enabled() -> bool:
    """MOC_FAST_AUTOTUNE=0 keeps every kernel on its default config."""
    return os.environ.get("MOC_FAST_AUTOTUNE", "1") not in ("", "0")


_TUNED: dict[tuple[Any, ...], int] = {}


def _on_gpu(t: Any) -> bool:
    return isinstance(t, Tensor) and t.is_cuda


def _launch(
    name: str, fn: Any, grid: Any, args: tuple[Any, ...], configs: list[dict[str, int]],
    key: tuple[Any, ...], restore: Tensor | None = None, **constexprs: Any,
) -> None:  # fmt: skip
    """Launch `fn` with the config tuned for `key`. On a GPU with several candidates the
    first launch times each and keeps the fastest; `restore`, an output the kernel adds into
    with atomics, is saved first and put back before every timed run and after, so tuning
    never changes a result. In the interpreter, during CUDA-graph capture or with
    autotuning off, the default (first) config runs."""

    def run(config: dict[str, int]) -> None:
        fn[grid(config)](*args, **_blocks(config), **constexprs, **_options(config))

    full_key = (name, *key)
    index = _TUNED.get(full_key)
    if index is None:
        index = 0
        if len(configs) > 1 and _on_gpu(args[0]) and autotune_enabled():
            if torch.cuda.is_current_stream_capturing():
                run(configs[0])  # no timing inside a capture; tune on an eager call
                return
            from triton.testing import do_bench

            saved = restore.clone() if restore is not None else None

            def timed(config: dict[str, int]) -> float:
                def once() -> None:
                    if saved is not None:
                        restore.copy_(saved)
                    run(config)

                return do_bench(once, warmup=5, rep=25)

            times = [timed(c) for c in configs]
            index = min(range(len(configs)), key=times.__getitem__)
            if saved is not None:
                restore.copy_(saved)
        _TUNED[full_key] = index
    run(configs[index])


# ---------------------------------------------------------------- forward and backward


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
    _check_device(tables=tables, codes=codes, w_down=w_down, b_down=b_down, w_up=w_up,
                  b_up=b_up)  # fmt: skip
    m, k, e = tables.shape
    b = codes.shape[0]
    fused = mode != "none"
    r = w_down.shape[1] if fused else 0
    out = torch.empty(b, m, e, device=tables.device, dtype=tables.dtype)
    h = torch.empty(b, r, device=tables.device, dtype=torch.float32)
    if b == 0:
        return out, h
    configs, prec = launch_configs(m, e, max(r, 1)), _prec(tables.dtype)
    mode_id, act_id = MODES.index(mode), ACTIVATIONS.index(activation)
    key = (m, e, r, tables.dtype, prec, mode_id, act_id, str(tables.device))
    with _device_guard(tables):
        if fused:
            ncol = triton.cdiv(r, configs["_down"][0]["BLOCK_N"])
            _launch("_down", _k._down, lambda c: (triton.cdiv(b, c["BLOCK_B"]) * ncol,),
                    (codes, tables, w_down, b_down, h, b, k, m, e, r, ncol),
                    configs["_down"], key, PREC=prec)  # fmt: skip
        ncol = m * triton.cdiv(e, configs["_up"][0]["BLOCK_E"])
        # never read when mode == "none"
        hh, wu, bu = (h, w_up, b_up) if fused else (tables, tables, tables)
        _launch("_up", _k._up, lambda c: (triton.cdiv(b, c["BLOCK_B"]) * ncol,),
                (codes, tables, hh, wu, bu, out, b, k, m, e, max(r, 1), ncol),
                configs["_up"], key, MODE=mode_id, ACT=act_id, PREC=prec)  # fmt: skip
    return out, h


_SMS: dict[int, int] = {}


def _splits(b: int, tiles: int, block_r: int, device: torch.device) -> int:
    """Row splits of a weight-gradient GEMM: enough programs to fill the GPU twice over."""
    sms = 2
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in _SMS:
            _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
        sms = _SMS[index]
    return max(1, min(triton.cdiv(2 * sms, tiles), triton.cdiv(b, 4 * block_r)))


def _wgrad(
    x: Tensor, codes: Tensor, y: Tensor, rows_i: int, gather: bool, act_id: int,
    config: dict[str, int], k: int, m: int, e: int, prec: str,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(Xᵀ·Y, column sums of Y) over the batch, fp32, from per-split partials summed in a
    fixed order."""
    b, j = codes.shape[0], y.shape[1]
    bi, bj, br = config["BLOCK_I"], config["BLOCK_J"], config["BLOCK_R"]
    i_tiles = m * triton.cdiv(e, bi) if gather else triton.cdiv(rows_i, bi)
    ncol = triton.cdiv(j, bj)
    splits = _splits(b, i_tiles * ncol, br, codes.device)
    per_split = triton.cdiv(triton.cdiv(b, splits), br) * br
    splits = triton.cdiv(b, per_split)
    part = torch.empty(splits, rows_i, j, device=codes.device, dtype=torch.float32)
    bias = torch.empty(splits, j, device=codes.device, dtype=torch.float32)
    _k._wgrad[(i_tiles * ncol, splits)](
        x, codes, y, part, bias, b, rows_i, j, k, m, e, per_split, ncol, **_blocks(config),
        GATHER=gather, ACT=act_id, PREC=prec, **_options(config),
    )  # fmt: skip
    return part.sum(0), bias.sum(0)


def _table_grad_sorted(
    de: Tensor, codes: Tensor, k: int, e: int, config: dict[str, int]
) -> Tensor:
    """Deterministic table gradient (M, K, e): sort the (codebook, code) keys; program
    m·K + code sums its segment in sorted order (FBGEMM's sorted segment-reduce). Segment
    bounds come from a searchsorted over all M·K keys, so no size depends on the data and
    nothing waits for the GPU (CUDA-graph safe)."""
    b, m = codes.shape
    keys = codes + torch.arange(m, device=codes.device) * k
    valid = (codes >= 0) & (codes < k)
    keys = torch.where(valid, keys, m * k).reshape(-1)  # out-of-range codes: no segment
    sorted_keys, order = torch.sort(keys, stable=True)
    bounds = torch.arange(m * k + 1, device=codes.device, dtype=sorted_keys.dtype)
    starts = torch.searchsorted(sorted_keys, bounds)
    dtab = torch.empty(m, k, e, device=codes.device, dtype=torch.float32)
    _k._segment_sum[(m * k,)](de, order, starts, dtab, k, m, e, **_blocks(config),
                              **_options(config))  # fmt: skip
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
    _check_device(tables=tables, dout=dout, codes=codes, w_down=w_down, w_up=w_up, b_up=b_up,
                  h=h)  # fmt: skip
    with _device_guard(tables):  # Triton launches on the current CUDA device
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
        configs, prec = launch_configs(m, e, max(r, 1)), _prec(tables.dtype)
        act_id = ACTIVATIONS.index(activation)
        key = (m, e, r, tables.dtype, prec, MODES.index(mode), act_id, str(dev))
        deterministic = torch.are_deterministic_algorithms_enabled()
        ncol_cb = m * triton.cdiv(e, configs["_up"][0]["BLOCK_E"])  # per-codebook column tiles

        def grid(ncol: int):
            return lambda c: (triton.cdiv(b, c["BLOCK_B"]) * ncol,)

        # the table gradient: atomics accumulate here; the deterministic path overwrites it
        dtab = torch.zeros(m, k, e, device=dev, dtype=f32)
        accumulated = None if deterministic else dtab  # what tuning must leave as it found
        de_direct, du, dh = dout, dout, None  # "none" and "residual": dE_direct = du = dout
        if mode == "gate":
            du = torch.empty(b, me, device=dev, dtype=f32)
            # atomics: dE_direct goes straight into dtab, never to HBM
            de_direct = torch.empty(b, me, device=dev, dtype=f32) if deterministic else du
            _launch("_bwd_gate", _k._bwd_gate, grid(ncol_cb),
                    (codes, tables, h, w_up, b_up, dout, du, de_direct, dtab, b, k, m, e, r,
                     ncol_cb), configs["_bwd_gate"], (*key, deterministic), restore=accumulated,
                    ACT=act_id, ATOMIC=not deterministic, PREC=prec)  # fmt: skip
        if fused:
            du = du.reshape(b, me)
            dh = torch.empty(b, r, device=dev, dtype=f32)
            ncol = triton.cdiv(r, configs["_bwd_dh"][0]["BLOCK_N"])
            _launch("_bwd_dh", _k._bwd_dh, grid(ncol), (du, w_up, h, dh, b, me, r, ncol),
                    configs["_bwd_dh"], key, ACT=act_id, PREC=prec)  # fmt: skip
        de = dtab if not deterministic else torch.empty(b, me, device=dev, dtype=f32)
        _launch("_bwd_de", _k._bwd_de, grid(ncol_cb),
                (codes, dh if fused else tables, w_down if fused else tables, de_direct, dtab, de,
                 b, k, m, e, max(r, 1), ncol_cb),
                configs["_bwd_de"], (*key, deterministic), restore=accumulated,
                FUSED=fused, ATOMIC=not deterministic,
                DIRECT=not (mode == "gate" and not deterministic), PREC=prec)  # fmt: skip
        if deterministic:
            dtab = _table_grad_sorted(de, codes, k, e, configs["_segment_sum"][0])
        dtab = dtab.to(tables.dtype)
        if not fused:
            return dtab, empty(), empty(), empty(), empty()
        dwd, dbd = _wgrad(tables, codes, dh, me, True, act_id, configs["_wgrad_down"][0], k, m, e,
                          prec)  # fmt: skip
        dwu, dbu = _wgrad(h, codes, du, r, False, act_id, configs["_wgrad_up"][0], k, m, e, prec)
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
    # h is saved for the backward, not a result: no gradient flows into it, and none is
    # materialised (a zero (B, r) tensor per backward otherwise).
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _autograd_backward(ctx, dout, _dh):
    if dout is None:  # the output did not reach the loss
        return (None,) * 8
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
    unsafe_skip_checks: bool = False,
) -> Tensor:
    """The fused Triton version of `moc_embedding_torch` (same signature, same result).

    Codes are range-checked (`check_codes`: graph-safe on CUDA) unless `unsafe_skip_checks`,
    which saves one pass over the codes and risks silent errors: the kernels then read an
    out-of-range code as a zero row and send it no gradient (never out of bounds)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if tables.dtype not in DTYPES:
        raise TypeError(f"tables must be float32, bfloat16 or float16, got {tables.dtype}")
    if codes.dim() != 2 or codes.shape[1] != tables.shape[0]:
        raise ValueError(
            f"codes must have shape (B, M={tables.shape[0]}), got {tuple(codes.shape)}"
        )
    m, k, e = tables.shape
    r = w_down.shape[1] if mode != "none" else 1
    why = check_supported(m, e, r)
    if why is not None:
        raise ValueError(f"the Triton MoC kernels do not support {why}: use backend='torch'")
    _check_device(tables=tables, codes=codes)
    if not unsafe_skip_checks:
        check_codes(codes, k)
    tensors = [
        t.contiguous() if t is not None else None
        for t in (codes.long(), tables, w_down, b_down, w_up, b_up)
    ]
    if mode == "none":
        tensors[2:] = [None] * 4
    return _fwd_op(*tensors, mode, activation)[0]
