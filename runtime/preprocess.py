"""Pre-processing shared by every backend: torchvision's GeneralizedRCNNTransform.

Each image is normalised with the model's mean/std and resized bilinearly with torchvision's rule
``scale = min(min_size / short_side, max_size / long_side)`` by torchvision's own transform module, so the
resized size and pixels are exactly those of ``model(images)``. A batch is then zero-padded (after
normalisation, as torchvision pads) at the bottom/right:

- dynamic-size exports (the default): to the batch's largest image, each side rounded up to 32 - the size
  torchvision pads the same batch to;
- a static canvas: to the canvas; an image whose resized size does not fit is resized further to fit (a
  canvas effect that `maskrt parity` against the plain reference measures).

The resized size of each image is kept: boxes are clipped to it and mapped back to the original image with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from maskrt.core.artifacts import ExportInfo
from maskrt.core.errors import MaskrtError

SIZE_DIVISIBLE = 32


@dataclass(frozen=True)
class Preprocessor:
    """Resize + normalise + pad a batch of images (see the module docstring).

    `canvas` (height, width) pads every batch to one static size; None pads each batch to its own size. `max_side`
    bounds a dynamic batch's padded sides (the export's range)."""

    min_size: int
    max_size: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    canvas: tuple[int, int] | None = None
    max_side: tuple[int, int] | None = None
    _transform: GeneralizedRCNNTransform = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        transform = GeneralizedRCNNTransform(self.min_size, self.max_size, list(self.mean), list(self.std),
                                             size_divisible=SIZE_DIVISIBLE).eval()
        object.__setattr__(self, "_transform", transform)

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """Normalise and resize one [3, h, w] float image in 0..1 exactly as torchvision does (then, on a static
        canvas, further down to fit it)."""
        h, w = image.shape[-2:]
        scale = min(self.min_size / min(h, w), self.max_size / max(h, w))
        if int(h * scale) < 1 or int(w * scale) < 1:
            raise MaskrtError(f"an image of {w}x{h} pixels resizes to less than one pixel ({w * scale:.2f}x"
                              f"{h * scale:.2f}): its aspect ratio is too extreme for this model")
        image = self._transform.normalize(image)
        out, _ = self._transform.resize(image, None)
        if self.canvas is not None and (out.shape[-2] > self.canvas[0] or out.shape[-1] > self.canvas[1]):
            fit = min(self.canvas[0] / h, self.canvas[1] / w)
            out = F.interpolate(image[None], scale_factor=fit, mode="bilinear", recompute_scale_factor=True,
                                align_corners=False)[0]
            out = out[:, : self.canvas[0], : self.canvas[1]]
        return out

    def padded_size(self, sizes: list[tuple[int, int]]) -> tuple[int, int]:
        """The (height, width) a batch of resized images is padded to."""
        if self.canvas is not None:
            return self.canvas
        up = lambda v: -(-v // SIZE_DIVISIBLE) * SIZE_DIVISIBLE  # noqa: E731
        size = (up(max(h for h, _ in sizes)), up(max(w for _, w in sizes)))
        if self.max_side is not None and (size[0] > self.max_side[0] or size[1] > self.max_side[1]):
            raise MaskrtError(f"a batch padded to {size[0]}x{size[1]} exceeds the export's largest input "
                              f"{self.max_side[0]}x{self.max_side[1]}")
        return size

    def __call__(self, images: list[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch of HxWx3 uint8 arrays (or [3,h,w] float tensors) -> (batch [B,3,H,W], sizes [B,2] (h, w))."""
        if not images:
            raise MaskrtError("no images to pre-process")
        resized = [self.resize(to_tensor(image)) for image in images]
        sizes = [(int(r.shape[-2]), int(r.shape[-1])) for r in resized]
        height, width = self.padded_size(sizes)
        batch = torch.zeros((len(images), 3, height, width), dtype=torch.float32)
        for i, r in enumerate(resized):
            batch[i, :, : r.shape[-2], : r.shape[-1]] = r
        return batch, torch.tensor(sizes, dtype=torch.int64)


def to_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """HxWx3 uint8 array -> [3, H, W] float32 in 0..1 (tensors pass through as float32)."""
    if isinstance(image, torch.Tensor):
        return image.to(torch.float32)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float32).div_(255.0)


def preprocessor_for(info: ExportInfo) -> Preprocessor:
    """The pre-processing an export's graphs expect: torchvision's transform, padded per batch or to its canvas."""
    inp = info.input
    return Preprocessor(info.min_size, info.max_size, info.mean, info.std,  # type: ignore[arg-type]
                        canvas=None if inp.dynamic_size else (inp.height, inp.width),
                        max_side=(inp.height_range[1], inp.width_range[1]))  # type: ignore[index]
