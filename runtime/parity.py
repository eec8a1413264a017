"""Parity: a deployed backend against the torch reference (docs/architecture.md section 7).

Per image: reference detections above a score floor are greedily matched (highest score first) to
candidate detections of the same label by box IoU; the report gives recall, box IoU (min / median),
|score| difference (max) and mask IoU (median, masks pasted at the original size). Per output: the raw
fixed-shape tensors (Polygraphy-style max / mean / median absolute and relative error). Per dataset:
COCO box and mask AP of both (pycocotools, 0-100).

Gates (all must hold): |dAP| <= 0.1 (bbox and segm), recall >= 0.99, median box IoU >= 0.99 and
max |score diff| <= 0.01 over the matched detections. `maskrt parity` exits 1 naming the first failing
gate, so CI can use it directly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou
from tqdm import tqdm

from maskrt.core.artifacts import ExportInfo
from maskrt.core.errors import MaskrtError
from maskrt.core.files import sha256
from maskrt.core.images import load_rgb
from maskrt.core.outputs import check_output_dir, staged_dir
from maskrt.runtime.postprocess import Detections, RawOutput, to_detections
from maskrt.runtime.predictor import Predictor
from maskrt.training.coco import load_split
from maskrt.training.evaluate import coco_metrics, detections_to_coco


@dataclass
class Gates:
    """Parity tolerances (fp32 defaults)."""

    max_abs_dap: float = 0.1
    min_recall: float = 0.99
    min_median_box_iou: float = 0.99
    max_score_diff: float = 0.01
    score_floor: float = 0.3
    match_iou: float = 0.5

    def __post_init__(self) -> None:
        for name in ("score_floor", "match_iou", "min_recall", "min_median_box_iou"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # False for NaN
                raise MaskrtError(f"{name} must be in [0, 1], got {value}")
        for name in ("max_abs_dap", "max_score_diff"):
            if not getattr(self, name) >= 0.0:
                raise MaskrtError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class _Accumulator:
    recall_hits: int = 0
    recall_total: int = 0
    box_ious: list[float] = field(default_factory=list)
    score_diffs: list[float] = field(default_factory=list)
    mask_ious: list[float] = field(default_factory=list)
    raw_abs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    raw_rel: dict[str, list[np.ndarray]] = field(default_factory=dict)


def match(ref: Detections, cand: Detections, gates: Gates) -> list[tuple[int, int, float]]:
    """Greedy same-label matching of reference detections (score >= floor) to candidates: (i, j, box IoU)."""
    pairs: list[tuple[int, int, float]] = []
    if len(ref) == 0 or len(cand) == 0:
        return pairs
    ious = box_iou(torch.from_numpy(ref.boxes), torch.from_numpy(cand.boxes)).numpy()
    used = np.zeros(len(cand), dtype=bool)
    for i in np.argsort(-ref.scores, kind="stable"):
        if ref.scores[i] < gates.score_floor:
            continue
        ok = (cand.labels == ref.labels[i]) & ~used
        if not ok.any():
            continue
        j = int(np.argmax(np.where(ok, ious[i], -1.0)))
        if ious[i, j] >= gates.match_iou:
            used[j] = True
            pairs.append((int(i), j, float(ious[i, j])))
    return pairs


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0.5, b > 0.5
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _stats(values: list[np.ndarray]) -> dict[str, float]:
    flat = np.concatenate([v.ravel() for v in values]) if values else np.zeros(0)
    if flat.size == 0:
        return {"max": 0.0, "mean": 0.0, "median": 0.0}
    return {"max": float(flat.max()), "mean": float(flat.mean()), "median": float(np.median(flat))}


def _raw_diff(acc: _Accumulator, ref: RawOutput, cand: RawOutput) -> None:
    for name in ("boxes", "scores", "labels", "masks"):
        a = np.asarray(getattr(cand, name), dtype=np.float64)
        b = np.asarray(getattr(ref, name), dtype=np.float64)
        diff = np.abs(a - b)
        acc.raw_abs.setdefault(name, []).append(diff)
        acc.raw_rel.setdefault(name, []).append(diff / (np.abs(b) + 1e-6))
    diff = np.array([abs(cand.num - ref.num)], dtype=np.float64)
    acc.raw_abs.setdefault("num_detections", []).append(diff)
    acc.raw_rel.setdefault("num_detections", []).append(diff / (abs(ref.num) + 1e-6))


def run_parity(checkpoint: str | Path, export_dir: str | Path, data: str | Path, out: str | Path, *,
               backend: str = "onnxruntime", graph: str = "portable", split: str = "val", limit: int | None = None,
               gates: Gates | None = None, progress: bool = True, threads: int | None = None,
               force: bool = False) -> dict[str, Any]:
    """Compare `backend` on the export against the torch reference; write the folder `out` with report.json and
    report.md (a non-empty `out` is refused unless `force`; it is checked before any work)."""
    gates = gates or Gates()
    out = check_output_dir(out, force=force)
    info = ExportInfo.read(export_dir)
    dataset = load_split(data, split, train=False)
    if [c["id"] for c in dataset.classes] != [c["id"] for c in info.classes]:
        raise MaskrtError(f"{dataset.ann_file}: its categories {[c['id'] for c in dataset.classes]} differ from the "
                          f"classes of {Path(export_dir) / 'export.json'} {[c['id'] for c in info.classes]}")
    ref_pred = Predictor.from_export(export_dir, backend="torch", checkpoint=checkpoint)
    cand_pred = Predictor.from_export(export_dir, backend=backend, graph=graph, threads=threads)
    indices = list(range(len(dataset)))[: limit or None]
    batch = info.input.batch
    label_to_cat = {j + 1: c["id"] for j, c in enumerate(info.classes)}
    acc = _Accumulator()
    per_image, ref_results, cand_results = [], [], []
    for start in tqdm(range(0, len(indices), batch), desc=f"parity {backend}/{graph}", unit="batch",
                      disable=not progress):
        chunk = indices[start:start + batch]
        images = [load_rgb(dataset.image_path(i)) for i in chunk]
        with torch.no_grad():
            ref_raw, resized, original = ref_pred.raw(images)
            cand_raw, _, _ = cand_pred.raw(images)
        for k, i in enumerate(chunk):
            ref = to_detections(ref_raw[k], resized[k], original[k])
            cand = to_detections(cand_raw[k], resized[k], original[k])
            _raw_diff(acc, ref_raw[k], cand_raw[k])
            pairs = match(ref, cand, gates)
            n_ref = int((ref.scores >= gates.score_floor).sum())
            acc.recall_total += n_ref
            acc.recall_hits += len(pairs)
            ious = [p[2] for p in pairs]
            sdiff = [abs(float(ref.scores[a]) - float(cand.scores[b])) for a, b, _ in pairs]
            mious = [_mask_iou(ref.masks[a], cand.masks[b]) for a, b, _ in pairs]
            acc.box_ious += ious
            acc.score_diffs += sdiff
            acc.mask_ious += mious
            image_id = dataset.ids[i]
            per_image.append({
                "image_id": image_id, "file": dataset.image_path(i).name, "reference": len(ref),
                "candidate": len(cand), "reference_above_floor": n_ref, "matched": len(pairs),
                "box_iou_min": min(ious) if ious else None, "score_diff_max": max(sdiff) if sdiff else None,
                "mask_iou_median": float(np.median(mious)) if mious else None,
            })
            for dets, results in ((ref, ref_results), (cand, cand_results)):
                results.extend(detections_to_coco(image_id, {
                    "boxes": torch.from_numpy(dets.boxes), "scores": torch.from_numpy(dets.scores),
                    "labels": torch.from_numpy(dets.labels), "masks": torch.from_numpy(dets.masks)[:, None]},
                    label_to_cat))
    image_ids = [dataset.ids[i] for i in indices]
    ref_ap = coco_metrics(dataset.coco, ref_results, image_ids=image_ids)
    cand_ap = coco_metrics(dataset.coco, cand_results, image_ids=image_ids)
    recall = acc.recall_hits / acc.recall_total if acc.recall_total else 1.0
    summary = {
        "images": len(indices),
        "reference_detections_above_floor": acc.recall_total,
        "recall": recall,
        "box_iou": {"min": min(acc.box_ious, default=1.0), "median": float(np.median(acc.box_ious))
                    if acc.box_ious else 1.0},
        "score_diff_max": max(acc.score_diffs, default=0.0),
        "mask_iou_median": float(np.median(acc.mask_ious)) if acc.mask_ious else 1.0,
        "coco": {"reference": ref_ap, "candidate": cand_ap,
                 "delta": {t: round(cand_ap[t]["AP"] - ref_ap[t]["AP"], 4) for t in ("bbox", "segm")}},
    }
    checks = [
        ("bbox dAP", abs(summary["coco"]["delta"]["bbox"]), "<=", gates.max_abs_dap),
        ("segm dAP", abs(summary["coco"]["delta"]["segm"]), "<=", gates.max_abs_dap),
        ("recall", recall, ">=", gates.min_recall),
        ("median box IoU", summary["box_iou"]["median"], ">=", gates.min_median_box_iou),
        ("max score diff", summary["score_diff_max"], "<=", gates.max_score_diff),
    ]
    results = [{"gate": n, "value": v, "op": op, "limit": lim, "passed": bool(v <= lim if op == "<=" else v >= lim)}
               for n, v, op, lim in checks]
    report = {
        "passed": all(r["passed"] for r in results),
        "backend": backend, "graph": graph, "export": str(export_dir), "checkpoint": str(checkpoint),
        "checkpoint_matches_export": sha256(checkpoint) == info.checkpoint.get("sha256"),
        "gates": results, "tolerances": asdict(gates), "summary": summary,
        "raw_outputs": {name: {"abs": _stats(acc.raw_abs[name]), "rel": _stats(acc.raw_rel[name])}
                        for name in acc.raw_abs},
        "per_image": per_image,
    }
    with staged_dir(out) as staging:
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (staging / "report.md").write_text(render_markdown(report))
    return report


def render_markdown(report: dict[str, Any]) -> str:
    """A short human-readable report."""
    s = report["summary"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines = [
        f"# Parity: {report['backend']} ({report['graph']} graph) vs torch — {verdict}",
        "",
        f"{s['images']} images, {s['reference_detections_above_floor']} reference detections above the score floor.",
        "",
        "| gate | value | limit | result |",
        "|---|---|---|---|",
    ]
    for g in report["gates"]:
        result = "pass" if g["passed"] else "FAIL"
        lines.append(f"| {g['gate']} | {g['value']:.6g} | {g['op']} {g['limit']} | {result} |")
    lines += ["", "| COCO AP | reference | candidate | delta |", "|---|---|---|---|"]
    for t in ("bbox", "segm"):
        lines.append(f"| {t} | {s['coco']['reference'][t]['AP']:.3f} | {s['coco']['candidate'][t]['AP']:.3f} | "
                     f"{s['coco']['delta'][t]:+.4f} |")
    lines += ["", f"Matched detections: box IoU min {s['box_iou']['min']:.6f} / median {s['box_iou']['median']:.6f}, "
              f"max |score diff| {s['score_diff_max']:.3g}, median mask IoU {s['mask_iou_median']:.6f}.", "",
              "| raw output | max abs | mean abs | median abs | max rel | mean rel |", "|---|---|---|---|---|---|"]
    for name, st in report["raw_outputs"].items():
        lines.append(f"| {name} | {st['abs']['max']:.3g} | {st['abs']['mean']:.3g} | {st['abs']['median']:.3g} | "
                     f"{st['rel']['max']:.3g} | {st['rel']['mean']:.3g} |")
    return "\n".join(lines) + "\n"


def summary_line(report: dict[str, Any]) -> str:
    """One line for the CLI: verdict, dAPs, recall; the first failing gate when there is one."""
    s = report["summary"]
    failed = [g for g in report["gates"] if not g["passed"]]
    head = "PASSED" if not failed else f"FAILED gate '{failed[0]['gate']}' ({failed[0]['value']:.6g} not " \
        f"{failed[0]['op']} {failed[0]['limit']})"
    return (f"parity {report['backend']}/{report['graph']}: {head}; dAP bbox {s['coco']['delta']['bbox']:+.3f} "
            f"segm {s['coco']['delta']['segm']:+.3f}, recall {s['recall']:.4f}, images {s['images']}")
