"""The OpenVINO backend (issue 23): model.onnx in f32 and bf16 and model.int8.onnx on OpenVINO's CPU plugin, gated
against plain torchvision `model(images)` with the two-sided gates of their precision, on the real-accuracy model;
an injected fault fails them; bad options are one-line errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino", reason="the openvino extra is not installed (make test installs it)")

from conftest import VAL_FP32  # noqa: E402

from maskrt.runtime.backends.openvino_runtime import cpu_supports_bf16  # noqa: E402
from maskrt.runtime.parity.compare import Candidate  # noqa: E402
from maskrt.runtime.parity.faults import inject  # noqa: E402
from maskrt.runtime.parity.gates import Gates  # noqa: E402

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "maskrt.cli"]
BF16 = pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bfloat16 (AVX-512 BF16 or AMX)")


@pytest.fixture(scope="module")
def faulty_reports(accurate_model, accurate_export: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: ANN001
    """An injected fault (box-head NMS IoU 0.5 -> 0.9) on OpenVINO in f32 and bf16, over the first VAL_FP32 validation
    images (the clean candidates: conftest.low_precision_reports, on the whole split)."""
    root = tmp_path_factory.mktemp("openvino")
    faulty = inject(accurate_export, "nms_iou", root / "faulty", graphs=["portable"])
    specs = {"f32": Candidate(faulty, root / "faulty_f32", backend="openvino", precision="f32")}
    if cpu_supports_bf16():
        specs["bf16"] = Candidate(faulty, root / "faulty_bf16", backend="openvino", precision="bf16")
    # OpenVINO runs in a process of its own, as `maskrt parity` runs it (when every backend made its own openvino.Core,
    # an in-process run was followed by a SIGSEGV some tests later; one Core per process now: README, OpenVINO)
    script = ("import pickle, sys; from maskrt.runtime.parity.compare import run_parity_many; "
              "ckpt, specs, data, limit = pickle.load(sys.stdin.buffer); "
              "run_parity_many(ckpt, specs, data, limit=limit, progress=False, figures=False)")
    proc = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(
        (accurate_model.checkpoint, list(specs.values()), accurate_model.data, VAL_FP32)), capture_output=True,
        timeout=900)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return {name: json.loads((Path(spec.out) / "report.json").read_text()) for name, spec in specs.items()}


def _passes(report: dict, precision: str) -> None:
    summary = report["summary"]
    assert report["backend"] == "openvino" and report["precision"] == precision
    assert summary["reference_detections_above_floor"] >= 1000, summary  # the whole split: evidence, not an empty pass
    assert summary["coco"] is not None  # the dAP gates ran (COCO split)
    assert report["verdict"] == "passed", report["reason"]
    expected = Gates.for_precision(precision)
    assert report["tolerances"]["min_recall"] == expected.min_recall
    assert report["machine"]["cpu"] and isinstance(report["machine"]["isa"], list)


def test_f32_passes_the_fp32_gates(low_precision_reports: dict) -> None:
    _passes(low_precision_reports["openvino_f32"], "fp32")


@BF16
def test_bf16_passes_the_bf16_gates(low_precision_reports: dict) -> None:
    _passes(low_precision_reports["openvino_bf16"], "bf16")


def test_int8_graph_passes_the_int8_gates(low_precision_reports: dict) -> None:
    _passes(low_precision_reports["openvino_int8"], "int8")


@pytest.mark.parametrize("precision", ["f32", pytest.param("bf16", marks=BF16)])
def test_an_injected_fault_fails_on_openvino(faulty_reports: dict, precision: str) -> None:
    report = faulty_reports[precision]
    assert report["verdict"] == "failed" and report["summary"]["unmatched_candidate_detections"] > 0, report["reason"]
    assert report["summary"]["reference_detections_above_floor"] >= 50


@pytest.mark.parametrize(("args", "message"), [
    (["--graph", "trt"], "holds maskrt's TensorRT plugin ops"),
    (["--backend", "onnxruntime", "--precision", "bf16"], "needs --backend openvino"),
    (["--device", "cuda"], "runs on the CPU"),
])
def test_bad_openvino_options_are_one_line_errors(accurate_export: Path, tmp_path: Path, args: list[str],
                                                  message: str) -> None:
    argv = ["predict", "--model", str(accurate_export), "--backend", "openvino", *args, "--out", str(tmp_path / "o"),
            str(_an_image(tmp_path))]  # a row's own --backend comes last and wins
    proc = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr


def _an_image(tmp_path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (64, 48), (90, 20, 200)).save(tmp_path / "a.png")
    return tmp_path / "a.png"

