"""Triton kernels of the MoC embedding, tiled so that no program holds a whole weight matrix.

Notation: E = vec of the M gathered code rows, (B, M·e); h = E·W_down + b_down, (B, r);
u = act(h)·W_up + b_up, (B, M·e); out = E ⊙ σ(u) (gate), E + u (residual) or E (none).

Every kernel is a tiled GEMM (or a gather) over blocks of BLOCK_B rows × BLOCK_N columns that
loops over the reduction in BLOCK_K steps, so shared memory and registers depend on the block
sizes only, never on M, e or r. The gathered code rows are the A operand of the W_down GEMM and
are gathered again (not stored) wherever a later GEMM's epilogue needs them. All arithmetic is
fp32; `PREC` is the fp32 dot's input precision ("ieee" or "tf32"). Row offsets are int64.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _act(h, ACT: tl.constexpr):
    if ACT == 0:
        return tl.maximum(h, 0.0)
    elif ACT == 1:
        return h * tl.sigmoid(h)
    else:
        return h


@triton.jit
def _act_grad(h, ACT: tl.constexpr):
    if ACT == 0:
        return (h > 0).to(tl.float32)
    elif ACT == 1:
        s = tl.sigmoid(h)
        return s * (1.0 + h * (1.0 - s))
    else:
        return tl.full(h.shape, 1.0, tl.float32)


@triton.jit
def _gather(codes_ptr, tables_ptr, rows, cols, B, K, M, E):
    """(rows, cols) block of vec(E) in fp32: E[b, m·e + j] = tables[m, codes[b, m], j]."""
    mask = (rows[:, None] < B) & (cols[None, :] < M * E)
    m = (cols // E).to(tl.int64)
    code = tl.load(codes_ptr + rows[:, None] * M + m[None, :], mask=mask, other=0)
    ptrs = tables_ptr + (m[None, :] * K + code) * E + (cols % E)[None, :]
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32), mask, code


@triton.jit
def _rows(BLOCK_B: tl.constexpr):
    return tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)


@triton.jit
def _down(
    codes_ptr, tables_ptr, wd_ptr, bd_ptr, h_ptr, B, K, M, E, R,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """h = vec(E)·W_down + b_down, a (BLOCK_B, BLOCK_N) tile of (B, r) per program."""
    rows = _rows(BLOCK_B)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
    for k0 in range(0, M * E, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        emb, _, _ = _gather(codes_ptr, tables_ptr, rows, k, B, K, M, E)
        wmask = (k[:, None] < M * E) & (n[None, :] < R)
        w = tl.load(wd_ptr + k[:, None] * R + n[None, :], mask=wmask, other=0.0).to(tl.float32)
        acc = tl.dot(emb, w, acc, input_precision=PREC)
    acc += tl.load(bd_ptr + n, mask=n < R, other=0.0).to(tl.float32)[None, :]
    tl.store(h_ptr + rows[:, None] * R + n[None, :], acc, mask=(rows[:, None] < B) & (n < R))


@triton.jit
def _up_acc(h_ptr, wu_ptr, rows, n, B, R, ME, ACT, BLOCK_B, BLOCK_N, BLOCK_K, PREC):
    """act(h)·W_up for a (rows, n) tile of (B, M·e), looping over r."""
    acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
    for k0 in range(0, R, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        h = tl.load(
            h_ptr + rows[:, None] * R + k[None, :],
            mask=(rows[:, None] < B) & (k[None, :] < R),
            other=0.0,
        )
        wmask = (k[:, None] < R) & (n[None, :] < ME)
        w = tl.load(wu_ptr + k[:, None] * ME + n[None, :], mask=wmask, other=0.0).to(tl.float32)
        acc = tl.dot(_act(h, ACT), w, acc, input_precision=PREC)
    return acc


@triton.jit
def _up(
    codes_ptr, tables_ptr, h_ptr, wu_ptr, bu_ptr, out_ptr, B, K, M, E, R,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    MODE: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """out = fuse(E, u) for a (BLOCK_B, BLOCK_N) tile of (B, M·e); E gathered in the epilogue."""
    rows = _rows(BLOCK_B)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    emb, mask, _ = _gather(codes_ptr, tables_ptr, rows, n, B, K, M, E)
    if MODE == 0:
        out = emb
    else:
        u = _up_acc(h_ptr, wu_ptr, rows, n, B, R, M * E, ACT, BLOCK_B, BLOCK_N, BLOCK_K, PREC)
        u += tl.load(bu_ptr + n, mask=n < M * E, other=0.0).to(tl.float32)[None, :]
        if MODE == 1:  # noqa: SIM108 - a constexpr branch, resolved at compile time
            out = emb * tl.sigmoid(u)
        else:
            out = emb + u
    optrs = out_ptr + rows[:, None] * (M * E) + n[None, :]
    tl.store(optrs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_gate(
    codes_ptr, tables_ptr, h_ptr, wu_ptr, bu_ptr, dout_ptr, du_ptr, de_ptr, B, K, M, E, R,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ACT: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Gate backward, elementwise part: recompute u, then du = dout·E·σ'(u), dE = dout·σ(u)."""
    rows = _rows(BLOCK_B)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    emb, mask, _ = _gather(codes_ptr, tables_ptr, rows, n, B, K, M, E)
    u = _up_acc(h_ptr, wu_ptr, rows, n, B, R, M * E, ACT, BLOCK_B, BLOCK_N, BLOCK_K, PREC)
    u += tl.load(bu_ptr + n, mask=n < M * E, other=0.0).to(tl.float32)[None, :]
    g = tl.sigmoid(u)
    offs = rows[:, None] * (M * E) + n[None, :]
    dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(du_ptr + offs, dout * emb * g * (1.0 - g), mask=mask)
    tl.store(de_ptr + offs, dout * g, mask=mask)


@triton.jit
def _bwd_dh(
    du_ptr, wu_ptr, h_ptr, dh_ptr, B, ME, R,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ACT: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """dh = (du·W_upᵀ) ⊙ act'(h), a (BLOCK_B, BLOCK_N) tile of (B, r), looping over M·e."""
    rows = _rows(BLOCK_B)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
    for k0 in range(0, ME, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        du = tl.load(
            du_ptr + rows[:, None] * ME + k[None, :],
            mask=(rows[:, None] < B) & (k[None, :] < ME),
            other=0.0,
        ).to(tl.float32)
        wmask = (k[:, None] < ME) & (n[None, :] < R)
        w = tl.load(wu_ptr + n[None, :] * ME + k[:, None], mask=wmask, other=0.0).to(tl.float32)
        acc = tl.dot(du, w, acc, input_precision=PREC)
    hmask = (rows[:, None] < B) & (n[None, :] < R)
    offs = rows[:, None] * R + n[None, :]
    h = tl.load(h_ptr + offs, mask=hmask, other=0.0)
    tl.store(dh_ptr + offs, acc * _act_grad(h, ACT), mask=hmask)


@triton.jit
def _bwd_de(
    codes_ptr, dh_ptr, wd_ptr, de_in_ptr, dtab_ptr, de_out_ptr, B, K, M, E, R,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    FUSED: tl.constexpr, ATOMIC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """dE = dE_direct + dh·W_downᵀ for a tile of (B, M·e); scattered into the table gradient
    with atomics (ATOMIC) or stored for the deterministic sorted segment-sum."""
    rows = _rows(BLOCK_B)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < B) & (n[None, :] < M * E)
    offs = rows[:, None] * (M * E) + n[None, :]
    de = tl.load(de_in_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if FUSED:
        acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
        for k0 in range(0, R, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            dh = tl.load(
                dh_ptr + rows[:, None] * R + k[None, :],
                mask=(rows[:, None] < B) & (k[None, :] < R),
                other=0.0,
            )
            wmask = (k[:, None] < R) & (n[None, :] < M * E)
            w = tl.load(wd_ptr + n[None, :] * R + k[:, None], mask=wmask, other=0.0)
            acc = tl.dot(dh, w.to(tl.float32), acc, input_precision=PREC)
        de += acc
    if ATOMIC:
        m = (n // E).to(tl.int64)
        code = tl.load(codes_ptr + rows[:, None] * M + m[None, :], mask=mask, other=0)
        ptrs = dtab_ptr + (m[None, :] * K + code) * E + (n % E)[None, :]
        tl.atomic_add(ptrs, de, mask=mask, sem="relaxed")
    else:
        tl.store(de_out_ptr + offs, de, mask=mask)


@triton.jit
def _wgrad(
    x_ptr, codes_ptr, y_ptr, part_ptr, B, NI, NJ, K, M, E, ROWS_PER_SPLIT,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr,
    GATHER: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """One split's partial of Xᵀ·Y over its rows: part[s] (I, J). X is vec(E) gathered from
    the tables (GATHER, for dW_down = vec(E)ᵀ·dh) or act(h) (for dW_up = act(h)ᵀ·du)."""
    i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    split = tl.program_id(2).to(tl.int64)
    start = split * ROWS_PER_SPLIT
    acc = tl.zeros((BLOCK_I, BLOCK_J), tl.float32)
    for r0 in range(0, ROWS_PER_SPLIT, BLOCK_R):
        rows = start + r0 + tl.arange(0, BLOCK_R)
        if GATHER:
            x, _, _ = _gather(codes_ptr, x_ptr, rows, i, B, K, M, E)
        else:
            x = tl.load(
                x_ptr + rows[:, None] * NI + i[None, :],
                mask=(rows[:, None] < B) & (i[None, :] < NI),
                other=0.0,
            )
            x = _act(x, ACT)
        y = tl.load(
            y_ptr + rows[:, None] * NJ + j[None, :],
            mask=(rows[:, None] < B) & (j[None, :] < NJ),
            other=0.0,
        ).to(tl.float32)
        acc = tl.dot(tl.trans(x), y, acc, input_precision=PREC)
    pmask = (i[:, None] < NI) & (j[None, :] < NJ)
    tl.store(part_ptr + split * NI * NJ + i[:, None] * NJ + j[None, :], acc, mask=pmask)


@triton.jit
def _segment_sum(
    de_ptr, order_ptr, starts_ptr, keys_ptr, dtab_ptr, M, E,
    BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    """Deterministic table gradient: one program per distinct (codebook, code) key sums the
    dE rows of its sorted segment in a fixed order and writes the table row once."""
    seg = tl.program_id(0)
    start = tl.load(starts_ptr + seg)
    end = tl.load(starts_ptr + seg + 1)
    key = tl.load(keys_ptr + seg)
    j = tl.arange(0, BLOCK_E)
    acc = tl.zeros((BLOCK_S, BLOCK_E), tl.float32)
    for s0 in range(start, end, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        flat = tl.load(order_ptr + s, mask=s < end, other=0)  # b·M + m
        m = flat % M
        ptrs = de_ptr + (flat // M)[:, None] * (M * E) + (m * E)[:, None] + j[None, :]
        acc += tl.load(ptrs, mask=(s[:, None] < end) & (j[None, :] < E), other=0.0)
    tl.store(dtab_ptr + key * E + j, tl.sum(acc, axis=0), mask=j < E)
