"""`maskrt quantize` produces a graph whose network convolutions run in int8: ONNX Runtime fuses each
DequantizeLinear -> Conv -> QuantizeLinear into one QLinearConv only when the bias is an initializer, and torch.onnx
feeds equal biases (a freshly initialised model's zeros) through Identity nodes. (The end-to-end INT8 pipeline with
its parity gate is tests/test_export_parity.py::test_int8_quantize_then_parity.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import random_checkpoint
from onnx import TensorProto, helper
from PIL import Image

from maskrt.export.onnx_export import export_checkpoint
from maskrt.runtime.quantize.calibration import NETWORKS, inline_shared_constants, quantize_export


def _optimized_ops(path: Path, tmp_path: Path) -> list[tuple[str, str]]:
    """(op type, name) of the nodes ONNX Runtime runs after its graph optimizations (QDQ fusion included)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [(n.op_type, n.name) for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


@pytest.mark.slow
def test_network_convolutions_run_in_int8(tmp_path: Path) -> None:
    ckpt = random_checkpoint(tmp_path / "slim.pt", "slim", num_classes=3)
    export_checkpoint(ckpt, tmp_path / "export")
    images = tmp_path / "calibration"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8)).save(images / f"{i}.png")
    quantize_export(tmp_path / "export", images, tmp_path / "int8", images=2, progress=False)
    ops = _optimized_ops(tmp_path / "int8" / "model.int8.onnx", tmp_path)
    fp32_convs = [name for op, name in ops if op == "Conv" and name.startswith(NETWORKS)]
    int8_convs = [name for op, name in ops if op == "QLinearConv"]
    assert fp32_convs == [], fp32_convs
    assert len(int8_convs) >= 20, int8_convs


def test_inline_shared_constants_keeps_the_values() -> None:
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [2], [0.5, -1.0])
    nodes = [
        helper.make_node("Identity", ["bias"], ["bias_copy"]),
        helper.make_node("Add", ["x", "bias"], ["y"]),
        helper.make_node("Add", ["y", "bias_copy"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])], [bias])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.array([1.0, 2.0], np.float32)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert inline_shared_constants(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Add", "Add"]
    assert {t.name for t in model.graph.initializer} == {"bias", "bias_copy"}
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.array_equal(before[0], after[0]) and np.array_equal(after[0], [2.0, 0.0])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibrations_take_image_dependent_shapes(tmp_path: Path, method: str) -> None:
    """The mask head's activations have one row per detection, so their shapes differ between calibration images;
    ONNX Runtime's histogram collectors stack them with np.asarray, which raises without
    `ort_internals.flat_histograms`."""
    ckpt = random_checkpoint(tmp_path / "slim.pt", "slim", num_classes=3, seed=2)
    export_checkpoint(ckpt, tmp_path / "export")
    images = tmp_path / "calibration"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(96, 128), (128, 96), (64, 64)]):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(images / f"{i}.png")
    info = quantize_export(tmp_path / "export", images, tmp_path / "int8", images=3, method=method, progress=False)
    assert info.quantization["method"] == method
    assert (tmp_path / "int8" / "model.int8.onnx").is_file()
