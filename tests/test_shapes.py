"""The shapes generator: deterministic, valid COCO, occlusion handled."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from maskrt.core.errors import MaskrtError
from maskrt.training.shapes import generate, render_image


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", train=6, val=3, size=64, seed=7, progress=False)
    b = generate(tmp_path / "b", train=6, val=3, size=64, seed=7, progress=False)
    c = generate(tmp_path / "c", train=6, val=3, size=64, seed=8, progress=False)
    assert _digest(a) == _digest(b)
    ja = (a / "annotations" / "instances_train.json").read_bytes()
    assert ja == (b / "annotations" / "instances_train.json").read_bytes()
    assert ja != (c / "annotations" / "instances_train.json").read_bytes()


def test_layout_and_annotations_are_consistent(shapes_dir: Path) -> None:
    for split, count in (("train", 24), ("val", 8)):
        data = json.loads((shapes_dir / "annotations" / f"instances_{split}.json").read_text())
        assert len(data["images"]) == count
        assert len(data["categories"]) >= 3
        assert {a["category_id"] for a in data["annotations"]} <= {c["id"] for c in data["categories"]}
        by_image: dict[int, list[np.ndarray]] = {}
        for ann in data["annotations"]:
            mask = mask_utils.decode(ann["segmentation"])
            assert ann["iscrowd"] == 0
            assert ann["area"] == float(mask.sum()) > 0
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                   float(ys.max() - ys.min() + 1)]
            by_image.setdefault(ann["image_id"], []).append(mask)
        for img in data["images"]:
            path = shapes_dir / split / img["file_name"]
            with Image.open(path) as im:
                assert im.size == (img["width"], img["height"]) == (96, 96)
            masks = by_image.get(img["id"], [])
            assert masks, "every generated image has at least one instance"
            # visible masks of one image never overlap (occluded parts belong to the front shape)
            assert np.stack(masks).sum(0).max() <= 1


def test_occlusion_and_variety(tmp_path: Path) -> None:
    root = generate(tmp_path, train=40, val=1, size=96, seed=0, progress=False)
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    areas = np.array([a["area"] for a in data["annotations"]])
    bbox_areas = np.array([a["bbox"][2] * a["bbox"][3] for a in data["annotations"]])
    assert len({a["category_id"] for a in data["annotations"]}) == 3
    assert areas.max() > 4 * areas.min(), "varied sizes"
    assert (areas <= bbox_areas).all()
    # occlusion: some instances are partly hidden by shapes drawn after them, none is hidden entirely
    instances = [inst for i in range(20) for inst in render_image(0, "train", i, 96)[1]]
    visible = np.array([inst["mask"].sum() / inst["full_area"] for inst in instances])
    assert (visible < 0.95).sum() >= 3 and visible.min() >= 0.7
    counts = np.bincount([a["image_id"] for a in data["annotations"]])
    assert counts.max() >= 3


def test_poses_vary_only_a_little() -> None:
    """Rectangles stay near axis-aligned (a tilted one fills less of its box) and triangles point up."""
    rect_fill, tri_points_up = [], []
    for i in range(40):
        for inst in render_image(3, "train", i, 128)[1]:
            mask = inst["mask"]
            if mask.sum() < 0.97 * inst["full_area"]:  # judge unoccluded shapes only
                continue
            ys, xs = np.nonzero(mask)
            if inst["category_id"] == 2:
                rect_fill.append(mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))
            elif inst["category_id"] == 3:
                rows = mask[ys.min():ys.max() + 1].sum(1)
                third = len(rows) // 3
                tri_points_up.append(rows[:third].mean() < rows[-third:].mean())
    assert len(rect_fill) >= 5 and min(rect_fill) > 0.55  # a 45-degree square fills 0.5
    assert len(tri_points_up) >= 5 and all(tri_points_up)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(MaskrtError, match="image size must be at least 32"):
        generate(tmp_path, train=1, val=1, size=8)
    with pytest.raises(MaskrtError, match="train and val image counts"):
        generate(tmp_path, train=0, val=1)
