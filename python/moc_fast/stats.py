"""The tests study v2 declares in docs/results/v2/PLAN.md: one-sided t-tests over seeds, Holm's
correction, per-seed slopes and a paired bootstrap over test users.

The unit is the seed (each seed varies the data draw, the indexer and the model), so every
test here takes one number per seed; the bootstrap shows how much of a seed's difference is
test-set sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OneSided:
    """Mean effect over seeds, its two-sided 95% t-interval and the one-sided p of mean > 0."""

    n: int
    mean: float
    low: float
    high: float
    p: float


def one_sided_t(values: Sequence[float], margin: float = 0.0, level: float = 0.95) -> OneSided:
    """Test mean(values) + margin > 0 over n >= 2 seeds (a paired t-test when `values` are
    per-seed differences; with `margin` > 0 a non-inferiority test). The interval is of
    mean(values) itself."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2 or not np.isfinite(x).all():
        raise ValueError(f"values must be >= 2 finite numbers (one per seed), got {values!r}")
    n, mean = len(x), float(x.mean())
    se = float(x.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    if se == 0:
        p = 0.0 if mean + margin > 0 else 1.0
    else:
        p = float(stats.t.sf((mean + margin) / se, n - 1))
    return OneSided(n, mean, mean - half, mean + half, p)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (familywise error), in the input order: the i-th
    smallest p is multiplied by (m - i), made monotone, and capped at 1."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys on xs."""
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if len(x) != len(y) or len(x) < 2 or np.ptp(x) == 0:
        raise ValueError(f"need >= 2 points with distinct xs, got xs={xs!r}, ys={ys!r}")
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


class _WeightedAUC:
    """Mann-Whitney AUC (ties count half) of fixed labels and scores under any row weights:
    the scores are sorted into tie groups once, so each weighting costs O(n)."""

    def __init__(self, y: np.ndarray, scores: np.ndarray) -> None:
        _, self.group = np.unique(scores, return_inverse=True)
        self.groups = int(self.group.max()) + 1 if len(scores) else 0
        self.pos = (np.asarray(y) > 0).astype(np.float64)

    def __call__(self, w: np.ndarray) -> float:
        wp = np.bincount(self.group, weights=w * self.pos, minlength=self.groups)
        wn = np.bincount(self.group, weights=w * (1 - self.pos), minlength=self.groups)
        total_p, total_n = wp.sum(), wn.sum()
        if total_p == 0 or total_n == 0:
            return math.nan
        below = np.cumsum(wn) - wn  # negative weight strictly below each group
        return float((wp * (below + 0.5 * wn)).sum() / (total_p * total_n))


def paired_bootstrap_auc(
    y: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    users: np.ndarray,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(AUC_a − AUC_b, low, high): a percentile interval from resampling test users with
    replacement (all of a user's samples together), both models scored on the same resample
    so their samples stay paired."""
    y, a, b, users = (np.asarray(v) for v in (y, scores_a, scores_b, users))
    if not (len(y) == len(a) == len(b) == len(users)):
        raise ValueError("y, scores_a, scores_b and users must have one entry per test sample")
    _, inverse = np.unique(users, return_inverse=True)
    n_users = int(inverse.max()) + 1
    auc_a, auc_b = _WeightedAUC(y, a), _WeightedAUC(y, b)
    ones = np.ones(len(y))
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for t in range(resamples):
        times = np.bincount(rng.integers(0, n_users, n_users), minlength=n_users)
        w = times[inverse].astype(np.float64)
        diffs[t] = auc_a(w) - auc_b(w)
    lo, hi = np.nanpercentile(diffs, [50 * (1 - level), 50 * (1 + level)])
    return auc_a(ones) - auc_b(ones), float(lo), float(hi)
