"""Faults a broken exporter, quantizer or runtime could put into an export folder: what the parity gate is proven on.

A gate is trusted only once it is shown failing on injected faults (docs/architecture.md section 7). `inject` copies an
export folder, applies one fault of `FAULTS` to every graph in it (model.onnx, model.trt.onnx, model.trt.fp16.onnx,
model.int8.onnx) or to its export.json record, and writes export.json with the changed graphs' sha256 and op counts -
as a buggy exporter writes it, so the runtime's integrity check accepts the folder and only the parity gate can
refuse it. tests/test_parity_faults.py runs every fault through `maskrt parity` on a COCO split and on a folder of the
same images; scripts/parity_faults.py prints the fault x graph x data mode table for any export.

Graph edits find their target by what the exporter names and builds (export/deploy.py): module paths in node names
(`/backbone/body/layer3/...`, `/box_predictor/cls_score/Gemm`), the box head's NMS as the last NMS node, the box
decoding as the divisions of the box head's regression by its BoxCoder weights, the RoIAlign level mapping as the
division of sqrt(area) by the canonical scale. A weight read through a DequantizeLinear (the INT8 graph) is changed
through its scale, so the same fault means the same thing in every precision.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from maskrt.core.artifacts import EXPORT_FILE, GRAPHS, ExportInfo
from maskrt.core.errors import MaskrtError
from maskrt.core.files import sha256
from maskrt.core.outputs import check_output_dir, staged_dir

GraphEdit = Callable[[onnx.GraphProto, str], None]  # (graph, graph kind) -> None, edits in place
RecordEdit = Callable[[dict[str, Any]], None]  # export.json document -> None, edits in place


@dataclass(frozen=True)
class Fault:
    """One fault: its name, the kind of mistake, what a broken tool does, and the edit of a graph or of the record."""

    name: str
    kind: str
    what: str
    graph: GraphEdit | None = None
    record: RecordEdit | None = None


# -- graph helpers ---------------------------------------------------------------------------------------
def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _constant(graph: onnx.GraphProto, name: str, producers: dict[str, onnx.NodeProto]) -> np.ndarray | None:
    """The value of `name` when it is an initializer or a Constant node's output (else None)."""
    init = next((t for t in graph.initializer if t.name == name), None)
    if init is not None:
        return numpy_helper.to_array(init)
    node = producers.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def _divisions(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> list[tuple[onnx.NodeProto, np.ndarray]]:
    """The Div nodes among `nodes` whose divisor is a constant, with that constant."""
    producers = _producers(graph)
    found = []
    for node in nodes:
        if node.op_type == "Div" and (value := _constant(graph, node.input[1], producers)) is not None:
            found.append((node, value))
    return found


def _set_input(graph: onnx.GraphProto, node: onnx.NodeProto, index: int, value: np.ndarray) -> None:
    """Give input `index` of `node` alone a new constant value (a fresh initializer: a shared one stays as it was)."""
    name = f"fault/{node.name}/input{index}"
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    node.input[index] = name


def _set_attribute(node: onnx.NodeProto, name: str, value: Any) -> None:
    for attr in node.attribute:
        if attr.name == name:
            attr.CopyFrom(helper.make_attribute(name, value))
            return
    node.attribute.append(helper.make_attribute(name, value))


def _nodes(graph: onnx.GraphProto, op_types: tuple[str, ...], contains: str = "") -> list[onnx.NodeProto]:
    found = [n for n in graph.node if n.op_type in op_types and contains in n.name]
    if not found:
        raise MaskrtError(f"no {'/'.join(op_types)} node{' named *' + contains + '*' if contains else ''} in the graph")
    return found


def _weight_tensors(graph: onnx.GraphProto, node: onnx.NodeProto, index: int = 1
                    ) -> tuple[onnx.TensorProto, onnx.TensorProto | None]:
    """(the stored weight, its DequantizeLinear scale or None) of input `index` of `node`."""
    inits = _initializers(graph)
    name = node.input[index]
    if name in inits:
        return inits[name], None
    producer = _producers(graph).get(name)
    if producer is not None and producer.op_type == "DequantizeLinear" and producer.input[0] in inits:
        return inits[producer.input[0]], inits[producer.input[1]]
    raise MaskrtError(f"{node.name}: input {index} is neither an initializer nor a dequantized one")


def _replace(tensor: onnx.TensorProto, array: np.ndarray) -> None:
    tensor.CopyFrom(numpy_helper.from_array(array.astype(numpy_helper.to_array(tensor).dtype), tensor.name))


def _after(graph: onnx.GraphProto, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    nodes = list(graph.node)
    return nodes[nodes.index(node) + 1:]


def _insert_after(graph: onnx.GraphProto, tensor: str, make: Callable[[str, str], list[onnx.NodeProto]]) -> None:
    """Route every consumer of `tensor` (not a graph output) through the nodes `make(tensor, new name)`."""
    if any(out.name == tensor for out in graph.output):
        raise MaskrtError(f"{tensor} is a graph output: no node to put after it")
    new = f"{tensor}__fault"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == tensor:
                node.input[i] = new
    at = next((k + 1 for k, n in enumerate(graph.node) if tensor in n.output), 0)  # a graph input: first
    for offset, node in enumerate(make(tensor, new)):
        graph.node.insert(at + offset, node)


# -- the faults ------------------------------------------------------------------------------------------
def scaled_weights(contains: str, factor: float = 1.5, op_types: tuple[str, ...] = ("Conv", "Gemm")) -> GraphEdit:
    """A graph edit: the weights of the first `op_types` node whose name holds `contains` times `factor` (a stale or
    mis-converted weight); through its DequantizeLinear scale in the INT8 graph."""

    def edit(graph: onnx.GraphProto, kind: str) -> None:
        node = _nodes(graph, op_types, contains)[0]
        weight, scale = _weight_tensors(graph, node)
        target = scale if scale is not None else weight
        _replace(target, numpy_helper.to_array(target) * factor)

    return edit


def scaled_node(graph: onnx.GraphProto, contains: str, op_types: tuple[str, ...] = ("Conv", "Gemm")) -> str:
    """The name of the node `scaled_weights(contains)` edits."""
    return _nodes(graph, op_types, contains)[0].name


_scale_backbone_conv = scaled_weights("/backbone/body/layer3/", 1.5, ("Conv",))


#: ONNX NonMaxSuppression's threshold inputs (the BatchedNMS plugin has attributes of the same names).
_NMS_INPUTS = {"iou_threshold": 3, "score_threshold": 4}


def _box_nms(threshold: str, value: float) -> GraphEdit:
    """A graph edit that sets `threshold` of the box head's NMS - the graph's last NMS node (the RPN's comes first)."""

    def edit(graph: onnx.GraphProto, kind: str) -> None:
        node = _nodes(graph, ("NonMaxSuppression", "BatchedNMS"))[-1]
        if node.op_type == "BatchedNMS":
            _set_attribute(node, threshold, value)
        else:
            _set_input(graph, node, _NMS_INPUTS[threshold], np.array([value], np.float32))

    return edit


def _swap_classes(graph: onnx.GraphProto, kind: str) -> None:
    """The classifier's rows of classes 1 and 2 swapped (a label map in another order than the checkpoint's)."""
    gemm = _nodes(graph, ("Gemm", "MatMul"), "/box_predictor/cls_score/")[0]
    order = None
    for index in (1, 2):  # weight rows (transB = 1), then the bias
        weight, scale = _weight_tensors(graph, gemm, index)
        tensors = [weight] + ([scale] if scale is not None and numpy_helper.to_array(scale).size > 1 else [])
        for tensor in tensors:
            array = numpy_helper.to_array(tensor)
            order = order or [0, 2, 1, *range(3, array.shape[0])]
            _replace(tensor, array[order])


def _box_coder_weights(graph: onnx.GraphProto, kind: str) -> None:
    """The box head decodes its regression with weights (1, 1, 1, 1) instead of its BoxCoder's (10, 10, 5, 5): the
    RPN's coder used for the box head."""
    regression = _nodes(graph, ("Gemm", "MatMul"), "/box_predictor/bbox_pred/")[0]
    divisors = [(n, v) for n, v in _divisions(graph, _after(graph, regression)) if v.size == 1 and v.ravel()[0] > 1]
    if len(divisors) < 4:
        raise MaskrtError("the box head's decoding divisions (by its BoxCoder weights) are not in the graph")
    for node, value in divisors[:4]:
        _set_input(graph, node, 1, np.ones_like(value))


def _mask_double_sigmoid(graph: onnx.GraphProto, kind: str) -> None:
    """The mask probabilities go through a second sigmoid (an activation applied twice): every mask fills its box."""
    sigmoid = _nodes(graph, ("Sigmoid",))[-1]
    _insert_after(graph, sigmoid.output[0],
                  lambda src, dst: [helper.make_node("Sigmoid", [src], [dst], name="fault/mask_sigmoid_again")])


def _roi_align_aligned(graph: onnx.GraphProto, kind: str) -> None:
    """RoIAlign with half-pixel offsets (aligned = True, ONNX's default mode) instead of torchvision Mask R-CNN's
    aligned = False."""
    for node in _nodes(graph, ("RoiAlign", "MultiLevelRoIAlign")):
        if node.op_type == "RoiAlign":
            _set_attribute(node, "coordinate_transformation_mode", "half_pixel")
        else:
            _set_attribute(node, "aligned", 1)


def _level_mapping(graph: onnx.GraphProto, kind: str) -> None:
    """The FPN level mapping's canonical scale doubled (torchvision's 224 instead of the model's own): RoIs pooled
    from one level finer."""
    plugins = [n for n in graph.node if n.op_type == "MultiLevelRoIAlign"]
    for node in plugins:
        value = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "canonical_scale")
        _set_attribute(node, "canonical_scale", float(value) * 2)
    if plugins:
        return
    producers = _producers(graph)
    divisors = [(n, v) for n, v in _divisions(graph, list(graph.node))
                if n.input[0] in producers and producers[n.input[0]].op_type == "Sqrt"]
    if not divisors:
        raise MaskrtError("the level mapping's division of sqrt(area) by the canonical scale is not in the graph")
    for node, value in divisors:
        _set_input(graph, node, 1, value * 2)


def _bgr_input(graph: onnx.GraphProto, kind: str) -> None:
    """The network reads its image channels in BGR order (a runtime that feeds OpenCV's order)."""
    order = f"fault/bgr_order/{graph.name}"
    graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), order))
    _insert_after(graph, "images", lambda src, dst: [
        helper.make_node("Gather", [src, order], [dst], axis=1, name="fault/bgr")])


def _input_size(record: dict[str, Any]) -> None:
    """The record's resize sizes at 3/4 of the model's (an exporter that writes another size than it traced): the
    runtime shrinks every image the model expects at full size."""
    record["resize"] = {k: max(32, int(v) * 3 // 4) for k, v in record["resize"].items()}


def _normalization(record: dict[str, Any]) -> None:
    """The record's normalization std written as 1 (the division by std forgotten): inputs 4x too small."""
    record["normalization"]["std"] = [1.0, 1.0, 1.0]


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("backbone_weight", "weights", "one backbone convolution's weights x1.5", graph=_scale_backbone_conv),
    Fault("nms_iou", "threshold in the graph", "box head NMS IoU threshold 0.5 -> 0.9 (duplicates)",
          graph=_box_nms("iou_threshold", 0.9)),
    Fault("score_threshold", "threshold in the graph",
          "box head NMS score threshold 0.05 -> 0.6 (a display threshold baked in)",
          graph=_box_nms("score_threshold", 0.6)),
    Fault("label_map", "label map", "classifier rows of classes 1 and 2 swapped", graph=_swap_classes),
    Fault("box_decoding", "box decoding", "box head BoxCoder weights (10, 10, 5, 5) -> (1, 1, 1, 1)",
          graph=_box_coder_weights),
    Fault("mask_logits", "mask logits", "mask probabilities through a second sigmoid", graph=_mask_double_sigmoid),
    Fault("roi_align_aligned", "RoIAlign", "RoIAlign aligned = True (half-pixel) instead of False",
          graph=_roi_align_aligned),
    Fault("level_mapping", "RoIAlign", "FPN level mapping canonical scale doubled", graph=_level_mapping),
    Fault("bgr_input", "pre-processing", "image channels read in BGR order", graph=_bgr_input),
    Fault("input_size", "image-size mapping", "export.json resize sizes at 3/4 of the model's", record=_input_size),
    Fault("normalization", "pre-processing", "export.json normalization std 1 (division forgotten)",
          record=_normalization),
)}


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def inject(export_dir: str | Path, fault: str | Fault, out: str | Path, *, graphs: list[str] | None = None,
           force: bool = False) -> Path:
    """Copy the export folder `export_dir` to `out` with `fault` in every graph (or `graphs` of it) or in its record;
    export.json carries the changed graphs' sha256 and op counts. Returns `out`."""
    fault = FAULTS[fault] if isinstance(fault, str) else fault
    export_dir = Path(export_dir)
    info = ExportInfo.read(export_dir)
    out = check_output_dir(out, force=force)
    record = json.loads((export_dir / EXPORT_FILE).read_text())
    kinds = graphs or list(info.graphs)
    missing = [k for k in kinds if k not in info.graphs]
    if missing:
        raise MaskrtError(f"{export_dir}: no {', '.join(missing)} graph to put the fault in")
    with staged_dir(out) as staging:
        for kind, graph_file in info.graphs.items():
            source, target = export_dir / graph_file.file, staging / graph_file.file
            if fault.graph is None or kind not in kinds:
                _link_or_copy(source, target)
                continue
            model = onnx.load(str(source))
            fault.graph(model.graph, kind)
            onnx.save(model, str(target))
            record["graphs"][kind].update(sha256=sha256(target), ops=_op_counts(model))
        if fault.record is not None:
            fault.record(record)
        (staging / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        ExportInfo.read(staging)  # the faulty record still reads as a valid export
    return out


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# -- the fault matrix ------------------------------------------------------------------------------------
CLEAN = "clean"
DATA_MODES = ("coco", "folder")


def image_folder_of(data: str | Path, split: str, out: str | Path, limit: int | None = None) -> Path:
    """A folder of plain images holding the (first `limit`) images of a COCO-format split, without annotations:
    the same images for parity's detection-level gates alone."""
    from maskrt.training.coco import load_split

    dataset = load_split(Path(data), split, train=False)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(min(len(dataset), limit or len(dataset))):
        source = dataset.image_path(i)
        _link_or_copy(source, out / source.name)
    return out


def fault_matrix(checkpoint: str | Path, export_dir: str | Path, data: str | Path, work: str | Path, *,
                 faults: list[str] | None = None, graphs: list[str] | None = None, clean: bool = True,
                 split: str = "val", limit: int | None = None, min_detections: int | None = None,
                 figures: bool = False, progress: bool = False, cache: Any = None,
                 resamples: int | None = None) -> list[dict[str, Any]]:
    """`maskrt parity` of the clean export (with `clean`) and of each fault injected into it, for every graph
    (default: all the export has), on the COCO split (its first `limit` images) and on a folder of the same images,
    with each graph's own gates. One row per (fault, graph, data mode): verdict, reason, failing gates, undecided
    gates, evidence, report folder. Faulty exports and reports (figures only with `figures`) are written under `work`.
    The plain reference runs once per image (`cache`, a parity.ReferenceCache, keeps it for later calls); `resamples`
    sets the dAP interval's bootstrap resamples (default: the gates' 1000)."""
    from maskrt.runtime.parity.compare import Candidate, Gates, ReferenceCache, run_parity_many

    cache = cache if cache is not None else ReferenceCache()
    info = ExportInfo.read(export_dir)
    graphs = graphs or list(info.graphs)
    names = faults if faults is not None else list(FAULTS)
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise MaskrtError(f"unknown fault(s) {', '.join(unknown)} (known: {', '.join(FAULTS)})")
    work = Path(work)
    folder = work / f"images_{split}_{limit or 'all'}"  # made once per work folder, split and limit
    if not folder.is_dir():
        image_folder_of(data, split, folder, limit)
    sources = {"coco": (Path(data), limit), "folder": (folder, None)}
    rows = []
    for name in [CLEAN, *names] if clean else names:
        export = Path(export_dir) if name == CLEAN else inject(export_dir, name, work / "exports" / name,
                                                                graphs=graphs, force=True)
        for mode in DATA_MODES:
            source, mode_limit = sources[mode]
            candidates = []
            for graph in graphs:
                overrides = {"min_detections": min_detections} if min_detections else {}
                if resamples:
                    overrides["resamples"] = resamples
                gates = Gates.for_precision(GRAPHS[graph].precision, **overrides)
                candidates.append(Candidate(export, work / "reports" / name / mode / graph, graph=graph, gates=gates))
            reports = run_parity_many(checkpoint, candidates, source, split=split, limit=mode_limit,
                                      progress=progress, force=True, figures=figures, cache=cache)
            for graph, report in zip(graphs, reports, strict=True):
                rows.append({"fault": name, "graph": graph, "mode": mode, "verdict": report["verdict"],
                             "reason": report["reason"],
                             "failed_gates": [g["gate"] for g in report["gates"] if g["passed"] is False],
                             "undecided_gates": [g["gate"] for g in report["gates"]
                                                 if g.get("status") == "inconclusive"],
                             "reference_detections": report["summary"]["reference_detections_above_floor"],
                             "images": report["summary"]["images"],
                             "report": str(work / "reports" / name / mode / graph)})
    return rows


def format_matrix(rows: list[dict[str, Any]]) -> str:
    """The fault x graph x data mode table in markdown: each cell the verdict and the failing gates."""
    graphs = list(dict.fromkeys(r["graph"] for r in rows))
    faults = list(dict.fromkeys(r["fault"] for r in rows))
    cell = {(r["fault"], r["graph"], r["mode"]): r for r in rows}
    head = "| fault | what | " + " | ".join(f"{g} {m}" for g in graphs for m in DATA_MODES) + " |"
    lines = [head, "|---|---|" + "---|" * (len(graphs) * len(DATA_MODES))]
    for name in faults:
        what = "the export as written" if name == CLEAN else FAULTS[name].what
        cells = []
        for g in graphs:
            for m in DATA_MODES:
                r = cell.get((name, g, m))
                if r is None:  # not run
                    cells.append("-")
                    continue
                text = "passed" if r["verdict"] == "passed" else r["verdict"].upper()
                if r["failed_gates"]:
                    text += " (" + ", ".join(r["failed_gates"]) + ")"
                cells.append(text)
        lines.append(f"| {name} | {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
