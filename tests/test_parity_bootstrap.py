"""The dAP's paired bootstrap (runtime/parity/bootstrap.py): each resample's AP is pycocotools' AP on a dataset of the
resampled images, checked against pycocotools itself on a dataset with the copies made; the interval is seeded and
paired."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrt.runtime.parity.bootstrap import (
    images_to_decide,
    paired_dap_bootstrap,
    per_image_matches,
    resample_weights,
    weighted_ap,
)

SIDE = 120


def _dataset(n_images: int, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Images, ground truth (2-5 boxes of 3 classes per image, some crowd) and noisy detections (missed objects,
    false positives, shifted boxes, tied and saturated scores)."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "width": SIDE, "height": SIDE, "file_name": f"{i}.png"})
        for _ in range(rng.integers(2, 6)):
            x, y = rng.uniform(0, 80, 2)
            w, h = rng.uniform(8, 40, 2)
            cat = int(rng.integers(1, 4))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(rng.random() < 0.05)})
            if rng.random() < 0.85:  # found, with a shifted box and a score (often tied or saturated)
                dx, dy = rng.normal(0, 3, 2)
                score = float(rng.choice([1.0, 0.9, round(rng.uniform(0.05, 1.0), 2)]))
                dets.append({"image_id": i, "category_id": cat, "bbox": [x + dx, y + dy, w, h], "score": score})
        for _ in range(rng.integers(0, 3)):  # false positives
            x, y = rng.uniform(0, 80, 2)
            dets.append({"image_id": i, "category_id": int(rng.integers(1, 4)), "bbox": [x, y, 20.0, 20.0],
                         "score": round(float(rng.uniform(0.05, 0.8)), 2)})
    return images, anns, dets


def _coco(images: list[dict], anns: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _evaluate(coco: COCO, dets: list[dict]) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _with_copies(images: list[dict], anns: list[dict], dets: list[dict], counts: np.ndarray
                 ) -> tuple[list[dict], list[dict], list[dict]]:
    """The dataset holding image k counts[k] times, each copy under a new id with its annotations and detections."""
    new_images, new_anns, new_dets = [], [], []
    for k, image in enumerate(images):
        for _ in range(int(counts[k])):
            new_id = len(new_images) + 1
            new_images.append({**image, "id": new_id})
            for a in anns:
                if a["image_id"] == image["id"]:
                    new_anns.append({**a, "id": len(new_anns) + 1, "image_id": new_id})
            new_dets += [{**d, "image_id": new_id} for d in dets if d["image_id"] == image["id"]]
    return new_images, new_anns, new_dets


def test_each_resample_is_pycocotools_ap_on_the_resampled_images() -> None:
    images, anns, dets = _dataset(24, seed=1)
    ev = _evaluate(_coco(images, anns), dets)
    categories = per_image_matches(ev)
    weights = np.vstack([np.ones(24, np.int64), resample_weights(24, 4, seed=7)])
    ours = weighted_ap(categories, weights, ev.params.recThrs)
    assert ours[0] == pytest.approx(ev.stats[0] * 100, abs=1e-9)  # all images once: the point value
    for row, counts in zip(ours[1:], weights[1:], strict=True):
        assert counts.max() >= 2 and (counts == 0).any()  # a real resample: copies and absent images
        copied = _evaluate(_coco(*_with_copies(images, anns, dets, counts)[:2]),
                           _with_copies(images, anns, dets, counts)[2])
        assert row == pytest.approx(copied.stats[0] * 100, abs=1e-9)


def test_the_interval_is_paired_seeded_and_zero_for_identical_sides() -> None:
    images, anns, dets = _dataset(30, seed=2)
    coco = _coco(images, anns)
    reference = _evaluate(coco, dets)
    same = paired_dap_bootstrap(reference, _evaluate(coco, dets), resamples=200)
    assert (same["low"], same["high"], same["std"]) == (0.0, 0.0, 0.0)  # paired: the same images on both sides
    # the candidate loses its detections on 3 images: a negative dAP with an interval of real width
    dropped = {4, 11, 19}
    candidate = _evaluate(coco, [d for d in dets if d["image_id"] not in dropped])
    point = (candidate.stats[0] - reference.stats[0]) * 100
    first = paired_dap_bootstrap(reference, candidate, resamples=300, seed=5)
    again = paired_dap_bootstrap(reference, candidate, resamples=300, seed=5)
    other = paired_dap_bootstrap(reference, candidate, resamples=300, seed=6)
    assert first == {**again, "seconds": first["seconds"]}  # seeded: reproducible
    assert other["low"] != first["low"] or other["high"] != first["high"]
    assert first["low"] < point < first["high"] <= 0.0 and first["high"] - first["low"] > 1.0
    assert first["resamples"] == 300 and first["confidence"] == 0.90 and first["seconds"] >= 0


def test_images_to_decide() -> None:
    # a point 0.8 with interval [0.5, 1.1] and limit 1.0 over 32 images: the upper half-width 0.3 must shrink to 0.2
    assert images_to_decide(0.8, 0.5, 1.1, 1.0, 32) == 72
    # beyond the limit: the lower half-width must shrink below the distance to the limit
    assert images_to_decide(-1.1, -1.4, -0.8, 1.0, 32) == 288
    assert images_to_decide(1.0, 0.7, 1.3, 1.0, 32) is None  # on the limit: no number of images decides it
