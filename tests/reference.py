"""Plain numpy references for the engine: slow, obvious, float64."""

from __future__ import annotations

import numpy as np


def scores(x: np.ndarray, codebook: np.ndarray, metric: str) -> np.ndarray:
    """(N, K) exact squared distances ("l2") or inner products ("ip"), in float64."""
    x64, c64 = x.astype(np.float64), codebook.astype(np.float64)
    if metric == "ip":
        return x64 @ c64.T
    d = (x64**2).sum(1)[:, None] - 2 * x64 @ c64.T + (c64**2).sum(1)[None, :]
    return np.maximum(d, 0.0)


def assign(
    x: np.ndarray, codebook: np.ndarray, metric: str = "l2"
) -> tuple[np.ndarray, np.ndarray]:
    s = scores(x, codebook, metric)
    codes = s.argmax(1) if metric == "ip" else s.argmin(1)  # first index on ties
    return codes, s[np.arange(len(x)), codes]


def assign_residual(x: np.ndarray, codebooks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    res = x.astype(np.float32).copy()
    codes = []
    for cb in codebooks:
        c, _ = assign(res, cb)
        codes.append(c)
        res = res - cb[c]
    return np.stack(codes, 1).reshape(len(x), len(codebooks)), res


def resolve_collisions(codes: np.ndarray) -> np.ndarray:
    seen: dict[tuple[int, ...], int] = {}
    suffix = []
    for row in map(tuple, codes.tolist()):
        suffix.append(seen.get(row, 0))
        seen[row] = suffix[-1] + 1
    return np.concatenate([codes, np.array(suffix, dtype=np.int64)[:, None]], 1)


def lloyd(x: np.ndarray, init: np.ndarray, iters: int) -> tuple[np.ndarray, float]:
    """Textbook Lloyd from given centroids (empty clusters keep their centroid)."""
    c = init.astype(np.float64).copy()
    x64 = x.astype(np.float64)
    for _ in range(iters):
        labels = scores(x64, c, "l2").argmin(1)
        for j in range(len(c)):
            if (labels == j).any():
                c[j] = x64[labels == j].mean(0)
    d = scores(x64, c, "l2").min(1)
    return c, float(d.sum())
