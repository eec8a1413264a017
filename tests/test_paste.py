"""The box-cropped mask paste equals torchvision's per-mask paste_masks_in_image."""

from __future__ import annotations

import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskrt.runtime.paste import paste_masks


def test_paste_matches_torchvision() -> None:
    gen = torch.Generator().manual_seed(0)
    n, h, w = 40, 97, 131
    masks = torch.rand((n, 28, 28), generator=gen)
    xy = torch.rand((n, 2), generator=gen) * torch.tensor([w, h]) - 10
    wh = torch.rand((n, 2), generator=gen) * 80 + 0.3
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[0] = torch.tensor([-30.0, -30.0, 200.0, 200.0])  # larger than the image
    boxes[1] = torch.tensor([10.0, 10.0, 10.2, 10.1])  # sub-pixel
    ours = paste_masks(masks, boxes, h, w)
    ref = paste_masks_in_image(masks[:, None], boxes, (h, w))[:, 0]
    assert ours.shape == ref.shape == (n, h, w)
    assert (ours - ref).abs().max() < 1e-5


def test_no_detections() -> None:
    assert paste_masks(torch.zeros((0, 28, 28)), torch.zeros((0, 4)), 10, 12).shape == (0, 10, 12)


def test_boolean_paste_is_the_thresholded_probability() -> None:
    gen = torch.Generator().manual_seed(1)
    masks = torch.rand((5, 28, 28), generator=gen)
    boxes = torch.tensor([[0.0, 0.0, 30.0, 20.0], [5.0, 5.0, 60.0, 44.0], [10, 2, 12, 30], [-5, -5, 70, 50],
                          [30, 30, 31, 31]])
    probs = paste_masks(masks, boxes, 48, 64)
    binary = paste_masks(masks, boxes, 48, 64, threshold=0.5)
    assert binary.dtype == torch.bool and torch.equal(binary, probs > 0.5)


def test_boxes_outside_the_image_paste_nothing() -> None:
    """(torchvision's paste_masks_in_image raises on a box right of the image; ours pastes zeros.)"""
    masks = torch.ones((3, 28, 28))
    boxes = torch.tensor([[140.0, 20.0, 180.0, 60.0], [-60.0, -50.0, -20.0, -3.0], [20.0, 20.0, 40.0, 40.0]])
    out = paste_masks(masks, boxes, 97, 131)
    assert not out[:2].any() and out[2].sum() > 300
