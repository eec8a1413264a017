"""Parity: a deployed backend against the torch reference (docs/architecture.md section 7).

The reference is, by default, the checkpoint as its user runs it: plain torchvision ``model(images)``
(runtime/parity/reference.py). ``reference="canvas"`` runs torchvision's eager modules on the candidate's own padded
batch instead - a diagnostic that separates export errors from canvas/pre-processing effects.

Per image, both sides' detections are matched one-to-one within the same label (runtime/parity/gates.py): reference
detections at or above a score floor that find no candidate are missed (recall), candidate detections at or above
the floor that find no reference detection are extra (precision: duplicates, detections from nothing). Over the
matched pairs the report gives box IoU (min / median), |score| difference (max / median / p99) and mask IoU (median,
masks pasted at the original size). Per output: the raw fixed-shape tensors (Polygraphy-style max / mean / median
absolute and relative error). Per dataset, when it has annotations: COCO box and mask AP of both (pycocotools, 0-100)
and the dAP's paired bootstrap interval over images (runtime/parity/bootstrap.py). A folder of plain images (no
annotations) is checked on the detection-level gates only.

The verdict (parity_gates.judge) is FAILED when a gate fails, INCONCLUSIVE when fewer than `Gates.min_detections`
reference detections above the floor were compared or a gate could not decide (a dAP interval straddling its limit, a
|score diff| tail over too few pairs), PASSED otherwise; `maskrt parity` exits 0 / 1 / 3 accordingly (2: bad
input). report.json records the machine it ran on (CPU model and instruction sets). report.md
(runtime/parity/report.py) names the reference, lists the missed and extra detections and embeds, as PNG files beside
it, the images with the largest differences (reference | candidate, missed and extra detections marked) and a plot of
the matched pairs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from maskrt.core.artifacts import EngineInfo, ExportInfo, check_compatible, check_same_classes, graph_kind
from maskrt.core.devices import resolve_device
from maskrt.core.errors import MaskrtError, check_choice
from maskrt.core.files import sha256
from maskrt.core.images import IMAGE_SUFFIXES, list_images, load_rgb
from maskrt.core.machine import machine_facts
from maskrt.core.outputs import check_apart, check_output_dir, staged_dir
from maskrt.runtime.backends.eager_torch import TorchBackend
from maskrt.runtime.parity.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, paired_dap_bootstrap
from maskrt.runtime.parity.figures import match_plot, pick_worst, side_by_side
from maskrt.runtime.parity.gates import EXIT_CODES, PASSED, Evidence, Gates, ImageMatch, judge, match
from maskrt.runtime.parity.reference import REFERENCES, PlainReference
from maskrt.runtime.parity.report import render_markdown, summary_line
from maskrt.runtime.postprocess import Detections, RawOutput, coco_results, to_detections
from maskrt.runtime.predictor import Predictor
from maskrt.runtime.preprocess import preprocessor_for
from maskrt.training.checkpoint import load_checkpoint, model_from_checkpoint
from maskrt.training.coco import is_coco_dataset, load_split
from maskrt.training.evaluate import IOU_TYPES, coco_evaluations, metrics_of

__all__ = ["EXIT_CODES", "Candidate", "Gates", "ReferenceCache", "coco_comparison", "match", "render_markdown",
           "run_parity", "run_parity_many", "summary_line"]

WORST_SHOWN = 4
#: Missed and extra detections kept in report.json (highest scores first; the summary has the totals).
LISTED_MAX = 200
REFERENCE_TITLES = {"plain": "plain torchvision model(images)",
                    "canvas": "torchvision modules on the candidate's padded batch (diagnostic)"}


@dataclass
class _RawDiff:
    """Polygraphy-style errors of the raw fixed-shape outputs, per output name."""

    abs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    rel: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, ref: RawOutput, cand: RawOutput) -> None:
        pairs = [(name, np.asarray(getattr(cand, name), np.float64), np.asarray(getattr(ref, name), np.float64))
                 for name in ("boxes", "scores", "labels", "masks")]
        pairs.append(("num_detections", np.array([cand.num], np.float64), np.array([ref.num], np.float64)))
        for name, a, b in pairs:
            diff = np.abs(a - b)
            self.abs.setdefault(name, []).append(diff)
            self.rel.setdefault(name, []).append(diff / (np.abs(b) + 1e-6))

    def stats(self) -> dict[str, dict[str, dict[str, float]]]:
        return {name: {"abs": _stats(self.abs[name]), "rel": _stats(self.rel[name])} for name in self.abs}


def _stats(values: list[np.ndarray]) -> dict[str, float]:
    flat = np.concatenate([v.ravel() for v in values]) if values else np.zeros(0)
    if flat.size == 0:
        return {"max": 0.0, "mean": 0.0, "median": 0.0}
    return {"max": float(flat.max()), "mean": float(flat.mean()), "median": float(np.median(flat))}


def _listed(dets: Detections, indices: list[int], names: list[str], image_id: int, file: str) -> list[dict[str, Any]]:
    """Rows of the report's missed / extra detection lists."""
    rows = []
    for k in indices:
        label = int(dets.labels[k])
        rows.append({"image_id": image_id, "file": file, "label": label,
                     "name": names[label - 1] if 0 < label <= len(names) else str(label),
                     "score": round(float(dets.scores[k]), 5),
                     "box": [round(float(v), 2) for v in dets.boxes[k]]})
    return rows


def _top(rows: list[dict[str, Any]], prune_above: int = 0) -> list[dict[str, Any]]:
    """The LISTED_MAX listed detections with the highest scores, highest first; with `prune_above`, `rows` as they
    are until they hold more than that (the lists stay small on a large dataset with a broken candidate)."""
    return rows if len(rows) <= prune_above else sorted(rows, key=lambda r: -r["score"])[:LISTED_MAX]


def candidate_precision(backend: str, model: str | Path, graph: str, inference_precision: str = "f32") -> str:
    """The precision whose gates judge a candidate, the one place it is decided: an engine's own (ENGINE.json), the
    graph's on ONNX Runtime, and on OpenVINO the graph's at its inference precision (bf16 has gates of its own)."""
    if backend == "tensorrt":
        return EngineInfo.read(model).precision
    if backend == "openvino":
        from maskrt.runtime.backends.openvino_runtime import gate_precision

        return gate_precision(graph, inference_precision)
    return graph_kind(graph).precision


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
        if not is_coco_dataset(data):
            files = list_images(data)
            if not files:
                raise MaskrtError(f"{data}: neither a COCO-format dataset (no annotations/ folder) nor a folder of "
                                  f"images ({', '.join(IMAGE_SUFFIXES)})")
            return cls(files, list(range(1, len(files) + 1)))
        dataset = load_split(data, split, train=False)
        check_same_classes(dataset.classes, dataset.ann_file, info.classes, Path(export_dir) / "export.json")
        return cls([dataset.image_path(i) for i in range(len(dataset))], list(dataset.ids), dataset.coco)


def parity_images(data: str | Path, split: str, info: ExportInfo, export_dir: str | Path) -> list[Path]:
    """The images `maskrt parity` runs on: a COCO-format dataset's `split`, or a folder's images."""
    return _Inputs.load(data, split, info, export_dir).files


def _reference(name: str, checkpoint: str | Path, export_dir: str | Path, info: ExportInfo, device: str = "cpu"
               ) -> Callable[[list[np.ndarray]], tuple[list[RawOutput], list[Detections]]]:
    """The reference as a function: batch of images -> (raw outputs, detections on the original images)."""
    check_choice("reference", name, REFERENCES)
    ckpt = load_checkpoint(checkpoint)
    check_compatible(ckpt["model_config"], ckpt["classes"], checkpoint, info.model_config, info.classes,
                     Path(export_dir) / "export.json")
    model = model_from_checkpoint(ckpt, source=checkpoint)
    if name == "plain":
        return PlainReference(model, info.max_detections, device)
    predictor = Predictor(TorchBackend(model, info.max_detections, device), preprocessor_for(info), info.classes)
    return lambda images: _run(predictor, images)


def _run(predictor: Predictor, images: list[np.ndarray]) -> tuple[list[RawOutput], list[Detections]]:
    raws, resized, original = predictor.raw(images)
    return raws, [to_detections(r, a, b) for r, a, b in zip(raws, resized, original, strict=True)]


def coco_comparison(coco: Any, ref_results: list[dict], cand_results: list[dict], image_ids: list[int], *,
                    resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                    reference_evaluations: dict[str, Any] | None = None, memo: dict | None = None) -> dict[str, Any]:
    """COCO box and mask AP (pycocotools, 0-100) of both sides' results on `image_ids` of the ground truth `coco`,
    their difference (candidate - reference) per IoU type and its paired bootstrap interval over the images
    (`resamples`, `confidence`; seeded). `reference_evaluations` (coco_evaluations of `ref_results`) and `memo` save
    evaluating and resampling the reference again for each candidate of one reference pass."""
    ref_eval = reference_evaluations or coco_evaluations(coco, ref_results, image_ids=image_ids)
    cand_eval = coco_evaluations(coco, cand_results, image_ids=image_ids)
    ref_ap, cand_ap = metrics_of(ref_eval), metrics_of(cand_eval)
    interval = {t: paired_dap_bootstrap(ref_eval[t], cand_eval[t], resamples=resamples, confidence=confidence,
                                        memo=memo) for t in IOU_TYPES}
    return {"reference": ref_ap, "candidate": cand_ap,
            "delta": {t: round(cand_ap[t]["AP"] - ref_ap[t]["AP"], 4) for t in IOU_TYPES},
            "interval": interval, "images": len(set(image_ids))}


@dataclass
class Candidate:
    """One deployed model to compare with the reference: a graph of an export folder on a backend (`model` is an
    engine file for backend "tensorrt"), its gates (None: its precision's defaults) and its report folder."""

    model: str | Path
    out: str | Path
    backend: str = "onnxruntime"
    graph: str = "portable"
    gates: Gates | None = None
    threads: int | None = None
    device: str = "cpu"
    precision: str = "f32"  # OpenVINO's inference precision (f32 | bf16): backend "openvino" only


class _Comparison:
    """One candidate's run: its predictor, and what it has been found to do so far, image by image."""

    def __init__(self, spec: Candidate, force: bool) -> None:
        self.spec = spec
        self.out = check_output_dir(spec.out, force=force)
        if spec.backend == "tensorrt":  # the model is an engine file; its ENGINE.json carries the export's record
            self.info, self.graph = EngineInfo.read(spec.model).export, "engine"
        else:
            self.info, self.graph = ExportInfo.read(spec.model), spec.graph
        self.precision = candidate_precision(spec.backend, spec.model, spec.graph, spec.precision)
        self.gates = spec.gates or Gates.for_precision(self.precision)
        self.names = [c["name"] for c in self.info.classes]
        self.predictor: Predictor | None = None
        self.evidence, self.raw = Evidence(), _RawDiff()
        self.per_image: list[dict[str, Any]] = []
        self.missed: list[dict[str, Any]] = []
        self.extra: list[dict[str, Any]] = []
        self.results: list[dict] = []
        self.shown: dict[int, tuple[Detections, Detections, ImageMatch]] = {}  # the worst images so far

    def start(self) -> None:
        """Load the candidate's model (after every candidate's record was checked)."""
        spec = self.spec
        self.predictor = (Predictor.from_engine(spec.model) if spec.backend == "tensorrt" else
                          Predictor.from_export(spec.model, backend=spec.backend, graph=spec.graph,
                                                threads=spec.threads, device=spec.device, precision=spec.precision))

    def add(self, images: list[np.ndarray], files: list[Path], ids: list[int], ref_raw: list[RawOutput],
            ref_dets: list[Detections]) -> None:
        """Run the candidate on one batch and compare it with the reference's outputs of that batch."""
        assert self.predictor is not None
        cand_raw, cand_dets = _run(self.predictor, images)
        for k, (file, image_id) in enumerate(zip(files, ids, strict=True)):
            ref, cand = ref_dets[k], cand_dets[k]
            self.raw.add(ref_raw[k], cand_raw[k])
            m, row = self.evidence.add(ref, cand, self.gates)
            self.per_image.append({"image_id": image_id, "file": file.name, **row})
            self.missed = _top(self.missed + _listed(ref, m.missed, self.names, image_id, file.name), 4 * LISTED_MAX)
            self.extra = _top(self.extra + _listed(cand, m.extra, self.names, image_id, file.name), 4 * LISTED_MAX)
            self.shown[len(self.per_image) - 1] = (ref, cand, m)
            self.results.extend(coco_results(cand, self.info.classes, image_id))
        worst = set(pick_worst(self.per_image, WORST_SHOWN))
        self.shown = {j: d for j, d in self.shown.items() if j in worst}

    def report(self, checkpoint: str | Path, checkpoint_sha256: str, reference: str, coco: dict[str, Any] | None,
               data: dict[str, Any]) -> dict[str, Any]:
        """The report.json document."""
        spec, info, gates, evidence = self.spec, self.info, self.gates, self.evidence
        summary = {"images": len(self.per_image), **evidence.summary(), "coco": coco}
        results, verdict, reason = judge(evidence, gates, coco)
        return {
            "verdict": verdict, "passed": verdict == PASSED, "reason": reason, "exit_code": EXIT_CODES[verdict],
            "backend": spec.backend, "graph": self.graph, "precision": self.precision, "reference": reference,
            **({"inference_precision": spec.precision} if spec.backend == "openvino" else {}),
            "reference_is": REFERENCE_TITLES[reference],
            "export": str(spec.model), "checkpoint": str(checkpoint), "data": data, "report_folder": str(spec.out),
            "machine": machine_facts(),
            "checkpoint_matches_export": checkpoint_sha256 == info.checkpoint.get("sha256"),
            "input": {"dynamic_size": info.input.dynamic_size, "height": info.input.height,
                      "width": info.input.width},
            "evidence": {"reference_detections_compared": evidence.reference_above,
                         "min_detections": gates.min_detections},
            "gates": results, "tolerances": asdict(gates), "summary": summary,
            "missed_reference_detections": _top(self.missed),
            "unmatched_candidate_detections": _top(self.extra),
            "raw_outputs": self.raw.stats(),
            "per_image": self.per_image,
        }

    def write(self, report: dict[str, Any], files: list[Path], figures: bool = True) -> None:
        """report.json, report.md and (with `figures`) the figures into the candidate's report folder (staged, then
        renamed)."""
        backend, graph, reference = report["backend"], report["graph"], report["reference"]
        with staged_dir(self.out) as staging:
            if not figures:
                (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
                (staging / "report.md").write_text(render_markdown(report))
                return
            worst = []
            for rank, j in enumerate(pick_worst(self.per_image, WORST_SHOWN), start=1):
                ref, cand, m = self.shown[j]
                name = f"worst_{rank}.png"
                side_by_side(load_rgb(files[j]), ref, cand, self.names, staging / name,
                             titles=(f"reference ({reference})", f"{backend}/{graph}"), missed=m.missed,
                             extra=m.extra)
                worst.append({"file": name, "image": self.per_image[j]["file"], "row": j})
            scores = self.evidence.matched_scores
            match_plot([a for a, _ in scores], [b for _, b in scores], self.evidence.box_ious,
                       staging / "matches.png", title=f"{backend}/{graph} vs {reference} reference")
            report["figures"] = {"worst": worst, "matches": "matches.png"}
            (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
            (staging / "report.md").write_text(render_markdown(report))

    def close(self) -> None:
        if self.predictor is not None:
            self.predictor.close()


def _same_export_record(comparisons: list[_Comparison]) -> ExportInfo:
    """The export record every candidate shares (classes, detections, input and batch): one reference serves all."""
    first = comparisons[0]
    for other in comparisons[1:]:
        a, b = first.info, other.info
        if (a.classes, a.max_detections, a.input) != (b.classes, b.max_detections, b.input):
            raise MaskrtError(f"{other.spec.model}: its classes, detection slots or input differ from those of "
                              f"{first.spec.model}; compare them in separate parity runs")
    return first.info


@dataclass
class ReferenceCache:
    """The plain reference's outputs per batch of image files, kept between parity runs of one checkpoint in one
    process (accuracy control's steps, the fault catalogue's faults): plain model(images) depends only on the
    checkpoint, the images and the export's detection slots, so each batch runs once. Another checkpoint or number of
    slots empties it."""

    key: tuple[str, int] | None = None  # (checkpoint sha256, detection slots)
    batches: dict[tuple[str, ...], tuple[list[RawOutput], list[Detections]]] = field(default_factory=dict)

    def use(self, checkpoint_sha256: str, max_detections: int) -> None:
        """Keep the outputs only if they are the checkpoint's (by its sha256) with `max_detections` slots."""
        key = (checkpoint_sha256, max_detections)
        if key != self.key:
            self.key, self.batches = key, {}


def run_parity_many(checkpoint: str | Path, candidates: list[Candidate], data: str | Path, *,
                    reference: str = "plain", split: str = "val", limit: int | None = None, progress: bool = True,
                    force: bool = False, figures: bool = True, cache: ReferenceCache | None = None,
                    reference_device: str = "cpu") -> list[dict[str, Any]]:
    """Compare each candidate with one pass of the `reference` over `data` (run once per batch for all of them; the
    candidates must share classes, detection slots and input, e.g. the graphs of one export); write each
    candidate's report folder (without the PNG figures unless `figures`) and return the reports (see
    `run_parity`). `cache` keeps the plain reference's outputs for later runs on the same checkpoint. The torch
    reference runs on `reference_device` (cpu, cuda or auto)."""
    if not candidates:
        raise MaskrtError("no candidate to compare")
    check_apart([c.out for c in candidates], [("checkpoint", checkpoint), ("dataset", data),
                                              *(("model", c.model) for c in candidates)])
    comparisons = [_Comparison(spec, force) for spec in candidates]  # every output and record checked first
    outs = [c.out.resolve() for c in comparisons]
    if len(set(outs)) != len(outs):
        raise MaskrtError("two candidates write the same report folder")
    info = _same_export_record(comparisons)
    inputs = _Inputs.load(data, split, info, candidates[0].model)
    ref_fn = _reference(reference, checkpoint, candidates[0].model, info, reference_device)
    checkpoint_sha256 = sha256(checkpoint)
    if cache is not None and reference == "plain" and reference_device == "cpu":  # the canvas reference depends on
        # the export, a GPU's reference on the GPU: neither is cached
        cache.use(checkpoint_sha256, info.max_detections)
    else:
        cache = None
    indices = list(range(len(inputs.files)))[: limit or None]
    files = [inputs.files[i] for i in indices]
    ids = [inputs.ids[i] for i in indices]
    batch = info.input.batch
    ref_results: list[dict] = []
    what = comparisons[0].spec.backend + "/" + comparisons[0].graph if len(comparisons) == 1 else \
        f"{len(comparisons)} candidates"
    try:
        for comparison in comparisons:
            comparison.start()
        for start in tqdm(range(0, len(indices), batch), desc=f"parity {what} vs {reference}", unit="batch",
                          disable=not progress):
            chunk_files, chunk_ids = files[start:start + batch], ids[start:start + batch]
            images = [load_rgb(f) for f in chunk_files]
            with torch.no_grad():
                key = tuple(str(Path(f).resolve()) for f in chunk_files)
                if cache is not None and key in cache.batches:
                    ref_raw, ref_dets = cache.batches[key]
                else:
                    ref_raw, ref_dets = ref_fn(images)
                    if cache is not None:
                        cache.batches[key] = (ref_raw, ref_dets)
                for dets, image_id in zip(ref_dets, chunk_ids, strict=True):
                    ref_results.extend(coco_results(dets, info.classes, image_id))
                for comparison in comparisons:
                    try:
                        comparison.add(images, chunk_files, chunk_ids, ref_raw, ref_dets)
                    except MaskrtError as exc:  # name the image(s) of the batch
                        raise MaskrtError(f"{', '.join(map(str, chunk_files))}: {exc}") from None
    finally:
        for comparison in comparisons:
            comparison.close()
    reports = []
    ref_eval = None if inputs.coco is None else coco_evaluations(inputs.coco, ref_results, image_ids=ids)
    memo: dict = {}  # the reference's resampled APs, made once for every candidate
    for comparison in comparisons:
        gates = comparison.gates
        coco = None if inputs.coco is None else coco_comparison(
            inputs.coco, ref_results, comparison.results, ids, resamples=gates.resamples,
            confidence=gates.confidence, reference_evaluations=ref_eval, memo=memo)
        report = comparison.report(checkpoint, checkpoint_sha256, reference, coco,
                                   {"path": str(data), "split": split if inputs.coco is not None else None,
                                    "limit": limit})
        report["reference_device"] = str(resolve_device(reference_device))
        comparison.write(report, files, figures)
        reports.append(report)
    return reports


def run_parity(checkpoint: str | Path, candidate: Candidate, data: str | Path, *, reference: str = "plain",
               split: str = "val", limit: int | None = None, progress: bool = True,
               force: bool = False) -> dict[str, Any]:
    """Compare `candidate` (a graph of an export, or an engine, on its backend; its gates default to those of its
    precision, Gates.for_precision) against the `reference` ("plain": model(images) of `checkpoint` on the
    candidate's device; "canvas": diagnostic) on `data`, a COCO-format dataset folder (split `split`, first `limit`
    images) or a folder of images; write the candidate's `out` folder with report.json, report.md and its figures (a
    non-empty `out` is refused unless `force`; it is checked before any work). The report's "verdict" is passed,
    failed or inconclusive (EXIT_CODES maps it to `maskrt parity`'s exit code); "passed" is True for passed only."""
    return run_parity_many(checkpoint, [candidate], data, reference=reference, split=split, limit=limit,
                           progress=progress, force=force, reference_device=candidate.device)[0]
