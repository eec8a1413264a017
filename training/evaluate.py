"""COCO evaluation with pycocotools: box and mask AP on COCO's 0-100 scale."""

from __future__ import annotations

import contextlib
import io

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from maskrt.core.coco_results import encode_results
from maskrt.training.coco import CocoDataset

METRIC_NAMES = ("AP", "AP50", "AP75")


def detections_to_coco(image_id: int, output: dict, label_to_cat: dict[int, int],
                       mask_threshold: float = 0.5) -> list[dict]:
    """One torchvision-style output (boxes xyxy, scores, labels, mask probabilities [N,1,H,W]) as COCO results
    (core.coco_results.encode_results after thresholding the masks)."""
    masks = output.get("masks")
    binary = (masks[:, 0] > mask_threshold).cpu().numpy() if masks is not None else None
    return encode_results(image_id, output["boxes"].detach().cpu().numpy(), output["scores"].detach().cpu().numpy(),
                          output["labels"].detach().cpu().numpy(), binary, label_to_cat)


IOU_TYPES = ("bbox", "segm")


def coco_evaluations(coco_gt: COCO, results: list[dict], image_ids: list[int] | None = None
                     ) -> dict[str, COCOeval | None]:
    """pycocotools' evaluation per IoU type, evaluated, accumulated and summarized (its per-image matches in
    `evalImgs`, its AP in `stats`); None for a type without any result (AP 0)."""
    evaluations: dict[str, COCOeval | None] = {}
    for iou_type in IOU_TYPES:
        usable = [r for r in results if iou_type == "bbox" or "segmentation" in r]
        if not usable:
            evaluations[iou_type] = None
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(usable)
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                ev.params.imgIds = list(image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        evaluations[iou_type] = ev
    return evaluations


def metrics_of(evaluations: dict[str, COCOeval | None]) -> dict:
    """{"bbox": {AP, AP50, AP75}, "segm": {...}} on the 0-100 scale of `coco_evaluations`' result (-1 where COCO has
    no GT for a metric, 0 for a type without results)."""
    metrics: dict[str, dict[str, float]] = {}
    for iou_type, ev in evaluations.items():
        metrics[iou_type] = {k: 0.0 for k in METRIC_NAMES} if ev is None else {
            k: round(float(v) * 100 if v >= 0 else -1.0, 3) for k, v in zip(METRIC_NAMES, ev.stats[:3], strict=True)}
    return metrics


def coco_metrics(coco_gt: COCO, results: list[dict], image_ids: list[int] | None = None) -> dict:
    """{"bbox": {AP, AP50, ...}, "segm": {...}} on the 0-100 scale (-1 where COCO has no GT for a metric)."""
    return metrics_of(coco_evaluations(coco_gt, results, image_ids))


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: CocoDataset, *, batch_size: int = 4, progress: bool = True,
             device: torch.device | None = None) -> dict:
    """Run `model` (torchvision Mask R-CNN, on `device`: its own when None) over `dataset` and return its COCO
    metrics."""
    was_training = model.training
    model.eval()
    results: list[dict] = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="eval", unit="batch", disable=not progress,
                      leave=False):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        outputs = model([img if device is None else img.to(device) for img, _ in items])
        for (_, target), out in zip(items, outputs, strict=True):
            results.extend(detections_to_coco(target["image_id"], out, dataset.label_to_cat))
    model.train(was_training)
    return coco_metrics(dataset.coco, results, image_ids=[dataset.ids[i] for i in range(len(dataset))])


def format_metrics(metrics: dict) -> str:
    """A short human-readable line per IoU type."""
    lines = []
    for iou_type in ("bbox", "segm"):
        m = metrics.get(iou_type, {})
        lines.append(f"{iou_type:5s} AP {m.get('AP', 0):6.2f}  AP50 {m.get('AP50', 0):6.2f}  "
                     f"AP75 {m.get('AP75', 0):6.2f}")
    return "\n".join(lines)
