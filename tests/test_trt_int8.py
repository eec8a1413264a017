"""model.trt.int8.onnx (issue 35): `maskrt quantize` writes the TensorRT graph with explicit symmetric Q/DQ beside
ONNX Runtime's CPU graph, from the same calibration; `maskrt build --precision int8` refuses a graph TensorRT would
build wrongly. (Its parity on the real-accuracy model: test_parity_faults.py and conftest.low_precision_reports; its
layers: test_layers.py; its TensorRT-RTX engine: test_full_model_rtx.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from maskrt.core.artifacts import ExportInfo
from maskrt.runtime.parity.faults import Fault, inject
from maskrt.runtime.quantize.calibration import NETWORKS
from maskrt.runtime.quantize.tensorrt_qdq import TRT_QUANTIZED_OPS

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "maskrt.cli"]


@pytest.fixture(scope="module")
def quantized(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world export quantized (minmax on 4 training images): model.int8.onnx and model.trt.int8.onnx."""
    from maskrt.runtime.quantize.calibration import quantize_export

    out = tmp_path_factory.mktemp("trt_int8") / "export"
    quantize_export(world / "export", world / "data" / "train", out, images=4, progress=False)
    return out


def _values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_the_tensorrt_graph_has_symmetric_qdq_in_front_of_every_network_operation(quantized: Path) -> None:
    info = ExportInfo.read(quantized)
    assert info.graphs["trt_int8"].file == "model.trt.int8.onnx" and "portable_int8" in info.graphs
    model = onnx.load(str(quantized / "model.trt.int8.onnx"))
    values = _values(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    network = [n for n in model.graph.node if n.op_type in TRT_QUANTIZED_OPS and n.name.startswith(NETWORKS)]
    weighted = [n for n in network if n.op_type in ("Conv", "Gemm")]
    assert len(network) >= 40 and len(weighted) >= 30
    for node in network:  # both operands through a DequantizeLinear: activations, weights, residual branches
        sources = [producers.get(i) for i in node.input[:2]]
        assert all(s is not None and s.op_type == "DequantizeLinear" for s in sources), node.name
    box_head = next(n for n in weighted if n.name.startswith("/box_head/"))  # reads the RoIAlign plugin's output
    assert producers[box_head.input[0]].op_type == "DequantizeLinear"
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zero_points = [values[n.input[2]] for n in qdq if len(n.input) > 2 and n.input[2]]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # symmetric INT8
    assert all(values[n.input[1]].size > 0 and (values[n.input[1]] > 0).all() for n in qdq)
    per_channel = [values[producers[n.input[1]].input[1]] for n in weighted]
    assert all(s.ndim == 1 and s.size > 1 for s in per_channel)  # one weight scale per output channel
    plugins = [n for n in model.graph.node if n.domain not in ("", "ai.onnx")]
    assert len(plugins) == 4 and not any(producers[i].op_type == "QuantizeLinear" for n in plugins for i in n.input
                                         if i in producers)
    assert not any(n.op_type == "DequantizeLinear" and values.get(n.input[0], np.zeros(1, np.int8)).dtype ==
                   np.int32 for n in model.graph.node)  # biases stay float: TensorRT reads no int32 Q/DQ
    record = info.quantization["trt_int8"]
    shared = {producers[n.input[1]].name for n in weighted}  # the RPN head's weights serve every FPN level
    assert record["quantized_nodes"] == len(network) and record["int8_weights"] == len(shared) < len(weighted)
    assert record["qdq"] == len(qdq) and record["excluded_nodes"] == [] and record["ranges"] >= 100


def test_the_cpu_graph_keeps_its_own_scheme(quantized: Path) -> None:
    """model.int8.onnx stays ONNX Runtime's CPU form: uint8 activations with their zero points."""
    model = onnx.load(str(quantized / "model.int8.onnx"))
    values = _values(model)
    activations = [values[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert activations and all(z.dtype == np.uint8 for z in activations)


def _zero_point_3(graph: onnx.GraphProto, kind: str) -> None:
    node = next(n for n in graph.node if n.op_type == "QuantizeLinear")
    tensor = next(t for t in graph.initializer if t.name == node.input[2])
    tensor.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(tensor).shape, 3, np.int8), tensor.name))


def _scale_0(graph: onnx.GraphProto, kind: str) -> None:
    node = next(n for n in graph.node if n.op_type == "DequantizeLinear")
    tensor = next(t for t in graph.initializer if t.name == node.input[1])
    tensor.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(tensor)), tensor.name))


@pytest.mark.parametrize(("edit", "message"), [(_zero_point_3, "has zero point [3]"),
                                                (_scale_0, "has no positive scale")])
def test_a_tampered_graph_is_refused_before_the_build(quantized: Path, tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    """A trt_int8 graph changed after `maskrt quantize` (export.json's sha256 rewritten with it, so only the check
    can see it): `maskrt build --precision int8` exits 2 with one line and writes no engine."""
    bad = inject(quantized, Fault("tampered", "tampered", "a Q/DQ parameter changed", graph=edit), tmp_path / "bad",
                 graphs=["trt_int8"])
    proc = subprocess.run([*CLI, "build", "--model", str(bad), "--precision", "int8", "--builder", "tensorrt-rtx",
                           "--out", str(tmp_path / "e.engine")], capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr
    assert not (tmp_path / "e.engine").exists() and not (tmp_path / "e.engine.json").exists()


def test_a_second_quantization_replaces_both_int8_graphs(quantized: Path, world: Path, tmp_path: Path) -> None:
    """Quantizing a quantized export again (another method) writes both INT8 graphs anew from this calibration."""
    proc = subprocess.run([*CLI, "quantize", "--model", str(quantized), "--calibration", str(world / "data" / "train"),
                           "--images", "2", "--method", "percentile", "--out", str(tmp_path / "again"), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model.trt.int8.onnx" in proc.stdout and "--graph trt_int8" in proc.stdout
    again = json.loads((tmp_path / "again" / "export.json").read_text())
    first = json.loads((quantized / "export.json").read_text())
    assert again["quantization"]["method"] == "percentile" and again["quantization"]["images"] == 2
    for graph in ("portable_int8", "trt_int8"):
        assert again["graphs"][graph]["sha256"] != first["graphs"][graph]["sha256"], graph
