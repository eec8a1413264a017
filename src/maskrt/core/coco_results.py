"""Detections as COCO results (the one encoder: training's evaluation and the runtime's predict, parity and serving
all write their results with it)."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def encode_results(image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                   masks: np.ndarray | None, label_to_cat: dict[int, int]) -> list[dict]:
    """COCO results of one image: boxes [N, 4] xyxy -> xywh (3 decimals), scores (5 decimals), labels (contiguous
    1..K) -> category ids, binary masks [N, H, W] (already thresholded) -> RLE; `masks` None gives box results."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rles: list = [None] * len(boxes)
    if masks is not None and len(boxes):
        binary = np.asarray(masks, dtype=np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    results = []
    for box, score, label, rle in zip(boxes, np.asarray(scores), np.asarray(labels), rles, strict=True):
        x1, y1, x2, y2 = box.tolist()
        res = {"image_id": int(image_id), "category_id": int(label_to_cat[int(label)]),
               "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
               "score": round(float(score), 5)}
        if rle is not None:
            res["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        results.append(res)
    return results
