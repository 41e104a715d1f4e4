"""Run by tests/test_ddp_indexer.py under `torchrun --nproc_per_node=2` (gloo, CPU), and in
one process for the reference: fits a VQ indexer and writes its codes and codebooks."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch


def embeddings() -> np.ndarray:
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    return centres[rng.integers(0, 40, 3000)] + 0.3 * rng.standard_normal((3000, 32), np.float32)


def fit(kind: str):
    from moc_fast.index import MoCIndexer, RQVAEIndexer

    if kind == "moc":
        idx = MoCIndexer(3, 32, latent_dim=8, hidden=(64,), restart_after=5, seed=0)
    else:
        idx = RQVAEIndexer(2, 32, latent_dim=8, hidden=(64,), ema=True, restart_after=5, seed=0)
    return idx.fit(embeddings(), epochs=3, batch_size=256, progress=False, device="cpu")


def main(out: str, kind: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    idx = fit(kind)
    rank = dist.get_rank() if dist.is_initialized() else 0
    state = {k: v.numpy() for k, v in idx.state_dict().items()}
    np.savez(f"{out}.rank{rank}.npz", codes=idx.encode(embeddings()), **state)
    if dist.is_initialized():
        dist.barrier()  # every rank done before any tears gloo down (else a rank can abort)
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
