"""Exact top-k over a catalogue scored through its codes: item n scores
`Σ_m logp[m, codes[n, m]]`, the sum of its M codes' log-probabilities under M parallel heads.

The (N, M) code table is scanned in chunks of items with a running top-k, so memory is
`B × chunk` scores whatever N is; no beam, no approximation. On CPU the Rust engine's
`moc_fast.topk_codes` does the same in one streamed pass (benches/bench_retrieval.py).
"""

from __future__ import annotations

import torch

CHUNK = 1 << 18  # items per chunk: B × CHUNK float32 scores at a time


def code_scores(logp: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """`logp (B, M, K)`, `codes (N, M)` -> scores `(B, N)`."""
    b, m, k = logp.shape
    if codes.dim() != 2 or codes.shape[1] != m:
        raise ValueError(f"codes must be (N, M={m}), got {tuple(codes.shape)}")
    flat = logp.reshape(b, m * k)
    codes = codes.long()
    out = flat[:, codes[:, 0]]
    for j in range(1, m):  # summed in code order, as the Rust engine's `topk_codes` does
        out = out + flat[:, codes[:, j] + j * k]
    return out


def topk_by_codes(
    logp: torch.Tensor, codes: torch.Tensor, k: int, chunk: int = CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` best items `(B, k)` and their scores, best first; ties go to the lower index.
    `logp` may hold -inf but not NaN or +inf, as in the engine's `topk_codes` (a +inf and a
    -inf term would make a NaN score)."""
    if bool((torch.isnan(logp) | torch.isposinf(logp)).any()):
        raise ValueError("logp must not hold NaN or +inf (log-probabilities or logits are < +inf)")
    n = codes.shape[0]
    k = min(k, n)
    b = logp.shape[0]
    best_s = logp.new_full((b, 0), float("-inf"))
    best_i = torch.zeros((b, 0), dtype=torch.long, device=logp.device)
    for start in range(0, n, chunk):
        s = code_scores(logp, codes[start : start + chunk])
        idx = torch.arange(start, start + s.shape[1], device=logp.device).expand_as(s)
        order = best_i.argsort(dim=1)  # the kept items in index order, before the chunk's (higher)
        cat_s = torch.cat([best_s.gather(1, order), s], 1)
        cat_i = torch.cat([best_i.gather(1, order), idx], 1)
        best_s, best_i = top_in_index_order(cat_s, cat_i, k)
    return best_i, best_s


def top_in_index_order(
    s: torch.Tensor, i: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best (score, index) pairs of each row, by score descending then index ascending,
    where `i` increases along each row. Linear in the row length: one topk for the k-th
    value, then the lowest-index items among those tied with it."""
    k = min(k, s.shape[1])
    if k == 0:
        return s[:, :0], i[:, :0]
    edge = s.topk(k, dim=1).values[:, -1:]
    above = s > edge
    tied = s == edge
    need = k - above.sum(1, keepdim=True)  # the tied items to take, lowest index first
    keep = above | (tied & (tied.cumsum(1) <= need))
    rows = keep.nonzero()[:, 1].reshape(s.shape[0], k)  # exactly k per row, in index order
    top_s, top_i = s.gather(1, rows), i.gather(1, rows)
    order = top_s.argsort(dim=1, descending=True, stable=True)  # ties keep index order
    return top_s.gather(1, order), top_i.gather(1, order)
