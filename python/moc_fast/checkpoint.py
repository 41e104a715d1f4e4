"""Checkpoint files shared by `fit_ctr` and the indexers' `fit`: written atomically by rank 0,
read by every rank, and refused on every rank unless all of them see the same file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from moc_fast.fileio import atomic_writer


def rank_world() -> tuple[int, int]:
    """(rank, world size) under an initialised torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def agree(value: Any) -> list[Any]:
    """`value` of every rank, in rank order (one collective; just [value] in one process)."""
    _, world = rank_world()
    if world == 1:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * world
    dist.all_gather_object(values, value)
    return values


def save(path: Path, state: dict[str, Any]) -> None:
    """torch.save straight into the atomic temporary file: one copy of the state in memory."""
    with atomic_writer(path) as f:
        torch.save(state, f)


def load(path: Path | None) -> dict[str, Any] | None:
    """The checkpoint to resume from, the same on every rank, or None. Every rank must give a
    path or none (saving is collective), and see the same file: one present on some ranks
    only (node-local storage) is an error on all of them, as resuming on some ranks while the
    others start afresh would silently diverge. A file from another world size is refused."""
    _, world = rank_world()
    seen = agree((path is not None, path is not None and path.exists()))
    if len({given for given, _ in seen}) > 1:
        raise ValueError("checkpoint must be given on every rank or on none (saving it is a "
                         "collective: every rank's RNG state goes into the file)")  # fmt: skip
    present = [exists for _, exists in seen]
    if not any(present):
        return None
    if not all(present):
        missing = [r for r, p in enumerate(present) if not p]
        raise ValueError(
            f"checkpoint {path} exists on ranks {[r for r, p in enumerate(present) if p]} but "
            f"not on ranks {missing}: every rank must read the same checkpoint (shared "
            "storage), or none may have one"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved_world = state.get("world", 1)
    if saved_world != world:
        raise ValueError(f"checkpoint {path} was written by {saved_world} ranks, this run has "
                         f"{world}: resume with the same number of ranks")  # fmt: skip
    where = agree((state["epoch"], state.get("step", 0)))
    if len(set(where)) != 1:
        raise ValueError(f"checkpoint {path} differs between ranks: {where}")
    return state
