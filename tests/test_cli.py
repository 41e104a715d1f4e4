"""The `moc-fast` command end to end: the synthetic default and a slice of real Beauty."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from moc_fast.cli import main, synthetic_embeddings

BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2014" / "beauty"
FAST = ["--epochs", "2", "--index-epochs", "2", "--seeds", "0"]


def _rows(out: Path) -> list[dict]:
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


def test_demo_on_the_synthetic_default_and_resume(tmp_path, capsys):
    out = tmp_path / "demo"
    args = [
        "-q",
        "demo",
        "--out",
        str(out),
        "--methods",
        "popularity,id-only,me,moc-gate",
        "--scales",
        "1,2",
        *FAST,
    ]
    assert main(args) == 0
    rows = _rows(out)
    assert {(r["method"], r["scale"]) for r in rows} == {
        ("popularity", "1"),
        ("id-only", "1"),
        ("me", "1"),
        ("me", "2"),
        ("moc-gate", "1"),
        ("moc-gate", "2"),
    }
    assert all(float(r["test_auc"]) > 0.5 for r in rows)
    report = (out / "report.md").read_text()
    assert "| moc-gate | 2x |" in report and "Δ" in report
    assert (out / "auc_vs_scale.png").stat().st_size > 0
    # A rerun finds every cell done and trains nothing; the CSV is unchanged.
    before = (out / "results.csv").read_bytes()
    assert main(args) == 0
    assert (out / "results.csv").read_bytes() == before


def test_text_mlp_and_every_fusion_run_in_the_grid(tmp_path):
    out = tmp_path / "fusions"
    methods = "text-mlp,moc-none,moc-residual"
    args = ["-q", "demo", "--out", str(out), "--methods", methods, "--scales", "2", *FAST]
    assert main(args) == 0
    rows = {r["method"]: r for r in _rows(out)}
    assert set(rows) == set(methods.split(","))
    assert all(float(r["test_auc"]) > 0.5 for r in rows.values())
    assert rows["text-mlp"]["scale"] == "1" and rows["text-mlp"]["discriminability"] == ""
    # Both fusions read the same cached MoC codes: identical index metrics.
    assert rows["moc-none"]["discriminability"] == rows["moc-residual"]["discriminability"]


def test_study_on_a_slice_of_real_beauty(tmp_path):
    out = tmp_path / "beauty"
    args = [
        "-q",
        "study",
        "--datasets",
        str(BEAUTY),
        "--max-users",
        "1500",
        "--methods",
        "id-only,moc-gate,rqvae",
        "--scales",
        "1,2",
        "--backbones",
        "dcnv2",
        "--out",
        str(out),
        *FAST,
    ]
    assert main(args) == 0
    rows = _rows(out)
    assert len(rows) == 5
    moc = [r for r in rows if r["method"] == "moc-gate"]
    assert float(moc[1]["discriminability"]) > float(moc[0]["discriminability"])
    assert all(int(r["best_epoch"]) >= 1 for r in rows)


def test_bad_config_names_the_key_and_unknown_names(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"methodz": ["moc-gate"]}')
    assert main(["study", "--config", str(cfg), "--out", str(tmp_path)]) == 2
    assert "unknown study config key(s) ['methodz']" in capsys.readouterr().err
    assert main(["study", "--methods", "moc-sum", "--out", str(tmp_path)]) == 2
    assert "unknown method 'moc-sum'" in capsys.readouterr().err
    assert main(["study", "--backbones", "widedeep", "--out", str(tmp_path)]) == 2
    assert "unknown backbone 'widedeep'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["studyy"])


def test_engine_demo_runs(capsys):
    args = [
        "engine-demo",
        "--items",
        "3000",
        "--dim",
        "32",
        "--levels",
        "2",
        "--codebook-size",
        "16",
        "--moc-epochs",
        "1",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "every one of 3000 IDs is unique" in out
    assert "| MoC M=2 |" in out


def test_synthetic_embeddings_are_unit_norm_and_seeded():
    a, b = synthetic_embeddings(100, 8, 4, seed=1), synthetic_embeddings(100, 8, 4, seed=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
