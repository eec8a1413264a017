"""The torch reference: torchvision's own eager Mask R-CNN modules on the pre-processed canvas.

It runs on exactly the tensor the deployed graphs get (normalised, resized, zero-padded to the export
canvas) with the resized image sizes, so a parity check compares the network and its inference logic,
not padding policies. Two details make eager torchvision agree with a fixed canvas: the anchors already
follow the padded tensor's size, and the FPN level scales of MultiScaleRoIAlign (which torchvision
infers from the first batch it sees and caches) are pinned to the canvas.
"""

from __future__ import annotations

import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.poolers import _setup_scales


@torch.no_grad()
def eager_detections(model: MaskRCNN, canvas: torch.Tensor, sizes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """torchvision's eager inference on a canvas batch [B, 3, H, W] with resized sizes [B, 2] (h, w).

    Returns per image boxes (resized-image pixels), scores, labels and masks [N, 28, 28] (probabilities
    of the detected class), before pasting.
    """
    model.eval()
    image_sizes = [(int(h), int(w)) for h, w in sizes.tolist()]
    features = model.backbone(canvas)
    canvas_size = [tuple(canvas.shape[-2:])]
    for pool in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool):
        maps = [features[name] for name in pool.featmap_names]
        pool.scales, pool.map_levels = _setup_scales(maps, canvas_size, pool.canonical_scale, pool.canonical_level)
    image_list = ImageList(canvas, image_sizes)
    proposals, _ = model.rpn(image_list, features)
    detections, _ = model.roi_heads(features, proposals, image_list.image_sizes)
    for det in detections:
        det["masks"] = det["masks"][:, 0]
    return detections
