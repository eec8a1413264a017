"""Parity: a deployed backend against the torch reference (docs/architecture.md section 7).

The reference is, by default, the checkpoint as its user runs it: plain torchvision ``model(images)``
(runtime/reference.py). ``reference="canvas"`` runs torchvision's eager modules on the candidate's own padded
batch instead - a diagnostic that separates export errors from canvas/pre-processing effects.

Per image: reference detections above a score floor are greedily matched (highest score first) to
candidate detections of the same label by box IoU; the report gives recall, box IoU (min / median),
|score| difference (max / median) and mask IoU (median, masks pasted at the original size). Per output: the raw
fixed-shape tensors (Polygraphy-style max / mean / median absolute and relative error). Per dataset, when it has
annotations: COCO box and mask AP of both (pycocotools, 0-100). A folder of plain images (no annotations) is
checked on the detection-level gates only.

Gates (all must hold): |dAP| <= 0.1 (bbox and segm; annotated data), recall >= 0.99, median box IoU >= 0.99,
max |score diff| <= 0.01 and median mask IoU >= 0.95 over the matched detections. `maskrt parity` exits 1 naming
the first failing gate, so CI can use it directly. report.md names the reference and embeds, as PNG files beside
it, the images with the largest differences (reference | candidate) and a plot of the matched pairs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou
from tqdm import tqdm

from maskrt.core.artifacts import GRAPH_KINDS, EngineInfo, ExportInfo
from maskrt.core.errors import MaskrtError
from maskrt.core.files import sha256
from maskrt.core.images import IMAGE_SUFFIXES, list_images, load_rgb
from maskrt.core.outputs import check_output_dir, staged_dir
from maskrt.runtime.backends import TorchBackend
from maskrt.runtime.postprocess import Detections, RawOutput, coco_results, to_detections
from maskrt.runtime.predictor import Predictor, preprocessor_for
from maskrt.runtime.reference import REFERENCES, PlainReference
from maskrt.runtime.report_figures import match_plot, pick_worst, side_by_side
from maskrt.training.checkpoint import load_checkpoint, model_from_checkpoint
from maskrt.training.coco import load_split
from maskrt.training.evaluate import coco_metrics

WORST_SHOWN = 4
REFERENCE_TITLES = {"plain": "plain torchvision model(images)",
                    "canvas": "torchvision modules on the candidate's padded batch (diagnostic)"}


@dataclass
class Gates:
    """Parity tolerances (fp32 defaults)."""

    max_abs_dap: float = 0.1
    min_recall: float = 0.99
    min_median_box_iou: float = 0.99
    max_score_diff: float = 0.01
    score_diff_quantile: float = 1.0  # which |score diff| the gate reads: 1.0 the max, 0.99 the 99th percentile
    min_median_mask_iou: float = 0.95
    score_floor: float = 0.3
    match_iou: float = 0.5

    @classmethod
    def for_precision(cls, precision: str, **overrides: float) -> Gates:
        """The default gates of a precision: fp32 as above; fp16 allows |dAP| <= 0.3 (docs/architecture.md section
        7) and the per-detection drift fp16 rounding brings (recall >= 0.97, median box IoU >= 0.98, max |score
        diff| <= 0.05, median mask IoU >= 0.9); int8 |dAP| <= 1.0 (recall >= 0.9, median box IoU >= 0.95, 99th
        percentile of |score diff| <= 0.5, median mask IoU >= 0.85: they catch gross breakage, the dAP decides; the
        percentile, not the max, so that one detection near the score threshold does not decide alone)."""
        if precision == "fp16":
            base = {"max_abs_dap": 0.3, "min_recall": 0.97, "min_median_box_iou": 0.98, "max_score_diff": 0.05,
                    "min_median_mask_iou": 0.9}
        elif precision == "int8":
            base = {"max_abs_dap": 1.0, "min_recall": 0.9, "min_median_box_iou": 0.95, "max_score_diff": 0.5,
                    "score_diff_quantile": 0.99, "min_median_mask_iou": 0.85}
        elif precision == "fp32":
            base = {}
        else:
            raise MaskrtError(f"unknown precision '{precision}' (choose from fp32, fp16, int8)")
        return cls(**{**base, **overrides})

    def __post_init__(self) -> None:
        for name in ("score_floor", "match_iou", "min_recall", "min_median_box_iou", "min_median_mask_iou",
                     "score_diff_quantile"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # False for NaN
                raise MaskrtError(f"{name} must be in [0, 1], got {value}")
        for name in ("max_abs_dap", "max_score_diff"):
            if not getattr(self, name) >= 0.0:
                raise MaskrtError(f"{name} must be >= 0, got {getattr(self, name)}")


def _score_gate(diffs: list[float], gates: Gates) -> tuple[str, float, str, float]:
    """The |score diff| check: the max (score_diff_quantile 1.0) or a percentile of the matched detections."""
    q = gates.score_diff_quantile
    value = (max(diffs) if q >= 1.0 else float(np.quantile(diffs, q))) if diffs else 0.0
    name = "max score diff" if q >= 1.0 else f"p{q * 100:g} score diff"
    return name, value, "<=", gates.max_score_diff


@dataclass
class _Accumulator:
    recall_hits: int = 0
    recall_total: int = 0
    box_ious: list[float] = field(default_factory=list)
    score_diffs: list[float] = field(default_factory=list)
    mask_ious: list[float] = field(default_factory=list)
    matched_scores: list[tuple[float, float]] = field(default_factory=list)
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


@dataclass
class _Inputs:
    """The images parity runs on: a COCO-format split (with ground truth) or a folder of plain images."""

    files: list[Path]
    ids: list[int]
    coco: Any = None  # pycocotools COCO of an annotated split

    @classmethod
    def load(cls, data: str | Path, split: str, info: ExportInfo, export_dir: str | Path) -> _Inputs:
        data = Path(data)
        if not data.is_dir():
            raise MaskrtError(f"{data}: not a folder (a COCO-format dataset folder or a folder of images)")
        if not (data / "annotations").is_dir():
            files = list_images(data)
            if not files:
                raise MaskrtError(f"{data}: neither a COCO-format dataset (no annotations/ folder) nor a folder of "
                                  f"images ({', '.join(IMAGE_SUFFIXES)})")
            return cls(files, list(range(1, len(files) + 1)))
        dataset = load_split(data, split, train=False)
        if [c["id"] for c in dataset.classes] != [c["id"] for c in info.classes]:
            raise MaskrtError(f"{dataset.ann_file}: its categories {[c['id'] for c in dataset.classes]} differ from "
                              f"the classes of {Path(export_dir) / 'export.json'} {[c['id'] for c in info.classes]}")
        return cls([dataset.image_path(i) for i in range(len(dataset))], list(dataset.ids), dataset.coco)


def _reference(name: str, checkpoint: str | Path, export_dir: str | Path, info: ExportInfo
               ) -> Callable[[list[np.ndarray]], tuple[list[RawOutput], list[Detections]]]:
    """The reference as a function: batch of images -> (raw outputs, detections on the original images)."""
    if name not in REFERENCES:
        raise MaskrtError(f"unknown reference '{name}' (choose from {', '.join(REFERENCES)})")
    ckpt = load_checkpoint(checkpoint)
    if [c["id"] for c in ckpt["classes"]] != [c["id"] for c in info.classes]:
        raise MaskrtError(f"{checkpoint}: its classes {[c['id'] for c in ckpt['classes']]} differ from those of "
                          f"{export_dir} {[c['id'] for c in info.classes]}")
    model = model_from_checkpoint(ckpt, source=checkpoint)
    if name == "plain":
        return PlainReference(model, info.max_detections)
    predictor = Predictor(TorchBackend(model, info.max_detections), preprocessor_for(info), info.classes)
    return lambda images: _run(predictor, images)


def _run(predictor: Predictor, images: list[np.ndarray]) -> tuple[list[RawOutput], list[Detections]]:
    raws, resized, original = predictor.raw(images)
    return raws, [to_detections(r, a, b) for r, a, b in zip(raws, resized, original, strict=True)]


def run_parity(checkpoint: str | Path, export_dir: str | Path, data: str | Path, out: str | Path, *,
               backend: str = "onnxruntime", graph: str = "portable", reference: str = "plain", split: str = "val",
               limit: int | None = None, gates: Gates | None = None, progress: bool = True,
               threads: int | None = None, device: str = "cpu", force: bool = False) -> dict[str, Any]:
    """Compare `backend` on the export against the `reference` ("plain": model(images); "canvas": diagnostic); write
    the folder `out` with report.json, report.md and its figures (a non-empty `out` is refused unless `force`; it is
    checked before any work). `data` is a COCO-format dataset folder (split `split`) or a folder of images. `gates`
    default to those of the candidate's precision (Gates.for_precision)."""
    out = check_output_dir(out, force=force)
    if backend == "tensorrt":  # `export_dir` is an engine file; its ENGINE.json carries the export's record
        engine = EngineInfo.read(export_dir)
        info, graph, precision = engine.export, "engine", engine.precision
    else:
        info = ExportInfo.read(export_dir)
        precision = GRAPH_KINDS[graph][1] if graph in GRAPH_KINDS else "fp32"
    gates = gates or Gates.for_precision(precision)
    inputs = _Inputs.load(data, split, info, export_dir)
    ref_fn = _reference(reference, checkpoint, export_dir, info)
    cand_pred = (Predictor.from_engine(export_dir) if backend == "tensorrt" else
                 Predictor.from_export(export_dir, backend=backend, graph=graph, threads=threads, device=device))
    indices = list(range(len(inputs.files)))[: limit or None]
    batch = info.input.batch
    names = [c["name"] for c in info.classes]
    acc = _Accumulator()
    per_image: list[dict[str, Any]] = []
    ref_results: list[dict] = []
    cand_results: list[dict] = []
    shown: dict[int, tuple[Detections, Detections]] = {}  # the worst images so far: their detections
    for start in tqdm(range(0, len(indices), batch), desc=f"parity {backend}/{graph} vs {reference}", unit="batch",
                      disable=not progress):
        chunk = indices[start:start + batch]
        images = [load_rgb(inputs.files[i]) for i in chunk]
        with torch.no_grad():
            ref_raw, ref_dets = ref_fn(images)
            cand_raw, cand_dets = _run(cand_pred, images)
        for k, i in enumerate(chunk):
            ref, cand = ref_dets[k], cand_dets[k]
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
            acc.matched_scores += [(float(ref.scores[a]), float(cand.scores[b])) for a, b, _ in pairs]
            image_id = inputs.ids[i]
            per_image.append({
                "image_id": image_id, "file": inputs.files[i].name, "reference": len(ref),
                "candidate": len(cand), "reference_above_floor": n_ref, "matched": len(pairs),
                "box_iou_min": min(ious) if ious else None, "score_diff_max": max(sdiff) if sdiff else None,
                "mask_iou_median": float(np.median(mious)) if mious else None,
            })
            shown[len(per_image) - 1] = (ref, cand)
            for dets, results in ((ref, ref_results), (cand, cand_results)):
                results.extend(coco_results(dets, info.classes, image_id))
        worst = set(pick_worst(per_image, WORST_SHOWN))
        shown = {j: d for j, d in shown.items() if j in worst}
    summary, results = _summarize(acc, gates, inputs, [inputs.ids[i] for i in indices], ref_results, cand_results)
    report = {
        "passed": all(r["passed"] for r in results),
        "backend": backend, "graph": graph, "precision": precision, "reference": reference,
        "reference_is": REFERENCE_TITLES[reference],
        "export": str(export_dir), "checkpoint": str(checkpoint),
        "checkpoint_matches_export": sha256(checkpoint) == info.checkpoint.get("sha256"),
        "input": {"dynamic_size": info.input.dynamic_size, "height": info.input.height, "width": info.input.width},
        "gates": results, "tolerances": asdict(gates), "summary": summary,
        "raw_outputs": {name: {"abs": _stats(acc.raw_abs[name]), "rel": _stats(acc.raw_rel[name])}
                        for name in acc.raw_abs},
        "per_image": per_image,
    }
    with staged_dir(out) as staging:
        figures = []
        for rank, j in enumerate(pick_worst(per_image, WORST_SHOWN), start=1):
            ref, cand = shown[j]
            name = f"worst_{rank}.png"
            side_by_side(load_rgb(inputs.files[indices[j]]), ref, cand, names, staging / name,
                         titles=(f"reference ({reference})", f"{backend}/{graph}"))
            figures.append({"file": name, "image": per_image[j]["file"], "row": j})
        ref_scores = [a for a, _ in acc.matched_scores]
        cand_scores = [b for _, b in acc.matched_scores]
        match_plot(ref_scores, cand_scores, acc.box_ious, staging / "matches.png",
                   title=f"{backend}/{graph} vs {reference} reference")
        report["figures"] = {"worst": figures, "matches": "matches.png"}
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (staging / "report.md").write_text(render_markdown(report))
    return report


def _summarize(acc: _Accumulator, gates: Gates, inputs: _Inputs, image_ids: list[int], ref_results: list[dict],
               cand_results: list[dict]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary numbers and the gate results."""
    recall = acc.recall_hits / acc.recall_total if acc.recall_total else 1.0
    median = lambda v: float(np.median(v)) if v else None  # noqa: E731
    summary: dict[str, Any] = {
        "images": len(image_ids),
        "reference_detections_above_floor": acc.recall_total,
        "recall": recall,
        "box_iou": {"min": min(acc.box_ious, default=1.0), "median": median(acc.box_ious) or 1.0},
        "score_diff_max": max(acc.score_diffs, default=0.0),
        "score_diff_median": median(acc.score_diffs) or 0.0,
        "score_diff_p99": float(np.quantile(acc.score_diffs, 0.99)) if acc.score_diffs else 0.0,
        "mask_iou_median": median(acc.mask_ious) or 1.0,
        "coco": None,
    }
    checks: list[tuple[str, float, str, float]] = []
    if inputs.coco is not None:
        ref_ap = coco_metrics(inputs.coco, ref_results, image_ids=image_ids)
        cand_ap = coco_metrics(inputs.coco, cand_results, image_ids=image_ids)
        summary["coco"] = {"reference": ref_ap, "candidate": cand_ap,
                           "delta": {t: round(cand_ap[t]["AP"] - ref_ap[t]["AP"], 4) for t in ("bbox", "segm")}}
        checks += [("bbox dAP", abs(summary["coco"]["delta"]["bbox"]), "<=", gates.max_abs_dap),
                   ("segm dAP", abs(summary["coco"]["delta"]["segm"]), "<=", gates.max_abs_dap)]
    checks += [
        ("recall", recall, ">=", gates.min_recall),
        ("median box IoU", summary["box_iou"]["median"], ">=", gates.min_median_box_iou),
        _score_gate(acc.score_diffs, gates),
        ("median mask IoU", summary["mask_iou_median"], ">=", gates.min_median_mask_iou),
    ]
    results = [{"gate": n, "value": v, "op": op, "limit": lim, "passed": bool(v <= lim if op == "<=" else v >= lim)}
               for n, v, op, lim in checks]
    return summary, results


def render_markdown(report: dict[str, Any]) -> str:
    """A short human-readable report: verdict, reference, gates, AP, raw-output errors and the figures."""
    s = report["summary"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    inp = report["input"]
    size = "dynamic height/width" if inp["dynamic_size"] else f"static canvas {inp['height']}x{inp['width']}"
    lines = [
        f"# Parity: {report['backend']} ({report['graph']} graph) vs {report['reference']} reference — {verdict}",
        "",
        f"Reference: {report['reference_is']}. Candidate: {report['backend']} on {report['graph']} graph "
        f"({size}).",
        "",
        f"{s['images']} images, {s['reference_detections_above_floor']} reference detections above the score floor "
        f"{report['tolerances']['score_floor']}.",
        "",
        "| gate | value | limit | result |",
        "|---|---|---|---|",
    ]
    for g in report["gates"]:
        result = "pass" if g["passed"] else "FAIL"
        lines.append(f"| {g['gate']} | {g['value']:.6g} | {g['op']} {g['limit']} | {result} |")
    if s["coco"] is not None:
        lines += ["", "| COCO AP | reference | candidate | delta |", "|---|---|---|---|"]
        for t in ("bbox", "segm"):
            lines.append(f"| {t} | {s['coco']['reference'][t]['AP']:.3f} | {s['coco']['candidate'][t]['AP']:.3f} | "
                         f"{s['coco']['delta'][t]:+.4f} |")
    else:
        lines += ["", "No annotations (a folder of images): no COCO AP; the detection-level gates decide."]
    lines += ["", f"Matched detections: box IoU min {s['box_iou']['min']:.6f} / median {s['box_iou']['median']:.6f}, "
              f"|score diff| max {s['score_diff_max']:.3g} / median {s['score_diff_median']:.3g}, median mask IoU "
              f"{s['mask_iou_median']:.6f}.", "",
              "| raw output | max abs | mean abs | median abs | max rel | mean rel |", "|---|---|---|---|---|---|"]
    for name, st in report["raw_outputs"].items():
        lines.append(f"| {name} | {st['abs']['max']:.3g} | {st['abs']['mean']:.3g} | {st['abs']['median']:.3g} | "
                     f"{st['rel']['max']:.3g} | {st['rel']['mean']:.3g} |")
    figures = report.get("figures")
    if figures:
        lines += ["", "## Matched detections", "", f"![matched scores and box IoUs]({figures['matches']})", "",
                  "## Largest differences (reference | candidate)", ""]
        for fig in figures["worst"]:
            row = report["per_image"][fig["row"]]
            lines += [f"**{fig['image']}**: {row['matched']} of {row['reference_above_floor']} reference detections "
                      f"matched, min box IoU {_fmt(row['box_iou_min'])}, max |score diff| "
                      f"{_fmt(row['score_diff_max'])}", "", f"![{fig['image']}]({fig['file']})", ""]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def summary_line(report: dict[str, Any]) -> str:
    """One line for the CLI: verdict, reference, dAPs, recall; the first failing gate when there is one."""
    s = report["summary"]
    failed = [g for g in report["gates"] if not g["passed"]]
    head = "PASSED" if not failed else f"FAILED gate '{failed[0]['gate']}' ({failed[0]['value']:.6g} not " \
        f"{failed[0]['op']} {failed[0]['limit']})"
    ap = (f"dAP bbox {s['coco']['delta']['bbox']:+.3f} segm {s['coco']['delta']['segm']:+.3f}"
          if s["coco"] is not None else "no annotations")
    return (f"parity {report['backend']}/{report['graph']} vs {report['reference']}: {head}; {ap}, "
            f"recall {s['recall']:.4f}, images {s['images']}")
