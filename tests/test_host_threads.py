"""The host build of the plugin ops runs over the CPUs with a thread count given per call (no process-wide
setting); its results do not depend on it."""

from __future__ import annotations

import pytest
import torch

from maskrt.plugins import host_threads, nms, roi_align

P2_P5 = (0.25, 0.125, 0.0625, 0.03125)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_roi_align_is_the_same_on_1_and_n_threads(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 16, 100 >> i, 152 >> i, generator=gen).to(dtype) for i in range(4)]
    xy = torch.rand(2, 301, 2, generator=gen) * 500
    rois = torch.cat([xy, xy + torch.rand(2, 301, 2, generator=gen) * 200 + 1], dim=-1)
    outs = [roi_align.cpu(feats, rois, output_size=7, spatial_scales=P2_P5, sampling_ratio=2, threads=threads)
            for threads in (1, 3, 8, None)]
    assert all(torch.equal(outs[0], out) for out in outs[1:])


def test_nms_is_the_same_on_1_and_n_threads() -> None:
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(5, 2000, 2, generator=gen) * 300
    boxes = torch.cat([xy, xy + torch.rand(5, 2000, 2, generator=gen) * 80 + 1], dim=-1)
    scores = torch.rand(5, 2000, generator=gen)
    groups = torch.randint(0, 4, (5, 2000), generator=gen, dtype=torch.int32)
    results = [nms.cpu(boxes, scores, groups, iou_threshold=0.6, score_threshold=0.2, max_output_boxes=300,
                       threads=threads) for threads in (1, 4, None)]
    assert all(torch.equal(results[0][0], r[0]) and torch.equal(results[0][1], r[1]) for r in results[1:])


def test_threads_must_be_positive_and_default_to_every_cpu() -> None:
    boxes, scores = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]), torch.tensor([[0.9]])
    with pytest.raises(ValueError, match="threads must be at least 1"):
        nms.cpu(boxes, scores, torch.zeros(1, 1, dtype=torch.int32), iou_threshold=0.5, score_threshold=0.1,
                max_output_boxes=1, threads=0)
    assert host_threads() >= 1


def test_trt_graph_sessions_carry_their_own_thread_count() -> None:
    """Two ONNX Runtime sessions of model.trt.onnx with different --threads: each plugin node of each rewritten graph
    holds its session's count (nothing is set for the process)."""
    import onnx
    from onnx import helper

    from maskrt.plugins.spec import ONNX_DOMAIN
    from maskrt.runtime.backends.trt_graph_ort import rewrite_for_ort

    node = helper.make_node("BatchedNMS", ["boxes", "scores", "groups"], ["keep", "count"], domain=ONNX_DOMAIN,
                            iou_threshold=0.5, score_threshold=0.1, max_output_boxes=10)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in (
        ("boxes", onnx.TensorProto.FLOAT, [1, 4, 4]), ("scores", onnx.TensorProto.FLOAT, [1, 4]),
        ("groups", onnx.TensorProto.INT32, [1, 4]))],
        [helper.make_tensor_value_info(n, onnx.TensorProto.INT32, None) for n in ("keep", "count")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ONNX_DOMAIN, 1)])
    for threads, expected in ((1, 1), (3, 3), (None, 0)):
        rewritten = rewrite_for_ort(model, threads)
        attrs = {a.name: helper.get_attribute_value(a) for a in rewritten.graph.node[0].attribute}
        assert attrs["threads"] == expected
