"""Run model.trt.onnx (the exact TensorRT graph) on the CPU with ONNX Runtime.

Its plugin nodes (maskrt::MultiLevelRoIAlign, maskrt::BatchedNMS) run the host build of the plugin
kernel cores (maskrt.plugins.roi_align.cpu, maskrt.plugins.nms.cpu) as onnxruntime-extensions Python ops. Those
bind only in the `ai.onnx.contrib` domain and take scalar or string attributes, so the session runs a
rewritten copy of the graph: each plugin node becomes `ai.onnx.contrib::Maskrt<Op><n inputs>` with
its attributes as one JSON string, parsed back by the op's spec (maskrt.plugins.SPECS). The Python op API has no
fp16, so a RoIAlign node on fp16 features (model.trt.fp16.onnx) gets its features widened to fp32 (exact) and its
result rounded back to fp16 - what the plugin does inside (fp32 math, one rounding of the output). Nothing else in the
graph changes.

onnxruntime-extensions hands a Python op's outputs back to ONNX Runtime as `.flatten().tolist()`, a Python list of
every element: 1 s for the 50 MB of pooled box features of r50-fpn at 800x800, more than the pooling itself. Its C++
side also takes a numpy array (pybind11 `py::array`, then one memcpy), so `register_ops` installs a hook that returns
the arrays themselves (runtime/backends/ort_internals.py, the one module touching that private API): one copy per
output.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper
from onnxruntime_extensions import PyOp, get_library_path, onnx_op

from maskrt.core.errors import MaskrtError
from maskrt.plugins import SPECS, NMSSpec, RoIAlignSpec, nms, roi_align
from maskrt.plugins.roi_align.spec import MAX_LEVELS
from maskrt.plugins.spec import ONNX_DOMAIN
from maskrt.runtime.backends.ort_internals import install_array_hook

CONTRIB = "ai.onnx.contrib"
_ATTRS = {"spec": PyOp.dt_string, "threads": PyOp.dt_int64}  # the op's spec as JSON; host threads (0: every CPU)
_registered = False


def _attributes(node: onnx.NodeProto) -> dict:
    out = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list):
            value = [float(v) for v in value]
        out[attr.name] = value
    return out


def rewrite_for_ort(model: onnx.ModelProto, threads: int | None = None) -> onnx.ModelProto:
    """A copy of a model.trt.onnx graph whose plugin nodes are onnxruntime-extensions Python ops; each carries the
    `threads` its host build may use (None: every CPU the process may run on) - per session, not per process."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    types = _value_types(model)
    nodes = []
    for node in model.graph.node:
        if node.domain == ONNX_DOMAIN:
            if node.op_type not in SPECS:
                raise MaskrtError(f"unknown plugin op {ONNX_DOMAIN}::{node.op_type} (known: {', '.join(SPECS)})")
            try:
                spec = SPECS[node.op_type].from_onnx_attributes(_attributes(node))
            except ValueError as exc:
                raise MaskrtError(f"plugin node '{node.name}': {exc}") from None
            inputs, outputs = list(node.input), list(node.output)
            half = node.op_type == RoIAlignSpec.IDENTITY.name and types.get(node.input[1]) == onnx.TensorProto.FLOAT16
            if half:  # the Python op API has no fp16: widen the features, narrow the result (exact / one rounding)
                float_in = [f"{node.name}__features{i}_fp32" for i in range(len(inputs) - 1)]
                nodes += [helper.make_node("Cast", [a], [b], to=onnx.TensorProto.FLOAT, name=f"{b}_cast")
                          for a, b in zip(inputs[1:], float_in, strict=True)]
                inputs, outputs = [inputs[0], *float_in], [f"{outputs[0]}__fp32"]
            nodes.append(helper.make_node(f"Maskrt{node.op_type}{len(node.input)}", inputs, outputs, name=node.name,
                                          domain=CONTRIB, spec=json.dumps(spec.onnx_attributes()),
                                          threads=int(threads or 0)))
            if half:
                nodes.append(helper.make_node("Cast", outputs, list(node.output), to=onnx.TensorProto.FLOAT16,
                                              name=f"{node.name}_cast_back"))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    imports = [op for op in model.opset_import if op.domain not in (ONNX_DOMAIN, CONTRIB)]
    del model.opset_import[:]
    model.opset_import.extend([*imports, helper.make_opsetid(CONTRIB, 1)])
    return model


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of every value the graph's shape inference can type (feature maps included)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name: v.type.tensor_type.elem_type for v in values}


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def register_ops() -> None:
    """Register the Python ops once per process (and the array hook that returns their outputs without copies per
    element)."""
    global _registered
    if _registered:
        return
    install_array_hook()

    def roi_align_op(rois: np.ndarray, *features: np.ndarray, spec: str, threads: int) -> np.ndarray:
        s = RoIAlignSpec.from_onnx_attributes(json.loads(spec))
        return roi_align.cpu([_tensor(f) for f in features], _tensor(rois), **s.keywords(),
                             threads=threads or None).numpy()

    for levels in range(1, MAX_LEVELS + 1):
        onnx_op(op_type=f"Maskrt{RoIAlignSpec.IDENTITY.name}{levels + 1}", inputs=[PyOp.dt_float] * (levels + 1),
                outputs=[PyOp.dt_float], attrs=_ATTRS)(roi_align_op)

    @onnx_op(op_type=f"Maskrt{NMSSpec.IDENTITY.name}3", inputs=[PyOp.dt_float, PyOp.dt_float, PyOp.dt_int32],
             outputs=[PyOp.dt_int32, PyOp.dt_int32], attrs=_ATTRS)
    def batched_nms_op(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, spec: str,  # noqa: ANN202
                       threads: int):
        s = NMSSpec.from_onnx_attributes(json.loads(spec))
        keep, count = nms.cpu(_tensor(boxes), _tensor(scores), _tensor(groups), **s.keywords(),
                              threads=threads or None)
        return keep.numpy(), count.numpy()

    _registered = True


def _has_config(options: ort.SessionOptions, key: str) -> bool:
    try:
        options.get_session_config_entry(key)
    except RuntimeError:  # onnxruntime raises for a key that is not set
        return False
    return True


def trt_graph_session(graph: str | Path | onnx.ModelProto, options: ort.SessionOptions | None = None,
                      threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime InferenceSession running model.trt.onnx (a path, or the graph itself) with the plugin ops'
    host build on `threads` threads (None: every CPU the process may run on)."""
    register_ops()
    model = rewrite_for_ort(graph if isinstance(graph, onnx.ModelProto) else onnx.load(str(graph)), threads)
    so = options or ort.SessionOptions()
    # The plugin ops run on their own threads (`threads`, per session) while ONNX Runtime's workers wait;
    # spinning workers would take their cores (r50-fpn at 800x800 on 2 cores: 1293 -> 1111 ms without spinning).
    if not _has_config(so, "session.intra_op.allow_spinning"):
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.register_custom_ops_library(get_library_path())
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
