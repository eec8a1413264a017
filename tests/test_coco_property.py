"""Property: a COCO file with random malformed annotations either stops with a one-line error naming the file, or
loads into ONE cleaned set that training learns from and evaluation scores - so detections equal to the training
targets score AP 100, and a training step runs on them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from maskrt.core.errors import MaskrtError
from maskrt.training.coco import load_split
from maskrt.training.evaluate import coco_metrics
from maskrt.training.models import build_model, default_model_config

pytestmark = pytest.mark.slow
SIZE = 48


def _square(x: int, y: int, s: int) -> list[float]:
    return [x, y, x + s, y, x + s, y + s, x, y + s]


def _mask(x: int, y: int, s: int, size: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    m = np.zeros(size, np.uint8, order="F")
    m[y:y + s, x:x + s] = 1
    return m


def _rle(x: int, y: int, s: int, size: tuple[int, int] = (SIZE, SIZE)) -> dict:
    rle = mask_utils.encode(_mask(x, y, s, size))
    return {"size": list(size), "counts": rle["counts"].decode()}


def _runs(x: int, y: int, s: int) -> dict:
    """Uncompressed RLE: run lengths of the column-major pixels, starting with a run of zeros."""
    flat = _mask(x, y, s).ravel(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return {"size": [SIZE, SIZE], "counts": ([0] if flat[0] else []) + runs}


KINDS = {  # name -> (segmentation, bbox) for a square at (x, y) of side s
    "polygon": lambda x, y, s: ([_square(x, y, s)], [x, y, s, s]),
    "rle": lambda x, y, s: (_rle(x, y, s), [x, y, s, s]),
    "uncompressed-rle": lambda x, y, s: (_runs(x, y, s), [x, y, s, s]),
    "polygon-4-numbers": lambda x, y, s: ([[x, y, x + s, y + s]], [x, y, s, s]),
    "polygon-2-numbers": lambda x, y, s: ([[x, y]], [x, y, s, s]),
    "empty-list": lambda x, y, s: ([], [x, y, s, s]),
    "null": lambda x, y, s: (None, [x, y, s, s]),
    "rle-wrong-size": lambda x, y, s: (_rle(x, y, s, (SIZE, SIZE + 8)), [x, y, s, s]),
    "rle-malformed": lambda x, y, s: ({"size": [SIZE, SIZE], "counts": "\x7f\x7f!!"}, [x, y, s, s]),
    "rle-past-the-image": lambda x, y, s: ({"size": [SIZE, SIZE], "counts": [SIZE * SIZE, 5]}, [x, y, s, s]),
    "negative-box": lambda x, y, s: ([_square(x, y, s)], [x, y, -s, s]),
    "nan-box": lambda x, y, s: ([_square(x, y, s)], [x, math.nan, s, s]),
    "box-outside": lambda x, y, s: ([_square(x, y, s)], [SIZE + 5, y, s, s]),
}

VALID = ["polygon", "rle", "uncompressed-rle"]
# (kind, image, x, y, side, category, crowd); valid kinds are drawn more often, so most files load
annotation = st.tuples(st.sampled_from(sorted(KINDS) + VALID * 3), st.integers(0, 1), st.integers(0, 30),
                       st.integers(0, 30), st.integers(4, 16), st.integers(1, 2), st.booleans())


def _write(root: Path, anns: list[tuple], duplicate_id: bool) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "train").mkdir()
    images = []
    for i in (1, 2):
        Image.fromarray(np.full((SIZE, SIZE, 3), 40 * i, np.uint8)).save(root / "train" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": SIZE, "width": SIZE})
    annotations = []
    for k, (kind, image, x, y, s, cat, crowd) in enumerate(anns):
        seg, bbox = KINDS[kind](x, y, s)
        annotations.append({"id": k + 1, "image_id": image + 1, "category_id": cat, "segmentation": seg, "bbox": bbox,
                            "iscrowd": int(crowd and kind in ("rle", "uncompressed-rle")), "area": float(s * s)})
    if duplicate_id and len(annotations) > 1:
        annotations[-1]["id"] = annotations[0]["id"]
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(data))
    return root


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(anns=st.lists(annotation, min_size=1, max_size=6), duplicate_id=st.integers(0, 5).map(lambda v: v == 0))
def test_malformed_coco_loads_clean_or_stops_with_one_line(tmp_path_factory, anns, duplicate_id) -> None:  # noqa: ANN001
    root = _write(tmp_path_factory.mktemp("coco"), anns, duplicate_id)
    try:
        train = load_split(root, "train", train=True)
    except MaskrtError as error:
        assert "\n" not in str(error) and "instances_train.json" in str(error)
        event(f"stopped: {str(error).split(': ', 1)[1][:30]}")
        return
    event("loaded, scored and trained")
    evaluation = load_split(root, "train", train=False)
    gt = [a for a in evaluation.coco.anns.values() if not a["iscrowd"]]
    targets = [train[i][1] for i in range(len(train))]
    assert sum(len(t["labels"]) for t in targets) == len(gt)  # training sees exactly what evaluation scores
    # Detections equal to the ground truth that training uses score AP 100 (bbox and segm).
    detections = []
    for ann in gt:
        rle = mask_utils.encode(np.asfortranarray(evaluation.coco.annToMask(ann)))
        detections.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann["bbox"],
                           "score": 1.0, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    metrics = coco_metrics(evaluation.coco, detections)
    assert metrics["bbox"]["AP"] == 100.0 and metrics["segm"]["AP"] == 100.0, (anns, metrics)
    # One training step on the cleaned targets.
    torch.manual_seed(0)
    model = build_model(default_model_config("slim", 2)).train()
    image, target = train[0]
    losses = model([image], [target])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
