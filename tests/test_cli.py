"""The `moc-fast` command end to end: the synthetic default and a slice of real Beauty."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from moc_fast.cli import main, synthetic_embeddings

from conftest import real_dataset

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
        str(real_dataset("beauty")),
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


def test_retrieval_on_the_synthetic_catalogue_runs_resumes_and_reports(tmp_path, capsys):
    """A smoke run of every retrieval method (tiny budgets); a rerun trains nothing."""
    import json

    out = tmp_path / "retrieval"
    cfg = tmp_path / "r.json"
    cfg.write_text(json.dumps({"dim": 16, "tiger_dim": 16, "layers": 1, "tiger_layers": 1,
                               "index_epochs": 3, "codebook_size": 32, "val_limit": 150,
                               "beam": 10}))  # fmt: skip
    args = ["-q", "retrieval", "--config", str(cfg), "--datasets", "synthetic",
            "--methods", "popularity,sasrec,parallel-moc,parallel-kmeans,tiger-rqvae",
            "--moc-scales", "1,2", "--rqvae-levels", "2", "--epochs", "2", "--tiger-epochs", "1",
            "--cold-share", "0.05", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    rows = _rows(out)
    assert {(r["method"], r["scale"]) for r in rows} == {
        ("popularity", "1"), ("sasrec", "1"), ("parallel-moc", "1"), ("parallel-moc", "2"),
        ("parallel-kmeans", "1"), ("tiger-rqvae", "2")}  # fmt: skip
    assert all(0 <= float(r["test_ndcg@10"]) <= float(r["test_recall@10"]) <= 1 for r in rows)
    assert all(int(r["cold_users"]) > 0 and r["cold_recall@10"] != "" for r in rows)
    assert [int(r["invalid_items"]) for r in rows if r["method"] == "tiger-rqvae"] == [0]
    assert "| synthetic | tiger-rqvae | 2 | 1 |" in (out / "report.md").read_text()
    before = (out / "results.csv").read_bytes()
    assert main(args) == 0
    assert (out / "results.csv").read_bytes() == before
    cfg.write_text('{"epochz": 3}')
    assert main(["retrieval", "--config", str(cfg), "--out", str(out)]) == 2
    assert "unknown retrieval config key(s) ['epochz']" in capsys.readouterr().err


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


def _chain(tmp_path: Path, dataset: str, scale: int = 2, k: int = 32, epochs: int = 2) -> Path:
    """embed -> index -> encode -> train --codes -> report, each step reading the last's file."""
    x, idx, codes, run = (tmp_path / n for n in ("X.npy", "moc.safetensors", "codes.npy", "run"))
    assert main(["-q", "embed", "--dataset", dataset, "--out", str(x)]) == 0
    assert main(["index", "-q", "--embeddings", str(x), "--method", "moc", "--scale", str(scale),
                 "--codebook-size", str(k), "--epochs", "2", "--out", str(idx)]) == 0  # fmt: skip
    assert main(["encode", "-q", "--indexer", str(idx), "--input", str(x),
                 "--out", str(codes)]) == 0  # fmt: skip
    assert main(["train", "-q", "--dataset", dataset, "--method", "moc", "--scale", str(scale),
                 "--codes", str(codes), "--epochs", str(epochs),
                 "--out", str(run)]) == 0  # fmt: skip
    assert main(["report", "-q", "--out", str(run)]) == 0
    return run


def test_the_cli_steps_connect_on_the_synthetic_catalogue(tmp_path, capsys):
    import json

    from moc_fast.index import load_indexer
    from moc_fast.nn import CTRModel

    run = _chain(tmp_path, "synthetic")
    x = np.load(tmp_path / "X.npy")
    codes = np.load(tmp_path / "codes.npy")
    assert codes.shape == (len(x), 2)  # one row per item, M = 2 codebooks
    np.testing.assert_array_equal(codes, load_indexer(tmp_path / "moc.safetensors").encode(x))
    result = json.loads((run / "results.json").read_text())
    assert result["method"] == "moc-gate" and result["test_auc"] > 0.5  # `moc` = `moc-gate`
    model = CTRModel.load(run / "model.safetensors")
    assert model.config["num_codebooks"] == 2 and model.config["fusion"] == "gate"
    assert [r["method"] for r in _rows(run)] == ["moc-gate"]
    assert "| moc-gate | 2x |" in (run / "report.md").read_text()
    # train again with the indexer instead of the codes: same codes, same model config
    assert main(["train", "-q", "--dataset", "synthetic", "--method", "moc-gate", "--scale",
                 "2", "--indexer", str(tmp_path / "moc.safetensors"), "--embeddings",
                 str(tmp_path / "X.npy"), "--epochs", "1", "--out", str(run)]) == 0  # fmt: skip
    assert len(_rows(run)) == 1  # the same cell, replaced
    # codes of the wrong length name the mismatch
    np.save(tmp_path / "short.npy", codes[:10])
    assert main(["train", "-q", "--dataset", "synthetic", "--codes",
                 str(tmp_path / "short.npy"), "--out", str(run)]) == 2  # fmt: skip
    assert "codes has 10 rows but synthetic has" in capsys.readouterr().err


@pytest.mark.slow
def test_the_cli_steps_connect_on_real_beauty(tmp_path):
    run = _chain(tmp_path, str(real_dataset("beauty")), scale=3, k=256, epochs=3)
    assert float(_rows(run)[0]["test_auc"]) > 0.55


def test_every_option_has_help_and_every_verb_takes_q_and_v(capsys):
    import argparse

    from moc_fast.cli import build_parser

    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"embed", "index", "encode", "train", "report", "study", "demo"} <= set(verbs.choices)
    for name, sub in verbs.choices.items():
        flags = {f for a in sub._actions for f in a.option_strings}
        assert {"-q", "-v"} <= flags, name
        for action in sub._actions:
            assert action.help, f"moc-fast {name} {action.option_strings}: no help text"
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("moc-fast ")


def test_one_method_vocabulary_for_every_verb(tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, synthetic_embeddings(300, 16, 4, seed=0))
    assert main(["index", "-q", "--embeddings", str(x), "--method", "rq-kmeans", "--scale", "2",
                 "--codebook-size", "8", "--out", str(tmp_path / "i.st")]) == 0  # fmt: skip
    assert main(["index", "--embeddings", str(x), "--method", "moc-sum", "--out", "y"]) == 2
    assert "unknown method 'moc-sum'" in capsys.readouterr().err
    assert main(["index", "--embeddings", str(x), "--method", "me", "--out", "y"]) == 2
    assert "has no indexer" in capsys.readouterr().err


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    from moc_fast.progress import Progress

    with Progress(5, "cell beauty moc-gate 3x") as bar:
        for _ in range(5):
            bar.update(1, loss="0.5")
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines()[-1].startswith("cell beauty moc-gate 3x: 5/5, loss 0.5")
    import moc_fast as mf

    mf.RQVAEIndexer(levels=2, codebook_size=8).fit(synthetic_embeddings(200, 16, 4, 0),
                                                     epochs=5, batch_size=64)  # fmt: skip
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("RQVAEIndexer epochs: 5/5")  # epochs, not batches


def test_report_names_the_folder_it_read(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path / "empty")]) == 0
    expected = f"No finished cells yet in {tmp_path / 'empty' / 'results.csv'}"
    assert expected in capsys.readouterr().out


def test_the_cli_and_package_work_without_torch(tmp_path):
    """An engine-only install: torch made unimportable in a fresh interpreter."""
    import subprocess
    import sys

    code = """
import sys
for name in ("torch", "safetensors", "tqdm"):
    sys.modules[name] = None  # as if not installed
import moc_fast as mf
from moc_fast.cli import main
try:
    main(["--help"])
except SystemExit as exc:
    assert exc.code == 0
assert main(["engine-demo", "--items", "2000", "--dim", "16", "--codebook-size", "16"]) == 0
try:
    mf.MoCIndexer
except ImportError as exc:
    assert "pip install 'moc-fast[torch]'" in str(exc), exc
else:
    raise SystemExit("MoCIndexer imported without torch")
assert main(["demo"]) == 2
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "MoC indexer skipped" in run.stdout and "moc-fast[torch]" in run.stdout
    assert "moc-fast demo: error:" in run.stderr and "pip install 'moc-fast[torch]'" in run.stderr


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Each bad input the review fed the CLI: (arguments, what the one error line must say)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    np.save(tmp / "x.npy", x)
    np.save(tmp / "ints.npy", (x * 10).astype(np.int64))
    np.save(tmp / "float_codes.npy", rng.random((100, 2)) * 5)
    pq.write_table(pa.table({"embedding": pa.array(rng.random(50))}), tmp / "scalar.parquet")
    empty = pa.table({"embedding": pa.array([], type=pa.list_(pa.float32()))})
    pq.write_table(empty, tmp / "empty.parquet")
    lists = pa.array([list(r) for r in x], type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"embedding": lists}), tmp / "good.parquet", compression="none",
                   write_page_checksum=True)  # fmt: skip
    data = bytearray((tmp / "good.parquet").read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 64):  # inside the data pages
        data[i] ^= 0x55
    (tmp / "damaged.parquet").write_bytes(bytes(data))
    (tmp / "junk.npy").write_bytes(b"not an array")
    idx = str(tmp / "k.st")
    assert main(["index", "-q", "--embeddings", str(tmp / "x.npy"), "--method", "kmeans",
                 "--codebook-size", "8", "--out", idx]) == 0  # fmt: skip
    enc = lambda f: ["encode", "--indexer", idx, "--input", str(tmp / f), "--out", str(tmp / "o")]  # noqa: E731
    ind = lambda f: ["index", "--embeddings", str(tmp / f), "--method", "kmeans", "--out",  # noqa: E731
                     str(tmp / "k2.st")]  # fmt: skip
    return {
        "int npy to encode": (enc("ints.npy"), "ints.npy must hold floats, got int64"),
        "int npy to index": (ind("ints.npy"), "ints.npy must hold floats, got int64"),
        "scalar column": (enc("scalar.parquet"), "expected one list of floats per row"),
        "empty parquet to encode": (enc("empty.parquet"), "empty.parquet holds no items"),
        "empty parquet to index": (ind("empty.parquet"), "empty.parquet holds no items"),
        "damaged pages": (enc("damaged.parquet"), "damaged.parquet is corrupt"),
        "not an npy": (enc("junk.npy"), "junk.npy is not a readable .npy file"),
        "missing file": (enc("nowhere.npy"), "nowhere.npy"),
        "bad indexer file": (["encode", "--indexer", str(tmp / "junk.npy"), "--input",
                              str(tmp / "x.npy"), "--out", str(tmp / "o")],
                             "junk.npy is not a valid moc_fast indexer file"),  # fmt: skip
        "float codes": (["train", "-q", "--dataset", "synthetic", "--codes",
                         str(tmp / "float_codes.npy"), "--out", str(tmp / "run")],
                        "float_codes.npy holds float64; expected integer codes"),  # fmt: skip
    }


CASES = ["int npy to encode", "int npy to index", "scalar column", "empty parquet to encode",
         "empty parquet to index", "damaged pages", "not an npy", "missing file",
         "bad indexer file", "float codes"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_every_bad_input_exits_non_zero_with_one_line_naming_the_file(tmp_path, capsys, case):
    pytest.importorskip("pyarrow")
    args, expected = _bad_inputs(tmp_path)[case]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not list(tmp_path.glob("o*.npy")) and not (tmp_path / "k2.st").exists()  # none written
