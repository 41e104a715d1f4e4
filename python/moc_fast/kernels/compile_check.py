"""Compile every MoC kernel variant ahead of time for a GPU target, no GPU needed.

    python -m moc_fast.kernels.compile_check --cc 80 90      # prints one JSON line per variant
    python -m moc_fast.kernels.compile_check --quick         # the headline and largest shapes,
                                                             # most dtype × activation pairs

Triton's own compiler builds each kernel exactly as `moc_embedding` launches it
(`kernel_variants` is shared with the launcher), every autotune candidate included, for every
fusion × activation × dtype × precision over a grid of shapes up to the largest supported
one. Each record has the shared memory one program needs against the target's limit, and the
registers per thread and spill bytes that `ptxas -v` reports on the kernel's PTX (Triton's
bundled ptxas, the newer one where two ship), with the occupancy that follows: resident warps
per SM from registers and shared memory. Run it with TRITON_INTERPRET unset: the
interpreter's kernels cannot be compiled.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile

import torch

from moc_fast.kernels.moc_embedding import ACTIVATIONS, DTYPES, MODES, kernel_variants

# (M, e, r): tiny, non-powers of two, the paper's shapes, (7, 64, 224) that did not fit
# before tiling, and the largest supported (16, 128, 1024).
SHAPES = [(1, 1, 1), (3, 16, 24), (5, 12, 30), (7, 16, 56), (7, 32, 112), (7, 64, 224),
          (16, 128, 1024)]  # fmt: skip
QUICK_SHAPES = [(7, 64, 224), (16, 128, 1024)]
# --quick covers each activation and each dtype against every shape and mode, not every pair:
# every dtype and precision with SiLU (the most live values: exp and a divide), and every
# activation in bfloat16: 148 of the full product's 234 variants; the slow test builds it all.
QUICK_ACT, QUICK_DTYPE = "silu", torch.bfloat16
SHARED_LIMIT = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448}  # opt-in bytes per block
SHARED_PER_SM = {80: 167_936, 86: 102_400, 89: 102_400, 90: 233_472}
MAX_WARPS_PER_SM = {80: 64, 86: 48, 89: 48, 90: 64}
REGISTERS_PER_SM = 65_536


def unique_variants(shapes=SHAPES, quick: bool = False):
    """Distinct (kernel, signature, constexprs, options) over the grid, each with one shape
    using it; `quick`: only the combinations with QUICK_ACT or QUICK_DTYPE."""
    seen = {}
    for (m, e, r), mode, act, dtype in itertools.product(shapes, MODES, ACTIVATIONS, DTYPES):
        if quick and act != QUICK_ACT and dtype != QUICK_DTYPE:
            continue
        for prec in ("ieee", "tf32") if dtype == torch.float32 else ("tf32",):
            for variant in kernel_variants(m, e, r, mode, act, dtype, prec):
                name, _, sig, constexprs, options = variant
                key = (name, tuple(sig.items()), tuple(constexprs.items()),
                       tuple(options.items()))  # fmt: skip
                where = dict(M=m, e=e, r=r, mode=mode, act=act, dtype=str(dtype)[6:], prec=prec)
                seen.setdefault(key, (*variant, where))
    return list(seen.values())


def ptxas_usage(ptx: str) -> tuple[int, int]:
    """(registers per thread, spill-store bytes) from `ptxas -v` on the PTX, run with
    Triton's bundled ptxas for the PTX's own target (sm_90a for cc 90)."""
    import triton

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    ptxas = next(p for p in (os.path.join(bin_dir, n) for n in ("ptxas-blackwell", "ptxas"))
                 if os.path.exists(p))  # fmt: skip
    arch = re.search(r"\.target\s+(\S+)", ptx).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        done = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", "-o", os.devnull, path],
                              capture_output=True, text=True, check=True)  # fmt: skip
    regs = re.search(r"Used (\d+) registers", done.stderr)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", done.stderr)
    if regs is None or spills is None:
        raise RuntimeError(f"unexpected ptxas -v output: {done.stderr[-500:]}")
    return int(regs.group(1)), max(int(spills.group(1)), int(spills.group(2)))


def occupancy(cc: int, regs: int, shared: int, num_warps: int) -> int:
    """Resident warps per SM, limited by registers (allocated per warp in units of 256),
    shared memory and the warp slots."""
    per_warp = -(-regs * 32 // 256) * 256
    blocks = min(REGISTERS_PER_SM // (per_warp * num_warps),
                 SHARED_PER_SM[cc] // max(shared + 1024, 1),  # + 1 KB reserved per block
                 MAX_WARPS_PER_SM[cc] // num_warps)  # fmt: skip
    return blocks * num_warps


def compile_all(cc: int, shapes=SHAPES, quick: bool = False):
    """Yield one record per variant (of `unique_variants(shapes, quick)`): name, where,
    blocks, shared bytes against the limit, registers, spills and occupancy."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for name, fn, sig, constexprs, options, where in unique_variants(shapes, quick):
        compiled = triton.compile(
            ASTSource(fn, sig, constexprs=constexprs),
            target=GPUTarget("cuda", cc, 32),
            options=options,
        )
        shared = compiled.metadata.shared
        regs, spills = ptxas_usage(compiled.asm["ptx"])
        yield {
            "cc": cc,
            "kernel": name,
            **where,
            **{k: v for k, v in constexprs.items() if k.startswith("BLOCK")},
            **options,
            "shared": shared,
            "limit": SHARED_LIMIT[cc],
            "fits": shared <= SHARED_LIMIT[cc],
            "registers": regs,
            "spill_bytes": spills,
            "warps_per_sm": occupancy(cc, regs, shared, options["num_warps"]),
            "cubin_bytes": len(compiled.asm["cubin"]),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cc", type=int, nargs="+", default=[80, 90], choices=sorted(SHARED_LIMIT),
                        help="compute capabilities to build for (80 = A100, 90 = H100/H200)")
    parser.add_argument("--quick", action="store_true",
                        help=f"only the shapes {QUICK_SHAPES}, each mode with every dtype "
                        f"({QUICK_ACT}) and every activation ({QUICK_DTYPE})")
    args = parser.parse_args(argv)
    ok = True
    for cc in args.cc:
        shapes = QUICK_SHAPES if args.quick else SHAPES
        for record in compile_all(cc, shapes, quick=args.quick):
            ok &= record["fits"] and record["spill_bytes"] == 0
            print(json.dumps(record), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
