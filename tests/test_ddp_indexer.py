"""VQ indexers under torchrun: two processes (gloo, CPU) that each hold half of every global
batch train the codebooks one process trains with that global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddp_indexer_worker import main
from test_streaming_ctr import free_port

HERE = Path(__file__).parent


def torchrun(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 args...` (gloo, one thread per rank)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


# N mod batch (256) = 184, 0 and world - 1 = 1: with 1, the last global batch leaves rank 1
# an empty share, which once made that rank raise alone and the other wait forever.
@pytest.mark.parametrize(("kind", "n"), [("moc", 3000), ("rqvae-ema", 3000), ("moc", 2816),
                                         ("moc", 2817), ("rqvae-ema", 2817)])  # fmt: skip
def test_two_process_indexer_training_matches_one_process(tmp_path, kind, n):
    main(str(tmp_path / "one"), kind, n)
    run = torchrun(str(HERE / "ddp_indexer_worker.py"), str(tmp_path / "two"), kind, str(n))
    assert run.returncode == 0, run.stderr[-3000:]
    one = np.load(tmp_path / "one.rank0.npz")
    ranks = [np.load(tmp_path / f"two.rank{r}.npz") for r in (0, 1)]
    for key in one.files:  # both ranks hold the very same model ...
        assert np.array_equal(ranks[0][key], ranks[1][key]), key
    for key in one.files:  # ... which is the one-process model, up to summation order
        if key != "codes":
            np.testing.assert_allclose(ranks[0][key], one[key], rtol=1e-2, atol=1e-3, err_msg=key)
    agree = (ranks[0]["codes"] == one["codes"]).mean()
    assert agree > 0.99, f"only {agree:.3%} of codes agree"
    restarts = [k for k in one.files if k.endswith("idle_steps")]
    assert restarts and all(np.array_equal(ranks[0][k], one[k]) for k in restarts)


def test_a_rank_whose_loss_diverges_stops_every_rank(tmp_path):
    run = torchrun(str(HERE / "ddp_indexer_worker.py"), str(tmp_path / "d"), "diverge",
                   timeout=120)  # fmt: skip
    assert run.returncode != 0
    for rank in (0, 1):  # both raised the error themselves: neither was left waiting
        assert "diverged" in (tmp_path / f"d.rank{rank}.err").read_text(), run.stderr[-2000:]


def test_streamed_parts_train_one_model_on_every_rank(tmp_path):
    """Each rank streams its own part (parquet row groups; a function's unequal parts) and the
    ranks still take the same steps: every rank ends with the same model, trained on every
    row once per epoch, and no rank waits for one whose part ran out."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    from ddp_indexer_worker import embeddings

    x = embeddings()[:1000]
    (tmp_path / "pq").mkdir()
    for i, part in enumerate(np.array_split(x, 2)):
        pq.write_table(pa.table({"embedding": list(part)}), tmp_path / "pq" / f"{i}.parquet",
                       row_group_size=97)  # fmt: skip
    run = torchrun(str(HERE / "ddp_indexer_worker.py"), str(tmp_path / "s"), "streamed",
                   str(tmp_path / "pq"), timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [np.load(tmp_path / f"s.rank{r}.npz") for r in (0, 1)]
    for key in ranks[0].files:
        assert np.array_equal(ranks[0][key], ranks[1][key]), key
    for name in ("parquet", "parts"):
        assert int(ranks[0][f"{name}_items"]) == len(x), name
        used = len(np.unique(ranks[0][f"{name}_codes"], axis=0))
        assert used > 20, f"{name}: {used} distinct code tuples for 40 clusters"


# 1025 items in batches of 1024: the case that hung `moc-fast index` under torchrun.
@pytest.mark.parametrize("n", [3000, 1025])
def test_cli_index_under_torchrun_writes_once_and_matches_one_process(tmp_path, n):
    from moc_fast.cli import main as cli
    from moc_fast.index import load_indexer

    from ddp_indexer_worker import embeddings

    x = embeddings()[:n]
    np.save(tmp_path / "x.npy", x)
    args = ["index", "-q", "--embeddings", str(tmp_path / "x.npy"), "--method", "moc",
            "--scale", "2", "--codebook-size", "16", "--epochs", "2",
            "--device", "cpu"]  # fmt: skip
    assert cli([*args, "--out", str(tmp_path / "one.safetensors")]) == 0
    run = torchrun("-m", "moc_fast.cli", *args, "--out", str(tmp_path / "two.safetensors"),
                   timeout=180)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("saved") == 1  # rank 0 alone writes and reports
    one, two = (load_indexer(tmp_path / f"{k}.safetensors").encode(x) for k in ("one", "two"))
    assert (one == two).mean() > 0.99
