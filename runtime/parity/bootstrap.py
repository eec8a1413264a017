"""How sure a dAP is: a paired bootstrap interval over images for candidate-minus-reference COCO AP.

The dAP of a parity run is measured on a finite set of images; on 32 images one object crossing one of COCO's ten IoU
thresholds moves AP by 0.1-0.5, so a point value near a limit decides by noise. Here the images are resampled with
replacement (`resamples` times, seeded): each resample takes the same images, with the same multiplicities, on both
sides (paired), and both APs are recomputed on it; the `confidence` interval is the percentile interval of the
resampled dAPs.

Each resample's AP is computed exactly as pycocotools computes AP on a dataset holding those images (a duplicated image
as a copy under a new id), without running pycocotools per resample: pycocotools' per-image matching (`evaluate`,
`evalImgs`) does not depend on the other images, and its `accumulate` only concatenates the per-image matches of each
category, sorts them by score and integrates the interpolated precision over 101 recall points. With image i taken
w_i times, a detection of image i counts w_i times in the true and false positive sums and its ground truth w_i times
in the recall denominator, in the order pycocotools sees the copies (ties of one image stay together per copy), so
each resample is exactly pycocotools on a dataset with the copies made (tests/test_parity_bootstrap.py checks it).
Cost: one pycocotools evaluation per side and IoU type (done for the point value anyway) plus the resamples, about
linear in the detections: 1000 resamples take 0.3 s per side and IoU type for 24 images (300 detections), 0.8 s for
256 (3600) and 1.6 s for 640 (8900) on a 2-core AMD EPYC (Zen 4); the reference side is resampled once for all the
candidates of one reference pass (`memo`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Resamples, confidence and seed of the interval by default (report.json records them). A gate passes when the
#: interval lies within +-limit: the two one-sided tests of equivalence testing (TOST), each at the 5% level, which is
#: the 90% two-sided interval; it fails when the interval lies wholly beyond, a one-sided test at 5% too.
DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.90
DEFAULT_SEED = 0


@dataclass(frozen=True)
class _Category:
    """One category's per-image matches at area "all" and pycocotools' largest maxDets, in the order accumulate puts
    them (descending score, stable over image order and each image's own order), cut into blocks: runs of one image's
    detections of equal score (a resampled image's copies follow each other inside such a run of ties)."""

    tps: np.ndarray  # [T, D] true positive per IoU threshold (matched and not ignored)
    fps: np.ndarray  # [T, D] false positive per IoU threshold (unmatched and not ignored)
    block_start: np.ndarray  # [N] first detection of each block
    block_len: np.ndarray  # [N]
    block_image: np.ndarray  # [N] image index of each block
    gt: np.ndarray  # [I] ground truth counted in recall (not ignored), per image


def per_image_matches(ev: Any) -> list[_Category]:
    """The per-category arrays of an evaluated pycocotools COCOeval (`evaluate()` run), images in `params.imgIds`
    order."""
    p = ev.params
    n_images, n_areas, n_iou = len(p.imgIds), len(p.areaRng), len(p.iouThrs)
    area = p.areaRngLbl.index("all")
    max_det = p.maxDets[-1]
    categories = []
    for k in range(len(p.catIds) if p.useCats else 1):
        image, scores, tps, fps = [], [], [], []
        gt = np.zeros(n_images, np.int64)
        for i in range(n_images):
            e = ev.evalImgs[k * n_areas * n_images + area * n_images + i]
            if e is None:
                continue
            matched = np.asarray(e["dtMatches"]).reshape(n_iou, -1)[:, :max_det].astype(bool)
            ignored = np.asarray(e["dtIgnore"]).reshape(n_iou, -1)[:, :max_det].astype(bool)
            score = np.asarray(e["dtScores"][:max_det], np.float64)
            image.append(np.full(len(score), i))
            scores.append(score)
            tps.append(matched & ~ignored)
            fps.append(~matched & ~ignored)
            gt[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
        all_scores = np.concatenate(scores) if scores else np.zeros(0)
        order = np.argsort(-all_scores, kind="mergesort")
        img = np.concatenate(image)[order] if scores else np.zeros(0, np.int64)
        sorted_scores = all_scores[order]
        new_block = np.ones(len(order), bool)
        new_block[1:] = (img[1:] != img[:-1]) | (sorted_scores[1:] != sorted_scores[:-1])
        starts = np.flatnonzero(new_block)
        lengths = np.diff(np.append(starts, len(order)))
        empty = np.zeros((n_iou, 0), bool)
        categories.append(_Category(np.concatenate(tps, axis=1)[:, order] if scores else empty,
                                    np.concatenate(fps, axis=1)[:, order] if scores else empty,
                                    starts, lengths, img[starts], gt))
    return categories


def _expanded(cat: _Category, counts: np.ndarray) -> np.ndarray:
    """The detection indices in the order pycocotools' accumulate sees them on a dataset holding image i counts[i]
    times (the copies numbered next to each other): each block repeated as a whole, once per copy."""
    copies = counts[cat.block_image]
    sizes = cat.block_len * copies
    block = np.repeat(np.arange(len(sizes)), sizes)
    first = np.cumsum(sizes) - sizes
    offset = np.arange(len(block)) - first[block]
    return cat.block_start[block] + offset % cat.block_len[block]


def weighted_ap(categories: list[_Category], weights: np.ndarray, recall_thresholds: np.ndarray) -> np.ndarray:
    """COCO AP (0-100, all areas, maxDets 100) of each row of `weights` [B, images] (how often each image is taken),
    as pycocotools' accumulate + summarize compute it on a dataset of those images; NaN where no category has ground
    truth (pycocotools: -1)."""
    n_rec = len(recall_thresholds)
    ap = np.full(len(weights), np.nan)
    for b, counts in enumerate(weights):
        precision = []  # per category with ground truth: [T, R], as pycocotools' precision[:, :, k, all, 100]
        for cat in categories:
            npig = int(counts @ cat.gt)
            if npig == 0:
                continue
            n_iou = cat.tps.shape[0]
            q = np.zeros((n_iou, n_rec))
            index = _expanded(cat, counts)
            if len(index):
                tp = np.cumsum(cat.tps[:, index], axis=1)
                fp = np.cumsum(cat.fps[:, index], axis=1)
                rc = tp / npig
                pr = tp / (fp + tp + np.spacing(1))
                envelope = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                for t in range(n_iou):
                    inds = np.searchsorted(rc[t], recall_thresholds, side="left")
                    found = inds < len(index)
                    q[t, found] = envelope[t, inds[found]]
            precision.append(q)
        if precision:
            ap[b] = float(np.mean(np.stack(precision, axis=-1))) * 100
    return ap


def resample_weights(n_images: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n_images]: how often each image is drawn in each bootstrap resample (n_images draws each)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(resamples, n_images))
    return np.stack([np.bincount(row, minlength=n_images) for row in draws])


def paired_dap_bootstrap(reference: Any, candidate: Any, *, resamples: int = DEFAULT_RESAMPLES,
                         confidence: float = DEFAULT_CONFIDENCE, seed: int = DEFAULT_SEED,
                         memo: dict | None = None) -> dict[str, Any]:
    """The paired bootstrap of candidate - reference AP for two evaluated COCOevals of one IoU type over the same
    images (None: no result, AP 0): {"low", "high", "std", "resamples", "confidence", "seed", "seconds"}, low, high
    and std None when no resample holds ground truth. `memo`
    keeps each evaluation's resampled APs (one reference against several candidates is resampled once)."""
    start = time.perf_counter()
    ev = reference if reference is not None else candidate
    if ev is None:  # neither side detected anything: AP 0 on both, dAP exactly 0
        return {"low": 0.0, "high": 0.0, "std": 0.0, "resamples": resamples, "confidence": confidence, "seed": seed,
                "seconds": 0.0}
    n_images = len(ev.params.imgIds)
    recall_thresholds = ev.params.recThrs
    weights = resample_weights(n_images, resamples, seed)

    def resampled(ev: Any) -> np.ndarray:
        if ev is None:
            return np.zeros(resamples)
        key = (id(ev), resamples, seed)
        if memo is not None and key in memo:
            return memo[key][1]
        result = weighted_ap(per_image_matches(ev), weights, recall_thresholds)
        if memo is not None:
            memo[key] = (ev, result)  # holds `ev`, so that its id stays its own
        return result

    ap = [resampled(reference), resampled(candidate)]
    delta = ap[1] - ap[0]
    delta = delta[~np.isnan(delta)]
    record = {"resamples": resamples, "confidence": confidence, "seed": seed}
    if not delta.size:  # no resample holds ground truth (pycocotools: AP -1): nothing to measure
        return {"low": None, "high": None, "std": None, **record, "seconds": round(time.perf_counter() - start, 3)}
    tail = (1 - confidence) / 2
    low, high = (round(float(v), 4) for v in np.quantile(delta, [tail, 1 - tail]))
    return {"low": low, "high": high, "std": round(float(np.std(delta)), 4), **record,
            "seconds": round(time.perf_counter() - start, 3)}


def images_to_decide(point: float, low: float, high: float, limit: float, n_images: int) -> int | None:
    """About how many images would make an interval that straddles +-`limit` fall on one side of it: the interval's
    half-width toward the limit shrinks as 1/sqrt(images), so it must shrink by (distance from the point to the limit)
    / (half-width). None when the point sits on the limit (no number of images decides it)."""
    magnitude = abs(point)
    margin = abs(limit - magnitude)
    if margin == 0:
        return None
    # the half-width on the side that crosses the limit
    if point >= 0:
        half = (high - point) if magnitude < limit else (point - low)
    else:
        half = (point - low) if magnitude < limit else (high - point)
    return max(n_images + 1, math.ceil(round(n_images * (half / margin) ** 2, 6)))
