"""The torch references a deployed model is compared with (docs/architecture.md section 7).

- `plain` (`PlainReference`): the checkpoint as its user runs it - torchvision's ``model(images)`` on the
  original images, with its own transform (resize, normalisation, batch padded to its largest image rounded up
  to 32), post-processing and mask paste. This is the reference of every gate.
- `canvas` (`eager_detections`, the torch backend): torchvision's eager modules on exactly the tensor the
  deployed graph gets. It separates export errors from pre-processing/canvas effects (a diagnostic only). Two
  details make eager torchvision agree with a given padded batch: the anchors already follow the padded
  tensor's size, and the FPN level scales of MultiScaleRoIAlign (which torchvision infers from the first batch
  it sees and caches) are pinned to the batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.poolers import _setup_scales

from maskrt.core.devices import resolve_device
from maskrt.runtime.postprocess import Detections, RawOutput
from maskrt.runtime.preprocess import to_tensor

REFERENCES = ("plain", "canvas")


@torch.no_grad()
def eager_detections(model: MaskRCNN, canvas: torch.Tensor, sizes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """torchvision's eager inference on a padded batch [B, 3, H, W] with resized sizes [B, 2] (h, w).

    Returns per image boxes (resized-image pixels), scores, labels and masks [N, M, M] (probabilities
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


class PlainReference:
    """``model(images)`` exactly as a torchvision user calls it.

    Besides the final detections (original-image pixels, masks pasted by torchvision), it records what the RoI
    heads returned before torchvision's post-processing (resized-image pixels, MxM masks), with forward hooks
    that only observe, so that the raw fixed-shape outputs of a deployed graph can be compared too.
    """

    name = "plain"

    def __init__(self, model: MaskRCNN, slots: int, device: str = "cpu") -> None:
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.slots = slots

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> tuple[list[RawOutput], list[Detections]]:
        """(raw outputs in `slots` slots, detections) of a batch of HxWx3 uint8 RGB images."""
        seen: dict[str, Any] = {}

        def heads(module: torch.nn.Module, args: tuple, output: tuple) -> None:
            # torchvision's postprocess rewrites these dicts in place: keep copies
            seen["heads"] = [{k: v.cpu().clone() for k, v in det.items()} for det in output[0]]

        handle = self.model.roi_heads.register_forward_hook(heads)
        try:
            results = self.model([to_tensor(image).to(self.device) for image in images])
            results = [{k: v.cpu() for k, v in r.items()} for r in results]
        finally:
            handle.remove()
        raws = [RawOutput.from_torchvision(det, self.slots) for det in seen["heads"]]
        dets = [Detections(boxes=r["boxes"].numpy(), scores=r["scores"].numpy(), labels=r["labels"].numpy(),
                           masks=(r["masks"][:, 0] > 0.5).numpy()) for r in results]
        return raws, dets
