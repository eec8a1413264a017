"""`maskrt layers`: which node of a deployed graph makes it drift from the fp32 model.onnx, tensor by tensor.

The candidate (model.int8.onnx, model.trt.onnx or model.trt.fp16.onnx on ONNX Runtime, or model.onnx /
model.int8.onnx on OpenVINO in f32 or bf16) and the reference (an fp32 model.onnx on ONNX Runtime: the export's own,
another export folder's, or a fresh export of the checkpoint) run on the same pre-processed images with every float
tensor they share made a graph output - Polygraphy's `--onnx-outputs mark all`. Tensors are paired by what computes
them (`matched_tensors`): ONNX Runtime's QDQ graphs keep the fp32 graph's names, and both ONNX graphs of an export
are traced from the same modules. Per tensor and image: max abs error, relative L2 error ||c - r|| / ||r||, cosine
similarity.

Error propagates, so each node also gets its OWN contribution: the piece of the candidate that computes its output
(the node, with the QuantizeLinear -> DequantizeLinear pairs, dequantized weights and Casts the deployment put in
front of it; `node_subgraph`) is run alone on the reference's values of its compared inputs, and its output is
compared with the reference's (relative L2 error, at most that of the node's output in the full run: a node run
alone may pick another kernel): the error the node adds, not the error it inherits. Nodes are ranked by it (worst
image); the node that broke the graph comes first. A node whose piece cannot run alone gets, unranked, its output's
relative error minus the worst of its inputs'. Selections (top-k, gathers, NMS) are compared, not ranked: a tiny input
change picks other elements; layers.md names the first one that differs.

Memory stays bounded on large models: tensors are marked a chunk at a time, in graph order, the chunk sized so that
its tensors of one image take about `chunk_mib` MiB (sizes from ONNX shape inference at the images' input shape);
each chunk's sessions run every image, its tensors are compared and dropped before the next chunk.

Caveats, as with Polygraphy: a marked tensor has to be materialised, so the runtime cannot fuse across it (ONNX
Runtime's QLinearConv fusion of DequantizeLinear -> Conv -> QuantizeLinear, OpenVINO's convolution + activation
fusion): an INT8 convolution is compared on its output before requantization, whose rounding shows as error of the
node that reads it. Tensors whose row counts differ (fixed detection slots against a dynamic count) are compared on
their common rows; tensors of other shapes are listed with both shapes.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskrt.core.artifacts import GRAPHS, ExportInfo, check_compatible, graph_kind
from maskrt.core.defaults import DEFAULT_LAYER_CHUNK_MIB, DEFAULT_LAYER_IMAGES, DEFAULT_LAYER_TOLERANCE
from maskrt.core.errors import MaskrtError
from maskrt.core.images import list_images, load_rgb
from maskrt.core.outputs import check_apart, check_output_dir, staged_dir
from maskrt.runtime.parity.layers_match import SELECTION_OPS, TOP_SHOWN, TensorRecord, json_float, matched_tensors
from maskrt.runtime.parity.layers_run import (
    OnnxRuntimeSide,
    OpenVinoSide,
    compare_chunk,
    rank_contributions,
    ranked_by_module,
    tensor_records,
    weight_sharing,
)
from maskrt.runtime.preprocess import preprocessor_for
from maskrt.training.coco import is_coco_dataset, load_split


def _image_files(images: str | Path | None, data: str | Path | None, split: str, limit: int) -> list[Path]:
    """The first `limit` images of a folder or of a COCO-format dataset's split."""
    if (images is None) == (data is None):
        raise MaskrtError("give the images to compare on: a folder of images or a COCO-format dataset (one of them)")
    folder = Path(images if images is not None else data)  # type: ignore[arg-type]
    if not folder.is_dir():
        raise MaskrtError(f"{folder}: {'no such folder' if not folder.exists() else 'not a folder'} (give a folder of "
                          "images or a COCO-format dataset folder)")
    if data is not None and not is_coco_dataset(data):  # a plain folder, as `maskrt parity` takes
        images, data = data, None
    if images is not None:
        files = list_images(images)
        if not files:
            raise MaskrtError(f"{images}: no images in this folder")
    else:

        dataset = load_split(data, split, train=False)
        files = [dataset.image_path(i) for i in range(len(dataset))]
        if not files:
            raise MaskrtError(f"{data}: its {split} split holds no images")
    return files[:limit]


def _feeds(info: ExportInfo, files: list[Path]) -> list[dict[str, np.ndarray]]:
    """Each image pre-processed as the runtime does, as one graph call (a static batch filled with the image)."""
    pre = preprocessor_for(info)
    names = info.input.names
    feeds = []
    for f in files:
        batch, sizes = pre([load_rgb(f)] * (1 if info.input.dynamic_batch else info.input.batch))
        feeds.append({names[0]: batch.numpy(), names[1]: sizes.numpy()})
    return feeds


def fresh_reference(checkpoint: str | Path, info: ExportInfo, work: Path) -> Path:
    """model.onnx exported anew from `checkpoint` with the export's input, detections and opset (into `work`); the
    checkpoint must be the export's model (config, fields and classes)."""
    from maskrt.export.onnx_export import export_checkpoint
    from maskrt.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    check_compatible(ckpt["model_config"], ckpt["classes"], checkpoint, info.model_config, info.classes,
                     "the candidate's export.json")

    inp = info.input
    static = {} if inp.dynamic_size else {"height": inp.height, "width": inp.width}
    export_checkpoint(checkpoint, work, batch=inp.batch, dynamic_batch=inp.dynamic_batch,
                      max_detections=info.max_detections, opset=info.opset, **static)
    return work


def _reference_info(reference_dir: Path, info: ExportInfo) -> ExportInfo:
    ref = ExportInfo.read(reference_dir)
    check_compatible(ref.model_config, ref.classes, reference_dir / "export.json", info.model_config, info.classes,
                     "the candidate's export.json")
    if (ref.input, ref.max_detections, ref.min_size, ref.max_size) != (info.input, info.max_detections,
                                                                       info.min_size, info.max_size):
        raise MaskrtError(f"{reference_dir}: its input, sizes or detection slots differ from the candidate export's; "
                          "the graphs would see different tensors")
    return ref


@dataclass(frozen=True)
class LayerRequest:
    """What `compare_layers` compares: `graph` of the export on `backend` (OpenVINO at `precision`), on the first
    `limit` images of `images` (a folder) or `data` (a COCO dataset's `split`), against an fp32 model.onnx on ONNX
    Runtime - `reference`'s (an export folder), a fresh export of `checkpoint`, or by default the export's own; a
    relative L2 error over `tolerance` counts as a difference; `chunk_mib` bounds the tensors marked at once."""

    graph: str = "portable_int8"
    backend: str = "onnxruntime"
    precision: str = "f32"
    images: str | Path | None = None
    data: str | Path | None = None
    split: str = "val"
    limit: int = DEFAULT_LAYER_IMAGES
    reference: str | Path | None = None
    checkpoint: str | Path | None = None
    tolerance: float = DEFAULT_LAYER_TOLERANCE
    threads: int | None = None
    chunk_mib: int = DEFAULT_LAYER_CHUNK_MIB

    def check(self) -> None:
        """One-line errors for a request that cannot run, before any work."""
        graph_kind(self.graph)
        if self.backend not in ("onnxruntime", "openvino"):
            raise MaskrtError(f"maskrt layers runs ONNX graphs on onnxruntime or openvino, not {self.backend} (an "
                              "engine's layers: compare the graph it was built from)")
        if self.reference is not None and self.checkpoint is not None:
            raise MaskrtError("give a reference export folder or a checkpoint to export one from, not both")
        if self.limit < 1:
            raise MaskrtError(f"compare at least 1 image, got {self.limit}")
        if self.tolerance < 0 or not np.isfinite(self.tolerance):
            raise MaskrtError(f"the tolerance must be >= 0 and finite, got {self.tolerance}")

    def inputs(self, export_dir: str | Path) -> list[tuple[str, str | Path]]:
        """The folders and files it reads, named (an output folder must lie apart from them)."""
        named = [("export folder", export_dir), ("images", self.images), ("dataset", self.data),
                 ("reference", self.reference), ("checkpoint", self.checkpoint)]
        return [(name, path) for name, path in named if path]


def compare_layers(export_dir: str | Path, out: str | Path, request: LayerRequest | None = None, *,
                   progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Compare the export's graph with an fp32 model.onnx tensor by tensor as `request` says (default: LayerRequest()'s
    portable_int8 on ONNX Runtime against the export's own model.onnx; images or data must be given); write
    OUT/layers.json, OUT/layers.md and OUT/layers.png (a non-empty `out` is refused unless `force`) and return the
    layers.json document."""
    r = request or LayerRequest()
    r.check()
    check_apart([out], r.inputs(export_dir))
    out = check_output_dir(out, force=force)
    export_dir = Path(export_dir)
    info = ExportInfo.read(export_dir)
    files = _image_files(r.images, r.data, r.split, r.limit)
    graph, backend, precision, threads = r.graph, r.backend, r.precision, r.threads
    cand_path = info.verified_graph(export_dir, graph)
    if backend == "openvino":
        from maskrt.runtime.backends.openvino_runtime import check_openvino

        check_openvino(graph, precision)
    with tempfile.TemporaryDirectory(prefix="maskrt-layers-") as work:
        if r.checkpoint is not None:
            reference_dir = fresh_reference(r.checkpoint, info, Path(work) / "reference")
            reference_is = f"model.onnx exported anew from {r.checkpoint}"
        else:
            reference_dir = Path(r.reference) if r.reference is not None else export_dir
            reference_is = f"{reference_dir / 'model.onnx'}"
        ref_info = _reference_info(reference_dir, info) if reference_dir != export_dir else info
        ref_side = OnnxRuntimeSide(ref_info.verified_graph(reference_dir, "portable"), "portable", threads)
        if backend == "openvino":
            cand_side: OnnxRuntimeSide | OpenVinoSide = OpenVinoSide(cand_path, precision, threads, Path(work))
        else:
            cand_side = OnnxRuntimeSide(cand_path, GRAPHS[graph].flavor, threads)
        pairs = matched_tensors(ref_side.model, cand_side.model)
        shared = {r: c for r, c in pairs.items() if r in ref_side.types and c in cand_side.types}
        records = tensor_records(ref_side.model, shared)
        if not records:
            raise MaskrtError(f"{cand_path}: no float tensor shares its name with the reference model.onnx")
        feeds = _feeds(info, files)
        compare_chunk(records, ref_side, cand_side, feeds, r.chunk_mib, progress)
    rank_contributions(records, ref_side.model)
    document = _document(records, info, graph, backend, precision, files, reference_is, str(cand_path), r.tolerance,
                         weight_groups=weight_sharing(ref_side.model),
                         only_candidate=len(set(cand_side.types) - set(shared.values())),
                         only_reference=len(set(ref_side.types) - set(shared)))
    from maskrt.runtime.parity.layers_report import layers_plot, render_layers_markdown

    with staged_dir(out) as staging:
        layers_plot(document, staging / "layers.png")
        (staging / "layers.json").write_text(json.dumps(document, indent=1) + "\n")
        (staging / "layers.md").write_text(render_layers_markdown(document))
    return document


def _document(records: list[TensorRecord], info: ExportInfo, graph: str, backend: str, precision: str,
              files: list[Path], reference_is: str, candidate_file: str, tolerance: float, *, only_candidate: int,
              only_reference: int, weight_groups: dict[str, list[str]] | None = None) -> dict[str, Any]:
    rankable = [r for r in records if r.worst_contribution() is not None and r.op not in SELECTION_OPS]
    ranked = sorted((r for r in rankable if r.isolated), key=lambda r: -(r.worst_contribution() or 0.0))
    modules = ranked_by_module(ranked, weight_groups or {})
    unisolated = sorted((r for r in rankable if not r.isolated), key=lambda r: -(r.worst_contribution() or 0.0))
    first_selection = next((r for r in records if r.op in SELECTION_OPS and (rel := r.worst_rel()) is not None
                            and rel > tolerance), None)
    first_over = next((r for r in records if (rel := r.worst_rel()) is not None and rel > tolerance), None)
    first_shape = next((r for r in records if r.worst()["shape_mismatch_images"]), None)
    return {
        "candidate": {"graph": graph, "backend": backend, "precision": precision if backend == "openvino" else
                      GRAPHS[graph].precision, "file": candidate_file},
        "reference": reference_is, "images": [f.name for f in files], "tolerance": tolerance,
        "compared_tensors": len(records), "only_in_candidate": only_candidate, "only_in_reference": only_reference,
        "ranking": [{"rank": k + 1, "name": r.name, "node": r.node, "op": r.op, "stage": r.stage,
                     "contribution": json_float(worst), "rel_l2": r.worst()["rel_l2"],
                     **({"same_weights": others} if others else {})}
                    for k, (r, worst, others) in enumerate(modules[:TOP_SHOWN])],
        "not_isolated": [{"name": r.name, "node": r.node, "op": r.op, "stage": r.stage,
                          "beyond_inputs": json_float(r.worst_contribution() or 0.0), "rel_l2": r.worst()["rel_l2"]}
                         for r in unisolated[:TOP_SHOWN]],
        "not_isolated_count": len(unisolated),
        "first_over_tolerance": None if first_over is None else {
            "name": first_over.name, "node": first_over.node, "op": first_over.op, "stage": first_over.stage,
            "rel_l2": json_float(first_over.worst_rel() or 0.0)},
        "first_selection_over_tolerance": None if first_selection is None else {
            "name": first_selection.name, "node": first_selection.node, "op": first_selection.op,
            "stage": first_selection.stage, "rel_l2": json_float(first_selection.worst_rel() or 0.0)},
        "first_shape_mismatch": None if first_shape is None else {"name": first_shape.name, "node": first_shape.node,
                                                                  "shapes": next(m["shape"] for m in
                                                                                 first_shape.per_image
                                                                                 if "shape" in m)},
        "tensors": [r.to_json() for r in records],
        "model_config": info.model_config.get("name"),
    }


def layers_for_report(report: dict[str, Any], *, limit: int = DEFAULT_LAYER_IMAGES, threads: int | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """`maskrt parity --layers`: `compare_layers` of what `parity_layers_target` says for a parity report."""
    from maskrt.runtime.parity.layers_report import parity_layers_target

    t = parity_layers_target(report)
    request = LayerRequest(graph=t["graph"], backend=t["backend"], precision=t["precision"], data=t["data"],
                           split=t["split"], limit=limit, checkpoint=t["checkpoint"], threads=threads)
    return compare_layers(t["model"], t["out"], request, progress=progress)
