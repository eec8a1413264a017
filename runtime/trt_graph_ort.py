"""Run model.trt.onnx (the exact TensorRT graph) on the CPU with ONNX Runtime.

Its plugin nodes (maskrt::MultiLevelRoIAlign, maskrt::BatchedNMS) run the host build of the plugin
kernel cores (plugins.roi_align.cpu, plugins.nms.cpu) as onnxruntime-extensions Python ops. Those
bind only in the `ai.onnx.contrib` domain and take scalar or string attributes, so the session runs a
rewritten copy of the graph: each plugin node becomes `ai.onnx.contrib::Maskrt<Op><n inputs>` with
its attributes as one JSON string. Nothing else in the graph changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper

from maskrt.errors import MaskrtError

CONTRIB = "ai.onnx.contrib"
_registered = False
MAX_LEVELS = 5


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


def rewrite_for_ort(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a model.trt.onnx graph whose plugin nodes are onnxruntime-extensions Python ops."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = []
    for node in model.graph.node:
        if node.domain == "maskrt":
            if node.op_type not in ("MultiLevelRoIAlign", "BatchedNMS"):
                raise MaskrtError(f"unknown plugin op maskrt::{node.op_type}")
            new = helper.make_node(f"Maskrt{node.op_type}{len(node.input)}", list(node.input), list(node.output),
                                   name=node.name, domain=CONTRIB, spec=json.dumps(_attributes(node)))
            nodes.append(new)
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    imports = [op for op in model.opset_import if op.domain not in ("maskrt", CONTRIB)]
    del model.opset_import[:]
    model.opset_import.extend([*imports, helper.make_opsetid(CONTRIB, 1)])
    return model


def register_ops() -> None:
    """Register the Python ops once per process."""
    global _registered
    if _registered:
        return
    from onnxruntime_extensions import PyOp, onnx_op

    from plugins import nms, roi_align
    from plugins.roi_align.spec import RoIAlignSpec

    def roi_align_op(rois: np.ndarray, *features: np.ndarray, spec: str) -> np.ndarray:
        s = RoIAlignSpec.from_onnx_attributes(json.loads(spec))
        out = roi_align.cpu([torch.from_numpy(np.ascontiguousarray(f)) for f in features],
                            torch.from_numpy(np.ascontiguousarray(rois)), output_size=s.output_size,
                            spatial_scales=s.spatial_scales, sampling_ratio=s.sampling_ratio, aligned=s.aligned,
                            canonical_level=s.canonical_level, canonical_scale=s.canonical_scale,
                            level_eps=s.level_eps)
        return out.numpy()

    for levels in range(1, MAX_LEVELS + 1):
        onnx_op(op_type=f"MaskrtMultiLevelRoIAlign{levels + 1}", inputs=[PyOp.dt_float] * (levels + 1),
                outputs=[PyOp.dt_float], attrs={"spec": PyOp.dt_string})(roi_align_op)

    @onnx_op(op_type="MaskrtBatchedNMS3", inputs=[PyOp.dt_float, PyOp.dt_float, PyOp.dt_int32],
             outputs=[PyOp.dt_int32, PyOp.dt_int32], attrs={"spec": PyOp.dt_string})
    def batched_nms_op(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, spec: str):  # noqa: ANN202
        a = json.loads(spec)
        keep, count = nms.cpu(torch.from_numpy(np.ascontiguousarray(boxes)),
                              torch.from_numpy(np.ascontiguousarray(scores)),
                              torch.from_numpy(np.ascontiguousarray(groups)),
                              iou_threshold=float(a["iou_threshold"]), score_threshold=float(a["score_threshold"]),
                              max_output_boxes=int(a["max_output_boxes"]))
        return keep.numpy(), count.numpy()

    _registered = True


def trt_graph_session(path: str | Path, options=None):  # noqa: ANN001, ANN201
    """An onnxruntime InferenceSession running model.trt.onnx with the plugin ops' host build."""
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    register_ops()
    model = rewrite_for_ort(onnx.load(str(path)))
    so = options or ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
