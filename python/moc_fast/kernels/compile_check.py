"""Compile every MoC kernel variant ahead of time for a GPU target, no GPU needed.

    python -m moc_fast.kernels.compile_check --cc 80 90      # prints one JSON line per variant

Triton's own compiler with its bundled ptxas builds each kernel exactly as `moc_embedding`
launches it (`kernel_variants` is shared with the launcher) for every fusion × activation ×
dtype × precision over a grid of shapes up to the largest supported one, and reports the
shared memory one program needs against the target's limit. Run it with TRITON_INTERPRET
unset: the interpreter's kernels cannot be compiled.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch

from moc_fast.kernels.moc_embedding import (
    ACTIVATIONS,
    DTYPES,
    MODES,
    NUM_STAGES,
    NUM_WARPS,
    kernel_variants,
)

# (M, e, r): tiny, non-powers of two, the paper's shapes, (7, 64, 224) that did not fit
# before tiling, and the largest supported (16, 128, 1024).
SHAPES = [(1, 1, 1), (3, 16, 24), (5, 12, 30), (7, 16, 56), (7, 32, 112), (7, 64, 224),
          (16, 128, 1024)]  # fmt: skip
SHARED_LIMIT = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448}  # opt-in bytes per block


def unique_variants(shapes=SHAPES):
    """Distinct (kernel, signature, constexprs) over the grid, each with one shape using it."""
    seen = {}
    for (m, e, r), mode, act, dtype in itertools.product(shapes, MODES, ACTIVATIONS, DTYPES):
        for prec in ("ieee", "tf32") if dtype == torch.float32 else ("tf32",):
            for name, fn, sig, constexprs in kernel_variants(m, e, r, mode, act, dtype, prec):
                key = (name, tuple(sig.items()), tuple(constexprs.items()))
                where = dict(M=m, e=e, r=r, mode=mode, act=act, dtype=str(dtype)[6:], prec=prec)
                seen.setdefault(key, (name, fn, sig, constexprs, where))
    return list(seen.values())


def compile_all(cc: int):
    """Yield one record per variant: name, where, shared bytes, limit, fits."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for name, fn, sig, constexprs, where in unique_variants():
        compiled = triton.compile(
            ASTSource(fn, sig, constexprs=constexprs),
            target=GPUTarget("cuda", cc, 32),
            options={"num_warps": NUM_WARPS, "num_stages": NUM_STAGES},
        )
        shared = compiled.metadata.shared
        yield {
            "cc": cc,
            "kernel": name,
            **where,
            **{k: v for k, v in constexprs.items() if k.startswith("BLOCK")},
            "shared": shared,
            "limit": SHARED_LIMIT[cc],
            "fits": shared <= SHARED_LIMIT[cc],
            "cubin_bytes": len(compiled.asm["cubin"]),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cc", type=int, nargs="+", default=[80, 90], choices=sorted(SHARED_LIMIT),
                        help="compute capabilities to build for (80 = A100, 90 = H100/H200)")
    args = parser.parse_args(argv)
    ok = True
    for cc in args.cc:
        for record in compile_all(cc):
            ok &= record["fits"]
            print(json.dumps(record), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
