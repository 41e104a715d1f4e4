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
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
