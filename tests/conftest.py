import os
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
