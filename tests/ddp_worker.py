"""Run by tests/test_streaming_ctr.py under `torchrun --nproc_per_node=2` (gloo, CPU), and
directly for the one-process reference: trains a CTR model and writes what it learned."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch


def ctr_data(seed: int = 0, n: int = 6000, users: int = 40, items: int = 300):
    """Samples `seed` of one world: users who like two of eight item topics; codes =
    (topic, item % 4)."""
    from moc_fast.train import CTRData

    world = np.random.default_rng(12345)
    topic = world.integers(0, 8, items)
    liked = np.stack([world.choice(8, 2, replace=False) for _ in range(users)])
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, users, n), rng.integers(0, items, n)
    y = (topic[i][:, None] == liked[u]).any(1).astype(np.float32)
    codes = np.stack([topic[i], i % 4], 1)
    return CTRData(torch.from_numpy(np.stack([u, i], 1)), torch.from_numpy(y),
                   codes=torch.from_numpy(codes))  # fmt: skip


def model():
    """DeepFM without dropout: dropout masks are drawn per rank (as in any DDP run), so only
    without it can two processes match one exactly."""
    from moc_fast.nn import CTRModel

    torch.manual_seed(0)
    return CTRModel([40, 300], embed_dim=8, backbone="deepfm", num_codebooks=2,
                    codebook_size=8, fusion="gate", backbone_kwargs={"dropout": 0.0})  # fmt: skip


def resume(out: str, kill_after: int) -> None:
    """Train 3 epochs with a step checkpoint every 5 steps; with `kill_after` > 0, rank 1 dies
    (os._exit, no cleanup) at that training step, as a preempted or crashed process would."""
    import os

    import torch.distributed as dist

    from moc_fast.train import fit_ctr

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    m = model()
    steps = [0]

    def count(module, args):
        if module.training:
            steps[0] += 1
            if rank == 1 and steps[0] == kill_after:
                os._exit(17)

    m.register_forward_pre_hook(count)
    hist = fit_ctr(m, ctr_data(0), ctr_data(1, n=2000), epochs=3, batch_size=256, lr=1e-2,
                   device="cpu", progress=False, checkpoint=out + ".ckpt",
                   checkpoint_every=5)  # fmt: skip
    params = {k: v.tolist() for k, v in m.state_dict().items()}
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"history": hist["history"], "params": params}, f)
    dist.barrier()
    dist.destroy_process_group()


def checkpoint_on_rank_0_only(out: str) -> None:
    """Rank 0 finds a checkpoint, rank 1 (another node's disk) does not: both must refuse."""
    import torch.distributed as dist

    from moc_fast.train import fit_ctr

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        fit_ctr(model(), ctr_data(0), ctr_data(1, n=2000), epochs=2, batch_size=256,
                device="cpu", progress=False, checkpoint=f"{out}.rank{rank}.ckpt")  # fmt: skip
    except ValueError as exc:
        with open(f"{out}.rank{rank}.err", "w") as f:
            f.write(str(exc))
        sys.exit(3)


def item_table_is_not_broadcast(out: str) -> None:
    """Rank 1 holds other (same-shaped) item codes than rank 0: DDP used to overwrite them
    with rank 0's at every forward (a 3.2 GB broadcast per step at 100M items)."""
    import torch.distributed as dist

    from moc_fast.nn import CTRModel
    from moc_fast.train import fit_ctr

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    m = CTRModel([40, 300], embed_dim=8, num_codebooks=2, codebook_size=8, item_field=1,
                 backbone_kwargs={"dropout": 0.0})  # fmt: skip
    codes = np.random.default_rng(rank).integers(0, 8, (300, 2))
    m.item_codes.add_items(codes)
    data = ctr_data(0)
    train = type(data)(data.x, data.y)  # no codes column: the model looks them up itself
    fit_ctr(m, train, ctr_data(1, n=500), epochs=1, batch_size=256, device="cpu",
            progress=False)  # fmt: skip
    np.save(f"{out}.rank{rank}.npy", m.item_codes.table.numpy())
    dist.barrier()
    dist.destroy_process_group()


def main(out: str, mode: str, epochs: int = 3) -> None:
    import torch.distributed as dist

    from moc_fast.data.shards import ParquetCTRDataset
    from moc_fast.train import fit_ctr

    torch.set_num_threads(1)
    if "RANK" in __import__("os").environ:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if mode == "spawn-rows":  # which rows each rank's spawned loader worker yields
        ds = ParquetCTRDataset(out + ".shards", batch_size=100, seed=0)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2,
                                             multiprocessing_context="spawn")  # fmt: skip
        rows = [b["dense"][:, 0].numpy() for b in loader]
        np.save(f"{out}.rank{rank}.npy", np.concatenate(rows))
        with open(f"{out}.rank{rank}.len", "w") as f:
            f.write(f"{len(ds)} {len(rows)}")
        dist.barrier()
        dist.destroy_process_group()
        return
    train, val = ctr_data(0), ctr_data(1, n=2000)
    m = model()
    if mode == "memory":
        hist = fit_ctr(m, train, val, epochs=epochs, batch_size=256, lr=1e-2, device="cpu",
                       progress=False, checkpoint=out + ".ckpt")  # fmt: skip
    else:  # streamed from parquet shards (written beforehand by the test)
        ds = ParquetCTRDataset(out + ".shards", batch_size=256 // world, seed=0)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1)
        hist = fit_ctr(m, loader, val, epochs=epochs, lr=1e-2, device="cpu", progress=False)
    if rank == 0:
        params = {k: v.tolist() for k, v in m.state_dict().items()}
        result = {"history": hist["history"], "params": params, "world": world}
        with open(out, "w") as f:
            json.dump(result, f)
    if dist.is_initialized():
        dist.barrier()  # every rank done before any tears gloo down (else a rank can abort)
        dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[2] == "resume":
        resume(sys.argv[1], int(sys.argv[3]))
    elif sys.argv[2] == "rank0-checkpoint":
        checkpoint_on_rank_0_only(sys.argv[1])
    elif sys.argv[2] == "item-table":
        item_table_is_not_broadcast(sys.argv[1])
    else:
        main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
