"""model.trt.int8.onnx (graph `trt_int8`): the TensorRT graph with explicit Q/DQ as TensorRT builds INT8 from them.

TensorRT 11 builds INT8 only from explicit QuantizeLinear/DequantizeLinear nodes in a strongly typed network (no
builder flags, no calibrators), and takes them symmetric: INT8 activations per tensor and INT8 weights per output
channel, zero points 0. So `maskrt quantize` writes, beside ONNX Runtime's CPU graph (model.int8.onnx: uint8
activations, its own scheme), the TensorRT graph quantized that way:

- the same calibration: ONNX Runtime's calibrator runs once, on model.onnx (it cannot run the plugin ops); its tensor
  ranges are renamed to the TensorRT graph's tensors by `matched_tensors` (what computes each tensor: the two graphs
  are traced from the same modules, and the plugin ops' outputs pair with the portable subgraphs' results) and handed
  to ONNX Runtime's quantizer through its calibration cache (`quantize_static(calibration_cache_path=...)`);
- Q/DQ in front of the convolutions and matrix products of the networks (backbone, FPN, RPN head, box and mask
  heads) and on both inputs of their residual Adds, so that TensorRT fuses convolution + add + ReLU into one INT8
  kernel; nothing else is quantized - the plugin ops (RoIAlign, NMS) are fed and read in float, and the output layers,
  box decoding, top-k and the rest stay as model.trt.onnx has them;
- the nodes accuracy control kept in fp32 for the CPU graph (`--max-dap-drop`) stay fp32 here too (the nodes have the
  same names in both graphs).

export/int8_graph.py's `check_trt_int8` checks the result as `maskrt build --precision int8` does.
"""

from __future__ import annotations

from pathlib import Path

import onnx

#: The ops that get Q/DQ in front of their inputs: what TensorRT runs in INT8 (and the residual Adds it fuses).
TRT_QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "Add")
#: ONNX Runtime quantizer options for TensorRT's explicit quantization: symmetric INT8, zero points 0, biases in float
#: (TensorRT quantizes them itself; it reads no int32 DequantizeLinear).
TRT_EXTRA_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}


def trt_ranges(cpu_cache: Path, portable: onnx.ModelProto, trt: onnx.ModelProto, out: Path) -> int:
    """Write to `out` the calibration cache of model.onnx (`cpu_cache`, ONNX Runtime's JSON) with each tensor renamed
    to the TensorRT graph's tensor it pairs with; returns how many ranges it holds."""
    from onnxruntime.quantization import TensorsData, load_tensors_data, save_tensors_data

    from maskrt.runtime.parity.layers_match import matched_tensors

    ranges = load_tensors_data(cpu_cache)
    pairs = matched_tensors(portable, trt)
    renamed = {pairs[name]: ranges[name] for name in ranges.keys() if pairs.get(name)}
    save_tensors_data(TensorsData(ranges.calibration_method, renamed), out)
    return len(renamed)


def trt_network_nodes(model: onnx.ModelProto, networks: tuple[str, ...], excluded: list[str]) -> list[str]:
    """The TensorRT graph's nodes that get Q/DQ: convolutions, matrix products and residual Adds inside `networks`
    (module path prefixes), but not the `excluded` ones."""
    skip = set(excluded)
    return [n.name for n in model.graph.node
            if n.op_type in TRT_QUANTIZED_OPS and n.name.startswith(networks) and n.name not in skip]
