#!/usr/bin/env bash
# The GPU suite: run on a machine with a CUDA GPU (never in CPU CI).
# Builds the plugin library, runs the gpu-marked tests (launched kernels vs torchvision CUDA) and the
# plugin benchmark. Usage: bash scripts/gpu_suite.sh  (after `make .venv/.installed` or with the venv active)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
"$PY" -m plugins.build
"$PY" -m pytest -m gpu -ra tests
"$PY" scripts/bench_plugin.py
