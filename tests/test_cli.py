"""The `moc-fast` command on the synthetic default (fast smoke run)."""

from __future__ import annotations

import pytest

from moc_fast.cli import main, synthetic_embeddings


def test_demo_runs_end_to_end(capsys):
    args = [
        "demo",
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
    import numpy as np

    a, b = synthetic_embeddings(100, 8, 4, seed=1), synthetic_embeddings(100, 8, 4, seed=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["studyy"])
