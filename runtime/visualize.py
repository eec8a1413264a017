"""Overlay PNGs: masks (translucent), boxes, class names and scores drawn on the original image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from maskrt.runtime.postprocess import Detections

_PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], np.float32)


def draw(image: np.ndarray, dets: Detections, class_names: list[str]) -> Image.Image:
    """Return `image` (HxWx3 uint8) with `dets` drawn on it: translucent masks, boxes, class names and scores."""
    canvas = image.astype(np.float32)
    for k in range(len(dets)):
        colour = _PALETTE[int(dets.labels[k]) % len(_PALETTE)]
        m = dets.masks[k] > 0.5
        canvas[m] = 0.5 * canvas[m] + 0.5 * colour
    im = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(im)
    for k in range(len(dets)):
        colour = tuple(int(c) for c in _PALETTE[int(dets.labels[k]) % len(_PALETTE)])
        x1, y1, x2, y2 = (float(v) for v in dets.boxes[k])
        pen.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        label = int(dets.labels[k])
        name = class_names[label - 1] if 0 < label <= len(class_names) else str(label)
        text = f"{name} {dets.scores[k]:.2f}"
        tx, ty = x1 + 2, max(0.0, y1 - 11)
        pen.rectangle(pen.textbbox((tx, ty), text), fill=(0, 0, 0))
        pen.text((tx, ty), text, fill=colour)
    return im


def overlay(image: np.ndarray, dets: Detections, class_names: list[str], path: str | Path) -> None:
    """Write `image` (HxWx3 uint8) with `dets` drawn on it to `path` (PNG)."""
    draw(image, dets, class_names).save(path)
