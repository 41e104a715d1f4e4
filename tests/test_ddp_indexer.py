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


@pytest.mark.parametrize("kind", ["moc", "rqvae-ema"])
def test_two_process_indexer_training_matches_one_process(tmp_path, kind):
    main(str(tmp_path / "one"), kind)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", str(HERE / "ddp_indexer_worker.py"),
           str(tmp_path / "two"), kind]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    one = np.load(tmp_path / "one.rank0.npz")
    ranks = [np.load(tmp_path / f"two.rank{r}.npz") for r in (0, 1)]
    for key in one.files:  # both ranks hold the very same model ...
        assert np.array_equal(ranks[0][key], ranks[1][key]), key
    for key in one.files:  # ... which is the one-process model, up to summation order
        if key != "codes":
            np.testing.assert_allclose(ranks[0][key], one[key], atol=1e-3, err_msg=key)
    agree = (ranks[0]["codes"] == one["codes"]).mean()
    assert agree > 0.99, f"only {agree:.3%} of codes agree"
    restarts = [k for k in one.files if k.endswith("idle_steps")]
    assert restarts and all(np.array_equal(ranks[0][k], one[k]) for k in restarts)


def test_cli_index_under_torchrun_writes_once_and_matches_one_process(tmp_path):
    from moc_fast.cli import main as cli
    from moc_fast.index import load_indexer

    from ddp_indexer_worker import embeddings

    x = embeddings()
    np.save(tmp_path / "x.npy", x)
    args = ["index", "-q", "--embeddings", str(tmp_path / "x.npy"), "--method", "moc",
            "--scale", "2", "--codebook-size", "16", "--epochs", "2",
            "--device", "cpu"]  # fmt: skip
    assert cli([*args, "--out", str(tmp_path / "one.safetensors")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", "-m", "moc_fast.cli", *args,
           "--out", str(tmp_path / "two.safetensors")]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("saved") == 1  # rank 0 alone writes and reports
    one, two = (load_indexer(tmp_path / f"{n}.safetensors").encode(x) for n in ("one", "two"))
    assert (one == two).mean() > 0.99
