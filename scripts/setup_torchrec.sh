#!/usr/bin/env bash
# The TorchRec test environment: .venv-torchrec with the torch release that fbgemm-gpu-cpu and
# torchrec 1.8.0 were built for (torch 2.13), and moc_fast from this checkout.
# - fbgemm-gpu-cpu 1.9.0 (with torch 2.14) cannot be used here: its fbgemm_gpu_py.so links
#   libnvidia-ml.so.1 and libcudart, so it does not load on a machine without a GPU driver.
# - torchrec 1.8.0 declares a dependency on the CUDA `fbgemm-gpu`, whose files overwrite the
#   CPU build's; it is installed without dependencies and its others are listed here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-torchrec
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "torch==2.13.*" "fbgemm-gpu-cpu==1.8.0" numpy safetensors tqdm \
    pyyaml pytest hypothesis pyarrow "maturin>=1.7,<2"
"$VENV/bin/pip" install -q --no-deps "torchrec==1.8.0"
"$VENV/bin/pip" install -q pyre-extensions tensordict "torchmetrics==1.0.3"
"$VENV/bin/pip" uninstall -q -y fbgemm-gpu 2>/dev/null || true  # never the CUDA build
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch, fbgemm_gpu, torchrec; print('torch', torch.__version__, 'torchrec', torchrec.__version__)"
