"""Atomic writes: all-or-nothing, and the file mode a plain open() would give."""

from __future__ import annotations

import os

import numpy as np
import pytest

from moc_fast.fileio import atomic_save_npy, atomic_write_bytes


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a" / "results.csv", b"x")
        atomic_save_npy(tmp_path / "codes.npy", np.zeros(3))
        with open(tmp_path / "plain", "wb"):
            pass
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    for name in ("a/results.csv", "codes.npy", "plain"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "r.csv"
    atomic_write_bytes(path, b"old")

    class Boom:
        def __bytes__(self):
            raise RuntimeError

    with pytest.raises(TypeError):
        atomic_write_bytes(path, Boom())  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]
