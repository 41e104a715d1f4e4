"""CTR samples larger than memory: parquet shards, and a streaming dataset over them.

`write_ctr_shards` writes a split (`CTRData`) as parquet files of fixed-size list columns
(`x`, `codes`, `dense`) and `y`; `ParquetCTRDataset` reads them back as ready batches for a
`torch.utils.data.DataLoader(ds, batch_size=None, num_workers=..., pin_memory=True)`, shuffled
per epoch (row groups in a seeded order, rows within a seeded buffer) and split between
`torch.distributed` ranks and loader workers so that every rank gets the same number of
batches (DDP needs that; up to world_size - 1 rows per epoch are left out to keep it).

Each rank reads only its own rows: the epoch's row groups, in their shuffled order, form one
sequence of rows, and rank r takes the r-th of `world_size` equal contiguous ranges of it (its
workers split that range the same way). Only a row group that straddles two ranges is read by
both ranks. The rank and world size are fixed in the main process: a `spawn`/`forkserver`
loader worker, where `torch.distributed` is not initialised, gets them with the pickled
dataset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from moc_fast._extras import require
from moc_fast.checkpoint import rank_world
from moc_fast.fileio import atomic_write_bytes

SHARDS_VERSION = 1
META = "_ctr_shards.json"
COLUMNS = ("x", "codes", "dense")


def write_ctr_shards(
    data, folder: str | os.PathLike, rows_per_shard: int = 1_000_000, row_group: int = 65_536
) -> list[Path]:
    """Write `data` as `shard-00000.parquet`, ... in `folder`: a `CTRData` (split every
    `rows_per_shard` rows) or an iterable of `CTRData` chunks (one shard each, so a table
    larger than memory is written chunk by chunk). Each shard is written to a temporary name
    and renamed; the description file comes last, so a folder with one is complete."""
    require("pyarrow", feature="writing CTR samples as parquet shards")
    import pyarrow.parquet as pq

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(data, "x"):  # one CTRData
        chunks = (_rows(data, s, s + rows_per_shard) for s in range(0, len(data), rows_per_shard))
    else:
        chunks = iter(data)
    paths, rows, widths = [], 0, None
    for i, chunk in enumerate(chunks):
        table, w = _table(chunk)
        if widths is not None and w != widths:
            raise ValueError(f"chunk {i} has column widths {w}, the first had {widths}")
        widths = w
        path = out / f"shard-{i:05d}.parquet"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp, row_group_size=row_group, write_page_checksum=True)
        os.replace(tmp, path)
        paths.append(path)
        rows += table.num_rows
    meta = {"version": SHARDS_VERSION, "rows": rows, "widths": widths or {}, "shards": len(paths)}
    atomic_write_bytes(out / META, json.dumps(meta).encode())
    return paths


def _rows(data, start: int, stop: int):
    pick = lambda t: None if t is None else t[start:stop]  # noqa: E731
    return type(data)(data.x[start:stop], data.y[start:stop], pick(data.codes), pick(data.dense))


def _table(data):
    import pyarrow as pa

    arrays, names, widths = [], [], {}
    for k in COLUMNS:
        v = getattr(data, k)
        widths[k] = int(v.shape[1]) if v is not None else 0
        if v is None:
            continue
        block = v.cpu().numpy().astype(np.float32 if k == "dense" else np.int64)
        arrays.append(pa.FixedSizeListArray.from_arrays(block.reshape(-1), widths[k]))
        names.append(k)
    arrays.append(pa.array(data.y.float().cpu().numpy()))
    names.append("y")
    return pa.table(arrays, names=names), widths


def _read_group(path: Path, group: int):
    """Row group `group` of `path`, every page checked against the CRC the writer stored."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path, page_checksum_verification=True).read_row_group(group)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path} (row group {group}) is corrupt or unreadable: {exc}") from exc


class ParquetCTRDataset(torch.utils.data.IterableDataset):
    """Batches `{"x", "y", ["codes"], ["dense"]}` of `batch_size` rows (per rank) from shards
    written by `write_ctr_shards`. Call `set_epoch(e)` before each epoch (`fit_ctr` does) for a
    new shuffle; memory is bounded by `buffer_batches` batches per worker."""

    def __init__(
        self,
        folder: str | os.PathLike,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        buffer_batches: int = 32,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        require("pyarrow", feature="reading CTR samples from parquet shards")
        import pyarrow.parquet as pq

        self.folder = Path(folder)
        meta_path = self.folder / META
        if not meta_path.exists():
            raise ValueError(f"{folder} holds no CTR shards ({META} missing: write_ctr_shards)")
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != SHARDS_VERSION:
            raise ValueError(f"{folder}: shard format {meta.get('version')}, expected "
                             f"{SHARDS_VERSION}: rewrite them with write_ctr_shards")  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.widths = meta["widths"]
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.buffer_batches = max(1, buffer_batches)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        files = sorted(self.folder.glob("shard-*.parquet"))
        if len(files) != meta["shards"]:
            raise ValueError(f"{folder}: {len(files)} shard files, expected {meta['shards']}")
        self.units = [
            (f, g, pq.ParquetFile(f).metadata.row_group(g).num_rows)
            for f in files
            for g in range(pq.ParquetFile(f).metadata.num_row_groups)
        ]
        self.rows = sum(u[2] for u in self.units)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getstate__(self) -> dict:
        """Pickled for a `spawn`/`forkserver` worker: carry this process's rank and world size
        (the worker has no process group and would otherwise read every rank's rows)."""
        state = self.__dict__.copy()
        state["rank"], state["world_size"] = self._rank_and_world()
        return state

    def _rank_and_world(self) -> tuple[int, int]:
        rank, world = rank_world()
        rank = self.rank if self.rank is not None else rank
        world = self.world_size if self.world_size is not None else world
        if world == 1 and self.world_size is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(
                "ParquetCTRDataset: WORLD_SIZE > 1 but torch.distributed is not initialised "
                "in this process, so this rank's rows are unknown: create the DataLoader after "
                "init_process_group, or pass rank= and world_size="
            )
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world_size = {world}), got {rank}")
        return rank, world

    def _place(self) -> tuple[int, int, int, int]:
        rank, world = self._rank_and_world()
        info = torch.utils.data.get_worker_info()
        return rank, world, (info.id if info else 0), (info.num_workers if info else 1)

    def _epoch_units(self) -> list[tuple[Path, int, int]]:
        """The row groups in this epoch's order: the same on every rank and worker."""
        if not self.shuffle:
            return list(self.units)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.units))
        return [self.units[i] for i in order]

    def _span(self, rank: int, world: int, worker: int, workers: int) -> tuple[int, int]:
        """Rows [start, stop) of the epoch's row sequence that this rank's worker yields. Every
        rank's range has the same size; workers split it in whole batches, so the rank's batch
        count does not depend on the number of workers (the main process, where `len` is
        asked, does not know it)."""
        per_rank = self.rows // world
        batches = -(-per_rank // self.batch_size)
        first, last = worker * batches // workers, (worker + 1) * batches // workers
        start = rank * per_rank
        return (start + min(per_rank, first * self.batch_size),
                start + min(per_rank, last * self.batch_size))  # fmt: skip

    def __len__(self) -> int:
        """Batches per epoch on this rank (all workers together), as `fit_ctr` counts them."""
        _, world, _, _ = self._place()
        return -(-(self.rows // world) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:

        rank, world, worker, workers = self._place()
        lo, hi = self._span(rank, world, worker, workers)
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker])
        pool: dict[str, list[np.ndarray]] = {}
        held = offset = 0
        for path, group, n in self._epoch_units():
            first, offset = offset, offset + n
            if offset <= lo or first >= hi:
                continue  # another rank's or worker's rows: never read
            a, b = max(lo, first) - first, min(hi, offset) - first
            table = _read_group(path, group)
            for name in table.column_names:
                col = table.column(name).combine_chunks()
                if name in self.widths:
                    arr = col.flatten().to_numpy().reshape(n, self.widths[name])
                else:
                    arr = col.to_numpy()
                pool.setdefault(name, []).append(arr[a:b])
            held += b - a
            if held >= self.buffer_batches * self.batch_size:
                yield from self._drain(pool, rng, keep_tail=True)
                held = len(pool["y"][0]) if pool else 0
        yield from self._drain(pool, rng, keep_tail=False)

    def _drain(self, pool, rng, keep_tail: bool) -> Iterator[dict[str, Tensor]]:
        if not pool:
            return
        cols = {k: np.concatenate(v) for k, v in pool.items()}
        n = len(cols["y"])
        perm = rng.permutation(n) if self.shuffle else np.arange(n)
        full = n // self.batch_size * self.batch_size if keep_tail else n
        for s in range(0, full, self.batch_size):
            idx = perm[s : s + self.batch_size]
            yield {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in cols.items()}
        pool.clear()
        if full < n:
            rest = perm[full:]
            for k, v in cols.items():
                pool[k] = [v[rest]]
