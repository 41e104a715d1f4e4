"""Atomic file writes (a temporary file in the same folder, fsynced, renamed over the
target) and the on-disk cache folder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


def cache_dir() -> Path:
    """Where embeddings, CTR samples and indexer codes are cached: `MOC_FAST_CACHE`, else
    `~/.cache/moc_fast`."""
    return Path(os.environ.get("MOC_FAST_CACHE", Path.home() / ".cache" / "moc_fast"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` (creating its folder) so that readers see all or nothing."""
    with atomic_writer(path) as f:
        f.write(data)


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: a temporary file in the same folder, fsynced and
    renamed over `path` when the block ends without an error (removed if it raises). Large
    objects (checkpoints) are serialised straight into it, never held whole in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; honour the umask like open()
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """np.save straight into the atomic temporary file (no second copy in memory)."""
    with atomic_writer(path) as f:
        np.save(f, array)


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_writer(path) as f:
        np.savez(f, **arrays)


def read_csv_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a results CSV as dicts (strings), or [] when there is no file yet."""
    import csv

    p = Path(path)
    if not p.exists():
        return []
    with p.open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv_rows(path: str | os.PathLike, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """`rows` under the header `columns` (other keys dropped), written atomically."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())
