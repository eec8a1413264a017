"""check_graph (export, quantize, build): onnx.checker with full shape inference on the file, and each flavor's op
rules."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from maskrt.core.errors import MaskrtError
from maskrt.export.onnx_export import check_graph


def _matmul(path: Path, b_shape: list[int], op: str = "MatMul", domain: str = "") -> Path:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, b_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"], domain=domain)], "g", [a, b], [y])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_check_graph_runs_full_shape_inference(tmp_path: Path) -> None:
    good = _matmul(tmp_path / "good.onnx", [3, 5])
    model = onnx.load(str(good))
    assert check_graph(good, "portable") == check_graph(good, "portable", model) == {"MatMul": 1}
    bad = _matmul(tmp_path / "bad.onnx", [4, 5])  # valid without shape inference, inconsistent with it
    onnx.checker.check_model(onnx.load(str(bad)))
    with pytest.raises(MaskrtError, match="fails onnx.checker .*Incompatible dimensions"):
        check_graph(bad, "portable", onnx.load(str(bad)))  # the held model does not replace checking the file


def test_check_graph_op_rules(tmp_path: Path) -> None:
    custom = _matmul(tmp_path / "custom.onnx", [3, 5], op="Gemmish", domain="maskrt")
    with pytest.raises(MaskrtError, match="non-standard ops maskrt::Gemmish"):
        check_graph(custom, "portable")
    assert check_graph(custom, "trt") == {"maskrt::Gemmish": 1}
