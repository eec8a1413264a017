"""Parity of the two runtimes: maskrt-infer (C++) against the Python runtime on the same export, backend and images.

Both write COCO results (`maskrt predict`'s results.json format). Per image, each Python detection is paired with the
C++ detection of the same category whose box is nearest (largest coordinate difference), and every C++ detection
left over is unpaired - both ways. The runtimes are the same model with the same pre- and post-processing, so the
gates are tight: every pair within SCORE_TOLERANCE in score, BOX_TOLERANCE pixels in each box coordinate and at least
MIN_MASK_IOU mask IoU, and no unpaired detection except one whose score lies within SCORE_TOLERANCE of the score
threshold (it may fall on either side). PASSED needs at least `min_detections` pairs, else INCONCLUSIVE (exit 3).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from maskrt.core.files import read_json, write_json
from maskrt.core.machine import machine_facts
from maskrt.runtime.native import infer_binary, run_infer

SCORE_TOLERANCE = 1e-4
BOX_TOLERANCE = 0.01  # pixels, on results.json's boxes (3 decimals)
MIN_MASK_IOU = 0.99
DEFAULT_MIN_PAIRS = 50
#: The score threshold both runtimes run at: every detection a graph emits above the box score threshold is compared.
DEFAULT_THRESHOLD = 0.05
_SHOWN = 20  # unpaired detections and worst pairs listed in the report


@dataclass(frozen=True)
class RuntimeRequest:
    """What `compare_runtimes` compares: `export` (folder, or engine for tensorrt) run by both runtimes with the
    same backend, graph, OpenVINO precision and threads on `images`."""

    export: Path
    images: list[Path]
    backend: str = "openvino"
    graph: str = "portable"
    precision: str = "f32"
    threads: int | None = None
    score_threshold: float = DEFAULT_THRESHOLD
    min_pairs: int = DEFAULT_MIN_PAIRS


def python_results(request: RuntimeRequest, *, progress: bool = True) -> tuple[list[dict], float]:
    """The Python runtime's COCO results of the images (image ids 1..N in order) and its seconds per image."""
    from maskrt.core.images import load_rgb
    from maskrt.runtime.postprocess import coco_results
    from maskrt.runtime.predictor import Predictor

    results: list[dict] = []
    with Predictor.open(request.export, backend=request.backend, graph=request.graph, threads=request.threads,
                        precision=request.precision if request.backend == "openvino" else None,
                        score_threshold=request.score_threshold) as predictor:
        start = time.perf_counter()
        for image_id, path in enumerate(tqdm(request.images, desc="python runtime", unit="img",
                                             disable=not progress), start=1):
            dets = predictor.predict([load_rgb(path)])[0]
            results += [{**r, "file_name": str(path)} for r in coco_results(dets, predictor.classes, image_id)]
        seconds = (time.perf_counter() - start) / max(len(request.images), 1)
    return results, seconds


def cpp_results(request: RuntimeRequest, out: Path) -> list[dict]:
    """maskrt-infer's COCO results of the images (its results.json in `out`)."""
    args = ["--model", str(request.export), "--out", str(out), "--backend", request.backend, "--no-overlays",
            "--quiet", "--score-threshold", repr(request.score_threshold), "--force"]
    if request.backend == "openvino":
        args += ["--graph", request.graph, "--precision", request.precision]
        if request.threads:
            args += ["--threads", str(request.threads)]
    run_infer([*args, *(str(p) for p in request.images)])
    return read_json(out / "results.json")


def _mask_iou(a: dict, b: dict) -> tuple[float, bool]:
    """IoU of two RLE masks, and whether both are empty (then they are equal: IoU 1)."""
    area = mask_utils.area([a, b])
    if area[0] == 0 and area[1] == 0:
        return 1.0, True
    return float(mask_utils.iou([a], [b], [0])[0][0]), False


def _xyxy(det: dict) -> np.ndarray:
    x, y, w, h = det["bbox"]
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def pair_detections(python: list[dict], cpp: list[dict], threshold: float) -> dict[str, Any]:
    """Pair the two runtimes' detections image by image (module docstring); the comparison's evidence and extremes."""
    by_image: dict[int, tuple[list[dict], list[dict]]] = defaultdict(lambda: ([], []))
    for d in python:
        by_image[d["image_id"]][0].append(d)
    for d in cpp:
        by_image[d["image_id"]][1].append(d)
    pairs, unpaired, at_threshold, empty = [], [], 0, 0
    for image_id in sorted(by_image):
        left, right = by_image[image_id]
        free = list(range(len(right)))
        for d in left:
            same = [j for j in free if right[j]["category_id"] == d["category_id"]]
            if not same:
                unpaired.append(("python", d))
                continue
            j = min(same, key=lambda k: float(np.abs(_xyxy(right[k]) - _xyxy(d)).max()))
            free.remove(j)
            iou, both_empty = _mask_iou(d["segmentation"], right[j]["segmentation"])
            empty += both_empty
            pairs.append({"image_id": image_id, "file_name": d.get("file_name"), "category_id": d["category_id"],
                          "score": d["score"], "score_diff": abs(d["score"] - right[j]["score"]),
                          "box_diff": float(np.abs(_xyxy(right[j]) - _xyxy(d)).max()), "mask_iou": iou})
        unpaired += [("cpp", right[j]) for j in free]
    failing = []
    for side, d in unpaired:
        if abs(d["score"] - threshold) <= SCORE_TOLERANCE:
            at_threshold += 1
        else:
            failing.append({"only_in": side, "image_id": d["image_id"], "category_id": d["category_id"],
                            "score": d["score"], "bbox": d["bbox"]})
    return {"pairs": pairs, "unpaired": failing, "unpaired_at_threshold": at_threshold, "empty_mask_pairs": empty}


def verdict_of(evidence: dict[str, Any], min_pairs: int) -> dict[str, Any]:
    """The gates on paired evidence: worst differences, failures, verdict and exit code."""
    pairs = evidence["pairs"]
    worst = {"score_diff": max((p["score_diff"] for p in pairs), default=0.0),
             "box_diff": max((p["box_diff"] for p in pairs), default=0.0),
             "mask_iou": min((p["mask_iou"] for p in pairs), default=1.0)}
    bad = [p for p in pairs if p["score_diff"] > SCORE_TOLERANCE or p["box_diff"] > BOX_TOLERANCE
           or p["mask_iou"] < MIN_MASK_IOU]
    failures = []
    if bad:
        failures.append(f"{len(bad)} of {len(pairs)} pairs beyond the tolerances (score {SCORE_TOLERANCE:g}, box "
                        f"{BOX_TOLERANCE:g} px, mask IoU >= {MIN_MASK_IOU:g})")
    if evidence["unpaired"]:
        failures.append(f"{len(evidence['unpaired'])} detections found by one runtime only")
    if failures:
        verdict, code = "failed", 1
    elif len(pairs) < min_pairs:
        verdict, code = "inconclusive", 3
        failures.append(f"only {len(pairs)} detection pairs compared (at least {min_pairs} needed)")
    else:
        verdict, code = "passed", 0
    worst_pairs = sorted(bad or pairs, key=lambda p: (-p["box_diff"], -p["score_diff"], p["mask_iou"]))[:_SHOWN]
    return {"verdict": verdict, "exit_code": code, "reasons": failures, "worst": worst, "worst_pairs": worst_pairs}


def compare_runtimes(request: RuntimeRequest, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Run both runtimes on the request's images, pair their detections, write `out`/report.json and report.md."""
    binary = infer_binary()
    python, seconds = python_results(request, progress=progress)
    cpp = cpp_results(request, out / "cpp")
    evidence = pair_detections(python, cpp, request.score_threshold)
    result = verdict_of(evidence, request.min_pairs)
    report = {
        "kind": "runtime parity", "reference": "python runtime", "candidate": "cpp runtime (maskrt-infer)",
        "binary": str(binary), "export": str(request.export), "backend": request.backend, "graph": request.graph,
        "precision": request.precision, "threads": request.threads, "score_threshold": request.score_threshold,
        "images": len(request.images), "python_detections": len(python), "cpp_detections": len(cpp),
        "pairs": len(evidence["pairs"]), "unpaired": evidence["unpaired"][:_SHOWN],
        "unpaired_count": len(evidence["unpaired"]), "unpaired_at_threshold": evidence["unpaired_at_threshold"],
        "empty_mask_pairs": evidence["empty_mask_pairs"],
        "tolerances": {"score": SCORE_TOLERANCE, "box_px": BOX_TOLERANCE, "mask_iou": MIN_MASK_IOU,
                       "min_pairs": request.min_pairs},
        "python_seconds_per_image": seconds, "machine": machine_facts(), **result,
    }
    write_json(out / "report.json", report)
    (out / "report.md").write_text(_markdown(report))
    return report


def summary_line(report: dict[str, Any]) -> str:
    """One line: verdict, evidence and the worst differences."""
    w = report["worst"]
    return (f"runtime parity {report['verdict'].upper()}: {report['pairs']} detection pairs on {report['images']} "
            f"images ({report['python_detections']} python, {report['cpp_detections']} cpp, "
            f"{report['unpaired_count']} unpaired); worst |score diff| {w['score_diff']:.2g}, box diff "
            f"{w['box_diff']:.3g} px, min mask IoU {w['mask_iou']:.4f}"
            + (f" - {'; '.join(report['reasons'])}" if report["reasons"] else ""))


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# Runtime parity: {report['verdict'].upper()}", "",
             f"C++ runtime (maskrt-infer) vs the Python runtime: {report['backend']} {report['graph']} "
             f"{report['precision']}, score threshold {report['score_threshold']}, on {report['machine']['cpu']}.", "",
             summary_line(report), "", "| pair | file | score | score diff | box diff (px) | mask IoU |",
             "|---|---|---|---|---|---|"]
    for i, p in enumerate(report["worst_pairs"], 1):
        lines.append(f"| {i} | {p['file_name']} | {p['score']:.4f} | {p['score_diff']:.2g} | {p['box_diff']:.3g} | "
                     f"{p['mask_iou']:.4f} |")
    if report["unpaired"]:
        lines += ["", "Found by one runtime only:", ""]
        lines += [f"- {u['only_in']}: image {u['image_id']} category {u['category_id']} score {u['score']}"
                  for u in report["unpaired"]]
    return "\n".join(lines) + "\n"
