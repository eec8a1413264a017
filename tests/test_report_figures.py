"""Parity report figures: side-by-side overlays, matched-pair plot and the choice of worst images (no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskrt.runtime.parity.figures import match_plot, pick_worst, side_by_side
from maskrt.runtime.postprocess import Detections

GREY = 128


def _dets(boxes: list[tuple[int, int, int, int]], labels: list[int], scores: list[float], h: int, w: int) -> Detections:
    """Detections whose masks fill their boxes."""
    masks = np.zeros((len(boxes), h, w), bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, y1:y2, x1:x2] = True
    return Detections(boxes=np.array(boxes, np.float32).reshape(-1, 4), scores=np.array(scores, np.float32),
                      labels=np.array(labels, np.int64), masks=masks)


def _pair(h: int, w: int) -> tuple[np.ndarray, Detections, Detections]:
    """A uniform grey image; the reference finds two objects, the candidate only the first."""
    image = np.full((h, w, 3), GREY, np.uint8)
    a, b = (w // 20, h // 6, w * 2 // 5, h * 3 // 4), (w // 2 + 10, h // 4, w * 9 // 10, h * 5 // 6)
    reference = _dets([a, b], [1, 2], [0.9, 0.8], h, w)
    candidate = _dets([a], [1], [0.85], h, w)
    return image, reference, candidate


def test_side_by_side_panels(tmp_path: Path) -> None:
    h, w = 120, 200
    image, reference, candidate = _pair(h, w)
    path = side_by_side(image, reference, candidate, ["circle", "square"], tmp_path / "sub" / "pair.png")
    assert path == tmp_path / "sub" / "pair.png"
    with Image.open(path) as im:
        assert im.format == "PNG"
        out = np.asarray(im.convert("RGB")).astype(int)
    strip = out.shape[0] - h  # title strip above the (not downscaled) panels
    assert 0 < strip <= 40
    assert 2 * w <= out.shape[1] <= 2 * w + 10
    left = out[strip:, :w]
    right = out[strip:, out.shape[1] - w:]
    assert left.shape == right.shape == (h, w, 3)
    assert not np.array_equal(left, right)
    for panel in (left, right):
        assert panel.mean(axis=2).std() > 1.0  # something drawn on the uniform image
    # Inside the second object's mask: coloured on the reference side, untouched grey on the candidate side.
    cy, cx = h * 13 // 24, w * 7 // 10
    assert np.abs(left[cy, cx] - GREY).max() > 20
    assert np.array_equal(right[cy, cx], [GREY, GREY, GREY])
    # Inside the first object's mask (found by both): coloured on both sides.
    cy, cx = h * 11 // 24, w // 5
    assert np.abs(left[cy, cx] - GREY).max() > 20
    assert np.abs(right[cy, cx] - GREY).max() > 20
    # The title strips are drawn (text on black) and differ (2 vs 1 detections).
    assert out[:strip, :w].max() > 0
    assert not np.array_equal(out[:strip, :w], out[:strip, out.shape[1] - w:])


def test_side_by_side_marks_missed_and_extra(tmp_path: Path) -> None:
    """A missed reference detection is outlined in white on the left panel, an extra candidate one on the right;
    unmarked detections are not."""
    h, w = 120, 200
    image, reference, _ = _pair(h, w)
    extra_box = (w // 2 + 10, 8, w * 9 // 10, h // 5)
    candidate = _dets([(w // 20, h // 6, w * 2 // 5, h * 3 // 4), extra_box], [1, 1], [0.85, 0.6], h, w)
    path = side_by_side(image, reference, candidate, ["a", "b"], tmp_path / "marked.png", missed=[1], extra=[1])
    with Image.open(path) as im:
        out = np.asarray(im.convert("RGB")).astype(int)
    strip = out.shape[0] - h
    left, right = out[strip:, :w], out[strip:, out.shape[1] - w:]
    white = lambda panel, y, x: bool((panel[y, x] == 255).all())  # noqa: E731
    b = reference.boxes[1].astype(int)  # the missed one: its outline 2 px outside the box
    assert white(left, b[1] - 2, (b[0] + b[2]) // 2) and not white(right, b[1] - 2, (b[0] + b[2]) // 2)
    a = reference.boxes[0].astype(int)  # matched: no outline on either side
    assert not white(left, a[1] - 2, (a[0] + a[2]) // 2) and not white(right, a[1] - 2, (a[0] + a[2]) // 2)
    x1, _, x2, y2 = extra_box
    assert white(right, y2 + 2, (x1 + x2) // 2) and not white(left, y2 + 2, (x1 + x2) // 2)


def test_side_by_side_downscales(tmp_path: Path) -> None:
    h, w = 1000, 1500
    image, reference, candidate = _pair(h, w)
    path = side_by_side(image, reference, candidate, ["a", "b"], tmp_path / "big.png", max_side=640)
    with Image.open(path) as im:
        width, height = im.size
    panel_h, panel_w = round(h * 640 / w), 640  # aspect kept, longest side at max_side
    assert 2 * panel_w <= width <= 2 * panel_w + 10
    assert panel_h < height <= panel_h + 40


def _open_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (900, 350)
        return np.asarray(im.convert("L"))


def test_match_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.3, 1.0, 50)
    cand = np.clip(ref + rng.normal(0, 0.02, 50), 0, 1)
    ious = rng.uniform(0.3, 1.0, 50)  # below 0.5: the histogram range widens
    full = _open_png(match_plot(ref, cand, ious, tmp_path / "match.png", title="model.onnx vs reference"))
    empty = _open_png(match_plot([], [], [], tmp_path / "plots" / "empty.png"))
    assert full.std() > 0 and empty.std() > 0
    assert not np.array_equal(full, empty)


def test_match_plot_rejects_unpaired_scores(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 reference scores but 1"):
        match_plot([0.5, 0.6], [0.5], [0.9], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def _row(above: int, matched: int, iou_min: float | None, score_diff: float | None, extra: int = 0) -> dict:
    return {"reference_above_floor": above, "matched": matched, "missed": above - matched,
            "candidate_above_floor": matched + extra, "extra": extra, "box_iou_min": iou_min,
            "score_diff_max": score_diff}


def test_pick_worst_order() -> None:
    rows = [
        _row(0, 0, None, None),  # 0: nothing to compare: last
        _row(3, 3, 0.95, 0.01),  # 1
        _row(4, 2, 0.99, 0.00),  # 2: two missed: worst
        _row(3, 3, 0.70, 0.01),  # 3: lowest IoU among fully matched
        _row(2, 1, 0.90, 0.02),  # 4: one missed
        _row(3, 3, 0.95, 0.05),  # 5: same IoU as 1, bigger score difference
        _row(3, 3, 0.95, 0.01),  # 6: tie with 1: keeps original order
        _row(1, 1, None, None),  # 7: matched but no IoU/score difference recorded
    ]
    assert pick_worst(rows, k=4) == [2, 4, 3, 5]
    assert pick_worst(rows, k=100) == [2, 4, 3, 5, 1, 6, 7, 0]
    assert pick_worst(rows) == pick_worst(rows, k=4)
    assert pick_worst(rows, k=0) == []
    assert pick_worst([], k=3) == []
    # Empty images are still returned when nothing else is available.
    assert pick_worst([_row(0, 0, None, None), _row(0, 0, None, None)], k=4) == [0, 1]


def test_pick_worst_counts_extra_detections() -> None:
    """Extra candidate detections rank an image like missed reference ones; detections from nothing (no reference
    detection at all) are not an "empty" image."""
    rows = [
        _row(3, 3, 0.95, 0.01),  # 0: clean
        _row(0, 0, None, None, extra=2),  # 1: two detections where the reference has none
        _row(3, 2, 0.99, 0.00, extra=2),  # 2: one missed + two extra: worst
        _row(2, 1, 0.90, 0.02),  # 3: one missed
    ]
    assert pick_worst(rows, k=4) == [2, 1, 3, 0]
