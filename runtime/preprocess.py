"""Pre-processing shared by every backend: torchvision's GeneralizedRCNNTransform on a fixed canvas.

An image is normalised with the model's mean/std, resized bilinearly with torchvision's rule
``scale = min(min_size / short_side, max_size / long_side)`` - further reduced when needed so that
the result fits the export canvas (H, W) - and zero-padded (after normalisation, as torchvision pads)
at the bottom/right to the canvas. The resized size of each image is kept: boxes are clipped to it
and mapped back to the original image with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from maskrt.core.errors import MaskrtError


@dataclass(frozen=True)
class Preprocessor:
    """Resize + normalise + pad images onto a fixed (height, width) canvas."""

    height: int
    width: int
    min_size: int
    max_size: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def scale_for(self, h: int, w: int) -> float:
        """The resize factor of an h x w image (torchvision's rule, capped by the canvas)."""
        scale = min(self.min_size / min(h, w), self.max_size / max(h, w))
        return min(scale, self.height / h, self.width / w)

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """Normalise and resize one [3, h, w] float image in 0..1 exactly as torchvision does."""
        mean = torch.tensor(self.mean, dtype=image.dtype)[:, None, None]
        std = torch.tensor(self.std, dtype=image.dtype)[:, None, None]
        image = (image - mean) / std
        h, w = image.shape[-2:]
        scale = self.scale_for(h, w)
        if int(h * scale) < 1 or int(w * scale) < 1:
            raise MaskrtError(f"an image of {w}x{h} pixels resizes to less than one pixel ({w * scale:.2f}x"
                              f"{h * scale:.2f}): its aspect ratio is too extreme for this model")
        out = F.interpolate(image[None], scale_factor=scale, mode="bilinear",
                            recompute_scale_factor=True, align_corners=False)[0]
        return out[:, : self.height, : self.width]

    def __call__(self, images: list[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch of HxWx3 uint8 arrays (or [3,h,w] float tensors) -> (canvas [B,3,H,W], sizes [B,2] (h, w))."""
        canvas = torch.zeros((len(images), 3, self.height, self.width), dtype=torch.float32)
        sizes = torch.zeros((len(images), 2), dtype=torch.int64)
        for i, image in enumerate(images):
            resized = self.resize(to_tensor(image))
            h, w = resized.shape[-2:]
            canvas[i, :, :h, :w] = resized
            sizes[i] = torch.tensor([h, w])
        return canvas, sizes


def to_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """HxWx3 uint8 array -> [3, H, W] float32 in 0..1 (tensors pass through as float32)."""
    if isinstance(image, torch.Tensor):
        return image.to(torch.float32)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float32).div_(255.0)
