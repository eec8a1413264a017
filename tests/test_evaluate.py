"""COCO evaluation: perfect predictions score 100, wrong ones score low, label mapping round-trips."""

from __future__ import annotations

from pathlib import Path

import torch

from maskrt.training.coco import load_split
from maskrt.training.evaluate import coco_metrics, detections_to_coco


def _gt_as_outputs(ds, shift: float = 0.0, wrong_label: bool = False) -> list[dict]:
    results = []
    for i in range(len(ds)):
        _, target = ds[i]
        labels = target["labels"]
        if wrong_label:
            labels = labels % len(ds.classes) + 1
        out = {"boxes": target["boxes"] + shift, "scores": torch.ones(len(labels)), "labels": labels,
               "masks": target["masks"][:, None].float()}
        results.extend(detections_to_coco(target["image_id"], out, ds.label_to_cat))
    return results


def test_ground_truth_scores_100(shapes_dir: Path) -> None:
    ds = load_split(shapes_dir, "val", train=False)
    metrics = coco_metrics(ds.coco, _gt_as_outputs(ds))
    assert set(metrics) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        assert set(metrics[iou_type]) == {"AP", "AP50", "AP75"}
        assert metrics[iou_type]["AP"] > 99.0, metrics


def test_wrong_predictions_score_low(shapes_dir: Path) -> None:
    ds = load_split(shapes_dir, "val", train=False)
    assert coco_metrics(ds.coco, _gt_as_outputs(ds, wrong_label=True))["segm"]["AP"] < 50
    assert coco_metrics(ds.coco, _gt_as_outputs(ds, shift=40.0))["bbox"]["AP"] < 10
    assert coco_metrics(ds.coco, [])["bbox"]["AP"] == 0.0
