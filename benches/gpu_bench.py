"""One-call GPU check and timing of the fused MoC embedding op (run with the device tool).

    python benches/gpu_bench.py             # markdown to stdout and $OUT/gpu_bench.md (+ .json)
    python benches/gpu_bench.py --smoke     # tiny sizes; on a CPU-only machine runs the
                                            # kernels in Triton's interpreter (checks the script)

1. Correctness on the GPU against the torch reference, per precision: fp32 with
   `torch.set_float32_matmul_precision("highest")` (IEEE dots) and "high" (TF32), bf16; output
   and all five gradients; deterministic mode bitwise repeatable; the largest supported shape
   (16, 128, 1024) launches.
2. Forward + backward time of the Triton op vs torch eager vs `torch.compile` of the reference
   at B = 65,536, M ∈ {3, 7}, K = 256, e ∈ {16, 64}, gate and residual, under both fp32
   precisions; achieved bytes/s of the unavoidable HBM traffic against the card's bandwidth
   (spec and a measured device copy), and achieved FLOP/s.
Goals on an H100/H200: ≥ 2× eager, ≥ 1.3× torch.compile, ≥ 60% of the HBM floor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

if not torch.cuda.is_available():  # --smoke on a CPU-only machine: Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from moc_fast.kernels import moc_embedding, moc_embedding_torch, tolerance  # noqa: E402
from moc_fast.kernels.moc_embedding import round_to_tf32  # noqa: E402

PEAK_TBS = {"H200": 4.8, "H100": 3.35, "A100": 2.0}  # HBM spec peak, TB/s (SXM parts)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int) -> float:
    """Median seconds per call over `reps` calls after warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def make(b, m, k, e, r, dev, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, k, (b, m), generator=g).to(dev)
    params = [
        torch.randn(m, k, e, generator=g),
        torch.randn(m * e, r, generator=g) / (m * e) ** 0.5,
        0.1 * torch.randn(r, generator=g),
        torch.randn(r, m * e, generator=g) / r**0.5,
        0.1 * torch.randn(m * e, generator=g),
    ]
    dout = torch.randn(b, m, e, generator=g).to(dev)
    return codes, [p.to(dev, dtype) for p in params], dout


def run(fn, codes, params, dout, mode, act="silu"):
    """Output and the five gradients. The checks use silu: with relu, TF32 rounding flips
    act'(h) where h is within rounding of 0, a discontinuity no tolerance can bound."""
    ps = [p.detach().clone().requires_grad_() for p in params]
    out = fn(codes, *ps, mode, act)
    out.backward(dout.to(out.dtype))
    return [out.detach(), *(p.grad for p in ps)]


def rel(a, b) -> float:
    return ((a.double() - b.double()).abs().max() / (b.double().abs().max() + 1e-12)).item()


def check(dev, smoke: bool) -> tuple[list[str], bool]:
    """Kernel vs reference (fp64 on the same inputs, TF32-rounded for the TF32 run)."""
    lines = ["| check | shape (B, M, K, e, r) | mode | max rel err | tolerance | ok |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    ok = True
    shapes = [(1000, 7, 256, 64, 224), (333, 5, 100, 13, 37)]
    shapes += [] if smoke else [(4096, 16, 256, 128, 1024), (65_536, 3, 256, 16, 24)]
    for label, precision, dtype in [("fp32 highest", "highest", torch.float32),
                                    ("fp32 high (TF32)", "high", torch.float32),
                                    ("bf16", "highest", torch.bfloat16)]:  # fmt: skip
        torch.set_float32_matmul_precision(precision)
        tf32 = precision != "highest"
        for b, m, k, e, r in shapes[: 2 if dtype != torch.float32 else None]:
            for mode in ("gate", "residual", "none"):
                codes, params, dout = make(b, m, k, e, r, dev, dtype)
                got = run(moc_embedding, codes, params, dout, mode)
                rnd = round_to_tf32 if tf32 else (lambda t: t)
                ref = run(moc_embedding_torch, codes, [rnd(p.float()).double() for p in params],
                          dout.double(), mode)  # fmt: skip
                err = max(rel(a, c) for a, c in zip(got, ref, strict=True) if c is not None)
                tol = tolerance(dtype, tf32)
                ok &= err < tol
                lines.append(f"| {label} | {(b, m, k, e, r)} | {mode} | {err:.1e} | {tol:.0e} "
                             f"| {'yes' if err < tol else '**NO**'} |")  # fmt: skip
    torch.set_float32_matmul_precision("highest")
    codes, params, dout = make(5000, 7, 16, 16, 56, dev)  # few codes: heavy collisions
    torch.use_deterministic_algorithms(True)
    try:
        g1 = run(moc_embedding, codes, params, dout, "gate")
        g2 = run(moc_embedding, codes, params, dout, "gate")
    finally:
        torch.use_deterministic_algorithms(False)
    same = all(torch.equal(a, c) for a, c in zip(g1, g2, strict=True))
    g3 = run(moc_embedding, codes, params, dout, "gate")
    err = max(rel(a, c) for a, c in zip(g1, g3, strict=True))
    ok &= same and err < 1e-4
    verdict = "yes" if same and err < 1e-4 else "**NO**"
    lines.append("| deterministic: bitwise repeat; vs atomics | (5000, 7, 16, 16, 56) | gate "
                 f"| {err:.1e} | 1e-04 | {verdict} |")  # fmt: skip
    return lines, ok


def floor_bytes(b, m, e, dtype_size=4) -> int:
    """Unavoidable HBM traffic of forward + backward: codes read twice, the output written,
    dout read (tables, weights and their gradients are small enough to stay in L2)."""
    return 2 * b * m * 8 + 2 * b * m * e * dtype_size


def flops(b, m, e, r, mode) -> int:
    """Useful GEMM FLOPs of forward + backward (the two forward GEMMs, dh, dE, dW_down, dW_up)."""
    return 0 if mode == "none" else 6 * 2 * b * m * e * r


def bench(dev, smoke: bool, peak: float | None, copy_tbs: float) -> list[dict]:
    b, k = (512, 64) if smoke else (65_536, 256)
    reps = 3 if smoke else 30
    rows = []
    compiled = torch.compile(moc_embedding_torch, dynamic=False)
    impls = {"torch-eager": moc_embedding_torch, "torch-compile": compiled,
             "triton": moc_embedding}  # fmt: skip
    configs = [(3, 16, "gate")] if smoke else [
        (m, e, mode) for m in (3, 7) for e in (16, 64) for mode in ("gate", "residual")]
    for precision in ("highest", "high"):
        torch.set_float32_matmul_precision(precision)
        torch._dynamo.reset()
        for m, e, mode in configs:
            r = m * e // 2
            codes, params, dout = make(b, m, k, e, r, dev)
            ps = [p.requires_grad_() for p in params]
            times = {}
            for label, fn in impls.items():

                def step(fn=fn, ps=ps, codes=codes, mode=mode, dout=dout):
                    for p in ps:
                        p.grad = None
                    fn(codes, *ps, mode, "relu").backward(dout)

                times[label] = timed(step, reps)
            for label, t in times.items():
                gbs = floor_bytes(b, m, e) / t / 1e9
                rows.append(dict(precision=precision, M=m, e=e, r=r, mode=mode, impl=label,
                                 ms=1e3 * t, vs_eager=times["torch-eager"] / t,
                                 vs_compile=times["torch-compile"] / t, floor_gbs=gbs,
                                 pct_peak=100 * gbs / 1e3 / peak if peak else None,
                                 pct_copy=100 * gbs / 1e3 / copy_tbs,
                                 tflops=flops(b, m, e, r, mode) / t / 1e12))  # fmt: skip
    torch.set_float32_matmul_precision("highest")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (checks the script)")
    args = parser.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU (Triton interpreter)"
    peak = next((v for k, v in PEAK_TBS.items() if k in name), None)
    x = torch.empty((1 << 28) if dev.type == "cuda" else (1 << 20), device=dev)
    copy_tbs = 2 * x.numel() * 4 / timed(lambda x=x: x.clone(), 5) / 1e12
    del x
    lines = [f"## {name}: MoCEmbedding op (torch {torch.__version__})", "",
             f"HBM spec peak {peak} TB/s; measured device copy {copy_tbs:.2f} TB/s", ""]
    check_lines, ok = check(dev, args.smoke)
    lines += ["### Correctness", "", *check_lines, ""]
    rows = bench(dev, args.smoke, peak, copy_tbs)
    lines += ["### Forward + backward, B = 65,536, K = 256, relu" if not args.smoke
              else "### Forward + backward (smoke sizes: not a measurement)", "",
              "| fp32 precision | M | e | r | fusion | impl | ms | vs eager | vs compile "
              "| floor GB/s | % spec peak | % copy | TFLOP/s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for w in rows:
        pct = f"{w['pct_peak']:.0f}%" if w["pct_peak"] is not None else "?"
        lines.append(f"| {w['precision']} | {w['M']} | {w['e']} | {w['r']} | {w['mode']} "
                     f"| {w['impl']} | {w['ms']:.3f} | {w['vs_eager']:.2f}x "
                     f"| {w['vs_compile']:.2f}x | {w['floor_gbs']:.0f} | {pct} "
                     f"| {w['pct_copy']:.0f}% | {w['tflops']:.1f} |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_bench.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(out, "gpu_bench.json"), "w") as f:
            json.dump({"device": name, "copy_tbs": copy_tbs, "ok": ok, "rows": rows}, f)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
