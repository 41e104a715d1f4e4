"""Triton kernels of the MoC embedding, tiled so that no program holds a whole weight matrix.

Notation: E = vec of the M gathered code rows, (B, M·e); h = E·W_down + b_down, (B, r);
u = act(h)·W_up + b_up, (B, M·e); out = E ⊙ σ(u) (gate), E + u (residual) or E (none).

Every kernel is a tiled GEMM (or a gather) over blocks of BLOCK_B rows that loops over the
reduction in BLOCK_K steps, so shared memory and registers depend on the block sizes only,
never on M, e or r. Layout choices, each from docs/gpu.md's cost model:
- Column tiles of (B, M·e) never straddle two codebooks: a tile is (rows, codebook m, BLOCK_E
  columns of e), so each row needs one code per tile (a vector, not a 2-D tile of codes and
  64-bit pointers, which is what made the first kernels hit the register cap) and the table
  rows are read as contiguous runs.
- Grids are 1-D with the column tiles of one row block adjacent (pid = row·NCOL + col): the
  programs sharing a row block's h, du or dh run together, so those are read from HBM once
  and from L2 NCOL - 1 times, instead of once per column tile.
- A code outside [0, K) reads as a zero row and scatters nothing: skipping the range check
  (`unsafe_skip_checks`) gives wrong numbers, never an out-of-bounds access.
All arithmetic is fp32; `PREC` is the fp32 dot's input precision ("ieee" or "tf32"). In TF32
both dot operands are rounded to nearest (even) in the kernel, as the TF32 reference and
cuBLAS round, rather than truncated by the tensor core. Row offsets are int64.
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
def _tf32(x, PREC: tl.constexpr):
    """x rounded to TF32's 10 mantissa bits, to nearest even (Inf and NaN kept), when PREC is
    "tf32"; the tensor core would otherwise drop the low 13 bits."""
    if PREC == "tf32":
        bits = x.to(tl.int32, bitcast=True)
        special = (bits & 0x7F800000) == 0x7F800000
        rounded = (bits + (((bits >> 13) & 1) + 0xFFF)) & -8192
        return tl.where(special, x, rounded.to(tl.float32, bitcast=True))
    else:
        return x


@triton.jit
def _dot(a, b, acc, PREC: tl.constexpr):
    return tl.dot(_tf32(a, PREC), _tf32(b, PREC), acc, input_precision=PREC)


@triton.jit
def _code(codes_ptr, rows, m, B, M, K):
    """The code of each row in codebook m (int64) and whether the row reads a table row:
    padding rows and codes outside [0, K) do not."""
    code = tl.load(codes_ptr + rows * M + m, mask=rows < B, other=0)
    valid = (rows < B) & (code >= 0) & (code < K)
    return tl.where(valid, code, 0).to(tl.int64), valid


@triton.jit
def _gather(tables_ptr, code, valid, m, j, K, E):
    """(rows, j) block of codebook m's table rows, fp32; zero where a row is not valid."""
    ptrs = tables_ptr + (code + tl.cast(m, tl.int64) * K)[:, None] * E + j[None, :]
    mask = valid[:, None] & (j[None, :] < E)
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _codebook_tile(col, E, BLOCK_E: tl.constexpr):
    """Column tile `col` of (B, M·e) as (codebook m, columns j of e): ceil(E / BLOCK_E) tiles
    per codebook."""
    per = tl.cdiv(E, BLOCK_E)
    m = col // per
    j = (col % per) * BLOCK_E + tl.arange(0, BLOCK_E)
    return m, j


@triton.jit
def _row_col(NCOL, BLOCK_B: tl.constexpr):
    """Program id -> (its BLOCK_B rows as int64, its column tile); column tiles fastest."""
    pid = tl.program_id(0)
    rows = (pid // NCOL).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    return rows, pid % NCOL


@triton.jit
def _down(
    codes_ptr, tables_ptr, wd_ptr, bd_ptr, h_ptr, B, K, M, E, R, NCOL,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """h = vec(E)·W_down + b_down, a (BLOCK_B, BLOCK_N) tile of (B, r) per program; the
    reduction walks codebook by codebook, BLOCK_K columns of e at a time."""
    rows, col = _row_col(NCOL, BLOCK_B)
    n = col * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
    for m in range(0, M):
        code, valid = _code(codes_ptr, rows, m, B, M, K)
        for j0 in range(0, E, BLOCK_K):
            j = j0 + tl.arange(0, BLOCK_K)
            emb = _gather(tables_ptr, code, valid, m, j, K, E)
            wmask = (j[:, None] < E) & (n[None, :] < R)
            w = tl.load(wd_ptr + (m * E + j)[:, None] * R + n[None, :], mask=wmask, other=0.0)
            acc = _dot(emb, w.to(tl.float32), acc, PREC)
    acc += tl.load(bd_ptr + n, mask=n < R, other=0.0).to(tl.float32)[None, :]
    tl.store(h_ptr + rows[:, None] * R + n[None, :], acc, mask=(rows[:, None] < B) & (n < R))


@triton.jit
def _up_acc(h_ptr, wu_ptr, bu_ptr, rows, cols, cmask, B, R, ME, ACT, BLOCK_B, BLOCK_E,
            BLOCK_K, PREC):  # fmt: skip
    """u = act(h)·W_up + b_up for a (rows, cols) tile of (B, M·e), looping over r."""
    acc = tl.zeros((BLOCK_B, BLOCK_E), tl.float32)
    for k0 in range(0, R, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        hmask = (rows[:, None] < B) & (k[None, :] < R)
        h = tl.load(h_ptr + rows[:, None] * R + k[None, :], mask=hmask, other=0.0)
        wmask = (k[:, None] < R) & cmask[None, :]
        w = tl.load(wu_ptr + k[:, None] * ME + cols[None, :], mask=wmask, other=0.0)
        acc = _dot(_act(h, ACT), w.to(tl.float32), acc, PREC)
    return acc + tl.load(bu_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _up(
    codes_ptr, tables_ptr, h_ptr, wu_ptr, bu_ptr, out_ptr, B, K, M, E, R, NCOL,
    BLOCK_B: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    MODE: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """out = fuse(E, u) for a (BLOCK_B, BLOCK_E) tile of one codebook; E gathered after the
    GEMM loop (its registers are not live across it)."""
    rows, col = _row_col(NCOL, BLOCK_B)
    m, j = _codebook_tile(col, E, BLOCK_E)
    cols, cmask = m * E + j, j < E
    if MODE != 0:
        u = _up_acc(h_ptr, wu_ptr, bu_ptr, rows, cols, cmask, B, R, M * E, ACT, BLOCK_B,
                    BLOCK_E, BLOCK_K, PREC)  # fmt: skip
    code, valid = _code(codes_ptr, rows, m, B, M, K)
    emb = _gather(tables_ptr, code, valid, m, j, K, E)
    if MODE == 0:
        out = emb
    elif MODE == 1:
        out = emb * tl.sigmoid(u)
    else:
        out = emb + u
    mask = (rows[:, None] < B) & cmask[None, :]
    optrs = out_ptr + rows[:, None] * (M * E) + cols[None, :]
    tl.store(optrs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_gate(
    codes_ptr, tables_ptr, h_ptr, wu_ptr, bu_ptr, dout_ptr, du_ptr, de_ptr, dtab_ptr,
    B, K, M, E, R, NCOL, BLOCK_B: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    ACT: tl.constexpr, ATOMIC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Gate backward, elementwise part: recompute u, then du = dout·E·σ'(u) and the direct
    table gradient dE = dout·σ(u), scattered into the table gradient at once (ATOMIC: it
    never round-trips through HBM) or stored for the deterministic sorted segment-sum."""
    rows, col = _row_col(NCOL, BLOCK_B)
    m, j = _codebook_tile(col, E, BLOCK_E)
    cols, cmask = m * E + j, j < E
    u = _up_acc(h_ptr, wu_ptr, bu_ptr, rows, cols, cmask, B, R, M * E, ACT, BLOCK_B, BLOCK_E,
                BLOCK_K, PREC)  # fmt: skip
    g = tl.sigmoid(u)
    mask = (rows[:, None] < B) & cmask[None, :]
    offs = rows[:, None] * (M * E) + cols[None, :]
    dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    code, valid = _code(codes_ptr, rows, m, B, M, K)
    if ATOMIC:
        ptrs = dtab_ptr + (code + tl.cast(m, tl.int64) * K)[:, None] * E + j[None, :]
        tl.atomic_add(ptrs, dout * g, mask=valid[:, None] & cmask[None, :], sem="relaxed")
    else:
        tl.store(de_ptr + offs, dout * g, mask=mask)
    emb = _gather(tables_ptr, code, valid, m, j, K, E)
    tl.store(du_ptr + offs, dout * emb * g * (1.0 - g), mask=mask)


@triton.jit
def _bwd_dh(
    du_ptr, wu_ptr, h_ptr, dh_ptr, B, ME, R, NCOL,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ACT: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """dh = (du·W_upᵀ) ⊙ act'(h), a (BLOCK_B, BLOCK_N) tile of (B, r), looping over M·e."""
    rows, col = _row_col(NCOL, BLOCK_B)
    n = col * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
    for k0 in range(0, ME, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        dmask = (rows[:, None] < B) & (k[None, :] < ME)
        du = tl.load(du_ptr + rows[:, None] * ME + k[None, :], mask=dmask, other=0.0)
        wmask = (k[:, None] < ME) & (n[None, :] < R)
        w = tl.load(wu_ptr + n[None, :] * ME + k[:, None], mask=wmask, other=0.0)
        acc = _dot(du.to(tl.float32), w.to(tl.float32), acc, PREC)
    hmask = (rows[:, None] < B) & (n[None, :] < R)
    offs = rows[:, None] * R + n[None, :]
    h = tl.load(h_ptr + offs, mask=hmask, other=0.0)
    tl.store(dh_ptr + offs, acc * _act_grad(h, ACT), mask=hmask)


@triton.jit
def _bwd_de(
    codes_ptr, dh_ptr, wd_ptr, de_in_ptr, dtab_ptr, de_out_ptr, B, K, M, E, R, NCOL,
    BLOCK_B: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    FUSED: tl.constexpr, ATOMIC: tl.constexpr, DIRECT: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """dE = dE_direct + dh·W_downᵀ for a tile of one codebook (DIRECT: dE_direct is read from
    de_in; the atomic gate backward scattered it already); scattered into the table gradient
    with atomics (ATOMIC) or stored for the deterministic sorted segment-sum."""
    rows, col = _row_col(NCOL, BLOCK_B)
    m, j = _codebook_tile(col, E, BLOCK_E)
    cols, cmask = m * E + j, j < E
    mask = (rows[:, None] < B) & cmask[None, :]
    offs = rows[:, None] * (M * E) + cols[None, :]
    if DIRECT:
        de = tl.load(de_in_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        de = tl.zeros((BLOCK_B, BLOCK_E), tl.float32)
    if FUSED:
        acc = tl.zeros((BLOCK_B, BLOCK_E), tl.float32)
        for k0 in range(0, R, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            dmask = (rows[:, None] < B) & (k[None, :] < R)
            dh = tl.load(dh_ptr + rows[:, None] * R + k[None, :], mask=dmask, other=0.0)
            wmask = (k[:, None] < R) & cmask[None, :]
            w = tl.load(wd_ptr + cols[None, :] * R + k[:, None], mask=wmask, other=0.0)
            acc = _dot(dh, w.to(tl.float32), acc, PREC)
        de += acc
    if ATOMIC:
        code, valid = _code(codes_ptr, rows, m, B, M, K)
        ptrs = dtab_ptr + (code + tl.cast(m, tl.int64) * K)[:, None] * E + j[None, :]
        tl.atomic_add(ptrs, de, mask=valid[:, None] & cmask[None, :], sem="relaxed")
    else:
        tl.store(de_out_ptr + offs, de, mask=mask)


@triton.jit
def _wgrad(
    x_ptr, codes_ptr, y_ptr, part_ptr, bias_ptr, B, NI, NJ, K, M, E, ROWS_PER_SPLIT, NCOL,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr,
    GATHER: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """One split's partial of Xᵀ·Y over its rows: part[s] (I, J). X is vec(E) gathered from
    the tables (GATHER, for dW_down = vec(E)ᵀ·dh; an I tile is one codebook's BLOCK_I columns)
    or act(h) (for dW_up = act(h)ᵀ·du). The programs of the first I tile also sum Y's columns
    into bias[s] (the bias gradient), so no separate pass reads Y again."""
    tile = tl.program_id(0)
    j = (tile % NCOL) * BLOCK_J + tl.arange(0, BLOCK_J)
    if GATHER:
        m, jj = _codebook_tile(tile // NCOL, E, BLOCK_I)
        i, imask = m * E + jj, jj < E
    else:
        i = (tile // NCOL) * BLOCK_I + tl.arange(0, BLOCK_I)
        imask = i < NI
    split = tl.program_id(1).to(tl.int64)
    start = split * ROWS_PER_SPLIT
    acc = tl.zeros((BLOCK_I, BLOCK_J), tl.float32)
    bias = tl.zeros((BLOCK_J,), tl.float32)
    first = tile // NCOL == 0
    for r0 in range(0, ROWS_PER_SPLIT, BLOCK_R):
        rows = start + r0 + tl.arange(0, BLOCK_R)
        if GATHER:
            code, valid = _code(codes_ptr, rows, m, B, M, K)
            x = _gather(x_ptr, code, valid, m, jj, K, E)
        else:
            xmask = (rows[:, None] < B) & imask[None, :]
            x = _act(tl.load(x_ptr + rows[:, None] * NI + i[None, :], mask=xmask, other=0.0), ACT)
        ymask = (rows[:, None] < B) & (j[None, :] < NJ)
        y = tl.load(y_ptr + rows[:, None] * NJ + j[None, :], mask=ymask, other=0.0)
        y = y.to(tl.float32)
        acc = _dot(tl.trans(x), y, acc, PREC)
        if first:
            bias += tl.sum(y, 0)
    pmask = imask[:, None] & (j[None, :] < NJ)
    tl.store(part_ptr + split * NI * NJ + i[:, None] * NJ + j[None, :], acc, mask=pmask)
    if first:
        tl.store(bias_ptr + split * NJ + j, bias, mask=j < NJ)


@triton.jit
def _segment_sum(
    de_ptr, order_ptr, starts_ptr, dtab_ptr, K, M, E,
    BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    """Deterministic table gradient: program `key` = m·K + code sums the dE rows of its sorted
    segment [starts[key], starts[key + 1]) in a fixed order and writes the table row once
    (zeros for a code no row uses). One program per table row, so the grid needs no count
    from the GPU: no host sync."""
    key = tl.program_id(0).to(tl.int64)
    start = tl.load(starts_ptr + key)
    end = tl.load(starts_ptr + key + 1)
    m = key // K
    j = tl.arange(0, BLOCK_E)
    acc = tl.zeros((BLOCK_E,), tl.float32)
    for s0 in range(start, end, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        b = tl.load(order_ptr + s, mask=s < end, other=0) // M  # order holds b·M + m
        ptrs = de_ptr + b[:, None] * (M * E) + m * E + j[None, :]
        acc += tl.sum(tl.load(ptrs, mask=(s[:, None] < end) & (j[None, :] < E), other=0.0), 0)
    tl.store(dtab_ptr + key * E + j, acc, mask=j < E)
