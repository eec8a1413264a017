"""What TensorRT's explicit quantization needs of an INT8 graph (model.trt.int8.onnx), checked before a build: every
QuantizeLinear/DequantizeLinear symmetric INT8 - a positive scale, a zero point that is int8 and 0 (or none) - and the
plugin ops fed in float. A graph that breaks this (a tampered or foreign one) would fail to build or build wrongly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from maskrt.core.errors import MaskrtError

#: The Q/DQ ops TensorRT reads.
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def check_trt_int8(model: onnx.ModelProto, where: str | Path) -> dict[str, int]:
    """MaskrtError unless every QuantizeLinear/DequantizeLinear of the graph is TensorRT's symmetric INT8 (a positive
    scale, a zero point that is int8 and 0, or none) and no plugin op (a custom domain) reads a quantized tensor;
    returns the counts checked: {"qdq": ..., "int8_weights": ...}."""
    initializers = {t.name: t for t in model.graph.initializer}
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}

    def value(name: str) -> np.ndarray | None:
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = constants.get(name)
        return None if node is None else numpy_helper.to_array(node.attribute[0].t)

    producers = {o: n for n in model.graph.node for o in n.output}
    qdq = weights = 0
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            qdq += 1
            scale = value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
            if scale is None or scale.size == 0 or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
                raise MaskrtError(f"{where}: {node.op_type} {node.name!r} has no positive scale (TensorRT needs one "
                                  "per tensor or per channel)")
            zero = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if zero is not None and (zero.dtype != np.int8 or np.any(zero != 0)):
                raise MaskrtError(f"{where}: {node.op_type} {node.name!r} has zero point {zero.ravel()[:4].tolist()} "
                                  f"({zero.dtype}); TensorRT's INT8 is symmetric: int8 zero points of 0")
            if node.op_type == "DequantizeLinear" and node.input[0] in initializers:
                weights += 1
        elif node.domain not in ("", "ai.onnx"):
            quantized = [i for i in node.input if i in producers and producers[i].op_type == "QuantizeLinear"]
            if quantized:
                raise MaskrtError(f"{where}: the plugin op {node.name!r} reads the quantized tensor {quantized[0]}; "
                                  "plugin ops are fed and read in float")
    if not qdq:
        raise MaskrtError(f"{where}: holds no QuantizeLinear/DequantizeLinear (not an INT8 graph)")
    return {"qdq": qdq, "int8_weights": weights}
