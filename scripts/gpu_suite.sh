#!/usr/bin/env bash
# The GPU suite: run on a machine with a CUDA GPU (never in CPU CI). Steps, each timed, one summary table at the end:
#   1. the gpu-marked tests (launched kernels vs torchvision CUDA and the host build); a test file whose imports this
#      python lacks (a bare GPU machine without onnx) is named and not run
#   2. the plugin benchmark (RoIAlign fp32/fp16, NMS; bandwidth vs the roofline)
#   3. GPU training: slim for 200 steps with --device cuda --amp; the checkpoint loads where no GPU is visible
#      (CUDA_VISIBLE_DEVICES=), and where onnx and onnxruntime are importable it exports and both graphs pass parity on
#      the CPU; then a 1-process torchrun on the GPU (nccl)
#   4. where full TensorRT is importable: a seeded slim model is exported (fp32 + fp16 graphs) and quantized
#      (model.trt.int8.onnx), built into fp32, fp16 and int8 engines (strongly typed, TF32 off), gated with `maskrt
#      parity --backend tensorrt` (|dAP| <= 0.1 fp32, <= 0.3 fp16, <= 1.0 int8) and timed with `maskrt bench`, and
#      each engine run by the C++ runtime (maskrt-infer --backend tensorrt) is held to the Python runtime (`maskrt
#      parity --runtime cpp`); otherwise the step says why it is skipped.
# Usage:
#   bash scripts/gpu_suite.sh                       # in a checkout whose .venv has maskrt installed (make)
#   PYTHON=python3 bash scripts/gpu_suite.sh dist/maskrt-*.whl
# The second form installs a wheel built elsewhere (`make wheel` on a machine with nvcc; it carries both libraries)
# into the machine's python without dependencies and without building anything: for bare GPU machines that have torch
# but no package index. MASKRT_PLUGIN_LIBRARY=/path/libmaskrt_plugins.so runs everything with that library instead.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 1 ]; then
  PY=${PYTHON:-python3}
  "$PY" -m pip install --quiet --no-deps --force-reinstall --no-build-isolation "$1" || exit 1
else
  PY=${PYTHON:-.venv/bin/python}
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_suite: no CUDA GPU visible to torch ($PY) on this machine; run the suite on a GPU machine" >&2
  exit 1
fi
"$PY" -c "import maskrt.plugins as p; print('plugin library:', p.library_path())" || exit 1
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"

SUMMARY=()
FAILED=0
step() {  # step NAME COMMAND...: run, time, record
  local name=$1; shift
  local start=$SECONDS
  echo "== $name"
  if "$@"; then SUMMARY+=("$name|ok|$((SECONDS - start))"); else SUMMARY+=("$name|FAILED|$((SECONDS - start))"); FAILED=1; fi
}
skip() { SUMMARY+=("$1|skipped: $2|0"); echo "== $1: skipped ($2)"; }

# The gpu-marked test files whose imports this python has (bare GPU machines lack e.g. onnx); the others are listed.
mapfile -t GPU_TESTS < <("$PY" - tests <<'EOF'
import ast, importlib, pathlib, sys
sys.path.insert(0, sys.argv[1])  # conftest
for path in sorted(pathlib.Path(sys.argv[1]).glob("test_*.py")):
    source = path.read_text()
    if "pytest.mark.gpu" not in source:
        continue
    missing = None
    for node in ast.parse(source).body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        names += [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError as e:
                missing = missing or str(e)
    if missing:
        print(f"gpu_suite: not running {path} ({missing})", file=sys.stderr)
    else:
        print(path)
EOF
)
if [ ${#GPU_TESTS[@]} -eq 0 ]; then
  SUMMARY+=("gpu tests|FAILED: no test file can be imported|0"); FAILED=1
else
  step "gpu tests (${#GPU_TESTS[@]} files)" "$PY" -m pytest -m gpu -ra -q -p no:cacheprovider "${GPU_TESTS[@]}"
fi
step "plugin benchmark" "$PY" scripts/bench_plugin.py

TRAIN=$(mktemp -d)
M="$PY -m maskrt.cli"
step "shapes data (training)" $M data shapes --out "$TRAIN/data" --train 200 --val 50 --size 128 -q
step "gpu training (slim, 200 steps, cuda, amp)" $M train --data "$TRAIN/data" --out "$TRAIN/run" --iters 200 \
  --device cuda --amp --eval-every 200 -q
step "checkpoint loads without a GPU" env CUDA_VISIBLE_DEVICES= "$PY" - "$TRAIN/run/last.pt" <<'EOF'
import sys, torch
from maskrt.training.checkpoint import load_checkpoint, model_from_checkpoint
raw = torch.load(sys.argv[1], weights_only=True)  # no map_location: any CUDA tensor would fail here
ckpt = load_checkpoint(sys.argv[1])
model_from_checkpoint(ckpt)
floats = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
assert all(v.dtype == torch.float32 for v in floats), "weights are not fp32"
print("amp:", ckpt["train_state"]["amp"], "| metrics:", ckpt["metrics"])
EOF
if "$PY" -c "import onnx, onnxruntime" 2>/dev/null; then
  step "export the GPU-trained checkpoint" env CUDA_VISIBLE_DEVICES= $M export --checkpoint "$TRAIN/run/last.pt" \
    --out "$TRAIN/export" -q
  for graph in portable trt; do
    step "parity $graph (CPU)" env CUDA_VISIBLE_DEVICES= $M parity --checkpoint "$TRAIN/run/last.pt" \
      --model "$TRAIN/export" --graph "$graph" --data "$TRAIN/data" --out "$TRAIN/parity_$graph" -q
  done
else
  skip "export + parity of the GPU-trained model" "onnx / onnxruntime not importable by $PY"
fi
step "torchrun, 1 process, nccl" "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m maskrt.cli train \
  --data "$TRAIN/data" --out "$TRAIN/ddp" --iters 20 --device cuda --eval-every 20 -q

if "$PY" -c "import tensorrt" 2>/dev/null; then
  WORK=$(mktemp -d)
  # The C++ runtime (maskrt-infer) runs each engine too, held to the Python runtime; its binary links OpenVINO's
  # library (the openvino wheel), which a bare GPU machine may lack.
  INFER_SKIP=""
  INFER=$("$PY" -c "from maskrt.runtime.native import infer_binary; print(infer_binary())" 2>&1) || INFER_SKIP="$INFER"
  if [ -z "$INFER_SKIP" ] && ! "$INFER" --help >/dev/null 2>&1; then
    INFER_SKIP="maskrt-infer does not start here (its OpenVINO library: pip install openvino==2026.4.1)"
  fi
  step "shapes data" $M data shapes --out "$WORK/data" --train 8 --val 16 --size 128 -q
  step "seeded slim checkpoint" "$PY" - "$WORK/slim.pt" <<'EOF'
import sys, torch
from maskrt.training.checkpoint import make_checkpoint, save_checkpoint
from maskrt.training.models import build_model, default_model_config
torch.manual_seed(0)
cfg = default_model_config("slim", 3)
classes = [{"id": 1, "name": "circle"}, {"id": 2, "name": "rectangle"}, {"id": 3, "name": "triangle"}]
save_checkpoint(sys.argv[1], make_checkpoint(model_config=cfg, state_dict=build_model(cfg).state_dict(), classes=classes))
EOF
  step "export (fp32 + fp16 graphs)" $M export --checkpoint "$WORK/slim.pt" --out "$WORK/export" --fp16 --dynamic-batch -q
  step "quantize (model.int8.onnx + model.trt.int8.onnx)" $M quantize --model "$WORK/export" \
    --calibration "$WORK/data/train" --images 8 --out "$WORK/export_int8" -q
  for precision in fp32 fp16 int8; do
    model="$WORK/export"
    [ "$precision" = int8 ] && model="$WORK/export_int8"
    step "build $precision engine" $M build --model "$model" --builder tensorrt --precision "$precision" -q
    step "parity tensorrt $precision" $M parity --checkpoint "$WORK/slim.pt" --model "$model/model.$precision.engine" \
      --backend tensorrt --data "$WORK/data" --score-floor 0.05 --out "$WORK/parity_$precision" -q
    step "bench tensorrt $precision" $M bench run --model "$model/model.$precision.engine" --backend tensorrt \
      --iters 50 --json "$WORK/bench_$precision.json" -q
    if [ -n "$INFER_SKIP" ]; then
      skip "C++ runtime tensorrt $precision" "$INFER_SKIP"
    else
      step "C++ runtime tensorrt $precision" $M parity --runtime cpp --backend tensorrt \
        --model "$model/model.$precision.engine" --data "$WORK/data" --min-detections 10 --out "$WORK/cpp_$precision" -q
    fi
  done
else
  skip "TensorRT engines" "no full TensorRT (import tensorrt) on this machine; TensorRT-RTX engines run only on RTX-class GPUs"
fi

echo
printf '%-34s %-10s %s\n' "step" "result" "seconds"
for row in "${SUMMARY[@]}"; do
  IFS='|' read -r name result secs <<<"$row"
  printf '%-34s %-10s %s\n' "$name" "$result" "$secs"
done
exit $FAILED
