"""The study report: paired deltas against ID-only and between methods, scales chosen on
validation, plots."""

from __future__ import annotations

import numpy as np
import pytest

from moc_fast.report import (
    chosen_on_validation,
    head_to_head,
    markdown,
    paired_deltas,
    write_report,
)
from moc_fast.study import write_results


def _row(method, scale, seed, val, test, backbone="deepfm", **kw):
    return dict(
        dataset="d", method=method, scale=scale, backbone=backbone, seed=seed,
        val_auc=val, test_auc=test, test_logloss=0.5, best_epoch=3, epochs=6, seconds=10.0, **kw,
    )  # fmt: skip


ROWS = [
    _row("popularity", 1, 0, 0.60, 0.58, backbone="-"),
    _row("id-only", 1, 0, 0.70, 0.650),
    _row("id-only", 1, 1, 0.70, 0.660),
    _row("moc-gate", 3, 0, 0.71, 0.655),  # +0.005
    _row("moc-gate", 3, 1, 0.71, 0.657),  # -0.003: paired by seed, not by mean
    _row("moc-gate", 7, 0, 0.69, 0.700),  # best test, worst validation
    _row("moc-gate", 7, 1, 0.69, 0.700),
    _row("rqvae", 3, 2, 0.72, 0.9),  # no id-only run with seed 2: not paired
]


def test_paired_deltas_pair_runs_by_seed():
    d = paired_deltas(ROWS)[("d", "deepfm")]
    assert d[("moc-gate", 3)] == pytest.approx([0.005, -0.003])
    assert d[("moc-gate", 7)] == pytest.approx([0.05, 0.04])
    assert ("rqvae", 3) not in d and ("popularity", 1) not in d


def test_head_to_head_pairs_methods_at_the_same_scale_and_seed():
    me = [(3, 0, 0.650), (3, 1, 0.667), (7, 0, 0.690)]
    rows = ROWS + [_row("me", sc, seed, 0.7, t) for sc, seed, t in me]
    rows.append(_row("me", 3, 0, 0.7, 0.6, backbone="dcnv2"))
    d = head_to_head(rows, "moc-gate", "me")
    assert d[("d", "deepfm")] == {3: pytest.approx([0.005, -0.010]), 7: pytest.approx([0.010])}
    assert ("d", "dcnv2") not in d  # no MoC run there to pair with
    text = markdown(rows)
    assert "| moc-gate − me | 3x | -0.0025 (1/2) | -0.0025 ± 0.0953 (1/2) |" in text
    assert "| moc-gate − me | 7x | +0.0100 (1/1) | +0.0100 ± nan (1/1) |" in text
    assert "moc-residual − rqvae" not in text  # neither ran


def test_scale_is_chosen_on_validation_not_test():
    chosen = chosen_on_validation(ROWS)[("d", "deepfm")]
    scale, val, test = chosen["moc-gate"]
    assert (scale, val, test) == (3, pytest.approx(0.71), pytest.approx(0.656))
    assert "popularity" not in chosen


def test_report_has_tables_and_plots(tmp_path):
    rows = [dict(r) for r in ROWS[:-1]]
    for r in rows:
        if r["method"] == "moc-gate":
            r["info_abundance"] = 2.0 + r["scale"]
            (tmp_path / "spectra").mkdir(exist_ok=True)
            name = f"d-moc-gate-{r['scale']}-deepfm-{r['seed']}.npy"
            np.save(tmp_path / "spectra" / name, np.linspace(1, 0.1, 16))
    write_results(tmp_path / "results.csv", rows)
    text = write_report(tmp_path).read_text()
    assert "| moc-gate | 3x | +0.0010 (1/2) | +0.0010 ± 0.0508 (1/2) |" in text  # t(1) = 12.706
    assert "| moc-gate | 3x: 0.6560 |" in text
    for png in ("auc_vs_scale", "spectra", "info_abundance_vs_scale"):
        assert (tmp_path / f"{png}.png").stat().st_size > 1000
        assert f"]({png}.png)" in text


def test_std_is_the_sample_std_and_absent_for_one_run():
    text = markdown(ROWS)
    assert "0.6550 ± 0.0071 (n=2)" in text  # id-only: std of [0.650, 0.660] with ddof = 1
    assert "| 0.5800 (n=1) |" in text and "0.5800 ±" not in text  # popularity: one run
