"""The one-call device script, rehearsed on Triton's interpreter: it must come back with what
it finished whether it ends by its budget, by a kill, or normally (benches/gpu_check.sh)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("triton")
from moc_fast.kernels import triton_available  # noqa: E402

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton not installed")
ROOT = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, str(ROOT / "benches" / "gpu_bench.py"), "--smoke",
         "--impls", "torch-eager,triton"]  # fmt: skip


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_budget_stops_cleanly_and_keeps_what_finished(tmp_path):
    out = tmp_path / "bench.jsonl"
    done = subprocess.run([*BENCH, "--budget", "1", "--out", str(out)], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    records = _records(out)
    assert records[0]["kind"] == "device"
    assert records[1]["kind"] == "check" and records[1]["ok"]  # the smoke check comes first
    assert records[-1]["kind"] == "stop" and records[-1]["reason"].startswith("budget")
    assert len(records) < 6  # the plan has 4 items: the budget cut it short
    assert "fp32 highest" in done.stdout and "Stopped: budget" in done.stdout


def test_a_killed_run_keeps_every_finished_line(tmp_path):
    out = tmp_path / "bench.jsonl"
    proc = subprocess.Popen([*BENCH, "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and len(out.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    records = _records(out)  # every line whole: each was flushed as it finished
    assert [r["kind"] for r in records[:2]] == ["device", "check"]
    table = subprocess.run([*BENCH[:2], "--render", str(out)], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    assert "| fp32 highest | (333, 5, 100, 13, 37) |" in table
    assert "Stopped: killed before the end" in table


def test_gpu_check_rehearsal_runs_end_to_end(tmp_path):
    env = {**os.environ, "REHEARSAL": "1", "OUT": str(tmp_path), "PY": sys.executable,
           "BUDGET": "20", "IMPLS": "triton"}  # fmt: skip
    done = subprocess.run(["bash", str(ROOT / "benches" / "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "### Correctness" in done.stdout and "| yes |" in done.stdout
    kinds = [r["kind"] for r in _records(tmp_path / "gpu_bench.jsonl")]
    assert kinds[0] == "device" and kinds[-1] == "stop" and "error" not in kinds
