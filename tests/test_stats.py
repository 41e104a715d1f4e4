"""The study's tests (moc_fast.stats) against scipy and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from moc_fast.stats import holm, one_sided_t, paired_bootstrap_auc, slope


def test_holm_matches_a_hand_computed_family():
    # sorted 0.01, 0.02, 0.03, 0.2 -> 4·0.01, 3·0.02, max(2·0.03, 0.06), 1·0.2
    assert holm([0.03, 0.01, 0.2, 0.02]) == pytest.approx([0.06, 0.04, 0.2, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1, monotone


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=12))
def test_holm_is_monotone_in_p_and_never_below_p(ps):
    adj = holm(ps)
    assert all(a >= p for a, p in zip(adj, ps, strict=True))
    order = np.argsort(ps, kind="stable")
    assert all(adj[i] <= adj[j] + 1e-12 for i, j in zip(order, order[1:], strict=False))


def test_one_sided_t_matches_scipy_and_the_non_inferiority_margin():
    x = [0.011, 0.007, 0.012, 0.004, 0.009]
    res = one_sided_t(x)
    ref = sps.ttest_1samp(x, 0.0, alternative="greater")
    assert res.p == pytest.approx(ref.pvalue) and res.mean == pytest.approx(np.mean(x))
    ci = sps.t.interval(0.95, 4, loc=np.mean(x), scale=sps.sem(x))
    assert (res.low, res.high) == pytest.approx(ci)
    shifted = one_sided_t([v - 0.01 for v in x], margin=0.01)  # H0: mean <= -margin
    assert shifted.p == pytest.approx(ref.pvalue)
    with pytest.raises(ValueError, match="one per seed"):
        one_sided_t([0.1])


def test_slope_is_least_squares():
    xs, ys = [1, 3, 7], [0.01, 0.02, 0.04]
    assert slope(xs, ys) == pytest.approx(np.polyfit(xs, ys, 1)[0])


def test_paired_bootstrap_centres_on_the_auc_difference_and_covers_it():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(400), 2)
    y = np.tile([1, 0], 400)
    a = y + rng.normal(0, 1.0, 800)  # the better model
    b = y + rng.normal(0, 3.0, 800)
    diff, lo, hi = paired_bootstrap_auc(y, a, b, users, resamples=300, seed=1)
    from sklearn.metrics import roc_auc_score

    assert diff == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    assert lo < diff < hi and lo > 0  # a is clearly better at this size
    same = paired_bootstrap_auc(y, a, a, users, resamples=50)
    assert same == (0.0, 0.0, 0.0)  # paired: identical models differ by exactly 0
