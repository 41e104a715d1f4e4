"""Recall@k and NDCG@k of one held-out target per user, ranked over the whole catalogue.

A target's rank is the number of items scored above it, plus the items scored equal to it
with a lower index (a stable sort by descending score, as `torch.topk`-style cut-offs break
ties in index order). With one relevant item, Recall@k is 1 when rank < k, and NDCG@k is
1 / log2(rank + 2) then (the ideal DCG is 1).
"""

from __future__ import annotations

import numpy as np
import torch

KS = (5, 10)


def target_ranks(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's target among its `scores (B, N)` (higher is better)."""
    t = scores.gather(1, target[:, None])
    idx = torch.arange(scores.shape[1], device=scores.device)
    above = (scores > t).sum(1)
    tied_before = ((scores == t) & (idx[None, :] < target[:, None])).sum(1)
    return above + tied_before


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Recall@k and NDCG@k averaged over the rows; a rank of -1 (or anything >= k) is a miss."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = (ranks >= 0) & (ranks < k)
        out[f"recall@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        gain = np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 0) + 2), 0.0)
        out[f"ndcg@{k}"] = float(gain.mean()) if len(ranks) else 0.0
    return out


def ranks_from_lists(top: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Ranks of the targets in ranked lists `top (B, L)` (best first), -1 where absent: for
    decoders that return a list (beam search) rather than a score per item."""
    hit = top == target[:, None]
    return np.where(hit.any(1), hit.argmax(1), -1)
