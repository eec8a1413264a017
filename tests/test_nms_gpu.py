"""The BatchedNMS CUDA kernels of the plugin library (launched through their extern "C" launcher, without TensorRT)
against the host build and torchvision's CUDA batched_nms. Needs a GPU: skipped elsewhere."""

from __future__ import annotations

import pytest
import torch
import torchvision

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


@pytest.fixture(scope="module")
def nms(plugin_library):  # noqa: ANN001
    from maskrt.plugins import nms

    return nms


def _case(seed: int, batch: int, n: int, groups: int, size: float = 800.0, equal_scores: bool = False):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, n, 2, generator=gen) * size
    wh = torch.rand(batch, n, 2, generator=gen) ** 2 * size / 3
    boxes = torch.cat([xy, xy + wh], -1)
    scores = torch.rand(batch, n, generator=gen)
    if equal_scores:
        scores = (scores * 16).floor() / 16
    return boxes, scores, torch.randint(0, groups, (batch, n), generator=gen, dtype=torch.int32)


def _both(nms, boxes, scores, groups, **attrs):
    keep, count = nms.cuda(boxes.cuda(), scores.cuda(), groups.cuda(), **attrs)
    host_keep, host_count = nms.cpu(boxes, scores, groups, **attrs)
    torch.cuda.synchronize()
    return keep.cpu(), count.cpu(), host_keep, host_count


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("batch", "n", "groups"), [(1, 1, 1), (2, 1000, 1), (3, 5000, 5), (2, 5000, 80), (1, 64, 3)])
@pytest.mark.parametrize("equal_scores", [False, True])
def test_cuda_matches_host_build(nms, dtype, batch: int, n: int, groups: int, equal_scores: bool) -> None:
    boxes, scores, group_ids = _case(n + batch, batch, n, groups, equal_scores=equal_scores)
    attrs = {"iou_threshold": 0.5, "score_threshold": 0.05, "max_output_boxes": 1000}
    keep, count, host_keep, host_count = _both(nms, boxes, scores.to(dtype), group_ids, **attrs)
    assert torch.equal(count, host_count) and torch.equal(keep, host_keep)


def test_cuda_matches_torchvision_cuda(nms) -> None:
    boxes, scores, groups = _case(1, 1, 4000, 80)
    keep, count = nms.cuda(boxes.cuda(), scores.cuda(), groups.cuda(), iou_threshold=0.7, score_threshold=-0.5,
                           max_output_boxes=4000)  # fmt: skip
    ref = torchvision.ops.batched_nms(boxes[0].cuda(), scores[0].cuda(), groups[0].cuda(), 0.7)
    assert int(count[0]) == ref.numel()
    assert set(keep[0, : int(count[0])].tolist()) == set(ref.tolist())  # same set; order by torchvision's sort


def test_box_head_sized_input_with_few_candidates(nms) -> None:
    """1000 proposals x 90 classes, ~300 candidates: compaction first, exact vs the host build."""
    boxes, scores, groups = _case(3, 2, 90_000, 90)
    scores = torch.where(torch.rand(2, 90_000) < 300 / 90_000, scores, torch.full_like(scores, -1.0))
    keep, count, host_keep, host_count = _both(nms, boxes, scores, groups, iou_threshold=0.5, score_threshold=0.05,
                                               max_output_boxes=100)  # fmt: skip
    assert torch.equal(count, host_count) and torch.equal(keep, host_keep)


def test_more_candidates_than_the_cap(nms) -> None:
    boxes, scores, groups = _case(4, 2, nms.MAX_CANDIDATES + 3000, 3, size=4000.0)
    keep, count, host_keep, host_count = _both(nms, boxes, scores, groups, iou_threshold=0.5, score_threshold=-0.5,
                                               max_output_boxes=20_000)  # fmt: skip
    assert torch.equal(count, host_count) and torch.equal(keep, host_keep)


def test_nan_and_degenerate_inputs_match_host_build(nms) -> None:
    nan, inf = float("nan"), float("inf")
    boxes, scores, groups = _case(5, 2, 300, 4)
    boxes[0, :40:4] = torch.tensor([nan, 0.0, 10.0, 10.0])
    boxes[0, 1:40:4] = torch.tensor([-inf, -inf, inf, inf])
    boxes[1, :40:3] = torch.tensor([30.0, 30.0, 10.0, 10.0])  # inverted
    scores[0, 2:60:5] = nan
    scores[1, :20] = 0.5  # equal scores
    for dtype in (torch.float32, torch.float16):
        keep, count, host_keep, host_count = _both(nms, boxes, scores.to(dtype), groups, iou_threshold=0.3,
                                                   score_threshold=0.0, max_output_boxes=500)  # fmt: skip
        assert torch.equal(count, host_count) and torch.equal(keep, host_keep)


def test_empty_inputs(nms) -> None:
    for batch, n, k in ((2, 0, 5), (3, 10, 0), (0, 10, 4)):
        boxes, scores, groups = _case(0, batch, n, 1)
        keep, count = nms.cuda(boxes.cuda(), scores.cuda(), groups.cuda(), iou_threshold=0.5, score_threshold=0.0,
                               max_output_boxes=k)  # fmt: skip
        assert keep.shape == (batch, k) and count.shape == (batch,)
        assert (keep == -1).all()
        if n == 0:
            assert (count == 0).all()


@pytest.mark.tensorrt
def test_tensorrt_engine_matches_host_build(nms) -> None:
    """The plugin inside a full-TensorRT engine (enqueue path, declared workspace) vs the host build."""
    trt = pytest.importorskip("tensorrt", reason="full TensorRT (the `tensorrt` package) is not installed")
    import onnx
    from onnx import helper

    nms.load_into(trt)
    spec = nms.NMSSpec(iou_threshold=0.5, score_threshold=0.05, max_output_boxes=300)
    inputs = [
        helper.make_tensor_value_info("boxes", onnx.TensorProto.FLOAT, ["B", "N", 4]),
        helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["B", "N"]),
        helper.make_tensor_value_info("groups", onnx.TensorProto.INT32, ["B", "N"]),
    ]
    outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.INT32, None) for n in ("keep", "count")]
    graph = helper.make_graph([spec.make_onnx_node("boxes", "scores", "groups", "keep", "count")], "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("maskrt", 1)])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model.SerializeToString()), [parser.get_error(i).desc() for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, rank in (("boxes", 3), ("scores", 2), ("groups", 2)):
        tail = (4,) if rank == 3 else ()
        profile.set_shape(name, (1, 0, *tail), (2, 5000, *tail), (2, 20_000, *tail))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    context = trt.Runtime(logger).deserialize_cuda_engine(plan).create_execution_context()
    boxes, scores, groups = _case(9, 2, 5000, 80)
    tensors = {"boxes": boxes.cuda(), "scores": scores.cuda(), "groups": groups.cuda()}
    for name, tensor in tensors.items():
        assert context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    keep = torch.empty((2, 300), dtype=torch.int32, device="cuda")
    count = torch.empty((2,), dtype=torch.int32, device="cuda")
    context.set_tensor_address("keep", keep.data_ptr())
    context.set_tensor_address("count", count.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    host_keep, host_count = nms.cpu(boxes, scores, groups, iou_threshold=0.5, score_threshold=0.05,
                                    max_output_boxes=300)  # fmt: skip
    assert torch.equal(count.cpu(), host_count) and torch.equal(keep.cpu(), host_keep)


@pytest.mark.parametrize("n", [63, 64, 65, 129, 2049, 4100])
@pytest.mark.parametrize("max_out", [1, 7, 64, 65, 300])
def test_tile_edges_and_output_limits_match_host_build(nms, n: int, max_out: int) -> None:
    """Tile boundaries of the greedy pass (64 candidates per word, 32 words per register load) and the early stop."""
    boxes, scores, groups = _case(n * 7 + max_out, 2, n, 3, size=300.0)
    for iou in (0.1, 0.5, 0.9):
        keep, count, host_keep, host_count = _both(nms, boxes, scores, groups, iou_threshold=iou,
                                                   score_threshold=0.0, max_output_boxes=max_out)  # fmt: skip
        assert torch.equal(count, host_count) and torch.equal(keep, host_keep), (n, max_out, iou)


@pytest.mark.parametrize(("batch", "n", "groups"), [(8, 1000, 1), (4, 5000, 90), (8, 300, 90)])
def test_batched_dense_clusters_match_host_build(nms, batch: int, n: int, groups: int) -> None:
    """Heavily overlapping boxes (long suppression chains) over a batch, as the RPN and box head see them."""
    gen = torch.Generator().manual_seed(batch * n + groups)
    centres = torch.rand(batch, 20, 2, generator=gen) * 400
    pick = torch.randint(0, 20, (batch, n), generator=gen)
    centre = torch.gather(centres, 1, pick[..., None].expand(-1, -1, 2)) + torch.randn(batch, n, 2, generator=gen) * 4
    wh = 40 + torch.rand(batch, n, 2, generator=gen) * 20
    boxes = torch.cat([centre - wh / 2, centre + wh / 2], -1)
    scores = torch.rand(batch, n, generator=gen)
    ids = torch.randint(0, groups, (batch, n), generator=gen, dtype=torch.int32)
    keep, count, host_keep, host_count = _both(nms, boxes, scores, ids, iou_threshold=0.5, score_threshold=0.05,
                                               max_output_boxes=1000)  # fmt: skip
    assert torch.equal(count, host_count) and torch.equal(keep, host_keep)
