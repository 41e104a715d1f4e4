import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# Triton kernels run in the interpreter on machines without a GPU; this must be set before
# triton compiles anything (at import of moc_fast.kernels).
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 default, stated
except ImportError:  # the engine tests run without torch
    pass


# The command that starts this Python in a subprocess: sys.executable, or, where the tests run
# under an emulator (scripts/test_aarch64.sh runs them under qemu-user), the emulator's command.
PYTHON = shlex.split(os.environ.get("MOC_FAST_TEST_PYTHON", "")) or [sys.executable]

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2014"


def real_dataset(name: str) -> Path:
    """A real dataset folder from ../shared/data, or a skip saying why (a fresh clone has no
    ../shared; the synthetic catalogue covers the same code paths)."""
    import pytest

    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data absent: {path} (../shared/data beside the checkout)")
    return path
