"""Mask pasting at the ORIGINAL image size, vectorised over detections.

torchvision pastes each 28x28 mask separately (`paste_masks_in_image`): the mask is padded by one
pixel, its box expanded by the same ratio and truncated to integers, the mask resized bilinearly
(align_corners=False) to the box size and copied into the image. Bilinear resizing is separable, so
all masks of an image are pasted with two batched matrix products ``Wy @ M @ Wx^T`` where Wy / Wx
hold, for every image row / column, the interpolation weights of the (padded) mask rows / columns -
zero outside the box. Same result as torchvision (up to float rounding), without a Python loop over
detections; detections are processed in chunks to bound memory. It runs on the masks' device (a GPU backend's
masks are pasted on the GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _axis_weights(start: torch.Tensor, length: torch.Tensor, size: int, mask_size: int) -> torch.Tensor:
    """[N, size, mask_size] bilinear weights mapping mask cells onto image pixels 0..size-1.

    Pixel p lies in a box starting at integer `start` with integer `length`; its source coordinate in
    the mask is max((p - start + 0.5) * mask_size / length - 0.5, 0) (PyTorch's bilinear rule).
    """
    pix = torch.arange(size, dtype=torch.float32, device=start.device)[None, :]  # [1, size]
    local = pix - start[:, None].float()  # [N, size]
    inside = (local >= 0) & (local < length[:, None].float())
    src = ((local + 0.5) * (mask_size / length[:, None].float()) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=mask_size - 1)
    i1 = (i0 + 1).clamp(max=mask_size - 1)
    frac = src - i0.float()
    weights = torch.zeros((start.shape[0], size, mask_size), dtype=torch.float32, device=start.device)
    weights.scatter_add_(2, i0[..., None], (1 - frac)[..., None])
    weights.scatter_add_(2, i1[..., None], frac[..., None])
    return weights * inside[..., None]


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int, *, padding: int = 1,
                chunk: int = 32, threshold: float | None = None) -> torch.Tensor:
    """Paste masks [N, M, M] (probabilities) for boxes [N, 4] (x1,y1,x2,y2 in the output image) into
    [N, height, width] float32 probability maps, exactly as torchvision's paste_masks_in_image; with a
    `threshold`, into boolean masks (prob > threshold), which keeps memory at one byte per pixel."""
    n, m = masks.shape[0], masks.shape[-1]
    out = torch.zeros((n, height, width), dtype=torch.float32 if threshold is None else torch.bool,
                      device=masks.device)
    if n == 0:
        return out
    padded = F.pad(masks.float(), (padding,) * 4)
    scale = float(m + 2 * padding) / m
    boxes = boxes.float()
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    exp = torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], dim=1).to(torch.int64)
    bw = (exp[:, 2] - exp[:, 0] + 1).clamp(min=1)
    bh = (exp[:, 3] - exp[:, 1] + 1).clamp(min=1)
    for s in range(0, n, chunk):
        sl = slice(s, s + chunk)
        wy = _axis_weights(exp[sl, 1], bh[sl], height, m + 2 * padding)  # [n, H, M+2]
        wx = _axis_weights(exp[sl, 0], bw[sl], width, m + 2 * padding)  # [n, W, M+2]
        pasted = torch.bmm(torch.bmm(wy, padded[sl]), wx.transpose(1, 2))
        out[sl] = pasted if threshold is None else pasted > threshold
    return out
