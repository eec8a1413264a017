"""The COCO loader on a hand-written dataset in the real COCO 2017 layout."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from maskrt.core.errors import MaskrtError
from maskrt.training.coco import load_split


def _write_dataset(root: Path, annotations: list[dict], images: list[dict] | None = None,
                   split: str = "val2017") -> Path:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images = images if images is not None else [
        {"id": 11, "file_name": "a.jpg", "height": 40, "width": 60},
        {"id": 12, "file_name": "b.png", "height": 40, "width": 60},
        {"id": 13, "file_name": "empty.png", "height": 40, "width": 60},
    ]
    for img in images:
        mode = "L" if img["file_name"].startswith("b") else "RGB"  # a grayscale file too
        Image.new(mode, (img["width"], img["height"]), 90).save(root / split / img["file_name"])
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def _rle(mask: np.ndarray, compressed: bool) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _annotations() -> list[dict]:
    m1 = np.zeros((40, 60), np.uint8)
    m1[5:15, 10:30] = 1
    m2 = np.zeros((40, 60), np.uint8)
    m2[20:35, 40:55] = 1
    return [
        {"id": 1, "image_id": 11, "category_id": 18, "iscrowd": 0, "bbox": [10, 10, 20, 10], "area": 150.0,
         "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]},
        {"id": 2, "image_id": 11, "category_id": 90, "iscrowd": 0, "bbox": [10, 5, 20, 10], "area": 200.0,
         "segmentation": _rle(m1, compressed=True)},
        {"id": 3, "image_id": 12, "category_id": 1, "iscrowd": 0, "bbox": [40, 20, 15, 15], "area": 225.0,
         "segmentation": _rle(m2, compressed=False)},
        {"id": 4, "image_id": 12, "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 10, 10], "area": 100.0,
         "segmentation": _rle(m2, compressed=False)},
    ]


def test_real_coco_layout(tmp_path: Path) -> None:
    root = _write_dataset(tmp_path, _annotations())
    ds = load_split(root, "val2017", train=False)
    assert [c["id"] for c in ds.classes] == [1, 18, 90]
    assert ds.cat_to_label == {1: 1, 18: 2, 90: 3} and ds.label_to_cat == {1: 1, 2: 18, 3: 90}
    assert len(ds) == 3  # the image without annotations is kept for evaluation
    img, tgt = ds[0]
    assert img.shape == (3, 40, 60) and img.dtype.is_floating_point and float(img.max()) <= 1.0
    assert tgt["labels"].tolist() == [2, 3]
    assert tgt["masks"].shape == (2, 40, 60)
    assert tgt["masks"][0].sum() > 0 and tgt["masks"][1].sum() == 200  # polygon and compressed RLE
    assert tgt["boxes"][0].tolist() == [10.0, 10.0, 30.0, 20.0]
    img, tgt = ds[1]  # grayscale file -> 3 channels; uncompressed RLE; crowd dropped
    assert img.shape[0] == 3
    assert tgt["labels"].tolist() == [1] and int(tgt["masks"].sum()) == 225
    _, tgt = ds[2]
    assert tgt["boxes"].shape == (0, 4) and tgt["masks"].shape == (0, 40, 60)

    train = load_split(root, "val2017", train=True)
    assert len(train) == 2  # images without usable annotations are not trained on


def test_degenerate_annotations_are_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    anns = _annotations() + [
        {"id": 7, "image_id": 11, "category_id": 1, "iscrowd": 0, "bbox": [1, 1, 5, 5], "area": 4.0,
         "segmentation": [[1, 1, 5, 5]]},
        {"id": 8, "image_id": 11, "category_id": 1, "iscrowd": 0, "bbox": [1, 1, 0, 5], "area": 0.0,
         "segmentation": [[1, 1, 1, 5, 1, 3]]},
    ]
    root = _write_dataset(tmp_path, anns)
    with caplog.at_level(logging.WARNING, logger="maskrt"):
        ds = load_split(root, "val2017", train=True)
    assert "skipped 2 annotation(s)" in caplog.text and "no polygon of 3 or more points with an area: id 7, 8" in \
        caplog.text
    assert ds[0][1]["labels"].tolist() == [2, 3]
    assert 7 not in ds.coco.anns and 8 not in ds.coco.anns  # evaluation scores the same cleaned set


def test_one_image_file_under_two_ids_is_a_warning_naming_both(tmp_path: Path, caplog) -> None:
    images = [{"id": 11, "file_name": "a.jpg", "height": 40, "width": 60},
              {"id": 12, "file_name": "b.png", "height": 40, "width": 60},
              {"id": 14, "file_name": "./a.jpg", "height": 40, "width": 60}]  # the same file, spelled otherwise
    root = _write_dataset(tmp_path, _annotations(), images)
    with caplog.at_level(logging.WARNING, logger="maskrt"):
        load_split(root, "val2017", train=False)
    warnings = [r.getMessage() for r in caplog.records if "name the same file" in r.getMessage()]
    assert len(warnings) == 1 and "image ids 11, 14 name the same file a.jpg" in warnings[0], caplog.text


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda root: (root / "val2017" / "a.jpg").unlink(), "a.jpg: image file of image_id 11"),
        (lambda root: (root / "annotations" / "instances_val2017.json").write_text("{oops"), "not valid JSON"),
        (lambda root: (root / "annotations" / "instances_val2017.json").write_text("[]"), "expected a JSON object"),
        (lambda root: (root / "annotations" / "instances_val2017.json").write_text('{"images": []}'),
         "'annotations'"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, mutate, message: str) -> None:
    root = _write_dataset(tmp_path, _annotations())
    mutate(root)
    with pytest.raises(MaskrtError, match=message):
        load_split(root, "val2017", train=False)


def test_annotation_pointing_at_a_missing_image(tmp_path: Path) -> None:
    anns = _annotations()
    anns[0]["image_id"] = 999
    root = _write_dataset(tmp_path, anns)
    with pytest.raises(MaskrtError, match="annotation 1 points at image_id 999"):
        load_split(root, "val2017", train=False)


def test_zero_usable_annotations(tmp_path: Path) -> None:
    anns = [a for a in _annotations() if a["iscrowd"]]
    root = _write_dataset(tmp_path, anns)
    with pytest.raises(MaskrtError, match="zero usable annotations"):
        load_split(root, "val2017", train=True)


def test_missing_split(tmp_path: Path) -> None:
    root = _write_dataset(tmp_path, _annotations())
    with pytest.raises(MaskrtError, match=r"instances_train.json: no such annotation file \(splits here: val2017\)"):
        load_split(root, "train", train=True)
    with pytest.raises(MaskrtError, match="instances_val.json: no such annotation file"):
        load_split(root, "val", train=True)  # a prefix of val2017 is not val2017
    with pytest.raises(MaskrtError, match="dataset folder not found"):
        load_split(tmp_path / "nope", "val", train=True)
