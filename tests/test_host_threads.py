"""The host build of the plugin ops runs over the CPUs; its results do not depend on the thread count."""

from __future__ import annotations

import pytest
import torch

from maskrt.plugins import host_threads, nms, roi_align, set_host_threads

P2_P5 = (0.25, 0.125, 0.0625, 0.03125)


@pytest.fixture
def restore_threads():  # noqa: ANN201
    yield
    set_host_threads(None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_roi_align_is_the_same_on_1_and_n_threads(restore_threads, dtype: torch.dtype) -> None:  # noqa: ANN001
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 16, 100 >> i, 152 >> i, generator=gen).to(dtype) for i in range(4)]
    xy = torch.rand(2, 301, 2, generator=gen) * 500
    rois = torch.cat([xy, xy + torch.rand(2, 301, 2, generator=gen) * 200 + 1], dim=-1)
    outs = []
    for threads in (1, 3, 8):
        set_host_threads(threads)
        assert host_threads() == threads
        outs.append(roi_align.cpu(feats, rois, output_size=7, spatial_scales=P2_P5, sampling_ratio=2))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_nms_is_the_same_on_1_and_n_threads(restore_threads) -> None:  # noqa: ANN001
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(5, 2000, 2, generator=gen) * 300
    boxes = torch.cat([xy, xy + torch.rand(5, 2000, 2, generator=gen) * 80 + 1], dim=-1)
    scores = torch.rand(5, 2000, generator=gen)
    groups = torch.randint(0, 4, (5, 2000), generator=gen, dtype=torch.int32)
    results = []
    for threads in (1, 4):
        set_host_threads(threads)
        results.append(nms.cpu(boxes, scores, groups, iou_threshold=0.6, score_threshold=0.2, max_output_boxes=300))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="threads must be at least 1"):
        set_host_threads(0)
    set_host_threads(None)
    assert host_threads() >= 1
