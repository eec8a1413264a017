"""The torch references a deployed model is compared with (docs/architecture.md section 7).

- `plain` (`PlainReference`): the checkpoint as its user runs it - torchvision's ``model(images)`` on the
  original images, with its own transform (resize, normalisation, batch padded to its largest image rounded up
  to 32), post-processing and mask paste. This is the reference of every gate.
- `canvas` (the torch backend, runtime/backends/eager_torch.py): torchvision's eager modules on exactly the tensor
  the deployed graph gets. It separates export errors from pre-processing/canvas effects (a diagnostic only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision.models.detection import MaskRCNN

from maskrt.core.devices import resolve_device
from maskrt.runtime.postprocess import Detections, RawOutput
from maskrt.runtime.preprocess import to_tensor

REFERENCES = ("plain", "canvas")


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
