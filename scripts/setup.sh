#!/usr/bin/env bash
# Build the Rust extension and install moc_fast with its test/bench extras into ./.venv.
# Idempotent: reuses the venv and the cargo build cache.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
