"""One-call GPU check and timing of the fused MoC embedding (run with the device tool).

    python benches/gpu_bench.py            # prints a markdown table, writes $OUT/gpu_bench.md

Checks the Triton kernel against the torch reference on the GPU (forward and all gradients),
then times forward+backward for B = 65,536, M = 7, K = 256, e = 16 and 64: Triton vs torch
eager vs torch.compile, with the achieved memory bandwidth against the bytes that must move.
"""

from __future__ import annotations

import os
import sys
import time

import torch

from moc_fast.kernels import moc_embedding, moc_embedding_torch

B, M, K = 65_536, 7, 256
PEAK_TBS = {"H100": 3.35, "H200": 4.8, "A100": 2.0}  # HBM peak, TB/s (SXM parts)


def timed(fn, *args, reps=50):
    for _ in range(5):
        fn(*args)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn(*args)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def bytes_moved(e: int) -> int:
    """Floor of HBM traffic for fwd+bwd: codes read twice, gathered rows read twice (forward and
    the backward's recompute), output written, dout read, table gradient scattered (read +
    write), the (B, r) pre-activation written and read."""
    r = M * e // 2
    rows = B * M * e * 4
    return 2 * B * M * 8 + 2 * rows + rows + rows + 2 * rows + 2 * B * r * 4


def main() -> int:
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_TBS.items() if k in name), None)
    x = torch.empty(1 << 28, dtype=torch.float32, device=dev)
    copy_s = timed(lambda: x.clone(), reps=20)
    copy_tbs = 2 * x.numel() * 4 / copy_s / 1e12
    lines = [
        f"## {name}: MoCEmbedding fwd+bwd, B={B}, M={M}, K={K}, gate, relu\n",
        f"HBM peak (spec) {peak} TB/s; measured device copy {copy_tbs:.2f} TB/s\n",
        "| e | impl | ms | speed-up vs eager | GB/s (floor bytes / time) | % of spec peak "
        "| max rel err |",
        "|---|---|---|---|---|---|---|",
    ]
    ok = True
    for e in (16, 64):
        g = torch.Generator(device="cpu").manual_seed(e)
        r = M * e // 2
        codes = torch.randint(0, K, (B, M), generator=g).to(dev)
        base = [
            torch.randn(M, K, e, generator=g),
            torch.randn(M * e, r, generator=g) / (M * e) ** 0.5,
            0.1 * torch.randn(r, generator=g),
            torch.randn(r, M * e, generator=g) / r**0.5,
            0.1 * torch.randn(M * e, generator=g),
        ]
        dout = torch.randn(B, M, e, device=dev)
        impls = {
            "torch-eager": moc_embedding_torch,
            "torch-compile": torch.compile(moc_embedding_torch, dynamic=False),
            "triton": moc_embedding,
        }
        ref_grads = None
        times = {}
        for label, fn in impls.items():
            params = [p.to(dev).requires_grad_() for p in base]

            def step(fn=fn, params=params, codes=codes, dout=dout):
                for p in params:
                    p.grad = None
                fn(codes, *params, "gate", "relu").backward(dout)

            step()
            grads = [p.grad.clone() for p in params]
            if ref_grads is None:
                ref_grads = grads
            err = max(
                ((a - b).abs().max() / (b.abs().max() + 1e-12)).item()
                for a, b in zip(grads, ref_grads, strict=True)
            )
            ok &= err < 1e-4
            times[label] = timed(step)
            gbs = bytes_moved(e) / times[label] / 1e9
            pct = f"{100 * gbs / 1e3 / peak:.0f}%" if peak else "?"
            lines.append(
                f"| {e} | {label} | {times[label] * 1e3:.3f} | "
                f"{times['torch-eager'] / times[label]:.2f}x | {gbs:.0f} | {pct} | {err:.1e} |"
            )
    text = "\n".join(lines)
    print(text)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_bench.md"), "w") as f:
            f.write(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
