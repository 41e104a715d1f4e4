#!/usr/bin/env bash
# Quickstart, command 1: install into ./.venv, then run the main job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/moc-fast demo "$@"
