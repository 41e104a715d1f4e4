"""Study v2's pre-registered analysis (scripts/analyse_v2.py) on results whose truth is known."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location(
    "analyse_v2", Path(__file__).parents[1] / "scripts" / "analyse_v2.py")  # fmt: skip
analyse = importlib.util.module_from_spec(spec)
spec.loader.exec_module(analyse)

BASE = {("id-only", 1): 0.68, ("text-mlp", 1): 0.70, ("codes-text", 7): 0.70,  # text first
        ("rqvae", 7): 0.70, ("moc-residual", 1): 0.69, ("moc-residual", 3): 0.70,
        ("moc-residual", 7): 0.71, ("codes-only", 7): 0.70}  # fmt: skip


def _rows(seeds, noise=0.002, seed=0, drop=()):
    rng = np.random.default_rng(seed)
    rows = []
    for s in seeds:
        shift = rng.normal(0, 0.01)  # a seed's data draw moves every arm together
        text = {}
        for (m, k), auc in BASE.items():
            for b in ("deepfm", "dcnv2"):
                if (m, k, s, b) in drop:
                    continue
                auc_k = auc + shift + rng.normal(0, noise)
                if m == "codes-text":  # H3's null, exactly: text-MLP's AUC ± 0.002 by seed
                    auc_k = text[b] + (0.002 if s % 2 else -0.002)
                if m == "text-mlp":
                    text[b] = auc_k
                rows.append(dict(method=m, scale=str(k), seed=str(s), backbone=b,
                                 test_auc=str(auc_k), best_epoch="12", epochs="20", hr_10="0.3",
                                 ndcg_10="0.15", item_bytes="1000"))  # fmt: skip
    return rows


def test_known_effects_survive_and_a_null_one_does_not():
    results = {"beauty": _rows(range(8)), "toys": _rows(range(8), seed=1)}
    recs = {(r["h"], r["dataset"]): r for r in analyse.primary(results)}
    assert len(recs) == 8
    for d in ("beauty", "toys"):
        assert recs[("H1", d)]["survives"]  # +0.01 with per-arm noise 0.002
        true_slope = np.polyfit([1, 3, 7], [0.01, 0.02, 0.03], 1)[0]
        assert recs[("H2", d)]["res"].mean == pytest.approx(true_slope, abs=0.001)
        assert recs[("H4", d)]["survives"]  # +0.02 over ID, margin 0.005
        assert recs[("H3", d)]["res"].mean == pytest.approx(0.0, abs=1e-12)
        assert not recs[("H3", d)]["survives"]
    assert all(r["holm"] >= r["res"].p for r in recs.values())


def test_incomplete_seeds_are_left_out_and_too_few_stop_the_analysis():
    rows = _rows(range(6), drop={("rqvae", 7, 5, "dcnv2")})
    means = analyse.seed_means(rows)
    assert analyse.complete_seeds(means) == [0, 1, 2, 3, 4]
    with pytest.raises(SystemExit, match="4 complete seeds"):
        analyse.primary({"toys": _rows(range(5), drop={("id-only", 1, 0, "deepfm")})})


def test_report_lists_every_hypothesis_and_the_exploratory_arms():
    text = analyse.markdown({"beauty": _rows(range(6)), "toys": _rows(range(6), seed=2)},
                            with_bootstrap=False)
    assert text.count("| H1: ") == 2 and text.count("| H4: ") == 2
    assert "Exploratory" in text and "| beauty | codes-text | 7x |" in text


def test_memory_points_are_the_seed_means_and_the_plot_is_written(tmp_path):
    rows = _rows(range(5))
    for r in rows:
        r["item_bytes"] = str(774_000 if r["method"] == "id-only" else 250_000)
    points = {(m, k): (b, mean, std) for m, k, b, mean, std in analyse.memory_points(rows)}
    assert set(points) == set(BASE)
    per_seed = list(analyse.seed_means(rows)[("id-only", 1)].values())
    b, mean, std = points[("id-only", 1)]
    assert b == 774_000 and mean == pytest.approx(np.mean(per_seed))
    assert std == pytest.approx(np.std(per_seed, ddof=1))
    assert points[("codes-only", 7)][0] == 250_000
    path = analyse.memory_plot({"beauty": rows, "toys": rows}, tmp_path / "auc_vs_bytes.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
