"""The parity gates on hand-made detections (no model): each gate failing alone, the empty cases, the evidence rule,
the dAP decided by its bootstrap interval (within, wholly beyond, straddling the limit), the |score diff| tail's
evidence, label mismatch and one-to-one matching (runtime/parity/gates.py, parity.coco_comparison)."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools.coco import COCO

from maskrt.core.errors import MaskrtError
from maskrt.runtime.parity.compare import coco_comparison
from maskrt.runtime.parity.gates import EXIT_CODES, FAILED, INCONCLUSIVE, PASSED, Evidence, Gates, box_iou, judge, match
from maskrt.runtime.postprocess import Detections, coco_results

SIZE = 200  # image side of the hand-made detections
CLASSES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def dets(boxes: list[tuple[float, float, float, float]], labels: list[int] | None = None,
         scores: list[float] | None = None, shrink: int = 0) -> Detections:
    """Detections whose masks fill their boxes (less `shrink` pixels on every side)."""
    n = len(boxes)
    masks = np.zeros((n, SIZE, SIZE), bool)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        masks[k, int(y1) + shrink:int(y2) - shrink, int(x1) + shrink:int(x2) - shrink] = True
    return Detections(boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                      scores=np.asarray(scores if scores is not None else [0.9] * n, np.float32),
                      labels=np.asarray(labels if labels is not None else [1] * n, np.int64), masks=masks)


def grid(n: int, offset: float = 0.0) -> list[tuple[float, float, float, float]]:
    """n disjoint 30x30 boxes (at most 25), shifted right by `offset` pixels."""
    return [(10 + 38 * (k % 5) + offset, 10 + 38 * (k // 5), 40 + 38 * (k % 5) + offset, 40 + 38 * (k // 5))
            for k in range(n)]


def run(pairs: list[tuple[Detections, Detections]], gates: Gates, coco: dict | None = None
        ) -> tuple[Evidence, dict[str, bool | None], str, str]:
    """Evidence over the images, each gate's result by name, the verdict and its reason."""
    evidence = Evidence()
    for ref, cand in pairs:
        evidence.add(ref, cand, gates)
    results, verdict, reason = judge(evidence, gates, coco)
    return evidence, {r["gate"]: r["passed"] for r in results}, verdict, reason


GATES = Gates(min_detections=20, min_score_pairs=20)
CLEAN = (dets(grid(20)), dets(grid(20)))


def failing(results: dict[str, bool | None]) -> set[str]:
    return {name for name, ok in results.items() if ok is False}


def test_identical_detections_pass() -> None:
    evidence, results, verdict, _ = run([CLEAN], GATES)
    assert verdict == PASSED and EXIT_CODES[verdict] == 0
    assert evidence.reference_above == evidence.candidate_above == 20 and len(evidence.box_ious) == 20
    assert all(results.values()) and set(results) == {"recall", "precision", "median box IoU", "max score diff",
                                                      "median mask IoU"}


def test_recall_fails_alone() -> None:
    ref, cand = dets(grid(20)), dets(grid(20)[:19])  # one reference detection missed
    evidence, results, verdict, reason = run([(ref, cand)], GATES)
    assert failing(results) == {"recall"} and verdict == FAILED and "recall" in reason
    assert evidence.missed == 1 and evidence.extra == 0 and evidence.recall == pytest.approx(0.95)


def test_precision_fails_alone() -> None:
    boxes = grid(20)
    dup = (boxes[0][0] + 1, boxes[0][1], boxes[0][2] + 1, boxes[0][3])  # a duplicate of the first object
    ref, cand = dets(boxes), dets([*boxes, dup], scores=[0.9] * 20 + [0.5])
    evidence, results, verdict, reason = run([(ref, cand)], GATES)
    assert failing(results) == {"precision"} and verdict == FAILED and "precision" in reason
    assert evidence.extra == 1 and evidence.missed == 0 and evidence.precision == pytest.approx(20 / 21)


def test_box_iou_fails_alone() -> None:
    ref, cand = dets(grid(20)), dets(grid(20, offset=1.0))  # IoU 29/31 = 0.935: matched, but not close enough
    cand.masks[:] = ref.masks  # the masks stay identical
    _, results, verdict, _ = run([(ref, cand)], GATES)
    assert failing(results) == {"median box IoU"} and verdict == FAILED


def test_score_diff_fails_alone() -> None:
    ref, cand = dets(grid(20)), dets(grid(20), scores=[0.9] * 19 + [0.92])
    evidence, results, verdict, _ = run([(ref, cand)], GATES)
    assert failing(results) == {"max score diff"} and verdict == FAILED
    assert max(evidence.score_diffs) == pytest.approx(0.02, abs=1e-6)


def test_int8_score_gate_reads_the_99th_percentile() -> None:
    """One outlier of 200 pairs does not decide the int8 score gate; a shift of every pair does."""
    gates = Gates.for_precision("int8", min_detections=20)
    ref = [dets(grid(20)) for _ in range(10)]
    one_off = [dets(grid(20), scores=[0.9] * 20) for _ in range(9)] + [dets(grid(20), scores=[0.9] * 19 + [0.2])]
    assert failing(run(list(zip(ref, one_off, strict=True)), gates)[1]) == set()
    shifted = [dets(grid(20), scores=[0.3] * 20) for _ in range(10)]
    assert failing(run(list(zip(ref, shifted, strict=True)), gates)[1]) == {"p99 score diff"}


def test_mask_iou_fails_alone() -> None:
    ref, cand = dets(grid(20)), dets(grid(20), shrink=3)  # masks 24x24 inside 30x30: IoU 0.64
    _, results, verdict, _ = run([(ref, cand)], GATES)
    assert failing(results) == {"median mask IoU"} and verdict == FAILED


def _coco(boxes: list[tuple[float, float, float, float]]) -> COCO:
    """A one-image COCO ground truth with one class-1 object per box (masks fill the boxes)."""
    import pycocotools.mask as mask_utils

    anns = []
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        m = np.zeros((SIZE, SIZE), np.uint8)
        m[int(y1):int(y2), int(x1):int(x2)] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append({"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": rle, "area": float(m.sum()),
                     "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "width": SIZE, "height": SIZE, "file_name": "x.png"}],
                    "annotations": anns, "categories": CLASSES}
    coco.createIndex()
    return coco


def test_dap_fails_alone() -> None:
    """Detections below the score floor are no business of the per-detection gates, but they move the AP: a
    candidate that adds below-floor detections on objects the reference missed passes every per-detection gate and
    fails the dAP gates."""
    boxes = grid(20)
    coco = _coco(boxes)
    ref = dets(boxes[:15])  # the reference finds 15 of the 20 objects
    cand = dets(boxes, scores=[0.9] * 15 + [0.2] * 5)  # the candidate also the other 5, below the floor
    comparison = coco_comparison(coco, coco_results(ref, CLASSES, 1), coco_results(cand, CLASSES, 1), [1])
    assert comparison["delta"]["bbox"] > 10 and comparison["delta"]["segm"] > 10
    evidence, results, verdict, _ = run([(ref, cand)], Gates(min_detections=15, min_score_pairs=15), comparison)
    assert failing(results) == {"bbox dAP", "segm dAP"} and verdict == FAILED
    # one image: every resample is that image, the interval is the point
    assert comparison["interval"]["bbox"]["low"] == comparison["interval"]["bbox"]["high"] > 10
    assert evidence.reference_above == 15 and evidence.extra == 0
    same = coco_comparison(coco, coco_results(ref, CLASSES, 1), coco_results(ref, CLASSES, 1), [1])
    assert same["delta"] == {"bbox": 0.0, "segm": 0.0} and same["reference"]["segm"]["AP"] > 50


def test_no_detections_on_either_side_is_inconclusive() -> None:
    evidence, results, verdict, reason = run([(dets([]), dets([]))] * 8, GATES)
    assert verdict == INCONCLUSIVE and EXIT_CODES[verdict] == 3 and "0 reference detections" in reason
    assert set(results.values()) == {None}  # nothing to measure: neither pass nor fail
    assert evidence.recall is None and evidence.precision is None


def test_detections_from_nothing_fail() -> None:
    """The reference finds nothing on 8 images; the candidate reports objects on them: precision 0, FAILED."""
    pairs = [(dets([]), dets(grid(2), scores=[0.8, 0.4]))] * 8
    evidence, results, verdict, _ = run(pairs, GATES)
    assert verdict == FAILED and results["precision"] is False
    assert evidence.reference_above == 0 and evidence.extra == 16 and evidence.precision == 0.0


def test_candidate_finds_nothing_fails() -> None:
    _, results, verdict, _ = run([(dets(grid(20)), dets([]))], GATES)
    assert verdict == FAILED and results["recall"] is False and results["precision"] is None


def test_evidence_rule() -> None:
    """A clean comparison passes only with at least min_detections reference detections above the floor; a failing
    gate fails whatever the evidence."""
    assert run([(dets(grid(19)), dets(grid(19)))], GATES)[2] == INCONCLUSIVE
    assert run([(dets(grid(20)), dets(grid(20)))], GATES)[2] == PASSED
    below_floor = dets(grid(25), scores=[0.9] * 19 + [0.1] * 6)  # 25 detections, 19 at or above the floor
    evidence, _, verdict, reason = run([(below_floor, below_floor)], GATES)
    assert verdict == INCONCLUSIVE and evidence.reference_above == 19 and "fewer than the minimum 20" in reason
    assert run([(dets(grid(5)), dets(grid(4)))], GATES)[2] == FAILED  # recall 0.8 on 5 detections


def test_label_mismatch_matches_nothing() -> None:
    evidence, results, verdict, _ = run([(dets(grid(20)), dets(grid(20), labels=[2] * 20))], GATES)
    assert verdict == FAILED and evidence.missed == 20 and evidence.extra == 20
    assert results["recall"] is False and results["precision"] is False and results["median box IoU"] is None


def test_one_to_one() -> None:
    gates = Gates()
    box = (10.0, 10.0, 50.0, 50.0)
    # two candidate detections on one reference object: one matches, the other is extra
    m = match(dets([box]), dets([box, (11.0, 10.0, 51.0, 50.0)], scores=[0.9, 0.8]), gates)
    assert [(i, j) for i, j, _ in m.pairs] == [(0, 0)] and m.extra == [1] and m.missed == []
    # two reference objects, one candidate: the higher-scoring reference takes it, the other is missed
    m = match(dets([box, (12.0, 10.0, 52.0, 50.0)], scores=[0.6, 0.9]), dets([box]), gates)
    assert [(i, j) for i, j, _ in m.pairs] == [(1, 0)] and m.missed == [0] and m.extra == []
    # each reference takes the free candidate of its label with the highest IoU
    m = match(dets([box]), dets([(14.0, 10.0, 54.0, 50.0), (1.0, 10.0, 41.0, 50.0), box], scores=[0.9, 0.9, 0.2]),
              gates)
    assert [(i, j) for i, j, _ in m.pairs] == [(0, 2)] and m.extra == [0, 1]
    # under match_iou, no match
    m = match(dets([box]), dets([(40.0, 10.0, 80.0, 50.0)]), gates)
    assert m.pairs == [] and m.missed == [0] and m.extra == [0]


def test_pairs_across_the_floor() -> None:
    """A candidate just above the floor matches a reference detection just below it (no extra, its score difference
    counts); pairs with both sides below the floor are not counted."""
    gates = Gates()
    ref = dets(grid(2), scores=[0.29, 0.1])
    cand = dets(grid(2), scores=[0.31, 0.12])
    m = match(ref, cand, gates)
    assert m.extra == [] and m.missed == [] and [(i, j) for i, j, _ in m.pairs] == [(0, 0)]
    assert m.reference_above == 0 and m.candidate_above == 1
    evidence = Evidence()
    evidence.add(ref, cand, gates)
    assert evidence.score_diffs == [pytest.approx(0.02, abs=1e-6)]


def test_box_iou_matches_torchvision() -> None:
    import torch
    from torchvision.ops import box_iou as tv_box_iou

    rng = np.random.default_rng(0)
    a = rng.uniform(0, 100, (7, 4)).astype(np.float32)
    b = rng.uniform(0, 100, (5, 4)).astype(np.float32)
    a[:, 2:] += a[:, :2]
    b[:, 2:] += b[:, :2]
    b[0] = [5, 5, 5, 5]  # an empty box
    np.testing.assert_allclose(box_iou(a, b), tv_box_iou(torch.from_numpy(a), torch.from_numpy(b)).nan_to_num(0.0),
                               atol=1e-6)


def test_gates_per_precision_and_validation() -> None:
    for precision in ("fp32", "fp16", "int8"):
        gates = Gates.for_precision(precision)
        assert gates.min_precision == gates.min_recall  # precision as strict as recall
        assert gates.min_detections == 50
    assert Gates.for_precision("fp32").min_precision == 0.99
    assert Gates.for_precision("int8", min_detections=7).min_detections == 7
    for bad in ({"min_detections": 0}, {"min_detections": 2.5}, {"min_precision": 1.5},
                {"min_precision": float("nan")}):
        with pytest.raises(MaskrtError):
            Gates(**bad)


def test_a_score_tail_over_too_few_pairs_is_not_read() -> None:
    """A |score diff| gate over fewer than min_score_pairs pairs: the max fails on any pair beyond its limit, else is
    inconclusive; the 99th percentile fails only when more pairs lie beyond than 1% of min_score_pairs allows."""
    gates = Gates(min_detections=20)  # min_score_pairs 100
    assert gates.min_score_pairs == 100
    ref = dets(grid(20))
    evidence, results, verdict, reason = run([(ref, dets(grid(20)))] * 3, gates)  # 60 pairs, all identical
    assert results["max score diff"] is None and verdict == INCONCLUSIVE
    assert "rests on 60 matched pairs, fewer than 100" in reason and len(evidence.score_diffs) == 60
    one_off = dets(grid(20), scores=[0.9] * 19 + [0.95])
    assert run([(ref, one_off)] * 3, gates)[1]["max score diff"] is False  # a measured max beyond: fails
    int8 = Gates.for_precision("int8", min_detections=20)
    far = dets(grid(20), scores=[0.9] * 19 + [0.2])  # |diff| 0.7 > 0.5
    _, results, verdict, _ = run([(ref, far), (ref, ref), (ref, ref)], int8)  # 1 of 60 beyond: not decided
    assert results["p99 score diff"] is None and verdict == INCONCLUSIVE
    _, results, verdict, reason = run([(ref, far), (ref, far), (ref, ref)], int8)  # 2 of 60: more than 1% of 100
    assert results["p99 score diff"] is False and verdict == FAILED and "2 of 60 matched pairs beyond 0.5" in reason
    _, results, verdict, _ = run([(ref, ref)] * 5, int8)  # 100 pairs: read
    assert results["p99 score diff"] is True and verdict == PASSED


IMAGES = 30  # images of the dAP interval cases, 5 objects each; the reference finds 4 of them on every image


def _coco_images(n: int) -> COCO:
    """n images, each with the 5 class-1 objects of grid(5) (masks fill the boxes)."""
    import pycocotools.mask as mask_utils

    anns = []
    for image_id in range(1, n + 1):
        for x1, y1, x2, y2 in grid(5):
            m = np.zeros((SIZE, SIZE), np.uint8)
            m[int(y1):int(y2), int(x1):int(x2)] = 1
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "segmentation": rle,
                         "area": float(m.sum()), "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "width": SIZE, "height": SIZE, "file_name": f"{i}.png"}
                               for i in range(1, n + 1)], "annotations": anns, "categories": CLASSES}
    coco.createIndex()
    return coco


def _interval_case(found_on: int, max_abs_dap: float | None = None) -> tuple[dict, dict[str, dict], str, str]:
    """The reference finds 4 of the 5 objects of every image; the candidate also finds the fifth (below the score
    floor: only the AP sees it) on the first `found_on` images. Returns the COCO comparison, the gate results by
    name, the verdict and its reason."""
    coco = _coco_images(IMAGES)
    ref = dets(grid(4))
    found = dets(grid(5), scores=[0.9] * 4 + [0.2])
    pairs = [(ref, found if i < found_on else ref) for i in range(IMAGES)]
    ids = list(range(1, IMAGES + 1))
    comparison = coco_comparison(coco, [r for i, (a, _) in enumerate(pairs) for r in coco_results(a, CLASSES, i + 1)],
                                 [r for i, (_, b) in enumerate(pairs) for r in coco_results(b, CLASSES, i + 1)], ids)
    gates = Gates() if max_abs_dap is None else Gates(max_abs_dap=max_abs_dap)
    evidence = Evidence()
    for a, b in pairs:
        evidence.add(a, b, gates)
    results, verdict, reason = judge(evidence, gates, comparison)
    assert evidence.reference_above == 4 * IMAGES and evidence.extra == 0 and evidence.missed == 0
    return comparison, {r["gate"]: r for r in results}, verdict, reason


def test_dap_interval_within_the_limit_passes() -> None:
    comparison, results, verdict, _ = _interval_case(found_on=0)
    assert comparison["delta"] == {"bbox": 0.0, "segm": 0.0} and comparison["images"] == IMAGES
    for t in ("bbox", "segm"):
        assert (comparison["interval"][t]["low"], comparison["interval"][t]["high"]) == (0.0, 0.0)
        assert results[f"{t} dAP"]["status"] == "pass" and results[f"{t} dAP"]["interval"] == [0.0, 0.0]
    assert verdict == PASSED and all(r["status"] == "pass" for r in results.values())


def test_dap_interval_wholly_beyond_the_limit_fails() -> None:
    """The fifth object found on every image: AP about +20 on every resample."""
    comparison, results, verdict, reason = _interval_case(found_on=IMAGES)
    for t in ("bbox", "segm"):
        low, high = comparison["interval"][t]["low"], comparison["interval"][t]["high"]
        assert 15 < low <= comparison["delta"][t] <= high and results[f"{t} dAP"]["status"] == "fail"
    assert verdict == FAILED and "wholly beyond" in reason
    assert {name for name, r in results.items() if r["status"] != "pass"} == {"bbox dAP", "segm dAP"}


def test_dap_interval_straddling_the_limit_is_inconclusive() -> None:
    """The fifth object found on 3 of 30 images: a point dAP of about +1 whose interval is wider than itself. A limit
    inside the interval neither passes nor fails: INCONCLUSIVE (exit 3), with the images likely to decide it; a limit
    above the interval passes."""
    comparison, _, _, _ = _interval_case(found_on=3)
    point, iv = comparison["delta"]["bbox"], comparison["interval"]["bbox"]
    assert iv["low"] < point < iv["high"] and iv["high"] - iv["low"] > point > 0.5
    limit = round((point + iv["high"]) / 2, 3)  # beyond the point, inside the interval
    _, results, verdict, reason = _interval_case(found_on=3, max_abs_dap=limit)
    gate = results["bbox dAP"]
    assert gate["status"] == "inconclusive" and gate["passed"] is None and verdict == INCONCLUSIVE
    assert EXIT_CODES[verdict] == 3 and "straddles the limit" in reason and "images would likely decide it" in reason
    assert gate["decide_images"] > IMAGES and gate["interval"] == [iv["low"], iv["high"]]
    assert all(r["status"] == "pass" for name, r in results.items() if "dAP" not in name)
    _, results, verdict, _ = _interval_case(found_on=3, max_abs_dap=max(abs(iv["low"]), iv["high"]) + 0.01)
    assert results["bbox dAP"]["status"] == "pass" and results["segm dAP"]["status"] == "pass" and verdict == PASSED


def test_dap_without_ground_truth_has_nothing_to_measure() -> None:
    """Images whose annotations hold no object: pycocotools has no AP (-1) on either side, no resample holds ground
    truth, and the dAP gates have nothing to measure (INCONCLUSIVE, never a pass on no evidence)."""
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "width": SIZE, "height": SIZE, "file_name": f"{i}.png"} for i in (1, 2)],
                    "annotations": [], "categories": CLASSES}
    coco.createIndex()
    found = dets(grid(2))
    results = coco_results(found, CLASSES, 1) + coco_results(found, CLASSES, 2)
    comparison = coco_comparison(coco, results, results, [1, 2])
    assert comparison["interval"]["bbox"]["low"] is None and comparison["interval"]["segm"]["high"] is None
    _, results_by_name, verdict, reason = run([(found, found)] * 2, Gates(min_detections=1, min_score_pairs=1),
                                              comparison)
    assert results_by_name["bbox dAP"] is None and results_by_name["segm dAP"] is None
    assert verdict == INCONCLUSIVE and "nothing to measure for bbox dAP, segm dAP" in reason


def test_every_precisions_gates_are_the_documented_table() -> None:
    """Gates.for_precision of fp32, fp16, bf16 and int8 is the gate table of docs/architecture.md section 7, cell by
    cell: neither can change without the other (the bf16 column pinned like the rest)."""
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "architecture.md").read_text()
    lines = doc[doc.index("| gate | fp32 | fp16 | bf16 | int8 |"):].splitlines()
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:8]]
    fields = {"|dAP|": "max_abs_dap", "recall": "min_recall", "precision": "min_precision",
              "median matched box IoU": "min_median_box_iou", "|score diff|": "max_score_diff",
              "median mask IoU": "min_median_mask_iou"}
    checked = 0
    for row in rows:
        label = row[0].replace("\\|", "|")
        field = next(f for prefix, f in fields.items() if label.startswith(prefix))
        for precision, cell in zip(("fp32", "fp16", "bf16", "int8"), row[1:], strict=True):
            gates = Gates.for_precision(precision)
            value = float(cell.split()[-1].removeprefix("+-"))
            assert getattr(gates, field) == pytest.approx(value), (precision, field, cell)
            if field == "max_score_diff":  # "max <= x" is the whole tail, "99th percentile <= x" its quantile
                assert gates.score_diff_quantile == (1.0 if cell.startswith("max") else 0.99), (precision, cell)
            checked += 1
    assert checked == 24
