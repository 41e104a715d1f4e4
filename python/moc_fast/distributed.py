"""Encoding a catalogue on Ray: actors run the indexer on their blocks, and the collision
suffix is ranked partition by partition, so the IDs equal a single `indexer.encode` over all
items without any process sorting every item's codes.

- The indexer is loaded once, by the driver (its checksum verified there), and shipped to
  the actors through Ray's object store: no shared filesystem is needed, and a file replaced
  mid-run cannot mix versions.
- Each actor asks for `num_cpus` CPUs and runs the Rust engine and torch on exactly that
  many threads, so actors never oversubscribe a node; the pool has one actor per `num_cpus`
  CPUs of the cluster, less one CPU left for reading blocks.
- The collision pass: while the codes stream back in order, each item's tuple goes, with its
  row number, to one of `partitions` hash partitions spilled to the driver's disk; Ray tasks
  then rank one partition each (items with equal tuples share a partition; the partition
  travels through the object store, so tasks may run on any node), and the driver writes the
  ranks back. No process sorts more than one partition of (row, tuple) records.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RayEncoder", "encode_ray", "collision_ranks", "default_concurrency"]

PARTITIONS = 64  # collision partitions: 100M items at M = 3 give 50 MB of records each


def _threads(num_threads: int) -> None:
    """Pin this process's engine and torch pools to `num_threads` threads."""
    os.environ["MOC_FAST_NUM_THREADS"] = str(num_threads)
    try:
        import torch

        torch.set_num_threads(num_threads)
    except ImportError:  # training-free indexers need no torch
        pass


class RayEncoder:
    """A callable class for `ray.data.Dataset.map_batches`: holds one indexer per actor and
    adds a `codes` column `(B, num_codes)` (no collision suffix: that needs every item).

    `indexer` is a fitted indexer, a Ray `ObjectRef` to one, or a path to one; `num_threads`
    pins the actor's engine and torch threads (give the actor's `num_cpus`)."""

    def __init__(
        self, indexer: Any, column: str = "embedding", num_threads: int | None = None
    ) -> None:
        from moc_fast.index import load_indexer

        if num_threads is not None:
            _threads(max(1, int(num_threads)))
        if isinstance(indexer, (str, os.PathLike)):
            indexer = load_indexer(indexer)
        elif type(indexer).__name__ == "ObjectRef":  # shipped through the object store
            import ray

            indexer = ray.get(indexer)
        self.indexer = indexer
        self.column = column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.column not in batch:
            raise ValueError(
                f"the dataset has no column {self.column!r} (columns: {sorted(batch)}); "
                "pass column= to name the embedding column"
            )
        x = np.asarray(batch[self.column])
        if x.dtype == object:  # a column of per-row lists or arrays
            x = np.stack([np.asarray(r, dtype=np.float32) for r in x]) if len(x) else x
        out = {k: v for k, v in batch.items() if k != self.column}
        out["codes"] = self.indexer.encode_raw(x.reshape(len(x), -1) if len(x) else x)
        return out


def default_concurrency(cluster_cpus: float, num_cpus: int) -> int:
    """Encoder actors for a cluster: one per `num_cpus` CPUs, less one CPU for reading."""
    return max(1, int((cluster_cpus - 1) // num_cpus))


def _partition_of(codes: np.ndarray, parts: int) -> np.ndarray:
    """A hash partition in [0, parts) per row of `codes`: equal rows, equal partitions."""
    h = np.zeros(len(codes), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(codes.shape[1]):
            h = (h ^ codes[:, j].astype(np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
            h ^= h >> np.uint64(29)
    return (h % np.uint64(parts)).astype(np.int64)


def collision_ranks(codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rank of each item among the items before it (smaller `rows`) with the same tuple:
    TIGER's collision code for one partition. `rows` must be increasing."""
    if not len(codes):
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort([rows, *codes.T[::-1]])  # by tuple, then row
    s = codes[order]
    new = np.r_[True, (s[1:] != s[:-1]).any(axis=1)]
    starts = np.flatnonzero(new)
    group = np.cumsum(new) - 1
    ranks = np.empty(len(codes), dtype=np.int64)
    ranks[order] = np.arange(len(codes)) - starts[group]
    return ranks


def _rank_partition(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, ranks) of one partition's (row, codes...) int64 records."""
    return records[:, 0], collision_ranks(records[:, 1:], records[:, 0])


def encode_ray(
    dataset: Any,
    indexer: Any,
    column: str = "embedding",
    batch_size: int = 65_536,
    concurrency: int | None = None,
    num_cpus: int = 1,
    partitions: int = PARTITIONS,
    spill_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Semantic IDs of every row of the Ray dataset `dataset` (an embedding `column` of
    `(D,)` float rows), in the dataset's order: `(N, num_codes[+1])` int64, identical to
    `indexer.encode(all embeddings)`. `indexer` is a fitted indexer or a path to one.

    Blocks are encoded by `concurrency` actors of `num_cpus` CPUs (and as many engine and
    torch threads) each; by default one actor per `num_cpus` CPUs of the cluster, less one
    CPU for reading. Where the indexer appends a collision code, it is ranked in `partitions`
    hash partitions, spilled under `spill_dir` (a temporary folder by default) and ranked by
    Ray tasks.
    """
    import ray

    from moc_fast.index import load_indexer

    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    if isinstance(indexer, (str, os.PathLike)):
        indexer = load_indexer(indexer)
    num_cpus = max(1, int(num_cpus))
    if concurrency is None:
        concurrency = default_concurrency(ray.cluster_resources().get("CPU", 1), num_cpus)
    encoded = dataset.map_batches(
        RayEncoder,
        fn_constructor_args=(ray.put(indexer), column, num_cpus),
        batch_format="numpy",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
    ).select_columns(["codes"])
    # A dataset carries a copy of the DataContext it was made under: order is set on this one.
    encoded.context.execution_options.preserve_order = True  # codes in the input's order
    batches = (b["codes"] for b in encoded.iter_batches(batch_format="numpy", batch_size=None))
    if not indexer.appends_collision_code:
        return _assembled(list(batches), indexer.num_codes)
    with tempfile.TemporaryDirectory(dir=spill_dir, prefix="moc_fast_collisions_") as tmp:
        return _with_collision_codes(batches, indexer.num_codes, partitions, Path(tmp))


def _assembled(parts: list[np.ndarray], num_codes: int) -> np.ndarray:
    """The parts stacked, each freed once copied: the result's pages are only touched as
    they are written, so the peak is one result plus what is left of the parts, not two."""
    out = np.empty((sum(len(p) for p in parts), num_codes), dtype=np.int64)
    at = 0
    parts.reverse()
    while parts:
        c = parts.pop()
        out[at : at + len(c)] = c
        at += len(c)
        del c
    return out


def _with_collision_codes(batches: Any, num_codes: int, parts: int, tmp: Path) -> np.ndarray:
    """The streamed codes with TIGER's collision column, ranked per hash partition. The codes
    go to the partition files only; the result is filled from them, one partition at a time,
    so the driver never holds the codes twice."""
    import ray

    files = [open(tmp / f"p{i:03d}.bin", "wb") for i in range(parts)]  # noqa: SIM115
    n = 0
    try:
        for codes in batches:
            codes = np.ascontiguousarray(codes, dtype=np.int64)
            rows = np.arange(n, n + len(codes), dtype=np.int64)
            where = _partition_of(codes, parts)
            records = np.column_stack([rows, codes])
            for p in np.unique(where):
                files[p].write(records[where == p].tobytes())
            n += len(codes)
    finally:
        for f in files:
            f.close()
    out = np.empty((n, num_codes + 1), dtype=np.int64)
    rank = ray.remote(num_cpus=1)(_rank_partition)
    in_flight = max(1, int(ray.cluster_resources().get("CPU", 1)))
    pending: list[Any] = []

    def collect(block: bool) -> None:
        nonlocal pending
        while pending and (block or len(pending) >= in_flight):
            done, pending = ray.wait(pending, num_returns=1)
            rows, ranks = ray.get(done[0])
            out[rows, num_codes] = ranks

    for i in range(parts):  # one partition read, shipped and ranked at a time per CPU
        records = np.fromfile(tmp / f"p{i:03d}.bin", dtype=np.int64).reshape(-1, num_codes + 1)
        out[records[:, 0], :num_codes] = records[:, 1:]
        pending.append(rank.remote(records))
        del records
        collect(block=False)
    collect(block=True)
    return out
