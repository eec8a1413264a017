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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from maskrt.core.artifacts import GRAPH_KINDS, ExportInfo
from maskrt.core.defaults import DEFAULT_LAYER_CHUNK_MIB, DEFAULT_LAYER_IMAGES, DEFAULT_LAYER_TOLERANCE
from maskrt.core.errors import MaskrtError
from maskrt.core.images import list_images, load_rgb
from maskrt.core.outputs import check_apart, check_output_dir, staged_dir
from maskrt.runtime.preprocess import preprocessor_for
from maskrt.runtime.trt_graph_ort import trt_graph_session

#: Float element types compared (the fp16 graph's tensors are widened to float64 like the rest).
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
#: Stages by the module path the exporter writes into node names (export/deploy.py); unnamed top-level nodes
#: (decoding, NMS, level mapping) belong to the stage of the last named node before them.
STAGES = (("/backbone/fpn/", "FPN"), ("/backbone/", "backbone"), ("/rpn_head/", "RPN"), ("/box_head/", "box head"),
          ("/box_predictor/", "box head"), ("/mask_head/", "mask head"), ("/mask_predictor/", "mask head"))
STAGE_ORDER = ("input", "backbone", "FPN", "RPN", "box head", "mask head")
#: Selections: a small error of their inputs (a score that changed rank) picks other elements, so their outputs'
#: errors say where the kept boxes diverge (layers.md names the first), not which node added numeric error. They are
#: compared and listed, never ranked.
SELECTION_OPS = frozenset(("TopK", "NonMaxSuppression", "NonZero", "ArgMax", "ArgMin", "Gather", "GatherElements",
                           "GatherND", "ScatterND", "ScatterElements", "Where", "Compress", "Slice"))
TOP_SHOWN = 15
_UNKNOWN_BYTES = 2**20  # the planned size of a tensor whose shape inference leaves a dimension unknown


def stage_of(node_name: str, previous: str) -> str:
    """The stage of a node by its name; `previous` (the last named node's stage) for unnamed top-level nodes."""
    return next((stage for prefix, stage in STAGES if node_name.startswith(prefix)), previous)


def tensor_metrics(candidate: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Max abs error, relative L2 error and cosine similarity of one tensor (or both shapes when they differ).
    Non-finite values (inf, NaN) are compared as equal where both sides hold the same in the same places; elsewhere
    `nonfinite` counts the places that differ and the metrics are None."""
    if candidate.shape != reference.shape:
        if candidate.ndim == reference.ndim >= 1 and candidate.shape[1:] == reference.shape[1:]:
            # other counts of boxes / detections (e.g. fixed slots padded after the valid rows): the common rows
            rows = min(candidate.shape[0], reference.shape[0])
            return {**tensor_metrics(candidate[:rows], reference[:rows]),
                    "rows": [int(candidate.shape[0]), int(reference.shape[0])]}
        return {"shape": [list(candidate.shape), list(reference.shape)]}
    a = np.asarray(candidate, np.float64).ravel()
    b = np.asarray(reference, np.float64).ravel()
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    if not (finite_a.all() and finite_b.all()):
        # the same non-finite values in the same places (e.g. -inf padding of a top-k): compare the rest
        if not (np.array_equal(finite_a, finite_b) and np.array_equal(a[~finite_a], b[~finite_b], equal_nan=True)):
            return {"max_abs": None, "rel_l2": None, "cosine": None,
                    "nonfinite": int(np.count_nonzero(finite_a != finite_b) or 1)}
        a, b = a[finite_a], b[finite_b]
    if a.size == 0:
        return {"max_abs": 0.0, "rel_l2": 0.0, "cosine": 1.0}
    diff = a - b
    norm_a, norm_b, norm_d = float(np.linalg.norm(a)), float(np.linalg.norm(b)), float(np.linalg.norm(diff))
    floor = 1e-6 * np.sqrt(a.size)  # a reference of zeros: compare with a tensor of 1e-6 entries
    cosine = 1.0 if norm_a == norm_b == 0 else (0.0 if norm_a == 0 or norm_b == 0 else
                                                float(np.clip(np.dot(a, b) / (norm_a * norm_b), -1.0, 1.0)))
    return {"max_abs": float(np.abs(diff).max()), "rel_l2": norm_d / max(norm_b, floor), "cosine": cosine}


def _rel(metrics: dict[str, Any] | None) -> float | None:
    """A tensor's relative error for ranking: inf when non-finite, None when not comparable."""
    if metrics is None or "shape" in metrics:
        return None
    return float("inf") if metrics.get("nonfinite") else metrics["rel_l2"]


def contribution(output_rel: float | None, input_rels: list[float | None]) -> float | None:
    """A node's own error: its output's relative error beyond the worst of its compared inputs (inf - inf: 0)."""
    if output_rel is None:
        return None
    carried = max([r for r in input_rels if r is not None], default=0.0)
    if output_rel == carried:  # covers inf - inf
        return 0.0
    return output_rel - carried


@dataclass
class TensorRecord:
    """One compared tensor: where it sits in the reference graph and its errors per image."""

    index: int
    name: str
    op: str
    node: str
    stage: str
    inputs: list[str]
    candidate_name: str
    per_image: list[dict[str, Any]] = field(default_factory=list)
    own: list[dict[str, Any] | None] = field(default_factory=list)  # its candidate piece on the reference's inputs
    contributions: list[float | None] = field(default_factory=list)

    @property
    def scope(self) -> str:
        """The module path as the exporter named it (the node name without its op)."""
        return self.node.rsplit("/", 1)[0] or "/"

    def worst(self) -> dict[str, Any]:
        """The worst value of each metric over the images (shape mismatches and non-finite values counted)."""
        rows = [m for m in self.per_image if "shape" not in m]
        out: dict[str, Any] = {"shape_mismatch_images": len(self.per_image) - len(rows),
                               "nonfinite_images": sum(bool(m.get("nonfinite")) for m in rows)}
        finite = [m for m in rows if not m.get("nonfinite")]
        out["max_abs"] = max((m["max_abs"] for m in finite), default=None)
        out["rel_l2"] = max((m["rel_l2"] for m in finite), default=None)
        out["cosine"] = min((m["cosine"] for m in finite), default=None)
        return out

    def worst_rel(self) -> float | None:
        values = [_rel(m) for m in self.per_image]
        values = [v for v in values if v is not None]
        return max(values) if values else None

    @property
    def isolated(self) -> bool:
        """Whether its own error was measured (its candidate piece run on the reference's inputs)."""
        return any(o is not None and _rel(o) is not None for o in self.own)

    def worst_contribution(self) -> float | None:
        values = [c for c in self.contributions if c is not None]
        return max(values) if values else None

    def to_json(self) -> dict[str, Any]:
        worst_c = self.worst_contribution()
        return {"index": self.index, "name": self.name,
                **({"candidate_name": self.candidate_name} if self.candidate_name != self.name else {}),
                "op": self.op, "node": self.node, "scope": self.scope,
                "stage": self.stage, "worst": self.worst(),
                "contribution": None if worst_c is None else (_json_float(worst_c)),
                "contribution_from": "own" if self.isolated else "beyond inputs",
                "per_image": [{k: _json_float(v) if isinstance(v, float) else v for k, v in m.items()}
                              for m in self.per_image]}


def _json_float(value: float) -> float | str:
    return value if np.isfinite(value) else ("inf" if value > 0 else "-inf")


# -- the two sides ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorType:
    """A tensor's element type and rank (None: unknown), by ONNX shape inference."""

    elem_type: int
    rank: int | None

    def value_info(self, name: str) -> onnx.ValueInfoProto:
        """A graph input/output declaration: the element type, and the rank with symbolic dimensions."""
        shape = None if self.rank is None else [f"{name}:{k}" for k in range(self.rank)]
        return onnx.helper.make_tensor_value_info(name, self.elem_type, shape)


def _float_tensors(model: onnx.ModelProto) -> dict[str, TensorType]:
    """Type of every float tensor a node (not a Constant) of the graph produces, by ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    produced = {out for node in model.graph.node if node.op_type != "Constant" for out in node.output}
    types = {}
    for v in (*inferred.graph.value_info, *inferred.graph.output):
        t = v.type.tensor_type
        if v.name in produced and t.elem_type in FLOAT_TYPES:
            types[v.name] = TensorType(t.elem_type, len(t.shape.dim) if t.HasField("shape") else None)
    return types


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The graph's constant tensors by name: initializers, Constant outputs and Identity copies of either."""
    consts: dict[str, onnx.TensorProto] = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
        elif node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
    return consts


def _scoped(node_name: str) -> bool:
    """Whether the exporter named the node by its module path (stable across graphs); unscoped top-level nodes are
    numbered by occurrence ("/Mul_79"), and the numbers shift where the graphs' structures differ."""
    return node_name.strip("/").count("/") >= 1


class _Structure:
    """One graph's producers and constants, for matching tensors by what computes them, not only by name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.producers = {out: node for node in model.graph.node for out in node.output}
        self.consts = _constants(model)
        self.inputs = {i.name for i in model.graph.input}

    def sources(self, name: str) -> list[str]:
        """`name` and what it is seen through what a deployment inserts (Casts, QuantizeLinear -> DequantizeLinear
        pairs), nearest first."""
        names = [name]
        while (node := self.producers.get(name)) is not None:
            if node.op_type == "Cast":
                name = node.input[0]
            elif node.op_type == "DequantizeLinear" and (q := self.producers.get(node.input[0])) is not None \
                    and q.op_type == "QuantizeLinear":
                name = q.input[0]
            else:
                break
            names.append(name)
        return names

    def constant(self, name: str) -> onnx.TensorProto | None:
        """The constant behind `name`, also through a Cast or a DequantizeLinear (a quantized weight)."""
        if name in self.consts:
            return self.consts[name]
        node = self.producers.get(name)
        if node is not None and node.op_type in ("Cast", "DequantizeLinear"):
            return self.constant(node.input[0])
        return None


def _same_constant(a: onnx.TensorProto, b: onnx.TensorProto, scoped: bool) -> bool:
    """A module's constants (weights) may differ - that is the error to find - but keep their shape; a top-level
    node's constants must be equal, or the node is another one that took the same number."""
    if list(a.dims) != list(b.dims):
        return False
    if scoped:
        return True
    from onnx import numpy_helper

    return bool(np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b)))


def matched_tensors(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> dict[str, str]:
    """Which candidate tensor each reference tensor is (reference name -> candidate name), by what computes it:

    - a module's node (the exporter names it by its module path, e.g. `/backbone/body/layer3/layer3.0/conv1/Conv`) is
      found by its name; its inputs pair up with the reference's, even where the candidate computes them otherwise
      (the TensorRT graph's RoIAlign and NMS plugin ops in place of the portable subgraphs); its constants (weights)
      may differ - that is the error to find - but keep their shapes;
    - an unnamed top-level node ("/Mul_79": numbered by occurrence, the numbers shift where the graphs differ) is the
      candidate's node of the same output name only if its inputs are paired tensors and its constants are equal;

    both with the same op type and attributes, inputs seen through what a deployment inserts (Casts, QuantizeLinear
    -> DequantizeLinear pairs, dequantized weights)."""
    ref, cand = _Structure(reference), _Structure(candidate)
    pairs: dict[str, str] = {name: name for name in ref.inputs & cand.inputs}
    pairs[""] = ""
    by_name = {node.name: node for node in candidate.graph.node if node.name}
    for node in reference.graph.node:
        if node.op_type == "Constant" or not node.output:
            continue
        scoped = _scoped(node.name)
        other = by_name.get(node.name) if scoped else cand.producers.get(node.output[0])
        if (other is None or other.op_type != node.op_type or len(other.input) != len(node.input)
                or len(other.output) != len(node.output)
                or [a.SerializeToString() for a in other.attribute] != [a.SerializeToString() for a in node.attribute]):
            continue
        found: dict[str, str] = {}
        for r, c in zip(node.input, other.input, strict=True):
            r_const = ref.constant(r)
            if r_const is not None:
                c_const = cand.constant(c)
                ok = c_const is not None and _same_constant(r_const, c_const, scoped)
            elif r in pairs:
                ok = pairs[r] in cand.sources(c)
            else:
                ok = scoped and cand.constant(c) is None  # computed otherwise in the candidate: paired here
                found[r] = c
            if not ok:
                break
        else:
            pairs.update(found)
            pairs.update(zip(node.output, other.output, strict=True))
    del pairs[""]
    return pairs


Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def _session_options(threads: int | None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or 0
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OnnxRuntimeSide:
    """An ONNX graph on ONNX Runtime's CPU provider. `with_outputs(names)` runs the graph with those tensors as its
    outputs (a new session), `isolated(model)` runs a piece of it (`node_subgraph`)."""

    def __init__(self, path: Path, kind: str, threads: int | None) -> None:
        self.model = onnx.load(str(path))
        self.kind, self.threads = kind, threads
        self.types = _float_tensors(self.model)

    def _session(self, model: onnx.ModelProto) -> ort.InferenceSession:
        so = _session_options(self.threads)
        if self.kind == "trt":
            return trt_graph_session(model, so, self.threads)
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def with_outputs(self, names: list[str]) -> Run:
        outputs = list(self.model.graph.output)
        del self.model.graph.output[:]
        self.model.graph.output.extend(onnx.helper.make_tensor_value_info(n, self.types[n].elem_type, None)
                                       for n in names)
        try:
            session = self._session(self.model)
        finally:
            del self.model.graph.output[:]
            self.model.graph.output.extend(outputs)
        return lambda feeds: dict(zip(names, session.run(names, feeds), strict=True))

    def isolated(self, model: onnx.ModelProto) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        session = self._session(model)
        return lambda feeds: session.run(None, feeds)[0]


class OpenVinoSide:
    """An ONNX graph on OpenVINO's CPU plugin at `precision` (f32 | bf16), outputs added by tensor name."""

    def __init__(self, path: Path, precision: str, threads: int | None, work: Path) -> None:
        from maskrt.runtime.openvino_backend import openvino_core

        self.core, self.work = openvino_core(), work
        self.model = onnx.load(str(path))
        self.base = self.core.read_model(str(path))
        self.config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                       **({"INFERENCE_NUM_THREADS": str(threads)} if threads else {})}
        names = {name for op in self.base.get_ops() for out in op.outputs() for name in out.get_names()}
        self.types = {n: t for n, t in _float_tensors(self.model).items() if n in names}

    def with_outputs(self, names: list[str]) -> Run:
        model = self.base.clone()
        model.add_outputs(names)  # appended after the graph's own outputs, in this order
        compiled = self.core.compile_model(model, "CPU", self.config)
        request = compiled.create_infer_request()

        # OpenVINO may give two ONNX names one port (folded Identity / Cast): find each name's port after compiling
        port = {n: out for out in compiled.outputs for n in out.get_names()}
        missing = [n for n in names if n not in port]
        if missing:
            raise MaskrtError(f"OpenVINO dropped the tensor(s) {', '.join(missing[:3])} when compiling")

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            result = request.infer(feeds)
            return {name: np.array(result[port[name]]) for name in names}

        return run

    def isolated(self, model: onnx.ModelProto) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        path = self.work / "node.onnx"
        onnx.save(model, str(path))
        compiled = self.core.compile_model(self.core.read_model(str(path)), "CPU", self.config)
        request = compiled.create_infer_request()
        return lambda feeds: np.array(request.infer(feeds)[compiled.outputs[0]])


#: Nodes a piece of the candidate may hold (the node, its Casts and QDQ pairs, shape arithmetic); a larger piece
#: means the candidate computes the tensor from things not compared, and the error beyond its inputs is used instead.
MAX_PIECE_NODES = 256


def node_subgraph(model: onnx.ModelProto, producers: dict[str, onnx.NodeProto], output: str, stops: set[str],
                  types: dict[str, TensorType]) -> onnx.ModelProto | None:
    """The piece of the candidate graph that computes `output` from the compared tensors `stops` (fed with the
    reference's values), the graph's own inputs and constants: the node with what the deployment put in front of it
    (QuantizeLinear -> DequantizeLinear of its inputs, dequantized weights, Casts). None when the piece holds more
    than MAX_PIECE_NODES nodes or a node with a subgraph."""
    inits = {t.name: t for t in model.graph.initializer}
    graph_inputs = {i.name: i for i in model.graph.input}
    order = {id(node): k for k, node in enumerate(model.graph.node)}
    nodes: dict[int, onnx.NodeProto] = {}
    inputs: list[onnx.ValueInfoProto] = []
    used_inits: list[onnx.TensorProto] = []
    seen: set[str] = set()
    stack = [output]
    while stack:
        name = stack.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name != output and name in stops:
            inputs.append(types[name].value_info(name))
        elif name in inits:
            used_inits.append(inits[name])
        elif name in graph_inputs:
            inputs.append(graph_inputs[name])
        elif (node := producers.get(name)) is None or any(a.type in (onnx.AttributeProto.GRAPH,
                                                                      onnx.AttributeProto.GRAPHS)
                                                          for a in node.attribute):
            return None
        elif id(node) not in nodes:
            nodes[id(node)] = node
            if len(nodes) > MAX_PIECE_NODES:
                return None
            stack.extend(node.input)
    graph = onnx.helper.make_graph(sorted(nodes.values(), key=lambda n: order[id(n)]),
                                   "piece", inputs, [types[output].value_info(output)],
                                   used_inits)
    return onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


# -- the comparison -----------------------------------------------------------------------------------------------
def _records(model: onnx.ModelProto, pairs: dict[str, str]) -> list[TensorRecord]:
    """The compared tensors (reference name -> candidate name) in the reference graph's order, with their node, op,
    stage and inputs."""
    records, stage = [], "input"
    for node in model.graph.node:
        stage = stage_of(node.name, stage)
        for out in node.output:
            if out in pairs:
                records.append(TensorRecord(len(records), out, node.op_type, node.name, stage, list(node.input),
                                            pairs[out]))
    return records


def _image_files(images: str | Path | None, data: str | Path | None, split: str, limit: int) -> list[Path]:
    """The first `limit` images of a folder or of a COCO-format dataset's split."""
    if (images is None) == (data is None):
        raise MaskrtError("give the images to compare on: a folder of images or a COCO-format dataset (one of them)")
    if data is not None and not (Path(data) / "annotations").is_dir():  # a plain folder, as `maskrt parity` takes
        images, data = data, None
    if images is not None:
        files = list_images(images)
        if not files:
            raise MaskrtError(f"{images}: no images in this folder")
    else:
        from maskrt.training.coco import load_split

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
    """model.onnx exported anew from `checkpoint` with the export's input, detections and opset (into `work`)."""
    from maskrt.export.onnx_export import export_checkpoint

    inp = info.input
    static = {} if inp.dynamic_size else {"height": inp.height, "width": inp.width}
    export_checkpoint(checkpoint, work, batch=inp.batch, dynamic_batch=inp.dynamic_batch,
                      max_detections=info.max_detections, opset=info.opset, **static)
    return work


def _reference_info(reference_dir: Path, info: ExportInfo) -> ExportInfo:
    ref = ExportInfo.read(reference_dir)
    if (ref.input, ref.max_detections, ref.min_size, ref.max_size) != (info.input, info.max_detections,
                                                                       info.min_size, info.max_size):
        raise MaskrtError(f"{reference_dir}: its input, sizes or detection slots differ from the candidate export's; "
                          "the graphs would see different tensors")
    return ref


def compare_layers(export_dir: str | Path, out: str | Path, *, graph: str = "portable_int8",
                   backend: str = "onnxruntime", precision: str = "f32", images: str | Path | None = None,
                   data: str | Path | None = None, split: str = "val", limit: int = DEFAULT_LAYER_IMAGES,
                   reference: str | Path | None = None, checkpoint: str | Path | None = None,
                   tolerance: float = DEFAULT_LAYER_TOLERANCE, threads: int | None = None,
                   chunk_mib: int = DEFAULT_LAYER_CHUNK_MIB, progress: bool = True, force: bool = False,
                   ) -> dict[str, Any]:
    """Compare `graph` of the export on `backend` (OpenVINO at `precision`) with an fp32 model.onnx on ONNX Runtime
    - `reference`'s (an export folder), a fresh export of `checkpoint`, or by default the export's own - tensor by
    tensor on the first `limit` images of `images` (a folder) or `data` (a COCO dataset's `split`); write
    OUT/layers.json, OUT/layers.md and OUT/layers.png and return the layers.json document."""
    if graph not in GRAPH_KINDS:
        raise MaskrtError(f"unknown graph '{graph}' (choose from {', '.join(GRAPH_KINDS)})")
    if backend not in ("onnxruntime", "openvino"):
        raise MaskrtError(f"maskrt layers runs ONNX graphs on onnxruntime or openvino, not {backend} (an engine's "
                          "layers: compare the graph it was built from)")
    if reference is not None and checkpoint is not None:
        raise MaskrtError("give a reference export folder or a checkpoint to export one from, not both")
    if limit < 1:
        raise MaskrtError(f"compare at least 1 image, got {limit}")
    if tolerance < 0 or not np.isfinite(tolerance):
        raise MaskrtError(f"the tolerance must be >= 0 and finite, got {tolerance}")
    inputs = [("export folder", export_dir), *((("images", images),) if images else ()),
              *((("dataset", data),) if data else ()), *((("reference", reference),) if reference else ()),
              *((("checkpoint", checkpoint),) if checkpoint else ())]
    check_apart([out], inputs)
    out = check_output_dir(out, force=force)
    export_dir = Path(export_dir)
    info = ExportInfo.read(export_dir)
    files = _image_files(images, data, split, limit)
    cand_path = info.verified_graph(export_dir, graph)
    if backend == "openvino":
        from maskrt.runtime.openvino_backend import check_openvino

        check_openvino(graph, precision)
    with tempfile.TemporaryDirectory(prefix="maskrt-layers-") as work:
        if checkpoint is not None:
            reference_dir = fresh_reference(checkpoint, info, Path(work) / "reference")
            reference_is = f"model.onnx exported anew from {checkpoint}"
        else:
            reference_dir = Path(reference) if reference is not None else export_dir
            reference_is = f"{reference_dir / 'model.onnx'}"
        ref_info = _reference_info(reference_dir, info) if reference_dir != export_dir else info
        ref_side = OnnxRuntimeSide(ref_info.verified_graph(reference_dir, "portable"), "portable", threads)
        if backend == "openvino":
            cand_side: OnnxRuntimeSide | OpenVinoSide = OpenVinoSide(cand_path, precision, threads, Path(work))
        else:
            cand_side = OnnxRuntimeSide(cand_path, GRAPH_KINDS[graph][0], threads)
        pairs = matched_tensors(ref_side.model, cand_side.model)
        shared = {r: c for r, c in pairs.items() if r in ref_side.types and c in cand_side.types}
        records = _records(ref_side.model, shared)
        if not records:
            raise MaskrtError(f"{cand_path}: no float tensor shares its name with the reference model.onnx")
        feeds = _feeds(info, files)
        _compare(records, ref_side, cand_side, feeds, chunk_mib, progress)
    _contributions(records, ref_side.model)
    document = _document(records, info, graph, backend, precision, files, reference_is, str(cand_path), tolerance,
                         weight_groups=weight_sharing(ref_side.model),
                         only_candidate=len(set(cand_side.types) - set(shared.values())),
                         only_reference=len(set(ref_side.types) - set(shared)))
    from maskrt.runtime.layers_report import layers_plot, render_layers_markdown

    with staged_dir(out) as staging:
        layers_plot(document, staging / "layers.png")
        (staging / "layers.json").write_text(json.dumps(document, indent=1) + "\n")
        (staging / "layers.md").write_text(render_layers_markdown(document))
    return document


def _as_type(array: np.ndarray, tensor_type: TensorType) -> np.ndarray:
    """A reference value in the dtype the candidate's piece takes (fp16 in the fp16 graph's networks)."""
    return array.astype(np.float16) if tensor_type.elem_type == onnx.TensorProto.FLOAT16 else array


def _pieces(chunk: list[TensorRecord], cand: OnnxRuntimeSide | OpenVinoSide, producers: dict[str, onnx.NodeProto],
            by_candidate: dict[str, TensorRecord]) -> dict[str, tuple[Callable, list[str]]]:
    """Each record's candidate piece (node_subgraph), ready to run, with its input names; records without one are
    left out (their contribution is the error beyond their inputs)."""
    pieces = {}
    for record in chunk:
        piece = node_subgraph(cand.model, producers, record.candidate_name, set(by_candidate), cand.types)
        if piece is None:
            continue
        try:
            pieces[record.name] = (cand.isolated(piece), [i.name for i in piece.graph.input])
        except Exception:  # a piece the runtime will not take alone (e.g. a plugin op's shape rules): fall back
            continue
    return pieces


def planned_bytes(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> dict[str, int]:
    """Bytes of each tensor at the largest of `feeds`' input shapes, by ONNX shape inference with those shapes
    (tensors with a dimension it cannot tell are left out)."""
    sized = onnx.ModelProto()
    sized.CopyFrom(model)
    for inp in sized.graph.input:
        shapes = [feed[inp.name].shape for feed in feeds if inp.name in feed]
        if not shapes:
            continue
        for k, dim in enumerate(inp.type.tensor_type.shape.dim):
            dim.dim_value = max(int(shape[k]) for shape in shapes)  # clears dim_param (a oneof)
    inferred = onnx.shape_inference.infer_shapes(sized, strict_mode=False, data_prop=True)
    sizes = {}
    for v in inferred.graph.value_info:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim]
        if t.HasField("shape") and all(d > 0 for d in dims):
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
            sizes[v.name] = int(np.prod(dims)) * itemsize
    return sizes


def _chunks(records: list[TensorRecord], sizes: dict[str, int], budget: int) -> list[list[TensorRecord]]:
    """Consecutive records whose planned bytes (per image and side) stay within `budget` (a larger tensor alone)."""
    chunks: list[list[TensorRecord]] = [[]]
    used = 0
    for record in records:
        size = sizes.get(record.name, _UNKNOWN_BYTES)
        if chunks[-1] and used + size > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(record)
        used += size
    return chunks


def _compare(records: list[TensorRecord], ref: OnnxRuntimeSide, cand: OnnxRuntimeSide | OpenVinoSide,
             feeds: list[dict[str, np.ndarray]], chunk_mib: int, progress: bool) -> None:
    """Fill each record's per-image metrics, and its node's own error (its candidate piece run on the reference's
    inputs), one chunk of tensors at a time."""
    by_candidate = {r.candidate_name: r for r in records}
    producers = {out: node for node in cand.model.graph.node for out in node.output}
    bar = tqdm(total=len(records), desc="compare tensors", unit="tensor", disable=not progress)
    for chunk in _chunks(records, planned_bytes(ref.model, feeds), chunk_mib * 2**20):
        pieces = _pieces(chunk, cand, producers, by_candidate)
        fetched = [r.name for r in chunk] + [by_candidate[n].name for _, names in pieces.values() for n in names
                                             if n in by_candidate]
        run_ref = ref.with_outputs(list(dict.fromkeys(fetched)))
        run_cand = cand.with_outputs(list(dict.fromkeys(r.candidate_name for r in chunk)))
        for feed in feeds:
            ref_out, cand_out = run_ref(feed), run_cand(feed)
            for record in chunk:
                record.per_image.append(tensor_metrics(cand_out[record.candidate_name], ref_out[record.name]))
                own = None
                if record.name in pieces:
                    run, names = pieces[record.name]
                    inputs = {n: _as_type(ref_out[by_candidate[n].name], cand.types[n]) if n in by_candidate
                              else feed[n] for n in names}
                    try:
                        own = tensor_metrics(run(inputs), ref_out[record.name])
                    except Exception:
                        own = None
                record.own.append(own)
            del ref_out, cand_out
        del run_ref, run_cand, pieces
        bar.update(len(chunk))
    bar.close()


def _compared_sources(model: onnx.ModelProto, compared: set[str]) -> dict[str, frozenset[str]]:
    """For every tensor of the reference graph, the compared tensors its value comes from: itself when compared,
    else those of its producer's inputs (through the parts of the graph the candidate computes otherwise, e.g. the
    portable RoIAlign subgraph the TensorRT graph replaces with a plugin op)."""
    sources: dict[str, frozenset[str]] = {}
    for node in model.graph.node:
        upstream = frozenset().union(*(sources.get(i, frozenset()) for i in node.input))
        for out in node.output:
            sources[out] = frozenset((out,)) if out in compared else upstream
    return sources


def _contributions(records: list[TensorRecord], model: onnx.ModelProto) -> None:
    """Each tensor's own contribution per image: its relative error beyond the worst of the compared tensors its
    node reads (directly, or through tensors not compared)."""
    by_name = {r.name: r for r in records}
    sources = _compared_sources(model, set(by_name))
    for record in records:
        feeding = frozenset().union(*(sources.get(i, frozenset()) for i in record.inputs))
        inputs = [by_name[n] for n in feeding]
        for k, metrics in enumerate(record.per_image):
            own = record.own[k] if k < len(record.own) else None
            if own is not None and (own_rel := _rel(own)) is not None:
                # at most the output's own error: a node run alone may pick another kernel (float rounding apart)
                total = _rel(metrics)
                record.contributions.append(own_rel if total is None else min(own_rel, total))
            else:
                record.contributions.append(contribution(_rel(metrics), [_rel(i.per_image[k]) for i in inputs]))


def weight_sharing(model: onnx.ModelProto) -> dict[str, list[str]]:
    """For each node that shares its weight initializer with others (a module called more than once: torchvision's
    RPN head runs on every FPN level and torch.onnx writes one node per call), all the nodes reading that weight, in
    graph order."""
    initializers = {i.name for i in model.graph.initializer}
    alias = {n.output[0]: n.input[0] for n in model.graph.node
             if n.op_type == "Identity" and n.input[0] in initializers}
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.input) > 1:
            weight = alias.get(node.input[1], node.input[1])
            if weight in initializers:
                readers.setdefault(weight, []).append(node.name)
    return {name: group for group in readers.values() if len(group) > 1 for name in group}


def _by_module(ranked: list[TensorRecord], shared: dict[str, list[str]]) -> list[tuple[TensorRecord, float, list[str]]]:
    """The ranking with the nodes of one shared weight as one entry: named by the group's first node in graph order,
    its worst contribution the worst of the group, the others listed."""
    rows: list[tuple[TensorRecord, float, list[str]]] = []
    seen: set[str] = set()
    by_node = {r.node: r for r in ranked}
    for record in ranked:
        if record.node in seen:
            continue
        group = shared.get(record.node, [record.node])
        seen.update(group)
        first = next((by_node[n] for n in group if n in by_node), record)
        rows.append((first, record.worst_contribution() or 0.0, [n for n in group if n != first.node]))
    return rows


def _document(records: list[TensorRecord], info: ExportInfo, graph: str, backend: str, precision: str,
              files: list[Path], reference_is: str, candidate_file: str, tolerance: float, *, only_candidate: int,
              only_reference: int, weight_groups: dict[str, list[str]] | None = None) -> dict[str, Any]:
    rankable = [r for r in records if r.worst_contribution() is not None and r.op not in SELECTION_OPS]
    ranked = sorted((r for r in rankable if r.isolated), key=lambda r: -(r.worst_contribution() or 0.0))
    modules = _by_module(ranked, weight_groups or {})
    unisolated = sorted((r for r in rankable if not r.isolated), key=lambda r: -(r.worst_contribution() or 0.0))
    first_selection = next((r for r in records if r.op in SELECTION_OPS and (rel := r.worst_rel()) is not None
                            and rel > tolerance), None)
    first_over = next((r for r in records if (rel := r.worst_rel()) is not None and rel > tolerance), None)
    first_shape = next((r for r in records if r.worst()["shape_mismatch_images"]), None)
    return {
        "candidate": {"graph": graph, "backend": backend, "precision": precision if backend == "openvino" else
                      GRAPH_KINDS[graph][1], "file": candidate_file},
        "reference": reference_is, "images": [f.name for f in files], "tolerance": tolerance,
        "compared_tensors": len(records), "only_in_candidate": only_candidate, "only_in_reference": only_reference,
        "ranking": [{"rank": k + 1, "name": r.name, "node": r.node, "op": r.op, "stage": r.stage,
                     "contribution": _json_float(worst), "rel_l2": r.worst()["rel_l2"],
                     **({"same_weights": others} if others else {})}
                    for k, (r, worst, others) in enumerate(modules[:TOP_SHOWN])],
        "not_isolated": [{"name": r.name, "node": r.node, "op": r.op, "stage": r.stage,
                          "beyond_inputs": _json_float(r.worst_contribution() or 0.0), "rel_l2": r.worst()["rel_l2"]}
                         for r in unisolated[:TOP_SHOWN]],
        "not_isolated_count": len(unisolated),
        "first_over_tolerance": None if first_over is None else {
            "name": first_over.name, "node": first_over.node, "op": first_over.op, "stage": first_over.stage,
            "rel_l2": _json_float(first_over.worst_rel() or 0.0)},
        "first_selection_over_tolerance": None if first_selection is None else {
            "name": first_selection.name, "node": first_selection.node, "op": first_selection.op,
            "stage": first_selection.stage, "rel_l2": _json_float(first_selection.worst_rel() or 0.0)},
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
    from maskrt.runtime.layers_report import parity_layers_target

    t = parity_layers_target(report)
    return compare_layers(t["model"], t["out"], graph=t["graph"], backend=t["backend"], precision=t["precision"],
                          data=t["data"], split=t["split"], limit=limit, checkpoint=t["checkpoint"], threads=threads,
                          progress=progress)
