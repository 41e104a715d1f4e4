"""The machine code of the built AVX2 kernels, checked for one known regression.

LLVM 22 compiles "load the running minimum, blend in the new value, store it back" into a
masked store (`vmaskmovps`), which is slow on AMD Zen: it made the AVX2 assign 1.4x
slower on Zen 4 while every correctness test passed. A compiler upgrade can bring it back.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess

import pytest

from moc_fast import _native


def functions(asm: str) -> dict[str, str]:
    """Demangled function name -> its disassembly (copies of one generic name concatenated)."""
    out: dict[str, str] = {}
    for block in asm.split("\n\n"):
        head = re.match(r"[0-9a-f]+ <(.+)>:\n", block)
        if head:
            out[head.group(1)] = out.get(head.group(1), "") + block
    return out


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 kernels only")
def test_the_avx2_kernels_contain_no_masked_store():
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils, part of the C toolchain the build links with) is needed"
    run = [objdump, "-d", "-C", "--no-show-raw-insn", _native.__file__]
    asm = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    avx2 = {name: body for name, body in functions(asm).items() if "kernel::avx2::" in name}
    # If the symbols are renamed or stripped, say so instead of passing on nothing.
    assert {"moc_fast::kernel::avx2::tile_argmin", "moc_fast::kernel::avx2::tile"} <= set(avx2)
    masked = {name for name, body in avx2.items() if re.search(r"\bv?p?maskmov", body)}
    assert not masked, f"masked stores (slow on AMD Zen) in {sorted(masked)}"
