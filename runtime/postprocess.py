"""Post-processing shared by every backend: fixed-size outputs -> detections on the ORIGINAL image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from maskrt.core.coco_results import encode_results
from maskrt.runtime.paste import paste_masks


@dataclass
class Detections:
    """Detections of one image, in original-image pixels.

    boxes [N, 4] (x1, y1, x2, y2), scores [N], labels [N] (contiguous, 1..K), masks [N, H, W] bool
    (pasted probability > 0.5, at the original size).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class RawOutput:
    """One image's fixed-shape graph outputs (canvas / resized-image pixels, masks MxM: 28 FPN / 14 C4, D slots)."""

    num: int
    boxes: np.ndarray  # [D, 4]
    scores: np.ndarray  # [D]
    labels: np.ndarray  # [D]
    masks: np.ndarray  # [D, M, M]

    @classmethod
    def from_torchvision(cls, det: dict[str, torch.Tensor], slots: int) -> RawOutput:
        """torchvision's RoI-head result of one image (boxes in resized-image pixels, masks [N, 1|-, M, M]
        probabilities) in `slots` fixed slots, truncated like a deploy graph with that many detections."""
        n = min(len(det["scores"]), slots)
        m = det["masks"].shape[-1]  # the mask head's side (28 FPN, 14 C4), also when nothing was detected: [0, 1, M, M]
        masks = det["masks"].reshape(len(det["scores"]), m, m)
        raw = cls(num=n, boxes=np.zeros((slots, 4), np.float32), scores=np.zeros(slots, np.float32),
                  labels=np.zeros(slots, np.int64), masks=np.zeros((slots, m, m), np.float32))
        raw.boxes[:n] = det["boxes"][:n].numpy()
        raw.scores[:n] = det["scores"][:n].numpy()
        raw.labels[:n] = det["labels"][:n].numpy()
        raw.masks[:n] = masks[:n].numpy()
        return raw


def coco_results(dets: Detections, classes: list[dict], image_id: int = 0) -> list[dict]:
    """One image's detections as COCO results (category ids from `classes`, label i -> classes[i - 1]; RLE of the
    pasted masks, thresholded once, at paste)."""
    label_to_cat = {i + 1: c["id"] for i, c in enumerate(classes)}
    return encode_results(image_id, dets.boxes, dets.scores, dets.labels, dets.masks, label_to_cat)


def to_detections(raw: RawOutput, resized: tuple[int, int], original: tuple[int, int], *,
                  score_threshold: float = 0.0, device: str = "cpu") -> Detections:
    """Map one image's raw output to the original image: boxes scaled, masks pasted at full size (on `device`)."""
    n = int(raw.num)
    keep = np.nonzero(raw.scores[:n] >= score_threshold)[0]
    boxes = torch.from_numpy(np.ascontiguousarray(raw.boxes[keep], dtype=np.float32))
    ratio_h = torch.tensor(original[0], dtype=torch.float32) / torch.tensor(resized[0], dtype=torch.float32)
    ratio_w = torch.tensor(original[1], dtype=torch.float32) / torch.tensor(resized[1], dtype=torch.float32)
    boxes = boxes * torch.stack([ratio_w, ratio_h, ratio_w, ratio_h])
    masks = paste_masks(torch.from_numpy(np.ascontiguousarray(raw.masks[keep], dtype=np.float32)).to(device),
                        boxes.to(device), original[0], original[1], threshold=0.5)
    return Detections(boxes=boxes.numpy(), scores=raw.scores[keep].astype(np.float32),
                      labels=raw.labels[keep].astype(np.int64), masks=masks.cpu().numpy())
