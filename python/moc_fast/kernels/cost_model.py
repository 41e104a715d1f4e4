"""A roofline cost model of MoCEmbedding forward + backward on A100, H100 and H200.

    python -m moc_fast.kernels.cost_model            # the tables of docs/gpu.md

Every variant is a list of kernels, each with the HBM bytes it moves and the FLOPs it does.
A kernel takes max(bytes / (η_mem · BW), FLOPs / (η · peak)) plus a launch, where η is the
fraction of the card's spec peak that kind of kernel reaches; the variant's time is the sum
(kernels do not overlap). These are *modelled* times: no GPU has run the kernels yet, and the
η values below are assumptions, stated so that a device run can replace them.

Byte counting: tables, weights and their gradients (≤ 8 MiB at the largest supported shape)
live in L2 and cost no HBM traffic; every (B, M·e) or (B, r) activation is read or written
once per pass over it; a kernel whose grid walks a row block's column tiles together reads
that row block's inputs from HBM once (docs/gpu.md explains why and when).
`choose_backend` (what `backend="auto"` calls) picks the fused Triton kernels where this model
says they beat torch: torch.compile's graph when called under compile, eager otherwise.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from moc_fast.kernels.moc_embedding import (
    DTYPES,
    MODES,
    _prec,
    check_supported,
    launch_configs,
    triton_unsupported_reason,
)


@dataclass(frozen=True)
class GPU:
    name: str
    hbm_tbs: float  # spec HBM bandwidth, TB/s
    fp32_tflops: float  # non-tensor-core FP32 (IEEE dots)
    tf32_tflops: float  # dense TF32 tensor cores
    bf16_tflops: float  # dense BF16/FP16 tensor cores (cuBLAS on 16-bit inputs)
    sms: int
    l2_mib: int


GPUS = {  # SXM parts, NVIDIA data sheets (dense, no sparsity)
    "A100": GPU("A100", 2.039, 19.5, 156.0, 312.0, 108, 40),
    "H100": GPU("H100", 3.35, 67.0, 494.7, 989.4, 132, 50),
    "H200": GPU("H200", 4.8, 67.0, 494.7, 989.4, 132, 50),
}
# Fractions of spec peak (assumed; a device run replaces them with measured ones).
ETA_MEM = 0.85  # streaming kernels vs spec HBM bandwidth
ETA_CUBLAS = 0.80  # cuBLAS GEMMs with thousands of rows
ETA_TRITON = {"tf32": 0.60, "ieee": 0.45}  # tl.dot at 64-128 × 64 × 32 tiles, gathers fused
ATOMICS_PER_S = 1.0e12  # relaxed fp32 atomic adds that L2 retires per second, spread addresses
LAUNCH_S = 4e-6  # per kernel launch, stream-ordered


@dataclass(frozen=True)
class Kernel:
    name: str
    bytes: float  # HBM traffic
    flops: float
    engine: str  # "triton" (tl.dot), "cublas" or "memory" (no dot)
    atomics: float = 0.0

    def seconds(self, gpu: GPU, prec: str, dtype_bytes: int) -> float:
        mem = self.bytes / (ETA_MEM * gpu.hbm_tbs * 1e12)
        if self.engine == "triton":
            peak = (gpu.tf32_tflops if prec == "tf32" else gpu.fp32_tflops) * ETA_TRITON[prec]
        elif self.engine == "cublas":
            full = gpu.bf16_tflops if dtype_bytes == 2 else gpu.tf32_tflops
            peak = (full if prec == "tf32" or dtype_bytes == 2 else gpu.fp32_tflops) * ETA_CUBLAS
        else:
            peak = float("inf")
        compute = self.flops / (peak * 1e12)
        return max(mem, compute) + self.atomics / ATOMICS_PER_S + LAUNCH_S


VARIANTS = ("fused-v1", "fused", "split", "compile", "eager")


def kernels(variant: str, b: int, m: int, e: int, r: int, mode: str, dtype_bytes: int = 4,
            sms: int = 132) -> list[Kernel]:  # fmt: skip
    """The kernels one forward + backward launches, with their bytes and FLOPs.

    - "fused-v1": the first Triton kernels: row blocks on the fastest grid axis, so h, du and
      dh are re-read from HBM by every column tile; bias gradients as separate sums.
    - "fused": the shipped kernels: column tiles of a row block adjacent (one HBM read of h,
      du, dh per pass), bias gradients folded into the weight-gradient GEMMs, the gate's
      direct table gradient scattered by the gate backward instead of stored and re-read
      (atomic path; the deterministic path stores it, +2 (B, M·e) passes).
    - "split": Triton gather/scatter and fused epilogues around cuBLAS GEMMs (Liger-Kernel
      style; E materialised once for the two GEMMs that read it).
    - "compile": torch.compile (Inductor) on the reference: cuBLAS GEMMs, generated
      pointwise/gather kernels, the embedding backward as an atomic scatter.
    - "eager": the reference op by op.
    """
    s, f = dtype_bytes, 4
    X, Xs, H, Hs = b * m * e * f, b * m * e * s, b * r * f, b * r * s
    C = b * m * 8  # int64 codes
    G = 2.0 * b * m * e * r  # one GEMM over the batch
    atom = float(b * m * e)
    part = 2 * 2 * sms * 64 * 64 * 4  # weight-gradient split partials, written and summed
    gate, fused_mode = mode == "gate", mode != "none"
    K = Kernel
    if not fused_mode:  # gather forward, scatter backward: the same in every variant
        scatter = "scatter" if variant.startswith(("fused", "split")) else "embedding_bwd"
        return [K("gather", C + Xs, 0, "memory"), K(scatter, C + Xs, 0, "memory", atom)]
    if variant in ("fused", "fused-v1"):
        v1 = variant == "fused-v1"
        ncol_me = -(-m * e // 64) if v1 else 1  # re-reads of a (B, ·) input per column tile
        ncol_r = -(-r // 64) if v1 else 1
        out = [K("_down", C * ncol_r + H, G, "triton"),
               K("_up", C + H * ncol_me + Xs, G, "triton")]  # fmt: skip
        if gate:  # v1 stored dE_direct; now it is scattered at once (atomics, no HBM)
            out.append(K("_bwd_gate", C + H * ncol_me + Xs + (2 * X if v1 else X), G, "triton",
                         0.0 if v1 else atom))  # fmt: skip
        du = X if gate else Xs
        direct = (X if v1 else 0) if gate else Xs  # dE_direct read back by _bwd_de
        out += [K("_bwd_dh", du * ncol_r + 2 * H, G, "triton"),
                K("_bwd_de", H * ncol_me + direct + C, G, "triton", atom),
                K("_wgrad_down", C + H + part, G, "triton"),
                K("_wgrad_up", H + du + part, G, "triton")]  # fmt: skip
        if v1:
            out += [K("sum_dh", H, 0, "memory"), K("sum_du", du, 0, "memory")]
        return out
    if variant == "split":
        out = [K("gather", C + Xs, 0, "memory"), K("mm_down", Xs + Hs, G, "cublas"),
               K("act", 2 * Hs, 0, "memory"), K("mm_up", Hs + Xs, G, "cublas"),
               K("epilogue", C + 2 * Xs, 0, "memory")]  # fmt: skip
        out += [K("bwd_gate", C + 2 * Xs + 2 * X, 0, "memory")] if gate else []
        du = X if gate else Xs
        return out + [K("mm_dw_up", Hs + du, G, "cublas"), K("mm_da", du + H, G, "cublas"),
                      K("dh_epilogue", 3 * H, 0, "memory"), K("mm_dw_down", Xs + H, G, "cublas"),
                      K("mm_de_plus_direct", H + 2 * X, G, "cublas"),
                      K("scatter", X + C, 0, "memory", atom)]  # fmt: skip
    if variant in ("compile", "eager"):
        out = [K("gather", C + Xs, 0, "memory"), K("addmm_down", Xs + Hs, G, "cublas"),
               K("act", 2 * Hs, 0, "memory"), K("addmm_up", Hs + Xs, G, "cublas"),
               K("fuse", C + 2 * Xs, 0, "memory")]  # fmt: skip
        if gate:
            out += [K("gate_bwd", C + 2 * Xs + 2 * Xs, 0, "memory")]
        out += [K("sum_du", Xs, 0, "memory"), K("mm_dw_up", Hs + Xs, G, "cublas"),
                K("mm_da", Xs + Hs, G, "cublas"), K("act_bwd", 3 * Hs, 0, "memory"),
                K("sum_dh", Hs, 0, "memory"), K("mm_dw_down", Xs + Hs, G, "cublas"),
                K("mm_de", Hs + Xs, G, "cublas"),
                K("add_scatter", 2 * Xs + C, 0, "memory", atom)]  # fmt: skip
        if variant == "eager":  # unfused: sigmoid, products and the add as separate passes
            out += [K("sigmoid", 2 * Xs, 0, "memory"), K("mul", 3 * Xs, 0, "memory"),
                    K("gate_bwd_parts", 6 * Xs, 0, "memory"), K("add", 3 * Xs, 0, "memory")]
        return out
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def floor_seconds(gpu: GPU, b: int, m: int, e: int, r: int, prec: str,
                  dtype_bytes: int = 4) -> tuple[float, float, float]:  # fmt: skip
    """(roofline floor, its memory part, its compute part): the unavoidable HBM bytes (codes
    read twice, out written, dout read, h written once and read once) at η_mem · BW against the
    six GEMMs at the best engine's η · peak; whichever is larger."""
    s = dtype_bytes
    bytes_ = 2 * b * m * 8 + 2 * b * m * e * s + 2 * b * r * 4
    flops = 6 * 2.0 * b * m * e * r
    mem = bytes_ / (ETA_MEM * gpu.hbm_tbs * 1e12)
    if prec == "tf32" or s == 2:
        peak = (gpu.bf16_tflops if s == 2 else gpu.tf32_tflops) * ETA_CUBLAS
    else:
        peak = gpu.fp32_tflops * ETA_CUBLAS
    compute = flops / (peak * 1e12)
    return max(mem, compute), mem, compute


def model(variant: str, gpu: GPU, b: int, m: int, e: int, r: int, mode: str, prec: str,
          dtype_bytes: int = 4) -> dict[str, float]:  # fmt: skip
    """Modelled bytes, FLOPs and seconds of one forward + backward."""
    ks = kernels(variant, b, m, e, r, mode, dtype_bytes, gpu.sms)
    return {
        "bytes": sum(k.bytes for k in ks),
        "flops": sum(k.flops for k in ks),
        "seconds": sum(k.seconds(gpu, prec, dtype_bytes) for k in ks),
        "kernels": len(ks),
    }


def gpu_for(device: torch.device) -> GPU:
    """The modelled card nearest to `device`: by name, else by compute capability."""
    name = torch.cuda.get_device_name(device)
    for key, gpu in GPUS.items():
        if key in name:
            return gpu
    major, _ = torch.cuda.get_device_capability(device)
    return GPUS["A100"] if major < 9 else GPUS["H100"]


def choose_backend(
    device: torch.device, dtype: torch.dtype, m: int, e: int, r: int, mode: str, b: int,
    compiling: bool | None = None, gpu: GPU | None = None,
) -> str:  # fmt: skip
    """"triton" where the fused kernels can run and the model says they beat the torch path
    that would run instead (torch.compile's graph when `compiling`, eager otherwise), else
    "torch"."""
    if dtype not in DTYPES or mode not in MODES or check_supported(m, e, r) is not None:
        return "torch"
    if gpu is None:
        if triton_unsupported_reason(device) is not None:
            return "torch"
        gpu = gpu_for(device)
    if compiling is None:
        compiling = torch.compiler.is_compiling()
    prec, size = _prec(dtype), torch.empty(0, dtype=dtype).element_size()
    fused = model("fused", gpu, b, m, e, r, mode, prec, size)["seconds"]
    rival = model("compile" if compiling else "eager", gpu, b, m, e, r, mode, prec, size)
    return "triton" if fused < rival["seconds"] else "torch"


HEADLINE = dict(b=65_536, m=7, e=64, r=224, mode="gate")


def table(b: int, m: int, e: int, r: int, mode: str) -> str:
    """Markdown: every variant on every card in both fp32 precisions."""
    lines = [f"B = {b:,}, M = {m}, e = {e}, r = {r}, {mode}, fp32 "
             f"(tiles: {launch_configs(m, e, r)['_up'][0]})", "",
             "| card | precision | variant | kernels | HBM GB | GFLOP | modelled ms "
             "| vs compile | vs floor |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for gpu in GPUS.values():
        for prec in ("ieee", "tf32"):
            floor = floor_seconds(gpu, b, m, e, r, prec)[0]
            base = model("compile", gpu, b, m, e, r, mode, prec)["seconds"]
            for variant in VARIANTS:
                res = model(variant, gpu, b, m, e, r, mode, prec)
                lines.append(f"| {gpu.name} | {prec} | {variant} | {res['kernels']} "
                             f"| {res['bytes'] / 1e9:.2f} | {res['flops'] / 1e9:.0f} "
                             f"| {1e3 * res['seconds']:.3f} | {res['seconds'] / base:.2f}x "
                             f"| {res['seconds'] / floor:.2f}x |")  # fmt: skip
            lines.append(f"| {gpu.name} | {prec} | *floor* | | | | {1e3 * floor:.3f} | | 1.00x |")
    return "\n".join(lines)


def kernel_table(b: int, m: int, e: int, r: int, mode: str, gpu: GPU, prec: str) -> str:
    """Markdown: every kernel of every variant with its bytes, FLOPs and modelled time."""
    lines = [f"{gpu.name}, {prec}: B = {b:,}, M = {m}, e = {e}, r = {r}, {mode}", "",
             "| variant | kernel | engine | HBM MB | GFLOP | atomics (M) | modelled µs |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for variant in VARIANTS:
        for k in kernels(variant, b, m, e, r, mode, 4, gpu.sms):
            lines.append(f"| {variant} | {k.name} | {k.engine} | {k.bytes / 1e6:.0f} "
                         f"| {k.flops / 1e9:.1f} | {k.atomics / 1e6:.0f} "
                         f"| {1e6 * k.seconds(gpu, prec, 4):.0f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--b", type=int, default=HEADLINE["b"])
    parser.add_argument("--shapes", default="7,64,224;3,16,24;7,16,56;16,128,1024",
                        help="M,e,r triples separated by ';'")  # fmt: skip
    parser.add_argument("--mode", default="gate", choices=MODES[1:])
    parser.add_argument("--kernels", metavar="CARD", choices=sorted(GPUS),
                        help="per-kernel rows on this card (TF32) instead")  # fmt: skip
    args = parser.parse_args(argv)
    for shape in args.shapes.split(";"):
        m, e, r = (int(x) for x in shape.split(","))
        if args.kernels:
            print(kernel_table(args.b, m, e, r, args.mode, GPUS[args.kernels], "tf32"), end="\n\n")
            continue
        print(table(args.b, m, e, r, args.mode), end="\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
