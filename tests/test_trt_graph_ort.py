"""model.trt.onnx's plugin nodes on ONNX Runtime (runtime/backends/trt_graph_ort.py): each node's outputs come back
through the array hook unchanged, bit for bit equal to calling the host build directly (float and int32 outputs, large
and empty ones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from maskrt.plugins import NMSSpec, RoIAlignSpec, nms, roi_align
from maskrt.plugins.spec import ONNX_DOMAIN
from maskrt.runtime.backends.ort_internals import array_hook
from maskrt.runtime.backends.trt_graph_ort import register_ops, trt_graph_session

SCALES = (0.25, 0.125, 0.0625, 0.03125)


def _plugin_model(path: Path, op: str, inputs: list[tuple[str, int]], outputs: list[tuple[str, int]],
                  attributes: dict) -> Path:  # fmt: skip
    node = helper.make_node(op, [n for n, _ in inputs], [n for n, _ in outputs], domain=ONNX_DOMAIN, **attributes)
    graph = helper.make_graph(
        [node], "plugin",
        [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ONNX_DOMAIN, 1)])
    onnx.save(model, path)
    return path


def test_roi_align_node_equals_the_host_build(tmp_path: Path) -> None:
    spec = RoIAlignSpec((7, 7), SCALES, sampling_ratio=2)
    names = [("rois", TensorProto.FLOAT)] + [(f"p{i}", TensorProto.FLOAT) for i in range(4)]
    path = _plugin_model(tmp_path / "roi.onnx", RoIAlignSpec.IDENTITY.name, names, [("pooled", TensorProto.FLOAT)],
                         spec.onnx_attributes())  # fmt: skip
    session = trt_graph_session(path)
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 32, 256 >> lvl, 320 >> lvl, generator=gen) for lvl in (2, 3, 4, 5)]
    for count in (600, 0):  # 600 x 32 x 7x7: 3.8 MB through the hook; and an empty output
        xy = torch.rand(1, count, 2, generator=gen) * 250
        rois = torch.cat([xy, xy + torch.rand(1, count, 2, generator=gen) * 120], -1)
        (pooled,) = session.run(None, {"rois": rois.numpy(), **{f"p{i}": f.numpy() for i, f in enumerate(feats)}})
        expected = roi_align.cpu(feats, rois, **spec.keywords()).numpy()
        assert pooled.dtype == np.float32 and pooled.shape == expected.shape
        assert np.array_equal(pooled.view(np.int32), expected.view(np.int32))


def test_nms_node_equals_the_host_build(tmp_path: Path) -> None:
    spec = NMSSpec(0.5, 0.05, 300)
    inputs = [("boxes", TensorProto.FLOAT), ("scores", TensorProto.FLOAT), ("groups", TensorProto.INT32)]
    outputs = [("keep", TensorProto.INT32), ("count", TensorProto.INT32)]
    path = _plugin_model(tmp_path / "nms.onnx", NMSSpec.IDENTITY.name, inputs, outputs, spec.onnx_attributes())
    session = trt_graph_session(path)
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(2, 2000, 2, generator=gen) * 500
    boxes = torch.cat([xy, xy + torch.rand(2, 2000, 2, generator=gen) * 80], -1)
    scores = torch.rand(2, 2000, generator=gen)
    groups = torch.randint(0, 5, (2, 2000), generator=gen, dtype=torch.int32)
    keep, count = session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy(), "groups": groups.numpy()})
    host_keep, host_count = nms.cpu(boxes, scores, groups, **spec.keywords())
    assert keep.dtype == np.int32 and np.array_equal(keep, host_keep.numpy())
    assert np.array_equal(count, host_count.numpy())


def test_array_hook_returns_arrays_not_lists() -> None:
    """The hook's contract with onnxruntime-extensions' C++ side: (id, shape, flat array, ...) per output."""
    from onnxruntime_extensions import _ocos

    register_ops()
    k_id = next(iter(_ocos.Opdef._odlist))  # any registered op: ours
    op = _ocos.Opdef._odlist[k_id]
    original = op.body
    try:
        op.body = lambda *feed, **attrs: (np.arange(12, dtype=np.float32).reshape(3, 4), np.array([5], np.int32))
        fetched = array_hook(k_id, [], {})
    finally:
        op.body = original
    assert fetched[0] == k_id and fetched[1] == (3, 4) and fetched[3] == (1,)
    assert isinstance(fetched[2], np.ndarray) and fetched[2].shape == (12,) and fetched[2].flags.c_contiguous
    assert fetched[4].dtype == np.int32
