"""The parity gates: how a candidate's detections are matched to the reference's, and what decides the verdict.

Matching (`match`, per image): greedy, one-to-one and within the same label. Reference detections, highest score
first, each take the still free candidate detection of their label with the highest box IoU, when that IoU is at
least `match_iou`. Every detection takes part, whatever its score, so a candidate detection just above the score floor
finds a reference detection just below it (and the other way round); the gates then count only what is at or above
the floor:

- recall: the share of reference detections at or above the floor that found a candidate detection (missed objects);
- precision: the share of candidate detections at or above the floor that found a reference detection (extra and
  duplicate detections, detections on images where the reference finds nothing);
- median box IoU, |score diff| (the max, or a percentile) and median mask IoU over the matched pairs of which either
  side is at or above the floor;
- |dAP| (bbox and segm, pycocotools) when the data has annotations (computed by the caller), with its paired
  bootstrap interval over images (runtime/parity/bootstrap.py).

Each gate's status (`judge`): pass, fail, inconclusive or no data (nothing to measure).
- dAP: pass when the whole interval lies within +-limit, fail when it lies wholly beyond it, inconclusive when it
  straddles the limit (the result says about how many images would likely decide it).
- |score diff| (the max, or a percentile): its tail rests on the matched pairs; with at least `min_score_pairs` (100)
  it passes or fails by its value. With fewer, a percentile is not measured (p99 of 60 pairs is their maximum): the
  gate fails only when more pairs lie beyond the limit than the percentile allows of `min_score_pairs` pairs (for
  the max: any), and is inconclusive otherwise.
- the others pass or fail by their value.

Verdict: FAILED when any gate fails; otherwise INCONCLUSIVE when fewer than `min_detections` reference detections at
or above the floor were compared, or a gate is inconclusive or had nothing to measure; otherwise PASSED. A run over
too little evidence never passes (`maskrt parity` exit codes: 0 passed, 1 failed, 2 bad input, 3 inconclusive).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from maskrt.core.defaults import DEFAULT_SCORE_FLOOR
from maskrt.core.errors import MaskrtError, check_choice
from maskrt.runtime.parity.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, images_to_decide

if TYPE_CHECKING:  # no torch import at runtime: the CLI reads this module's defaults before any work
    from maskrt.runtime.postprocess import Detections

PASSED, FAILED, INCONCLUSIVE = "passed", "failed", "inconclusive"
#: `maskrt parity`'s exit code per verdict (2 is bad input, as for every command).
EXIT_CODES = {PASSED: 0, FAILED: 1, INCONCLUSIVE: 3}
#: Reference detections at or above the floor a run must compare before it may pass: with fewer, one missed or extra
#: detection moves recall or precision by more than 2% and the medians rest on a handful of pairs.
DEFAULT_MIN_DETECTIONS = 50
#: Matched pairs a |score diff| tail must rest on before its value is read: the 99th percentile of fewer than 100
#: pairs is their maximum.
DEFAULT_MIN_SCORE_PAIRS = 100
#: Gate statuses (report.json's "status" of each gate; "passed" is True, False or None for the last two).
PASS, FAIL, UNDECIDED, NO_DATA = "pass", "fail", "inconclusive", "no data"


#: The gates of each precision that differ from fp32's (Gates' defaults); derivations in Gates.for_precision.
PRECISION_GATES: dict[str, dict[str, float]] = {
    "fp32": {},
    "fp16": {"max_abs_dap": 0.3, "min_recall": 0.97, "min_precision": 0.97, "min_median_box_iou": 0.98,
             "max_score_diff": 0.05, "score_diff_quantile": 0.99, "min_median_mask_iou": 0.9},
    "bf16": {"max_abs_dap": 1.0, "min_recall": 0.97, "min_precision": 0.97, "min_median_box_iou": 0.98,
             "max_score_diff": 0.2, "score_diff_quantile": 0.99, "min_median_mask_iou": 0.95},
    "int8": {"max_abs_dap": 1.0, "min_recall": 0.9, "min_precision": 0.9, "min_median_box_iou": 0.95,
             "max_score_diff": 0.5, "score_diff_quantile": 0.99, "min_median_mask_iou": 0.85},
}


@dataclass
class Gates:
    """Parity tolerances (fp32 defaults; `for_precision` gives each precision's)."""

    max_abs_dap: float = 0.1
    min_recall: float = 0.99
    min_precision: float = 0.99
    min_median_box_iou: float = 0.99
    max_score_diff: float = 0.01
    score_diff_quantile: float = 1.0  # which |score diff| the gate reads: 1.0 the max, 0.99 the 99th percentile
    min_median_mask_iou: float = 0.95
    score_floor: float = DEFAULT_SCORE_FLOOR
    match_iou: float = 0.5
    min_detections: int = DEFAULT_MIN_DETECTIONS
    min_score_pairs: int = DEFAULT_MIN_SCORE_PAIRS
    resamples: int = DEFAULT_RESAMPLES  # the dAP's paired bootstrap (runtime/parity/bootstrap.py)
    confidence: float = DEFAULT_CONFIDENCE

    @classmethod
    def for_precision(cls, precision: str, **overrides: Any) -> Gates:
        """The default gates of a precision. fp32 as above (precision as strict as recall). fp16 allows |dAP| <= 0.3
        (docs/architecture.md section 7) and the per-detection drift fp16 rounding brings (recall and precision >=
        0.97, median box IoU >= 0.98, 99th percentile of |score diff| <= 0.05, median mask IoU >= 0.9; the
        percentile, because a detection whose classes are nearly tied moves alone by more: on the real-accuracy test
        model the max is 0.083 where the 99th percentile is 0.0007). int8 allows |dAP| <= 1.0 (recall and precision
        >= 0.9, median box IoU >= 0.95, 99th percentile of |score diff| <= 0.5, median mask IoU >= 0.85: they catch
        gross breakage, the dAP decides; the percentile, not the max, so that one detection near the score threshold
        does not decide alone). bf16 (OpenVINO on CPUs with native bfloat16) keeps 8 significant bits where fp16 keeps
        11: it allows |dAP| <= 1.0 and a 99th-percentile |score diff| <= 0.2, with fp16's recall, precision and box
        IoU limits and median mask IoU >= 0.95 (measured, OpenVINO 2026.4 on model.onnx, docs/architecture.md section
        7: p99 score diff 0.05-0.09 over 2300-2500 pairs on three seeds of the real-accuracy test model trained on an
        AMD EPYC (Zen 4), 0.16 on one of them over 800 pairs, 0.027 / 0.040 on models trained on an Intel Xeon (AMX);
        the limit is 2.2x the largest stable value, the margin the first limit, 0.1, had over 0.04; recall and
        precision >= 0.997, median box IoU 0.994, median mask IoU 0.989)."""
        check_choice("precision", precision, PRECISION_GATES)
        return cls(**{**PRECISION_GATES[precision], **overrides})

    def __post_init__(self) -> None:
        for name in ("score_floor", "match_iou", "min_recall", "min_precision", "min_median_box_iou",
                     "min_median_mask_iou", "score_diff_quantile"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # False for NaN
                raise MaskrtError(f"{name} must be in [0, 1], got {value}")
        for name in ("max_abs_dap", "max_score_diff"):
            if not getattr(self, name) >= 0.0:
                raise MaskrtError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.5 <= self.confidence < 1.0:
            raise MaskrtError(f"confidence must be in [0.5, 1), got {self.confidence}")
        for name, low in (("min_detections", 1), ("min_score_pairs", 1), ("resamples", 100)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise MaskrtError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class ImageMatch:
    """One image's matching: the counted pairs and what found no counterpart (indices into the detections)."""

    pairs: list[tuple[int, int, float]]  # (reference i, candidate j, box IoU), either side at or above the floor
    missed: list[int]  # reference detections at or above the floor without a candidate
    extra: list[int]  # candidate detections at or above the floor without a reference detection
    reference_above: int
    candidate_above: int


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU [N, M] of (x1, y1, x2, y2) boxes [N, 4] and [M, 4] (torchvision.ops.box_iou's formula, fp32)."""
    a, b = np.asarray(a, np.float32).reshape(-1, 4), np.asarray(b, np.float32).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_a[:, None] + area_b[None, :] - inter)
    return np.nan_to_num(iou, nan=0.0)


def match(ref: Detections, cand: Detections, gates: Gates) -> ImageMatch:
    """Greedy same-label one-to-one matching of one image's detections (see the module docstring)."""
    ref_above = ref.scores >= gates.score_floor
    cand_above = cand.scores >= gates.score_floor
    partner = np.full(len(cand), -1)
    pairs: list[tuple[int, int, float]] = []
    if len(ref) and len(cand):
        ious = box_iou(ref.boxes, cand.boxes)
        for i in np.argsort(-ref.scores, kind="stable"):
            free = (cand.labels == ref.labels[i]) & (partner < 0)
            if not free.any():
                continue
            j = int(np.argmax(np.where(free, ious[i], -1.0)))
            if ious[i, j] >= gates.match_iou:
                partner[j] = i
                if ref_above[i] or cand_above[j]:
                    pairs.append((int(i), j, float(ious[i, j])))
    matched_ref = set(int(i) for i in partner[partner >= 0])
    missed = [int(i) for i in np.flatnonzero(ref_above) if int(i) not in matched_ref]
    extra = [int(j) for j in np.flatnonzero(cand_above & (partner < 0))]
    return ImageMatch(pairs, missed, extra, int(ref_above.sum()), int(cand_above.sum()))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two masks (probability > 0.5, or bool); 1.0 when both are empty."""
    a, b = a > 0.5, b > 0.5
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@dataclass
class Evidence:
    """What a parity run compared, summed over its images (`add` one image at a time): the gates' input."""

    reference_above: int = 0
    candidate_above: int = 0
    missed: int = 0
    extra: int = 0
    box_ious: list[float] = field(default_factory=list)
    score_diffs: list[float] = field(default_factory=list)
    mask_ious: list[float] = field(default_factory=list)
    matched_scores: list[tuple[float, float]] = field(default_factory=list)

    def add(self, ref: Detections, cand: Detections, gates: Gates) -> tuple[ImageMatch, dict[str, Any]]:
        """Match one image and add it; returns the match and the image's numbers (for the per-image table)."""
        m = match(ref, cand, gates)
        ious = [iou for _, _, iou in m.pairs]
        sdiff = [abs(float(ref.scores[i]) - float(cand.scores[j])) for i, j, _ in m.pairs]
        mious = [mask_iou(ref.masks[i], cand.masks[j]) for i, j, _ in m.pairs]
        self.reference_above += m.reference_above
        self.candidate_above += m.candidate_above
        self.missed += len(m.missed)
        self.extra += len(m.extra)
        self.box_ious += ious
        self.score_diffs += sdiff
        self.mask_ious += mious
        self.matched_scores += [(float(ref.scores[i]), float(cand.scores[j])) for i, j, _ in m.pairs]
        row = {"reference": len(ref), "candidate": len(cand), "reference_above_floor": m.reference_above,
               "candidate_above_floor": m.candidate_above, "matched": m.reference_above - len(m.missed),
               "missed": len(m.missed), "extra": len(m.extra),
               "box_iou_min": min(ious) if ious else None, "score_diff_max": max(sdiff) if sdiff else None,
               "mask_iou_median": float(np.median(mious)) if mious else None}
        return m, row

    @property
    def recall(self) -> float | None:
        return (self.reference_above - self.missed) / self.reference_above if self.reference_above else None

    @property
    def precision(self) -> float | None:
        return (self.candidate_above - self.extra) / self.candidate_above if self.candidate_above else None

    def summary(self) -> dict[str, Any]:
        """The run's numbers (None where nothing was there to measure)."""
        median = lambda v: float(np.median(v)) if v else None  # noqa: E731
        return {
            "reference_detections_above_floor": self.reference_above,
            "candidate_detections_above_floor": self.candidate_above,
            "missed_reference_detections": self.missed,
            "unmatched_candidate_detections": self.extra,
            "matched_pairs": len(self.box_ious),
            "recall": self.recall,
            "precision": self.precision,
            "box_iou": {"min": min(self.box_ious, default=None), "median": median(self.box_ious)},
            "score_diff_max": max(self.score_diffs, default=None),
            "score_diff_median": median(self.score_diffs),
            "score_diff_p99": float(np.quantile(self.score_diffs, 0.99)) if self.score_diffs else None,
            "mask_iou_median": median(self.mask_ious),
        }


def _result(name: str, value: float | None, op: str, limit: float, **extra: Any) -> dict[str, Any]:
    """A gate decided by its value alone (no data when there is none)."""
    ok = None if value is None else bool(value <= limit if op == "<=" else value >= limit)
    status = NO_DATA if ok is None else PASS if ok else FAIL
    return {"gate": name, "value": value, "op": op, "limit": limit, "passed": ok, "status": status, **extra}


def _dap_gate(iou_type: str, coco: dict[str, Any], gates: Gates) -> dict[str, Any]:
    """|dAP| of one IoU type against its limit, decided by its bootstrap interval (module docstring)."""
    point, limit = coco["delta"][iou_type], gates.max_abs_dap
    interval = coco["interval"][iou_type]
    low, high = interval["low"], interval["high"]
    images = coco["images"]
    result = _result(f"{iou_type} dAP", abs(point), "<=", limit, delta=point, interval=[low, high], images=images,
                     confidence=interval["confidence"])
    if low is None or high is None:  # no image of the data holds ground truth
        return result | {"passed": None, "status": NO_DATA}
    if -limit <= low and high <= limit:
        return result | {"passed": True, "status": PASS}
    if low > limit or high < -limit:
        return result | {"passed": False, "status": FAIL}
    decide = images_to_decide(point, low, high, limit, images)
    more = (f"about {decide} images would likely decide it" if decide is not None else
            "its point value sits on the limit")
    return result | {"passed": None, "status": UNDECIDED, "decide_images": decide,
                     "why": f"its {interval['confidence']:.0%} interval [{low:+.3f}, {high:+.3f}] over {images} images "
                            f"straddles the limit +-{limit:g} (point {point:+.3f}); {more}"}


def _score_gate(diffs: list[float], gates: Gates) -> dict[str, Any]:
    """The |score diff| check: the max (score_diff_quantile 1.0) or a percentile of the matched pairs, read only over
    at least `min_score_pairs` pairs (module docstring)."""
    q, limit = gates.score_diff_quantile, gates.max_score_diff
    name = "max score diff" if q >= 1.0 else f"p{q * 100:g} score diff"
    value = (max(diffs) if q >= 1.0 else float(np.quantile(diffs, q))) if diffs else None
    result = _result(name, value, "<=", limit, pairs=len(diffs), min_pairs=gates.min_score_pairs)
    if value is None or len(diffs) >= gates.min_score_pairs:
        return result
    beyond = sum(d > limit for d in diffs)
    allowed = (1.0 - q) * gates.min_score_pairs  # the max allows none
    if beyond > allowed:
        return result | {"passed": False, "status": FAIL, "beyond": beyond}
    return result | {"passed": None, "status": UNDECIDED, "beyond": beyond,
                     "why": f"its tail rests on {len(diffs)} matched pairs, fewer than {gates.min_score_pairs}"}


def judge(evidence: Evidence, gates: Gates, coco: dict[str, Any] | None = None
          ) -> tuple[list[dict[str, Any]], str, str]:
    """(gate results, verdict, reason) of a run. Each result has gate, value, op, limit, status (pass, fail,
    inconclusive, no data) and passed (True, False, None); `coco` is the comparison of annotated data
    (parity.coco_comparison: "delta" and "interval" per IoU type, "images")."""
    results = [_dap_gate(t, coco, gates) for t in ("bbox", "segm")] if coco is not None else []
    box_ious = evidence.box_ious
    results += [
        _result("recall", evidence.recall, ">=", gates.min_recall),
        _result("precision", evidence.precision, ">=", gates.min_precision),
        _result("median box IoU", float(np.median(box_ious)) if box_ious else None, ">=", gates.min_median_box_iou),
        _score_gate(evidence.score_diffs, gates),
        _result("median mask IoU", float(np.median(evidence.mask_ious)) if evidence.mask_ious else None, ">=",
                gates.min_median_mask_iou),
    ]
    failed = [r for r in results if r["status"] == FAIL]
    if failed:
        g = failed[0]
        if "interval" in g:
            why = (f"{g['delta']:+.6g}, {g['confidence']:.0%} interval [{g['interval'][0]:+.4g}, "
                   f"{g['interval'][1]:+.4g}] wholly beyond +-{g['limit']}")
        elif "beyond" in g:
            why = f"{g['beyond']} of {g['pairs']} matched pairs beyond {g['limit']}"
        else:
            why = f"{g['value']:.6g} not {g['op']} {g['limit']}"
        return results, FAILED, f"gate '{g['gate']}' ({why})"
    reasons = []
    if evidence.reference_above < gates.min_detections:
        reasons.append(f"{evidence.reference_above} reference detections at or above the score floor "
                       f"{gates.score_floor} compared, fewer than the minimum {gates.min_detections}")
    reasons += [f"gate '{r['gate']}': {r['why']}" for r in results if r["status"] == UNDECIDED]
    empty = [r["gate"] for r in results if r["status"] == NO_DATA]
    if empty:
        reasons.append(f"nothing to measure for {', '.join(empty)}")
    if reasons:
        return results, INCONCLUSIVE, "; ".join(reasons)
    return results, PASSED, f"all {len(results)} gates hold over {evidence.reference_above} reference detections"
