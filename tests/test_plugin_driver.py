"""Each plugin driven through TensorRT's IPluginV3 lifecycle without TensorRT (libmaskrt_driver.so).

On the CPU every call before enqueue runs (creators, fields, capabilities, types, formats, configure, workspace,
serialization into a runtime-phase plugin, attachToContext, onShapeChange); on a GPU the driver also enqueues on
torch CUDA tensors and the result is compared with torchvision's CUDA ops."""

from __future__ import annotations

import pytest
import torch

from maskrt.export.ops import batched_nms_reference, roi_align_reference
from maskrt.plugins import NMSSpec, RoIAlignSpec

LIFECYCLE = ["creators=2", "creator", "create", "capabilities", "types", "formats", "configure"]
P2_P5 = (0.25, 0.125, 0.0625, 0.03125)


@pytest.fixture(scope="module")
def driver(plugin_library):  # noqa: ANN001, ANN201
    from maskrt.plugins import driver

    return driver


def _roi_case(spec: RoIAlignSpec, dtype: torch.dtype, batch: int = 2, rois: int = 40, channels: int = 8,
              device: str = "cpu", seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, channels, 128 // (4 << i), 160 // (4 << i), generator=gen).to(dtype)
             for i in range(len(spec.spatial_scales))]
    xy = torch.rand(batch, rois, 2, generator=gen) * torch.tensor([150.0, 120.0])
    wh = torch.rand(batch, rois, 2, generator=gen) * 100 + 1
    boxes = torch.cat([xy, xy + wh], dim=-1)
    out = torch.empty(batch, rois, channels, *spec.output_size, dtype=dtype)
    return [boxes.to(device), *(f.to(device) for f in feats)], out.to(device)


def _nms_case(spec: NMSSpec, score_dtype: torch.dtype, groups: int, batch: int = 2, n: int = 300,
              device: str = "cpu") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(batch, n, 2, generator=gen) * 200
    boxes = torch.cat([xy, xy + torch.rand(batch, n, 2, generator=gen) * 60 + 2], dim=-1)
    scores = torch.rand(batch, n, generator=gen).to(score_dtype)
    ids = torch.randint(0, groups, (batch, n), generator=gen, dtype=torch.int32)
    outs = [torch.empty(batch, spec.max_output_boxes, dtype=torch.int32), torch.empty(batch, dtype=torch.int32)]
    return [t.to(device) for t in (boxes, scores, ids)], [t.to(device) for t in outs]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_roi_align_lifecycle_before_enqueue(driver, dtype: torch.dtype) -> None:  # noqa: ANN001
    spec = RoIAlignSpec.mask_rcnn(7)
    inputs, out = _roi_case(spec, dtype)
    steps = driver.drive(spec, inputs, [out])
    fields = len(spec.onnx_attributes()) - 2  # without the identity
    assert steps[: len(LIFECYCLE)] == LIFECYCLE
    assert steps[len(LIFECYCLE)].startswith("workspace=")
    assert steps[len(LIFECYCLE) + 1:] == [f"serialize={fields}", "attach", "shape"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nms_lifecycle_before_enqueue(driver, dtype: torch.dtype) -> None:  # noqa: ANN001
    spec = NMSSpec(iou_threshold=0.5, score_threshold=0.05, max_output_boxes=20)
    inputs, outputs = _nms_case(spec, dtype, groups=3)
    steps = driver.drive(spec, inputs, outputs)
    assert steps[: len(LIFECYCLE)] == LIFECYCLE and steps[-3:] == ["serialize=3", "attach", "shape"]


def test_rejections_name_the_lifecycle_call(driver) -> None:  # noqa: ANN001
    spec = RoIAlignSpec.mask_rcnn(7)
    inputs, out = _roi_case(spec, torch.float32)
    bad = driver.field_text(spec).replace("output_height=i:7", "output_height=i:0")
    with pytest.raises(RuntimeError, match=r"createPlugin\(BUILD\) refused the fields \(after creators=2;creator\)"):
        driver.drive(spec, inputs, [out], fields=bad)
    with pytest.raises(RuntimeError, match="another type than getOutputDataTypes says"):
        driver.drive(spec, inputs, [out.half()])
    with pytest.raises(RuntimeError, match="getNbOutputs is 1, expected 2"):
        driver.drive(spec, inputs, [out, out])
    with pytest.raises(RuntimeError, match="supportsFormatCombination refuses position 0"):
        driver.drive(spec, [inputs[0].half(), *inputs[1:]], [out])  # RoIs must be fp32
    with pytest.raises(ValueError, match="enqueue needs every tensor on a CUDA device"):
        driver.drive(spec, inputs, [out], execute=True)


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["fp32", "fp16", "aligned", "adaptive", "one-level"])
def test_roi_align_enqueue_matches_torchvision(driver, case: str) -> None:  # noqa: ANN001
    dtype = torch.float16 if case == "fp16" else torch.float32
    spec = RoIAlignSpec(output_size=(7, 7), spatial_scales=P2_P5[:1] if case == "one-level" else P2_P5,
                        sampling_ratio=0 if case == "adaptive" else 2, aligned=case == "aligned")
    inputs, out = _roi_case(spec, dtype, device="cuda")
    steps = driver.drive(spec, inputs, [out])
    torch.cuda.synchronize()
    assert steps[-1] == "enqueue"
    want = roi_align_reference(inputs[0], [f.float() for f in inputs[1:]], spec)
    assert (out.float() - want).abs().max().item() <= (1e-2 if dtype == torch.float16 else 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize(("score_dtype", "groups", "k"), [(torch.float32, 4, 50), (torch.float16, 3, 50),
                                                         (torch.float32, 1, 5)])
def test_nms_enqueue_matches_torchvision(driver, score_dtype: torch.dtype, groups: int, k: int) -> None:  # noqa: ANN001
    spec = NMSSpec(iou_threshold=0.5, score_threshold=0.1, max_output_boxes=k)
    inputs, outputs = _nms_case(spec, score_dtype, groups, device="cuda")
    assert driver.drive(spec, inputs, outputs)[-1] == "enqueue"
    torch.cuda.synchronize()
    keep, count = batched_nms_reference(*(t.cpu() for t in inputs), spec)
    assert torch.equal(outputs[1].cpu(), count) and torch.equal(outputs[0].cpu(), keep)
