"""Fused MoC embedding: M table gathers + bottleneck fusion in one kernel, and its backward.

out = fuse(E), E[b, m] = tables[m, codes[b, m]]  (B, M, e), with vec(E) the (B, M·e) view:
- "none":     E
- "gate":     E ⊙ σ(u),  u = act(vec(E) W_down + b_down) W_up + b_up
- "residual": E + u
The forward never writes E: the gathers feed the down-projection in registers. The backward
recomputes E (and u) from the codes, keeps only the (B, r) pre-activation from the forward,
and accumulates table and weight gradients with atomic adds in fp32 (so GPU results can
differ in the last bits between runs). `moc_embedding_torch` is the reference and CPU path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("none", "gate", "residual")
ACTIVATIONS = ("relu", "silu", "identity")

try:  # Triton is optional: CPU-only installs use the torch path.
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only without triton
    _HAVE_TRITON = False


def triton_available() -> bool:
    return _HAVE_TRITON


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
    m = tables.shape[0]
    emb = tables[torch.arange(m, device=codes.device), codes]  # 'b m -> b m e'
    if mode == "none":
        return emb
    b, _, e = emb.shape
    a = _act(emb.reshape(b, m * e) @ w_down + b_down, activation)
    u = (a @ w_up + b_up).view(b, m, e)
    return emb * torch.sigmoid(u) if mode == "gate" else emb + u


if _HAVE_TRITON:

    @triton.jit
    def _apply_act(h, ACT: tl.constexpr):
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
    def _gather(codes_ptr, tables_ptr, rows, cols, B, K, M: tl.constexpr, E: tl.constexpr):
        """(BLOCK_B, ME_P) fp32 block of vec(E), zero outside the valid rows/columns."""
        mask = (rows[:, None] < B) & (cols[None, :] < M * E)
        m = cols // E
        j = cols % E
        code = tl.load(codes_ptr + rows[:, None] * M + m[None, :], mask=mask, other=0)
        ptrs = tables_ptr + (m[None, :] * K + code) * E + j[None, :]
        return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32), mask, code

    @triton.jit
    def _moc_fwd(
        codes_ptr,
        tables_ptr,
        wd_ptr,
        bd_ptr,
        wu_ptr,
        bu_ptr,
        out_ptr,
        h_ptr,
        B,
        K,
        M: tl.constexpr,
        E: tl.constexpr,
        R: tl.constexpr,
        ME_P: tl.constexpr,
        R_P: tl.constexpr,
        BLOCK_B: tl.constexpr,
        MODE: tl.constexpr,
        ACT: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        cols = tl.arange(0, ME_P)
        emb, mask, code = _gather(codes_ptr, tables_ptr, rows, cols, B, K, M, E)
        if MODE == 0:
            out = emb
        else:
            rr = tl.arange(0, R_P)
            cm = cols < M * E
            rm = rr < R
            wd = tl.load(
                wd_ptr + cols[:, None] * R + rr[None, :], mask=cm[:, None] & rm[None, :], other=0.0
            ).to(tl.float32)
            h = tl.dot(emb, wd) + tl.load(bd_ptr + rr, mask=rm, other=0.0).to(tl.float32)[None, :]
            tl.store(
                h_ptr + rows[:, None] * R + rr[None, :], h, mask=(rows[:, None] < B) & rm[None, :]
            )
            a = _apply_act(h, ACT)
            wu = tl.load(
                wu_ptr + rr[:, None] * (M * E) + cols[None, :],
                mask=rm[:, None] & cm[None, :],
                other=0.0,
            ).to(tl.float32)
            u = tl.dot(a, wu) + tl.load(bu_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
            if MODE == 1:  # noqa: SIM108 - a constexpr branch, resolved at compile time
                out = emb * tl.sigmoid(u)
            else:
                out = emb + u
        optrs = out_ptr + rows[:, None] * (M * E) + cols[None, :]
        tl.store(optrs, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _moc_bwd(
        codes_ptr,
        tables_ptr,
        wd_ptr,
        wu_ptr,
        bu_ptr,
        h_ptr,
        dout_ptr,
        dtab_ptr,
        dwd_ptr,
        dbd_ptr,
        dwu_ptr,
        dbu_ptr,
        B,
        K,
        M: tl.constexpr,
        E: tl.constexpr,
        R: tl.constexpr,
        ME_P: tl.constexpr,
        R_P: tl.constexpr,
        BLOCK_B: tl.constexpr,
        MODE: tl.constexpr,
        ACT: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        cols = tl.arange(0, ME_P)
        emb, mask, code = _gather(codes_ptr, tables_ptr, rows, cols, B, K, M, E)
        dout = tl.load(dout_ptr + rows[:, None] * (M * E) + cols[None, :], mask=mask, other=0.0).to(
            tl.float32
        )
        if MODE == 0:
            de = dout
        else:
            rr = tl.arange(0, R_P)
            cm = cols < M * E
            rm = rr < R
            wmask_dr = cm[:, None] & rm[None, :]
            wmask_rd = rm[:, None] & cm[None, :]
            h = tl.load(
                h_ptr + rows[:, None] * R + rr[None, :],
                mask=(rows[:, None] < B) & rm[None, :],
                other=0.0,
            )
            a = _apply_act(h, ACT)
            wu = tl.load(
                wu_ptr + rr[:, None] * (M * E) + cols[None, :], mask=wmask_rd, other=0.0
            ).to(tl.float32)
            if MODE == 1:
                u = (
                    tl.dot(a, wu)
                    + tl.load(bu_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
                )
                g = tl.sigmoid(u)
                de = dout * g
                du = dout * emb * g * (1.0 - g)
            else:
                de = dout
                du = dout
            tl.atomic_add(
                dwu_ptr + rr[:, None] * (M * E) + cols[None, :],
                tl.dot(tl.trans(a), du),
                mask=wmask_rd,
            )
            tl.atomic_add(dbu_ptr + cols, tl.sum(du, axis=0), mask=cm)
            dh = tl.dot(du, tl.trans(wu)) * _act_grad(h, ACT)
            wd = tl.load(wd_ptr + cols[:, None] * R + rr[None, :], mask=wmask_dr, other=0.0).to(
                tl.float32
            )
            tl.atomic_add(
                dwd_ptr + cols[:, None] * R + rr[None, :], tl.dot(tl.trans(emb), dh), mask=wmask_dr
            )
            tl.atomic_add(dbd_ptr + rr, tl.sum(dh, axis=0), mask=rm)
            de = de + tl.dot(dh, tl.trans(wd))
        m = cols // E
        j = cols % E
        tl.atomic_add(dtab_ptr + (m[None, :] * K + code) * E + j[None, :], de, mask=mask)


def _settings(m: int, e: int, r: int) -> tuple[int, int, int]:
    """Power-of-two padded widths (tl.arange and tl.dot need them, ≥ 16) and rows per program."""
    me_p = max(16, triton.next_power_of_2(m * e))
    r_p = max(16, triton.next_power_of_2(max(r, 1)))
    block_b = 64 if me_p <= 256 else 32
    return me_p, r_p, block_b


class _MoCEmbeddingFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, codes, tables, w_down, b_down, w_up, b_up, mode, activation):
        m, k, e = tables.shape
        b = codes.shape[0]
        r = w_down.shape[1] if w_down is not None else 1
        mode_id, act_id = MODES.index(mode), ACTIVATIONS.index(activation)
        me_p, r_p, block_b = _settings(m, e, r)
        out = torch.empty(b, m, e, device=tables.device, dtype=tables.dtype)
        h = torch.empty(b, r, device=tables.device, dtype=torch.float32)
        dummy = tables  # never read when mode == "none"
        wd, bd, wu, bu = (w_down, b_down, w_up, b_up) if mode_id else (dummy,) * 4
        grid = (triton.cdiv(b, block_b),)
        _moc_fwd[grid](
            codes,
            tables,
            wd,
            bd,
            wu,
            bu,
            out,
            h,
            b,
            k,
            M=m,
            E=e,
            R=r,
            ME_P=me_p,
            R_P=r_p,
            BLOCK_B=block_b,
            MODE=mode_id,
            ACT=act_id,
        )
        ctx.save_for_backward(codes, tables, wd, wu, bu, h)
        ctx.cfg = (mode_id, act_id, r, me_p, r_p, block_b)
        return out

    @staticmethod
    def backward(ctx, dout):
        codes, tables, wd, wu, bu, h = ctx.saved_tensors
        mode_id, act_id, r, me_p, r_p, block_b = ctx.cfg
        m, k, e = tables.shape
        b = codes.shape[0]
        f32 = dict(device=tables.device, dtype=torch.float32)
        dtab = torch.zeros(m, k, e, **f32)
        dwd, dbd = torch.zeros(m * e, r, **f32), torch.zeros(r, **f32)
        dwu, dbu = torch.zeros(r, m * e, **f32), torch.zeros(m * e, **f32)
        grid = (triton.cdiv(b, block_b),)
        _moc_bwd[grid](
            codes,
            tables,
            wd,
            wu,
            bu,
            h,
            dout.contiguous(),
            dtab,
            dwd,
            dbd,
            dwu,
            dbu,
            b,
            k,
            M=m,
            E=e,
            R=r,
            ME_P=me_p,
            R_P=r_p,
            BLOCK_B=block_b,
            MODE=mode_id,
            ACT=act_id,
        )
        dtab = dtab.to(tables.dtype)
        if not mode_id:
            return None, dtab, None, None, None, None, None, None
        cast = [g.to(wd.dtype) for g in (dwd, dbd, dwu, dbu)]
        return None, dtab, *cast, None, None


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
    if not _HAVE_TRITON:
        raise RuntimeError("triton is not installed: use backend='torch'")
    tensors = [
        t.contiguous() if t is not None else None
        for t in (codes, tables, w_down, b_down, w_up, b_up)
    ]
    return _MoCEmbeddingFn.apply(*tensors, mode, activation)
