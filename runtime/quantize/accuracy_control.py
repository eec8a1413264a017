"""Accuracy-controlled INT8 (`maskrt quantize --max-dap-drop D --data DATASET`): keep the nodes that cost the most
accuracy in fp32 until the INT8 graph's dAP holds and it passes its parity gates.

After calibration, the INT8 graph's dAP on the dataset's val split is measured by the parity gate itself: COCO box
and mask AP of model.int8.onnx against plain `model(images)` of the checkpoint, the larger |delta| of the two, with its
bootstrap interval (D is the dAP gate's limit) and the INT8 per-detection gates beside it. While the dAP or its
interval exceeds D or a gate fails (a graph within D can still move boxes beyond the INT8 median box IoU), the
quantized nodes are ranked once by `maskrt layers` (runtime/parity/layers.py: each node's own error, its piece of the
INT8 graph run on the fp32 graph's values) and the worst are kept in fp32 - ONNX Runtime's quantizer leaves out of
`nodes_to_quantize` - 2, then 4, 8, ... more at a time, re-quantizing and re-measuring each time, until both hold or
`max_excluded` nodes are kept. Each ranked node brings itself (when quantized) and the quantized nodes producing its
inputs: in the QDQ form a tensor between two quantized nodes is quantized for either, so its rounding leaves only when
both stay fp32 (`exclusion_order`). export.json records every step: the nodes kept in fp32, the dAP and the
milliseconds per image of model.int8.onnx (ONNX Runtime, this machine).

OpenVINO bf16 has the same per-layer report (`maskrt layers --backend openvino --precision bf16`) but no such loop:
its CPU plugin's documented control is the model-wide INFERENCE_PRECISION_HINT; the per-node runtime attribute
`disable_fp16_compression` is documented for f16 compression, and whether the CPU plugin honours it for bf16
inference is not verified here (docs/architecture.md section 7).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from maskrt.core.artifacts import ExportInfo
from maskrt.core.defaults import DEFAULT_MAX_EXCLUDED_NODES
from maskrt.core.errors import MaskrtError
from maskrt.core.files import sha256
from maskrt.core.images import load_rgb

#: Nodes kept in fp32 after the first step; each later step adds as many again (2, 4, 8, ...).
FIRST_STEP = 2
#: Images whose ranking `maskrt layers` computes, and images timed per step.
RANKING_IMAGES = 4
TIMED_IMAGES = 8


def find_checkpoint(info: ExportInfo, checkpoint: str | Path | None) -> Path:
    """The checkpoint the export came from: `checkpoint`, or the path export.json recorded (when it still holds the
    same file). Its sha256 must match the export's record."""
    path = Path(checkpoint) if checkpoint is not None else (Path(info.checkpoint["path"]) if
                                                            info.checkpoint.get("path") else None)
    if path is None or not path.is_file():
        where = f"{path}: not found" if path is not None else "export.json records no checkpoint path"
        raise MaskrtError(f"--max-dap-drop measures the dAP against plain model(images) of the export's checkpoint "
                          f"({where}); give it with --checkpoint")
    if sha256(path) != info.checkpoint.get("sha256"):
        raise MaskrtError(f"{path}: not the checkpoint this export was made from (its sha256 differs from "
                          "export.json's)")
    return path


@dataclass(frozen=True)
class AccuracyTarget:
    """What accuracy control must reach, measured on what: the dAP limit, against plain model(images) of
    `checkpoint` on the first `limit` images of `data`'s `split`, keeping at most `max_excluded` nodes in fp32."""

    checkpoint: Path
    data: str | Path
    max_dap_drop: float
    split: str = "val"
    limit: int | None = None
    max_excluded: int = DEFAULT_MAX_EXCLUDED_NODES


@dataclass(frozen=True)
class StagedInt8:
    """The INT8 graph under control: the staging `folder` holding model.onnx, model.int8.onnx and export.json, the
    network nodes the full quantization quantizes, `requantize(excluded)` (rewrites model.int8.onnx with those nodes
    left in fp32) and `write_info()` (writes export.json for it)."""

    folder: Path
    quantized: list[str]
    requantize: Callable[[list[str]], None]
    write_info: Callable[[], ExportInfo]


def dap_of(export_dir: Path, target: AccuracyTarget, work: Path, cache: Any = None) -> dict[str, Any]:
    """model.int8.onnx's COCO AP against plain model(images), as `maskrt parity --graph portable_int8` computes it,
    with the INT8 gates and the target's dAP drop as the dAP limit: {"bbox": delta, "segm": delta, "max_abs", "interval"
    (the bootstrap interval of each), "verdict", "failed_gates", "undecided_gates" (a dAP interval straddling the
    limit), "reference_detections"}. `cache` (parity.ReferenceCache) keeps the reference between steps."""
    from maskrt.runtime.parity.compare import Candidate, Gates, run_parity_many

    out = Path(tempfile.mkdtemp(prefix="parity-", dir=work))
    gates = Gates.for_precision("int8", max_abs_dap=target.max_dap_drop)
    (report,) = run_parity_many(target.checkpoint, [Candidate(export_dir, out, graph="portable_int8", gates=gates)],
                                target.data, split=target.split, limit=target.limit, progress=False, force=True,
                                figures=False, cache=cache)
    coco = report["summary"]["coco"]
    if coco is None:
        raise MaskrtError(f"{target.data}: --max-dap-drop needs a COCO-format dataset with annotations (its "
                          f"{target.split} split)")
    delta = coco["delta"]
    return {"bbox": delta["bbox"], "segm": delta["segm"], "max_abs": max(abs(delta["bbox"]), abs(delta["segm"])),
            "interval": {t: [coco["interval"][t]["low"], coco["interval"][t]["high"]] for t in ("bbox", "segm")},
            "verdict": report["verdict"], "failed_gates": [g["gate"] for g in report["gates"] if g["passed"] is False],
            "undecided_gates": [g["gate"] for g in report["gates"] if g.get("status") == "inconclusive"],
            "reference_detections": report["evidence"]["reference_detections_compared"]}


def holds(dap: dict[str, Any], max_dap_drop: float) -> bool:
    """Whether a step's INT8 graph is done: its dAP within `max_dap_drop`, its interval too (no gate undecided) and
    no INT8 parity gate failed."""
    return dap["max_abs"] <= max_dap_drop and not dap["failed_gates"] and not dap.get("undecided_gates")


def ms_per_image(export_dir: Path, graph: str, files: list[Path]) -> float:
    """Median milliseconds per image of `graph` on ONNX Runtime (pre-processing to paste), after one warm-up."""
    from maskrt.runtime.predictor import Predictor

    images = [load_rgb(f) for f in files]
    times = []
    with Predictor.from_export(export_dir, graph=graph) as predictor:
        predictor.predict(images[:1])
        for image in images:
            start = time.perf_counter()
            predictor.predict([image])
            times.append((time.perf_counter() - start) * 1000)
    return round(float(np.median(times)), 2)


def exclusion_order(layers_doc: dict[str, Any], model: onnx.ModelProto, quantized: list[str]) -> list[str]:
    """The quantized nodes, worst first: for each node of `maskrt layers`' ranking (own error, all of them), itself
    when quantized and the quantized nodes producing its inputs. In the QDQ form a tensor between two quantized nodes
    is quantized for either of them, so a node's own error (the rounding of its weights and of the activations it
    reads) leaves only when it and its inputs' producers stay fp32."""
    quantized_set = set(quantized)
    producers = {out: node.name for node in model.graph.node for out in node.output}
    inputs = {node.name: list(node.input) for node in model.graph.node}
    ranked = sorted((t for t in layers_doc["tensors"] if t["contribution_from"] == "own"
                     and isinstance(t["contribution"], float) and t["contribution"] > 0),
                    key=lambda t: -t["contribution"])
    order: list[str] = []
    for t in ranked:
        names = [t["node"]] if t["node"] in quantized_set else []
        names += [producers[i] for i in inputs.get(t["node"], []) if producers.get(i) in quantized_set]
        order += [n for n in names if n not in order]
    return order


def control_accuracy(staged: StagedInt8, target: AccuracyTarget, *, progress: bool = True) -> dict[str, Any]:
    """Measure the dAP of the staged INT8 graph and, while it exceeds the target's limit or an INT8 parity gate
    fails, keep the worst quantized nodes in fp32 (re-quantizing through `staged`). Returns the record for
    export.json."""
    from maskrt.runtime.parity.compare import ReferenceCache, parity_images
    from maskrt.runtime.parity.layers import LayerRequest, compare_layers

    staging, limit, max_excluded = staged.folder, target.max_dap_drop, target.max_excluded
    info = staged.write_info()
    timed = parity_images(target.data, target.split, info, staging)[:TIMED_IMAGES]
    steps: list[dict[str, Any]] = []
    excluded: list[str] = []
    order: list[str] | None = None
    cache = ReferenceCache()  # plain model(images) runs once, not once per step
    with tempfile.TemporaryDirectory(prefix="maskrt-accuracy-") as tmp:
        work = Path(tmp)
        fp32_ms = ms_per_image(staging, "portable", timed)
        while True:
            dap = dap_of(staging, target, work, cache)
            steps.append({"excluded": list(excluded), "dap": dap, "ms_per_image": ms_per_image(staging,
                                                                                           "portable_int8", timed)})
            if progress:
                failed = f", INT8 gates failed: {', '.join(dap['failed_gates'])}" if dap["failed_gates"] else ""
                undecided = (f", undecided: {', '.join(dap['undecided_gates'])}" if dap["undecided_gates"] else "")
                iv = {t: ", ".join("-" if v is None else f"{v:+.2f}" for v in ends)
                      for t, ends in dap["interval"].items()}
                print(f"accuracy control: {len(excluded)} node(s) in fp32, dAP bbox {dap['bbox']:+.3f} [{iv['bbox']}] "
                      f"segm {dap['segm']:+.3f} [{iv['segm']}] (limit {limit:g}){failed}{undecided}, "
                      f"{steps[-1]['ms_per_image']} ms/image")
            if holds(dap, limit) or len(excluded) >= max_excluded:
                break
            if order is None:
                doc = compare_layers(staging, work / "layers", LayerRequest(data=target.data, split=target.split,
                                                                            limit=RANKING_IMAGES), progress=False)
                order = exclusion_order(doc, onnx.load(str(staging / "model.onnx")), staged.quantized)
            remaining = [n for n in order if n not in excluded]
            if not remaining:
                break
            step = max(FIRST_STEP, len(excluded))  # 2, then as many again: 2, 4, 8, ...
            excluded += remaining[:min(step, max_excluded - len(excluded))]
            staged.requantize(excluded)
            staged.write_info()
    met = holds(steps[-1]["dap"], limit)
    return {"max_dap_drop": limit, "data": str(target.data), "split": target.split,
            "checkpoint": str(target.checkpoint),
            "met": met, "excluded_nodes": list(excluded), "steps": steps, "fp32_ms_per_image": fp32_ms,
            "speed_cost": round(steps[-1]["ms_per_image"] / steps[0]["ms_per_image"], 3),
            "ranking_images": RANKING_IMAGES, "timed_images": len(timed)}
