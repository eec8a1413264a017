"""The CUDA kernel of the plugin library (launched through its extern "C" launcher, without TensorRT) against
torchvision's CUDA ops and against the host build. Needs a GPU: skipped elsewhere."""

from __future__ import annotations

import pytest
import torch
import torchvision

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

P2_P5 = (0.25, 0.125, 0.0625, 0.03125)
# torchvision's CUDA kernel is compiled with FMA contraction: its sample coordinates (up to ~300 px on a level, ulp
# ~3e-5) and weights round differently from its CPU kernel, which ours follows exactly (host build bit for bit below,
# torchvision's CPU op within 1e-5 in test_roi_align_cpu.py). Measured on an H100: up to 7e-5 on N(0, 1) features.
TORCHVISION_CUDA_TOL = 5e-4


@pytest.fixture(scope="module")
def roi_align(plugin_library):  # noqa: ANN001
    from maskrt.plugins import roi_align

    return roi_align


def _case(seed: int, batch: int = 2, rois: int = 300, channels: int = 64, img=(512, 768), dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, channels, img[0] >> lvl, img[1] >> lvl, generator=gen) for lvl in (2, 3, 4, 5)]
    feats = [f.to(dtype) for f in feats]
    xy = torch.rand(batch, rois, 2, generator=gen) * torch.tensor([img[1], img[0]]) * 1.2 - 50
    wh = torch.rand(batch, rois, 2, generator=gen) ** 2 * 600
    boxes = torch.cat([xy, xy + wh], dim=-1)
    return [f.cuda() for f in feats], boxes.cuda()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("size", "ratio"), [(7, 2), (14, 2), ((5, 3), 0)])
def test_multi_level_matches_torchvision_cuda(roi_align, seed: int, dtype: torch.dtype, size, ratio: int) -> None:
    feats, rois = _case(seed, dtype=dtype)
    out = roi_align.cuda(feats, rois, output_size=size, spatial_scales=P2_P5, sampling_ratio=ratio)
    pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], size, ratio)
    ref = pooler({str(i): f.float() for i, f in enumerate(feats)}, list(rois.unbind(0)), [(512, 768)] * 2)
    assert out.dtype == dtype
    err = (out.float().reshape(ref.shape) - ref).abs().max().item()
    assert err <= (1e-2 if dtype == torch.float16 else TORCHVISION_CUDA_TOL), err


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [0, 1, 2, 3])
def test_single_level_matches_torchvision_cuda(roi_align, aligned: bool, ratio: int) -> None:
    feats, rois = _case(10 + ratio)
    out = roi_align.cuda(feats[:1], rois, output_size=7, spatial_scales=P2_P5[:1], sampling_ratio=ratio,
                         aligned=aligned)  # fmt: skip
    ref = torchvision.ops.roi_align(feats[0], list(rois.unbind(0)), 7, 0.25, ratio, aligned)
    assert (out.reshape(ref.shape) - ref).abs().max().item() <= TORCHVISION_CUDA_TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_host_build_including_non_finite_rois(roi_align, dtype: torch.dtype) -> None:
    feats, rois = _case(20, rois=64, dtype=dtype)
    nan, inf = float("nan"), float("inf")
    rois[0, :4] = torch.tensor([[nan, 0, 10, 10], [0, 0, inf, 5], [-1e30, -1e30, 1e30, 1e30], [30, 4, 10, 40]])
    for ratio in (2, 0):
        out = roi_align.cuda(feats, rois, output_size=7, spatial_scales=P2_P5, sampling_ratio=ratio)
        host = roi_align.cpu([f.cpu() for f in feats], rois.cpu(), output_size=7, spatial_scales=P2_P5,
                             sampling_ratio=ratio)  # fmt: skip
        torch.cuda.synchronize()
        assert (out.cpu().float() - host.float()).abs().max().item() <= (1e-2 if dtype == torch.float16 else 1e-5)
        assert torch.equal(out[0, :2].float().cpu(), torch.zeros_like(out[0, :2].float().cpu()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("size", "ratio", "aligned"), [(7, 2, False), (14, 2, True), ((5, 3), 0, False), (7, 1, True),
                                                      (7, 3, False), (28, 0, True)])  # fmt: skip
def test_cuda_equals_host_build_bit_for_bit(roi_align, dtype: torch.dtype, size, ratio: int, aligned: bool) -> None:
    """Both builds evaluate the same expressions (roi_align_core.h): identical bits, fp32 and fp16, for the table path
    (grid 2 in registers, other grids from shared memory) and the per-output path (adaptive grids on huge RoIs)."""
    feats, rois = _case(30 + ratio, rois=96, channels=67, dtype=dtype)
    rois[1, :8] = torch.tensor([-2000.0, -2000.0, 4000.0, 3000.0], device="cuda")  # adaptive grid beyond the tables
    out = roi_align.cuda(feats, rois, output_size=size, spatial_scales=P2_P5, sampling_ratio=ratio, aligned=aligned)
    host = roi_align.cpu([f.cpu() for f in feats], rois.cpu(), output_size=size, spatial_scales=P2_P5,
                         sampling_ratio=ratio, aligned=aligned)  # fmt: skip
    torch.cuda.synchronize()
    bits = torch.int16 if dtype == torch.float16 else torch.int32
    assert torch.equal(out.cpu().view(bits), host.view(bits))


def test_empty_inputs(roi_align) -> None:
    feats, _ = _case(0)
    out = roi_align.cuda(feats, torch.zeros(2, 0, 4, device="cuda"), output_size=7, spatial_scales=P2_P5)
    assert out.shape == (2, 0, 64, 7, 7)


@pytest.mark.tensorrt
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_tensorrt_engine_matches_torchvision(roi_align, fp16: bool) -> None:
    """The plugin inside a full-TensorRT engine (enqueue path) vs torchvision, dynamic shapes."""
    trt = pytest.importorskip("tensorrt", reason="full TensorRT (the `tensorrt` package) is not installed")
    import onnx
    from onnx import helper

    from maskrt.export.engine import strongly_typed

    roi_align.load_into(trt)
    spec = roi_align.RoIAlignSpec.mask_rcnn(7)
    ftype = onnx.TensorProto.FLOAT16 if fp16 else onnx.TensorProto.FLOAT
    names = [f"p{lvl}" for lvl in (2, 3, 4, 5)]
    inputs = [helper.make_tensor_value_info("rois", onnx.TensorProto.FLOAT, ["B", "R", 4])]
    inputs += [helper.make_tensor_value_info(n, ftype, ["B", 64, f"H{n}", f"W{n}"]) for n in names]
    graph = helper.make_graph(
        [spec.make_onnx_node("rois", names, "pooled")],
        "g",
        inputs,
        [helper.make_tensor_value_info("pooled", ftype, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("maskrt", 1)])

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # strongly typed (TensorRT 11's only mode): the fp16 feature maps' type makes the plugin run in fp16
    network = builder.create_network(strongly_typed(trt))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model.SerializeToString()), [parser.get_error(i).desc() for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("rois", (1, 1, 4), (2, 300, 4), (2, 512, 4))
    for lvl, n in zip((2, 3, 4, 5), names, strict=True):
        profile.set_shape(n, (1, 64, 8 >> (lvl - 2), 8 >> (lvl - 2)), (2, 64, 512 >> lvl, 768 >> lvl),
                          (2, 64, 1024 >> lvl, 1024 >> lvl))  # fmt: skip
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()

    dtype = torch.float16 if fp16 else torch.float32
    feats, rois = _case(30, batch=2, rois=300, channels=64, dtype=dtype)
    tensors = {"rois": rois.contiguous(), **{n: f.contiguous() for n, f in zip(names, feats, strict=True)}}
    for name, tensor in tensors.items():
        assert context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    assert tuple(context.get_tensor_shape("pooled")) == (2, 300, 64, 7, 7)
    out = torch.empty((2, 300, 64, 7, 7), dtype=dtype, device="cuda")
    context.set_tensor_address("pooled", out.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    ref = pooler({str(i): f.float() for i, f in enumerate(feats)}, list(rois.unbind(0)), [(512, 768)] * 2)
    err = (out.float().reshape(ref.shape) - ref).abs().max().item()
    assert err <= (1e-2 if fp16 else TORCHVISION_CUDA_TOL), err
