"""CTR training beyond memory and one process: parquet shards streamed through a DataLoader,
DDP under torchrun (2 processes, gloo), per-epoch checkpoints resumed exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from moc_fast.data.shards import ParquetCTRDataset, write_ctr_shards
from moc_fast.train import CTRData, fit_ctr

from ddp_worker import ctr_data, model

pytest.importorskip("pyarrow")
HERE = Path(__file__).parent


def rows_of(batches) -> np.ndarray:
    """(x, y, row number) of every sample: the dense column carries each row's number."""
    cols = lambda b: [b["x"].numpy(), b["y"].numpy(), b["dense"].numpy()]  # noqa: E731
    return np.concatenate([np.column_stack(cols(b)) for b in batches])


@pytest.fixture
def shards(tmp_path):
    d = ctr_data(seed=int(np.random.default_rng().integers(1000)), n=5003)
    data = CTRData(d.x, d.y, d.codes, torch.arange(len(d)).float()[:, None])
    write_ctr_shards(data, tmp_path / "s", rows_per_shard=2000, row_group=300)
    return data, tmp_path / "s"


def test_shards_round_trip_and_every_row_once_per_epoch(shards):
    data, folder = shards
    want = np.column_stack([data.x.numpy(), data.y.numpy(), data.dense.numpy()])
    plain = list(ParquetCTRDataset(folder, batch_size=128, shuffle=False))
    assert np.array_equal(rows_of(plain), want)
    assert np.array_equal(torch.cat([b["codes"] for b in plain]).numpy(), data.codes.numpy())
    ds = ParquetCTRDataset(folder, batch_size=128, seed=3, buffer_batches=4)
    epochs = []
    for e in (0, 1, 0):
        ds.set_epoch(e)
        batches = list(ds)
        assert len(batches) == len(ds) and all(len(b["y"]) <= 128 for b in batches)
        epochs.append(rows_of(batches))
    for rows in epochs:  # every row exactly once (rows are unique by index column order)
        assert sorted(map(tuple, rows)) == sorted(map(tuple, want))
    assert not np.array_equal(epochs[0], epochs[1]) and np.array_equal(epochs[0], epochs[2])


def test_ranks_and_workers_split_the_rows_evenly(shards):
    data, folder = shards
    seen = []
    for rank in (0, 1):
        ds = ParquetCTRDataset(folder, batch_size=100, seed=1, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        batches = list(loader)
        assert len(batches) == len(ds)
        seen.append(rows_of(batches))
    assert len(seen[0]) == len(seen[1])  # the same number of rows, so DDP never waits
    both = {tuple(r) for r in np.concatenate(seen)}
    assert len(both) == len(seen[0]) * 2  # disjoint
    groups = ParquetCTRDataset(folder, batch_size=100).units
    assert len(data) - len(both) <= len(groups)  # at most one row per odd row group left out


def test_streamed_training_learns_like_in_memory_training(shards):
    data, folder = shards
    data = CTRData(data.x, data.y, data.codes)  # the model has no dense field
    write_ctr_shards(data, folder.parent / "t", row_group=300)
    folder = folder.parent / "t"
    val = ctr_data(seed=99, n=2000)
    loader = torch.utils.data.DataLoader(
        ParquetCTRDataset(folder, batch_size=256, seed=0), batch_size=None, num_workers=1
    )
    # 8 epochs: both converge (at 4, runs still in the steep part of learning differed by up
    # to 0.085 AUC between data draws; at 8 by < 0.01 over six draws)
    streamed = fit_ctr(model(), loader, val, epochs=8, lr=1e-2, device="cpu", progress=False)
    memory = fit_ctr(model(), data, val, epochs=8, batch_size=256, lr=1e-2, device="cpu",
                     progress=False)  # fmt: skip
    assert streamed["best_val_auc"] > 0.9
    assert abs(streamed["best_val_auc"] - memory["best_val_auc"]) < 0.03
    # a loader for validation gives the AUC the in-memory validation gives
    write_ctr_shards(val, folder.parent / "v")
    vl = ParquetCTRDataset(folder.parent / "v", batch_size=500, shuffle=False)
    again = fit_ctr(model(), data, vl, epochs=8, batch_size=256, lr=1e-2, device="cpu",
                    progress=False)  # fmt: skip
    assert [h["val_auc"] for h in again["history"]] == pytest.approx(
        [h["val_auc"] for h in memory["history"]], abs=1e-9
    )


def test_an_interrupted_run_resumes_exactly(tmp_path):
    train, val = ctr_data(0), ctr_data(1, n=2000)
    kwargs = dict(batch_size=256, lr=1e-2, device="cpu", progress=False, patience=10)
    whole = model()
    full = fit_ctr(whole, train, val, epochs=4, checkpoint=tmp_path / "a.ckpt", **kwargs)
    first = model()
    fit_ctr(first, train, val, epochs=2, checkpoint=tmp_path / "b.ckpt", **kwargs)  # "killed"
    resumed = model()  # a fresh process would build the model anew
    out = fit_ctr(resumed, train, val, epochs=4, checkpoint=tmp_path / "b.ckpt", **kwargs)
    assert out["history"] == full["history"]
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    state = torch.load(tmp_path / "b.ckpt", weights_only=True)
    assert state["epoch"] == 4 and set(state) >= {"model", "optimizer", "generator", "best"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out: Path, mode: str) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", str(HERE / "ddp_worker.py"), str(out), mode]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    from ddp_worker import main

    main(str(tmp_path / "one.json"), "memory")
    one = json.loads((tmp_path / "one.json").read_text())
    two = torchrun(tmp_path / "two.json", "memory")
    assert two["world"] == 2
    a = [h["val_auc"] for h in one["history"]]
    b = [h["val_auc"] for h in two["history"]]
    assert b == pytest.approx(a, abs=2e-3)
    for k, v in one["params"].items():
        np.testing.assert_allclose(np.array(two["params"][k]), np.array(v), atol=2e-3, err_msg=k)
    assert (tmp_path / "two.json.ckpt").exists()  # written once, by rank 0


def test_two_process_ddp_streams_shards_split_by_rank(tmp_path):
    write_ctr_shards(ctr_data(0), tmp_path / "two.json.shards", row_group=500)
    two = torchrun(tmp_path / "two.json", "stream")
    assert two["world"] == 2 and max(h["val_auc"] for h in two["history"]) > 0.8


def test_spawned_loader_workers_read_only_their_ranks_rows(tmp_path):
    # spawn (macOS's default, Python 3.14's on Linux) starts workers without a process group:
    # they once read every rank's rows while len() promised half.
    d = ctr_data(0, n=3001)
    data = CTRData(d.x, d.y, d.codes, torch.arange(len(d)).float()[:, None])
    write_ctr_shards(data, tmp_path / "r.shards", row_group=250)
    run = torchrun_raw(str(tmp_path / "r"), "spawn-rows")
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [np.load(tmp_path / f"r.rank{r}.npy") for r in (0, 1)]
    for r in (0, 1):  # len() is what the loader yields
        promised, got = map(int, (tmp_path / f"r.rank{r}.len").read_text().split())
        assert promised == got
    assert len(rows[0]) == len(rows[1]) == 1500  # 3001 // 2 each: DDP never waits
    assert not set(rows[0]) & set(rows[1])  # disjoint: every row trains once per epoch


def test_each_rank_reads_only_its_share_of_the_bytes(tmp_path):
    # The I/O counter of this process (bytes through read syscalls): rank 0 of 2 reads about
    # half of what one rank reads alone, plus at most the row group it shares with rank 1.
    io = Path("/proc/self/io")
    if not io.exists():
        pytest.skip("needs Linux's per-process I/O counters (/proc/self/io)")
    d = ctr_data(0, n=20000)
    write_ctr_shards(d, tmp_path / "b", rows_per_shard=5000, row_group=500)

    def bytes_read(**kw) -> int:
        ds = ParquetCTRDataset(tmp_path / "b", batch_size=256, seed=0, **kw)
        before = int(io.read_text().split("rchar:")[1].split()[0])
        n = sum(len(b["y"]) for b in ds)
        after = int(io.read_text().split("rchar:")[1].split()[0])
        assert n == 20000 // kw.get("world_size", 1)
        return after - before

    alone = bytes_read()
    halves = [bytes_read(rank=r, world_size=2) for r in (0, 1)]
    for half in halves:
        assert half < 0.6 * alone, (half, alone)


def torchrun_raw(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", str(HERE / "ddp_worker.py"), *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_a_rank_killed_mid_epoch_resumes_from_the_step_checkpoint_exactly(tmp_path):
    whole = torchrun_raw(str(tmp_path / "whole.json"), "resume", "0")
    assert whole.returncode == 0, whole.stderr[-3000:]
    # 24 steps per epoch: rank 1 dies at step 31 (epoch 2, step 7), after the checkpoint of
    # epoch 2, step 5; the rerun resumes there, every rank with its own RNG state.
    killed = torchrun_raw(str(tmp_path / "cut.json"), "resume", "31")
    assert killed.returncode != 0 and not (tmp_path / "cut.json").exists()
    state = torch.load(tmp_path / "cut.json.ckpt", weights_only=True)
    assert (state["epoch"], state["step"], state["world"]) == (1, 5, 2)
    assert not torch.equal(state["rng"][0]["cpu"], state["rng"][1]["cpu"])
    again = torchrun_raw(str(tmp_path / "cut.json"), "resume", "0")
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("whole.json", "cut.json"))
    assert a["history"] == b["history"]
    assert a["params"] == b["params"]  # bit for bit


def test_a_checkpoint_on_rank_0_only_is_an_error_on_every_rank(tmp_path):
    fit_ctr(model(), ctr_data(0), ctr_data(1, n=2000), epochs=1, batch_size=256, device="cpu",
            progress=False, checkpoint=tmp_path / "c.rank0.ckpt")  # fmt: skip
    run = torchrun_raw(str(tmp_path / "c"), "rank0-checkpoint", timeout=120)
    assert run.returncode != 0
    for rank in (0, 1):  # neither resumed alone nor started afresh: both refused
        err = (tmp_path / f"c.rank{rank}.err").read_text()
        assert "exists on ranks [0] but not on ranks [1]" in err


def test_ddp_leaves_the_item_code_table_out_of_the_buffer_broadcast(tmp_path):
    run = torchrun_raw(str(tmp_path / "t"), "item-table", timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    tables = [np.load(tmp_path / f"t.rank{r}.npy") for r in (0, 1)]
    for rank, table in enumerate(tables):  # each rank kept its own table
        want = np.random.default_rng(rank).integers(0, 8, (300, 2))
        assert table.dtype == np.uint8 and np.array_equal(table, want)


def test_build_ctr_splits_write_shards_that_stream_back(tmp_path):
    from moc_fast.data.protocol import build_ctr
    from moc_fast.data.synthetic import synthetic_catalog

    splits = build_ctr(synthetic_catalog(num_users=200, num_items=150), seed=0)
    splits.write_shards(tmp_path / "ctr", rows_per_shard=700)
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        back = list(ParquetCTRDataset(tmp_path / "ctr" / name, batch_size=64, shuffle=False))
        assert np.array_equal(torch.cat([b["x"] for b in back]).numpy(), part.x.numpy())
        assert np.array_equal(torch.cat([b["y"] for b in back]).numpy(), part.y.numpy())
    with pytest.raises(ValueError, match="holds no CTR shards"):
        ParquetCTRDataset(tmp_path, batch_size=8)


def test_shards_written_chunk_by_chunk_read_back_whole(tmp_path):
    data = ctr_data(seed=5, n=1000)
    chunks = (CTRData(data.x[s : s + 300], data.y[s : s + 300], data.codes[s : s + 300])
              for s in range(0, 1000, 300))  # fmt: skip
    assert len(write_ctr_shards(chunks, tmp_path / "c")) == 4
    back = list(ParquetCTRDataset(tmp_path / "c", batch_size=128, shuffle=False))
    assert np.array_equal(torch.cat([b["codes"] for b in back]).numpy(), data.codes.numpy())
    bad = [CTRData(data.x[:5], data.y[:5], data.codes[:5]), CTRData(data.x[:5], data.y[:5])]
    with pytest.raises(ValueError, match="chunk 1 has column widths"):
        write_ctr_shards(bad, tmp_path / "bad")


def test_damaged_shard_pages_are_an_error_not_garbage(tmp_path):
    # Shards are written with page CRCs and read with verification: flipped bytes inside a
    # data page (uncompressed, where nothing else would notice) stop the epoch with the file.
    import pyarrow.parquet as pq

    write_ctr_shards(ctr_data(0, n=2000), tmp_path / "s", row_group=500)
    shard = tmp_path / "s" / "shard-00000.parquet"
    y = pq.ParquetFile(shard).metadata.row_group(1).column(2)  # the labels' column chunk
    assert y.path_in_schema == "y"
    data = bytearray(shard.read_bytes())
    data[(y.dictionary_page_offset or y.data_page_offset) + y.total_compressed_size - 4] ^= 1
    shard.write_bytes(bytes(data))
    assert pq.ParquetFile(shard).read_row_group(1).num_rows == 500  # unverified: read as data
    with pytest.raises(ValueError, match="shard-00000.parquet .row group 1. is corrupt"):
        list(ParquetCTRDataset(tmp_path / "s", batch_size=100, shuffle=False))
