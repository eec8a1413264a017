#!/usr/bin/env bash
# The GPU suite: run on a machine with a CUDA GPU (never in CPU CI): the gpu-marked tests (launched kernels vs
# torchvision CUDA) and the plugin benchmark.
#   bash scripts/gpu_suite.sh                 # in a checkout whose .venv has maskrt installed (make)
#   bash scripts/gpu_suite.sh dist/maskrt-*.whl
# The second form installs a wheel built elsewhere (`make wheel` on a machine with nvcc; it carries both libraries)
# into this machine's python3 without dependencies and without building anything: for GPU machines that have torch
# but no package index or compiler setup.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 1 ]; then
  PY=${PYTHON:-python3}
  "$PY" -m pip install --quiet --no-deps --force-reinstall "$1"
else
  PY=${PYTHON:-.venv/bin/python}
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
"$PY" -c "import maskrt.plugins as p; print('plugin library:', p.library_path())"
"$PY" -m pytest -m gpu -ra -p no:cacheprovider tests
"$PY" scripts/bench_plugin.py
