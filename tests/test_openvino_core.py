"""One `openvino.Core` per process (runtime/openvino_backend.openvino_core): every OpenVINO backend, `maskrt layers`'
OpenVINO side and the bf16 check share it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import random_checkpoint
from PIL import Image

pytest.importorskip("openvino", reason="the openvino extra is not installed (make test installs it)")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random slim export with its INT8 graph (model.onnx and model.int8.onnx in one folder)."""
    from maskrt.export.onnx_export import export_checkpoint
    from maskrt.runtime.quantize.calibration import quantize_export

    root = tmp_path_factory.mktemp("openvino_core")
    random_checkpoint(root / "slim.pt")
    export_checkpoint(root / "slim.pt", root / "fp", dynamic_batch=True)
    (root / "calibration").mkdir()
    for i in range(3):
        image = np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "calibration" / f"{i}.png")
    quantize_export(root / "fp", root / "calibration", root / "int8", progress=False)
    return root / "int8"


def test_every_backend_shares_one_openvino_core(export: Path) -> None:
    """One `openvino.Core` per process, however many compiled models: a second Core beside the first is the known
    crash (openvinotoolkit/openvino#35338, ultralytics#25864); here a pytest process that ran OpenVINO f32, bf16 and
    INT8 compiled models side by side died of SIGSEGV a few tests later. Counted in a process of its own."""
    script = """
import sys
import numpy as np
import openvino
from maskrt.runtime.parity.layers_run import OpenVinoSide
from maskrt.runtime.backends.openvino_runtime import cpu_supports_bf16
from maskrt.runtime.predictor import Predictor
made = []
class Counted(openvino.Core):
    def __init__(self, *args, **kwargs):
        made.append(1)
        super().__init__(*args, **kwargs)
openvino.Core = Counted
export = sys.argv[1]
runs = [("portable", "f32"), ("portable_int8", "f32")] + ([("portable", "bf16")] if cpu_supports_bf16() else [])
predictors = [Predictor.from_export(export, backend="openvino", graph=g, precision=p, threads=1) for g, p in runs]
image = np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)
for predictor in predictors + predictors:
    predictor.predict([image])
OpenVinoSide(__import__("pathlib").Path(export) / "model.onnx", "f32", 1, None)
cpu_supports_bf16()
print(len(made), len(predictors))
"""
    proc = subprocess.run([sys.executable, "-c", script, str(export)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cores, predictors = map(int, proc.stdout.split())
    assert predictors >= 2 and cores == 1
