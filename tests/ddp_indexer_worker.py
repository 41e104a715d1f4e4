"""Run by tests/test_ddp_indexer.py under `torchrun --nproc_per_node=2` (gloo, CPU), and in
one process for the reference: fits a VQ indexer and writes its codes and codebooks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch


def embeddings() -> np.ndarray:
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    return centres[rng.integers(0, 40, 3000)] + 0.3 * rng.standard_normal((3000, 32), np.float32)


def fit(kind: str, n: int = 3000):
    from moc_fast.index import MoCIndexer, RQVAEIndexer

    if kind == "moc":
        idx = MoCIndexer(3, 32, latent_dim=8, hidden=(64,), restart_after=5, seed=0)
    else:
        idx = RQVAEIndexer(2, 32, latent_dim=8, hidden=(64,), ema=True, restart_after=5, seed=0)
    return idx.fit(embeddings()[:n], epochs=3, batch_size=256, progress=False, device="cpu")


def diverge_on_rank_1(out: str) -> None:
    """Rank 1 alone meets rows whose squares overflow: every rank must learn of it and raise
    (before the fix, rank 1 raised alone and rank 0 waited in the all-reduce for good)."""
    import torch.distributed as dist

    from moc_fast.index import MoCIndexer

    dist.init_process_group("gloo")
    rank = dist.get_rank()

    def batches():  # each rank streams its own copy; rank 1's third batch overflows
        x = embeddings()
        for i, s in enumerate(range(0, len(x), 256)):
            yield x[s : s + 256] * (1e30 if rank == 1 and i == 2 else 1.0)

    try:
        MoCIndexer(3, 32, latent_dim=8, hidden=(64,), seed=0).fit(
            batches, epochs=1, batch_size=256, progress=False, device="cpu"
        )
    except FloatingPointError as exc:
        Path(f"{out}.rank{rank}.err").write_text(str(exc))
        sys.exit(3)


def streamed(out: str, folder: str) -> None:
    """Fits from streamed parts: the parquet folder (each rank reads its own row groups) and
    a function making unequal parts (700 and 300 rows), so one rank runs out of data first."""
    import torch.distributed as dist

    from moc_fast.index import MoCIndexer

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    x = embeddings()[:1000]

    def parts(rank: int, world: int):
        return iter([x[:700]] if rank == 0 else [x[700:]])

    saved = {}
    for name, X in [("parquet", folder), ("parts", parts)]:
        idx = MoCIndexer(3, 32, latent_dim=8, hidden=(64,), seed=0)
        idx.fit(X, epochs=2, batch_size=256, progress=False, device="cpu")
        saved[f"{name}_items"] = np.array(idx.summary["items"])
        saved[f"{name}_codes"] = idx.encode(x)
        saved.update({f"{name}.{k}": v.numpy() for k, v in idx.state_dict().items()})
    np.savez(f"{out}.rank{rank}.npz", **saved)
    dist.barrier()
    dist.destroy_process_group()


def main(out: str, kind: str, n: int = 3000) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    idx = fit(kind, n)
    rank = dist.get_rank() if dist.is_initialized() else 0
    state = {k: v.numpy() for k, v in idx.state_dict().items()}
    np.savez(f"{out}.rank{rank}.npz", codes=idx.encode(embeddings()[:n]), **state)
    if dist.is_initialized():
        dist.barrier()  # every rank done before any tears gloo down (else a rank can abort)
        dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[2] == "diverge":
        diverge_on_rank_1(sys.argv[1])
    elif sys.argv[2] == "streamed":
        streamed(sys.argv[1], sys.argv[3])
    else:
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 3000)
