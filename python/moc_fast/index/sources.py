"""Where item embeddings come from, read in bounded blocks so that N never has to fit in RAM.

An indexer's `fit` and `encode` take any of: an array in RAM (numpy or a CPU tensor), a
memory-mapped `.npy` (`np.load(path, mmap_mode="r")` or the path itself), a parquet file or a
folder of parquet files with an embedding column (pyarrow), or an iterable of `(B, D)` batches
(a list, or a function returning a fresh iterator, for several passes). Every block is checked
as it is read (floats, D columns, finite), and errors give the global row.

Under torch.distributed each rank streams its own part (`EmbeddingSource.shard`): parquet
reads only the row groups of a contiguous 1/W of the rows; an iterable function that takes
`rank` and `world` keywords makes its own part; any other iterable is read whole by every rank,
which keeps every W-th row.
"""

from __future__ import annotations

import inspect
import mmap
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

BLOCK_ROWS = 65_536
PARQUET_COLUMN = "embedding"


def check_block(block: Any, start: int, dim: int | None, name: str) -> np.ndarray:
    """`block` as finite float32 `(B, dim)`, C-contiguous; rows are numbered from `start`."""
    arr = block.detach().cpu().numpy() if hasattr(block, "detach") else np.asarray(block)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must hold 2-D blocks of item embeddings (B, D), got shape {arr.shape} "
            f"at row {start}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name} must hold floats, got {arr.dtype} at row {start}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has {arr.shape[1]} columns at row {start}, expected D = {dim}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not arr.flags.writeable:  # a read-only memory map: copy the block (torch needs writable)
        arr = arr.copy()
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        row = start + int(np.argmax(bad))
        raise ValueError(f"{name} must be finite: row {row} holds NaN or inf")
    return arr


class EmbeddingSource:
    """Item embeddings read block by block, in storage order.

    `num_rows` is None where it is unknown before a full pass (plain iterables);
    `random_access` sources also gather arbitrary rows (`take`), which lets training shuffle
    exactly as it does in RAM.
    """

    name: str = "X"
    dim: int | None = None
    num_rows: int | None = None
    random_access: bool = False

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def take(self, idx: np.ndarray) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} does not support random access")

    def in_memory(self) -> np.ndarray | None:
        """The whole array when it already lives in RAM (then nothing needs streaming)."""
        return None

    def shard(self, rank: int, world: int) -> EmbeddingSource:
        """Rank `rank`'s part of `world` disjoint parts that together hold every row once.
        This default reads every row and keeps rows `rank, rank + world, ...`; sources that
        can read less override it."""
        return self if world == 1 else StridedShard(self, rank, world)


class StridedShard(EmbeddingSource):
    """Every `world`-th row of a source, from row `rank`: read whole, kept in part."""

    def __init__(self, source: EmbeddingSource, rank: int, world: int) -> None:
        self.source, self.rank, self.world = source, rank, world
        self.name = f"{source.name} (rank {rank} of {world})"

    @property
    def dim(self) -> int | None:  # type: ignore[override]
        return self.source.dim

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[np.ndarray]:
        start = 0
        for block in self.source.blocks(rows):
            first = (self.rank - start) % self.world  # this rank's first row in the block
            if first < len(block):
                yield block[first :: self.world]
            start += len(block)


class ArraySource(EmbeddingSource):
    """A numpy array, a memory-mapped `.npy` or a CPU tensor (never copied whole).

    A memory-mapped array (a `.npy` path, or `np.load(..., mmap_mode="r")` and row slices of
    it) is read with explicit `pread` calls into fresh buffers, never through the mapping: no
    file page is ever mapped into the process, so resident memory is bounded by the blocks in
    use on every kernel, whatever its readahead, fault-around or transparent huge pages do with
    mapped files. The kernel keeps what it reads in its page cache, which it reclaims freely.
    """

    random_access = True

    def __init__(self, arr: Any, name: str = "X") -> None:
        if hasattr(arr, "detach"):
            arr = arr.detach().cpu().numpy()
        arr = np.asarray(arr) if not isinstance(arr, np.ndarray) else arr
        if arr.ndim != 2:
            raise ValueError(
                f"{name} must be a 2-D array of item embeddings (N, D), got shape {arr.shape}"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"{name} must hold floats, got {arr.dtype}")
        self.arr, self.name = arr, name
        self.num_rows, self.dim = arr.shape
        self.file = _file_rows(arr)  # (path, byte offset of row 0) where pread can read it
        self._fd: tuple[int, int] | None = None  # (pid, fd): reopened in a forked child

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[np.ndarray]:
        for s in range(0, self.num_rows, rows):
            raw = self._read(np.arange(s, min(s + rows, self.num_rows)))
            yield check_block(raw, s, self.dim, self.name)

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows `idx` in that order; read in ascending order (sequential on a file)."""
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        rows = np.empty((len(idx), self.dim), dtype=np.float32)
        rows[order] = self._read(idx[order])
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            row = int(idx[int(np.argmax(bad))])
            raise ValueError(f"{self.name} must be finite: row {row} holds NaN or inf")
        return rows

    def in_memory(self) -> np.ndarray | None:
        return None if self.file is not None or _mapping(self.arr) is not None else self.arr

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (ascending) as a new array of the stored dtype: by pread from the file
        (one call per run of consecutive rows), else from the array."""
        if self.file is None:
            out = np.ascontiguousarray(self.arr[rows])
            self._release()
            return out
        out = np.empty((len(rows), self.dim), dtype=self.arr.dtype)
        if not len(rows):  # an empty share (a rank's part of a last, short batch)
            return out
        view = memoryview(out.reshape(-1).view(np.uint8))
        row_bytes = self.dim * self.arr.dtype.itemsize
        fd, (_, base) = self._open(), self.file
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
            want, got = (stop - start) * row_bytes, 0
            pos = base + int(rows[start]) * row_bytes
            while got < want:  # pread may return less than asked
                n = os.preadv(fd, [view[start * row_bytes + got : stop * row_bytes]], pos + got)
                if n <= 0:
                    raise ValueError(f"{self.name}: the file ended early (truncated?)")
                got += n
        return out

    def _open(self) -> int:
        if self._fd is None or self._fd[0] != os.getpid():
            self._fd = (os.getpid(), os.open(self.file[0], os.O_RDONLY))
        return self._fd[1]

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._fd[0] == os.getpid():
            os.close(self._fd[1])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None}

    def _release(self) -> None:
        """Unmap the pages just read from a memory map that pread cannot serve (they stay in
        the page cache): without this every page ever read counts as resident memory."""
        m = _mapping(self.arr)
        if m is None or not hasattr(m, "madvise") or _memmap_mode(self.arr) == "c":
            return  # on a copy-on-write map, MADV_DONTNEED would discard the user's changes
        m.madvise(mmap.MADV_DONTNEED)


def _mapping(arr: np.ndarray) -> mmap.mmap | None:
    """The `mmap` behind a memory-mapped array (or a view of one), else None."""
    a: Any = arr
    while a is not None:
        if isinstance(a, mmap.mmap):
            return a
        m = getattr(a, "_mmap", None)
        if isinstance(m, mmap.mmap):
            return m
        a = getattr(a, "base", None)
    return None


def _root_memmap(arr: np.ndarray) -> np.memmap | None:
    """The `np.memmap` that `arr` is (a view of), else None."""
    root: Any = arr
    while isinstance(getattr(root, "base", None), np.memmap):
        root = root.base
    return root if isinstance(root, np.memmap) else None


def _memmap_mode(arr: np.ndarray) -> str | None:
    root = _root_memmap(arr)
    return getattr(root, "mode", None) if root is not None else None


def _file_rows(arr: np.ndarray) -> tuple[str, int] | None:
    """(file, byte offset of row 0) when `arr` is C-contiguous rows of a shared `np.memmap`
    (or a row slice of one) in native byte order, else None. A copy-on-write map (mode "c")
    may hold changes the file does not, so it is read through its mapping."""
    if not hasattr(os, "preadv") or not arr.flags.c_contiguous or not arr.dtype.isnative:
        return None
    root = _root_memmap(arr)
    if root is None or not getattr(root, "filename", None) or root.mode not in ("r", "r+", "w+"):
        return None
    return str(root.filename), int(root.offset) + (arr.ctypes.data - root.ctypes.data)


class ParquetSource(EmbeddingSource):
    """A parquet file or a folder of them (read in sorted file order), with an embedding column
    of float lists of equal length."""

    range: tuple[int, int] | None = None  # a shard's global rows [lo, hi); None: every row

    def __init__(self, path: str | os.PathLike, column: str = PARQUET_COLUMN) -> None:
        from moc_fast._extras import require

        require("pyarrow", feature="reading embeddings from parquet")
        import pyarrow as pa
        import pyarrow.parquet as pq

        p = Path(path)
        self.files = sorted(p.glob("*.parquet")) if p.is_dir() else [p]
        if not self.files:
            raise ValueError(f"{path} holds no .parquet files")
        self.column, self.name = column, str(path)
        self.num_rows = 0
        for f in self.files:
            try:
                meta = pq.ParquetFile(f).metadata  # one open: schema and row count
                schema = meta.schema.to_arrow_schema()
                self.num_rows += meta.num_rows
            except (OSError, pa.ArrowException) as exc:
                raise ValueError(f"{f} is not a readable parquet file: {exc}") from exc
            if column not in schema.names:
                raise ValueError(
                    f"{f} has no column {column!r} (columns: {schema.names}); "
                    "pass column= to name the embedding column"
                )
            kind = schema.field(column).type
            lists = (pa.types.is_list(kind) or pa.types.is_large_list(kind)
                     or pa.types.is_fixed_size_list(kind))  # fmt: skip
            if not lists or not pa.types.is_floating(kind.value_type):
                raise ValueError(
                    f"{f}: column {column!r} is {kind}; expected one list of floats per row "
                    "(the item's embedding)"
                )

    def shard(self, rank: int, world: int) -> EmbeddingSource:
        """Rows `[rank·N/W, (rank+1)·N/W)`, read from the row groups that hold them only."""
        if world == 1:
            return self
        part = ParquetSource.__new__(ParquetSource)
        part.__dict__.update(self.__dict__)
        part.range = (rank * self.num_rows // world, (rank + 1) * self.num_rows // world)
        part.name = f"{self.name} (rank {rank} of {world})"
        part.num_rows = part.range[1] - part.range[0]
        return part

    def _pieces(self) -> Iterator[tuple[Path, list[int], int, int]]:
        """(file, row groups to read, rows of them to skip at the front, most rows to keep)
        for every file that holds some of this source's rows."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        lo, hi = self.range or (0, self.num_rows)
        start = 0
        for f in self.files:
            try:
                meta = pq.ParquetFile(f).metadata
            except (OSError, pa.ArrowException) as exc:  # replaced or damaged since opened
                raise ValueError(f"{f} is corrupt or unreadable: {exc}") from exc
            groups, first = [], None
            for g in range(meta.num_row_groups):
                g_lo = start
                start += meta.row_group(g).num_rows
                if start > lo and g_lo < hi:  # the group overlaps [lo, hi)
                    first = g_lo if first is None else first
                    groups.append(g)
            if groups:
                yield f, groups, max(0, lo - first), hi - max(lo, first)

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[np.ndarray]:
        import pyarrow.compute as pc

        start = self.range[0] if self.range else 0  # global row of the next block
        for f, groups, skip, keep in self._pieces():
            for batch in _verified_batches(f, rows, self.column, groups):
                if skip >= len(batch):
                    skip -= len(batch)
                    continue
                if keep <= 0:
                    break
                batch = batch.slice(skip, keep)
                skip, keep = 0, keep - len(batch)
                col = batch.column(0)
                if col.null_count:
                    raise ValueError(f"{self.name}: column {self.column!r} has nulls near row "
                                     f"{start}")  # fmt: skip
                lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
                dim = int(lengths[0]) if len(lengths) else (self.dim or 0)
                if len(lengths) and (lengths != dim).any():
                    row = start + int(np.argmax(lengths != dim))
                    raise ValueError(f"{self.name}: embeddings of unequal length at row {row}")
                values = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), dim)
                block = check_block(values, start, self.dim, self.name)
                self.dim = block.shape[1]
                start += len(block)
                yield block


def _verified_batches(
    path: Path, rows: int, column: str, row_groups: list[int] | None = None
) -> Iterator[Any]:
    """Record batches of one column (of `row_groups` only, if given), every page checked
    against its CRC where the writer stored one (`write_table(..., write_page_checksum=True)`,
    as moc_fast writes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path, page_checksum_verification=True)
        yield from f.iter_batches(batch_size=rows, columns=[column], row_groups=row_groups)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path} is corrupt or unreadable: {exc}") from exc


class IterableSource(EmbeddingSource):
    """An iterable of `(B, D)` batches, or a function returning a fresh iterator per pass.
    A one-shot iterator (a generator) allows one pass only."""

    def __init__(self, batches: Iterable[Any] | Callable[..., Iterable[Any]], name: str = "X"):
        self.batches, self.name = batches, name
        self._one_shot = isinstance(batches, Iterator)  # a generator: one pass only
        self._passes = 0
        self._part: dict[str, int] = {}

    def shard(self, rank: int, world: int) -> EmbeddingSource:
        """A function taking `rank` and `world` keywords is asked for this rank's part (which
        must be disjoint from the other ranks'); anything else is read whole and strided."""
        if world == 1:
            return self
        if callable(self.batches) and _takes_rank_and_world(self.batches):
            part = IterableSource(self.batches, f"{self.name} (rank {rank} of {world})")
            part._part = {"rank": rank, "world": world}
            return part
        return StridedShard(self, rank, world)

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[np.ndarray]:
        if self._one_shot and self._passes:
            raise ValueError(
                f"{self.name} is a one-shot iterator and was already read: pass a list or a "
                "function returning a fresh iterator to make several passes (epochs)"
            )
        self._passes += 1
        it = self.batches(**self._part) if callable(self.batches) else self.batches
        start = 0
        for b in it:
            block = check_block(b, start, self.dim, self.name)
            self.dim = block.shape[1]
            for s in range(0, len(block), rows):
                yield block[s : s + rows]
            start += len(block)
        self.num_rows = start


def _takes_rank_and_world(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return "rank" in params and "world" in params


def as_source(X: Any, name: str = "X", column: str = PARQUET_COLUMN) -> EmbeddingSource:
    """The right source for `X` (see the module docstring)."""
    if isinstance(X, EmbeddingSource):
        return X
    if isinstance(X, (str, os.PathLike)):
        p = Path(X)
        if p.is_dir() or p.suffix == ".parquet":
            return ParquetSource(p, column)
        if p.suffix == ".npy":
            try:
                arr = np.load(p, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise ValueError(f"{name} {p} is not a readable .npy file: {exc}") from exc
            return ArraySource(arr, str(p) if name == "X" else f"{name} {p}")
        raise ValueError(f"{name} {p}: expected a .npy file, a .parquet file or a folder of them")
    if isinstance(X, np.ndarray) or hasattr(X, "detach"):
        return ArraySource(X, name)
    if isinstance(X, (list, tuple)):
        if X and all(getattr(b, "ndim", 0) == 2 for b in X):
            return IterableSource(X, name)
        return ArraySource(np.asarray(X), name)
    if callable(X) or isinstance(X, Iterable):
        return IterableSource(X, name)
    raise TypeError(
        f"{name} must be an array, a .npy/parquet path, or an iterable of batches; "
        f"got {type(X).__name__}"
    )


def seeded_sample(source: EmbeddingSource, size: int, seed: int) -> np.ndarray:
    """`size` rows drawn uniformly without replacement (all rows if fewer), in storage order,
    from one pass: each row gets a seeded random key and the `size` smallest keys are kept, so
    memory is bounded by `size` plus one block."""
    rng = np.random.default_rng(seed)
    if source.random_access and source.num_rows is not None:
        n = source.num_rows
        if size >= n:
            return np.concatenate(list(source.blocks()))
        return source.take(np.sort(rng.choice(n, size, replace=False)))
    keys = np.zeros(0)
    rows: np.ndarray | None = None
    for block in source.blocks():
        k = np.concatenate([keys, rng.random(len(block))])
        r = block if rows is None else np.concatenate([rows, block])
        if len(k) > size:
            keep = np.sort(np.argpartition(k, size - 1)[:size])
            k, r = k[keep], r[keep]
        keys, rows = k, r
    if rows is None:
        raise ValueError("the embeddings are empty: nothing to sample")
    return rows
