"""The torch backend: torchvision's eager modules on exactly the tensor a deployed graph gets (`--backend torch`, and
parity's "canvas" reference). Two details make eager torchvision agree with a given padded batch: the anchors already
follow the padded tensor's size, and the FPN level scales of MultiScaleRoIAlign (which torchvision infers from the first
batch it sees and caches) are pinned to the batch."""

from __future__ import annotations

import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.poolers import _setup_scales

from maskrt.core.devices import resolve_device
from maskrt.core.errors import MaskrtError
from maskrt.runtime.postprocess import RawOutput


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



class TorchBackend:
    """The eager torchvision reference."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, max_detections: int, device: str = "cpu") -> None:
        self.torch_device = resolve_device(device)  # outputs come back to the CPU: masks are pasted there
        self.model = model.eval().to(self.torch_device)
        self.max_detections = max_detections
        self._finite = True
        # torchvision drops NaN scores on the way out (an empty result): the backbone's features tell instead
        self._hook = model.backbone.register_forward_hook(self._check_features)

    def _check_features(self, module: torch.nn.Module, inputs: object, output: object) -> None:
        features = output.values() if isinstance(output, dict) else [output]
        self._finite = all(bool(torch.isfinite(f).all()) for f in features if isinstance(f, torch.Tensor))

    def run(self, canvas: torch.Tensor, sizes: torch.Tensor) -> list[RawOutput]:
        self._finite = True
        dets = eager_detections(self.model, canvas.to(self.torch_device), sizes)
        outs = [RawOutput.from_torchvision({k: v.cpu() for k, v in det.items()}, self.max_detections)
                for det in dets]
        if not self._finite:
            raise MaskrtError("the network's backbone features hold non-finite values (NaN or infinity): its weights "
                              "are broken")
        return outs

    def close(self) -> None:
        self._hook.remove()
        self.model = None  # type: ignore[assignment]
