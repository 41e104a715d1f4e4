"""Every Triton kernel variant compiles for real GPU targets, fits their shared memory and
spills no registers.

No GPU is needed: `python -m moc_fast.kernels.compile_check` builds each kernel with Triton's
own compiler for sm_80 (A100) and sm_90 (H100/H200), exactly as `moc_embedding` would launch
it, every autotune candidate included, over forward/backward × fusion × activation × dtype ×
precision, and reads registers and spills from `ptxas -v`. The default run covers the headline
shape (7, 64, 224) and the largest supported one (16, 128, 1024), each fusion with every dtype
and precision (SiLU) and every activation (bfloat16); `-m slow` builds every combination over
the whole shape grid. It runs in a subprocess because the test session uses Triton's interpreter,
whose kernels cannot be compiled.
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


def _check(quick: bool):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    extra = ["--quick"] if quick else []
    procs = {  # one process per target, side by side (each compiles on one core)
        cc: subprocess.Popen(
            [sys.executable, "-m", "moc_fast.kernels.compile_check", "--cc", str(cc), *extra],
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
        assert {r["prec"] for r in records} == {"ieee", "tf32"}
        assert {r["dtype"] for r in records} == {"float32", "bfloat16", "float16"}
        assert {r["mode"] for r in records} == {"none", "gate", "residual"}
        assert {r["act"] for r in records} == {"relu", "silu", "identity"}
        too_big = [r for r in records if not r["fits"]]
        assert not too_big, f"over the sm_{cc} shared-memory limit: {too_big}"
        spilled = [r for r in records if r["spill_bytes"]]
        assert not spilled, f"register spills on sm_{cc}: {spilled}"
        assert all(0 < r["registers"] <= 255 and r["warps_per_sm"] >= 4 for r in records)
        assert {r["num_warps"] for r in records} == {4, 8}  # both autotune candidates built
        assert all(r["cubin_bytes"] > 0 for r in records)
        assert proc.returncode == 0, stderr[-3000:]


def test_every_config_compiles_without_spills_at_the_headline_and_largest_shapes():
    _check(quick=True)


@pytest.mark.slow
def test_every_kernel_variant_compiles_and_fits_shared_memory_over_the_shape_grid():
    _check(quick=False)
