"""Smoke test of an installed wheel with the engine alone (no torch): what a user who ran
`pip install moc-fast` can do, and the hint they get for what needs an extra.

    python scripts/smoke_wheel.py      # exits non-zero on the first failure
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import numpy as np

import moc_fast as mf


def main() -> int:
    has_torch = importlib.util.find_spec("torch") is not None
    print(f"moc_fast {mf.__version__} from {mf.__file__}; kernel {mf.kernel_name()}; "
          f"torch installed: {has_torch}")  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 32), dtype=np.float32)
    cb = rng.standard_normal((64, 32), dtype=np.float32)
    codes, dist = mf.assign(x, cb)
    d2 = ((x[:, None, :].astype(np.float64) - cb[None]) ** 2).sum(-1)
    assert np.array_equal(codes, d2.argmin(1)), "assign disagrees with numpy"
    cent, labels, _ = mf.kmeans(x, 16, iters=5, seed=0)
    assert cent.shape == (16, 32) and labels.shape == (500,)
    ids = mf.resolve_collisions(np.stack([labels, labels % 3], 1))
    assert len({tuple(r) for r in ids.tolist()}) == 500
    assert "MoCIndexer" in dir(mf)
    if not has_torch:
        try:
            mf.MoCIndexer  # noqa: B018 - the lazy import is the test
        except ImportError as exc:
            assert "moc-fast[torch]" in str(exc), exc
        else:
            raise AssertionError("MoCIndexer without torch should raise ImportError")
    cli = shutil.which("moc-fast", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert cli, "the moc-fast command is not installed beside this python"
    for args in (["--version"], ["--help"], ["train", "--help"],
                 ["engine-demo", "--items", "3000", "--dim", "32", "--codebook-size", "64"]):
        run = subprocess.run([cli, *args], capture_output=True, text=True)
        assert run.returncode == 0, f"moc-fast {args}: {run.stderr}"
    if not has_torch:
        run = subprocess.run([cli, "demo"], capture_output=True, text=True)
        assert run.returncode == 2 and "moc-fast[torch]" in run.stderr, run.stderr
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
