"""Every Triton kernel variant compiles for real GPU targets and fits their shared memory.

No GPU is needed: `python -m moc_fast.kernels.compile_check` builds each kernel with Triton's
own compiler and bundled ptxas for sm_80 (A100) and sm_90 (H100/H200), exactly as
`moc_embedding` would launch it, over forward/backward × fusion × activation × dtype ×
precision × shapes up to (16, 128, 1024). It runs in a subprocess because the test session
uses Triton's interpreter, whose kernels cannot be compiled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from moc_fast.kernels import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton not installed")

KERNELS = {"_down", "_up", "_bwd_gate", "_bwd_dh", "_bwd_de", "_wgrad_down", "_wgrad_up",
           "_segment_sum"}  # fmt: skip


def test_every_kernel_variant_compiles_and_fits_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = {  # one process per target, side by side (each compiles on one core)
        cc: subprocess.Popen(
            [sys.executable, "-m", "moc_fast.kernels.compile_check", "--cc", str(cc)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        for cc in (80, 90)
    }
    for cc, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=900)
        records = [json.loads(line) for line in stdout.splitlines()]
        assert records, stderr[-3000:]
        assert {r["kernel"] for r in records} == KERNELS
        assert {(7, 64, 224), (16, 128, 1024)} <= {(r["M"], r["e"], r["r"]) for r in records}
        assert {r["dtype"] for r in records} == {"float32", "bfloat16", "float16"}
        assert {r["mode"] for r in records} == {"none", "gate", "residual"}
        assert {r["act"] for r in records} == {"relu", "silu", "identity"}
        too_big = [r for r in records if not r["fits"]]
        assert not too_big, f"over the sm_{cc} shared-memory limit: {too_big}"
        assert all(r["cubin_bytes"] > 0 for r in records)
        assert proc.returncode == 0, stderr[-3000:]
