#!/usr/bin/env bash
# aarch64 (NEON) correctness, cross-built here and run under qemu-user:
#   1. the Rust tests, every kernel against the scalar reference;
#   2. the Python engine tests on an aarch64 CPython (Debian's arm64 python3.11 and numpy,
#      unpacked into target/aarch64-py) against the aarch64 abi3 wheel (maturin --zig).
# This checks correctness only: qemu's timings say nothing about an ARM CPU's speed.
# Installs what it needs if missing: Debian's cross gcc and qemu-user, rustup's aarch64 std.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=aarch64-unknown-linux-gnu
PY=${PY:-.venv/bin/python}
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user gcc-aarch64-linux-gnu \
    libc6-dev-arm64-cross >/dev/null
fi
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
# .cargo/config.toml names the cross linker and the qemu runner for this target.
cargo test --release --target "$TARGET"

[ "${1:-}" = "--rust-only" ] && exit 0
ARM=target/aarch64-py
ROOT=$ARM/root
SITE=$ARM/site
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  rm -rf "$ARM/debs" "$ROOT" && mkdir -p "$ARM/debs" "$ARM/lists/partial" "$ROOT"
  apt_arm=(-oAPT::Architecture=arm64 -oAPT::Architectures=arm64 "-oDir::State::Lists=$PWD/$ARM/lists")
  apt-get "${apt_arm[@]}" update -qq
  (cd "$ARM/debs" && apt-get "${apt_arm[@]}" download -qq python3.11-minimal \
    libpython3.11-minimal libpython3.11-stdlib python3-numpy libc6 libgcc-s1 libstdc++6 \
    libexpat1 zlib1g libffi8 libssl3 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libncursesw6 \
    libtinfo6 libreadline8 libcrypt1 libnsl2 libtirpc3 libblas3 liblapack3 libgfortran5 \
    libzstd1 libgomp1 2>&1 | grep -v "unsandboxed" || true)
  for deb in "$ARM"/debs/*.deb; do dpkg -x "$deb" "$ROOT"; done
  # Debian sets these through update-alternatives, which unpacking does not run.
  ln -sf blas/libblas.so.3 "$ROOT/usr/lib/aarch64-linux-gnu/libblas.so.3"
  ln -sf lapack/liblapack.so.3 "$ROOT/usr/lib/aarch64-linux-gnu/liblapack.so.3"
fi
# The test tools for cp311 aarch64, and this checkout's wheel for aarch64.
rm -rf "$SITE" "$ARM/dist" && mkdir -p "$SITE"
"$PY" -m pip install -q --target "$SITE" --only-binary=:all: --python-version 3.11 \
  --implementation cp --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
  --platform manylinux_2_28_aarch64 pytest hypothesis
env PATH="$(dirname "$PY"):$PATH" "$PY" -m maturin build --release --target "$TARGET" \
  --compatibility manylinux2014 --zig --out "$ARM/dist"
"$PY" -m zipfile -e "$ARM"/dist/*.whl "$SITE"
QEMU="qemu-aarch64 -L $PWD/$ROOT"
export PYTHONPATH="$PWD/$SITE:$PWD/$ROOT/usr/lib/python3/dist-packages"
export MOC_FAST_TEST_PYTHON="$QEMU $PWD/$ROOT/usr/bin/python3.11"
$MOC_FAST_TEST_PYTHON -c "import platform, moc_fast as mf; print('aarch64 Python:', \
platform.machine(), 'kernel', mf.kernel_name(), 'of', mf.available_kernels())"
# Deselected: qemu-user itself aborts in a child forked from a process that already runs
# threads (its assertion `cpu == current_cpu` in cpu_exec); the fork test runs natively in CI.
$MOC_FAST_TEST_PYTHON -m pytest -q -p no:cacheprovider tests/test_engine.py \
  --deselect tests/test_engine.py::test_engine_works_in_a_forked_child_after_use_in_the_parent
