#!/usr/bin/env bash
# The single device call: install the abi3 wheel built here, smoke the op, bench under a
# 6-minute budget, and print the table that goes into benches/RESULTS.md.
#
#   bash scripts/build_wheels.sh                    # here: dist/moc_fast-*-abi3-*.whl
#   bash benches/gpu_check.sh                       # on the GPU machine (the device tool)
#   REHEARSAL=1 bash benches/gpu_check.sh           # here, on Triton's interpreter, tiny sizes
#
# Everything lands in $OUT (default ./gpu_out): gpu_bench.jsonl grows one line per finished
# item, so whatever ends the call, what finished comes back.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-$PWD/gpu_out}
BUDGET=${BUDGET:-360}
mkdir -p "$OUT"
args=()
if [ -n "${REHEARSAL:-}" ]; then
  args=(--smoke --impls "${IMPLS:-torch-eager,triton}")
  echo "rehearsal: the installed moc_fast, Triton's interpreter, tiny sizes"
else
  wheel=$(ls dist/moc_fast-*abi3*.whl 2>/dev/null | head -1)
  [ -n "$wheel" ] || { echo "gpu_check: no abi3 wheel in dist/ (run scripts/build_wheels.sh)"; exit 2; }
  "$PY" -m pip install -q --no-deps --force-reinstall "$wheel" || exit 2
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv \
    | tee "$OUT/nvidia-smi.csv"
fi
export TRITON_DEFAULT_FP_FUSION=1
# Leave 60 s after the budget for the item in flight; then the table, from what finished.
timeout --signal=TERM $((${BUDGET%.*} + 60)) "$PY" benches/gpu_bench.py --budget "$BUDGET" \
  --out "$OUT/gpu_bench.jsonl" "${args[@]}" > "$OUT/gpu_bench.log" 2>&1
status=$?
"$PY" benches/gpu_bench.py --render "$OUT/gpu_bench.jsonl" | tee "$OUT/gpu_bench.md"
tail -5 "$OUT/gpu_bench.log"
exit $status
