#!/usr/bin/env bash
# Portable release artefacts into dist/: an abi3 wheel that auditwheel accepts as
# manylinux2014 (glibc 2.17+, built with zig as the linker; maturin --zig) and an sdist.
# Then the wheel is installed into a clean venv, with no Rust on PATH and without torch, and
# smoke-tested (scripts/smoke_wheel.py). Needs the dev extra (ziglang, auditwheel, maturin).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf dist
# maturin finds zig through `python3 -m ziglang` on PATH: the venv python first.
env PATH="$(dirname "$PY"):$PATH" "$PY" -m maturin build --release --compatibility manylinux2014 \
  --zig --out dist
"$PY" -m maturin sdist --out dist
wheel=$(ls dist/*.whl)
"$PY" -m auditwheel show "$wheel" | tee dist/auditwheel.txt
grep -Eq 'manylinux_2_17_x86_64|manylinux2014_x86_64' dist/auditwheel.txt || {
  echo "build_wheels: $wheel is not manylinux2014-compatible" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
base_python=$("$PY" -c 'import sys; print(sys._base_executable)')
"$base_python" -m venv "$tmp/venv"
# No cargo/rustc on PATH: the wheel must install as a binary.
env PATH="$tmp/venv/bin:/usr/bin:/bin" "$tmp/venv/bin/python" -m pip install -q "$wheel"
env PATH="$tmp/venv/bin:/usr/bin:/bin" "$tmp/venv/bin/python" scripts/smoke_wheel.py
ls -l dist
