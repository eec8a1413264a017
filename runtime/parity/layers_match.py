"""`maskrt layers`, part 1 (runtime/parity/layers.py has the whole story): what is compared - per-tensor error
metrics, the tensor records, and the pairing of a candidate's tensors with the fp32 reference's by what computes them
(`matched_tensors`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

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
UNKNOWN_BYTES = 2**20  # the planned size of a tensor whose shape inference leaves a dimension unknown


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


def rel_error(metrics: dict[str, Any] | None) -> float | None:
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
        values = [rel_error(m) for m in self.per_image]
        values = [v for v in values if v is not None]
        return max(values) if values else None

    @property
    def isolated(self) -> bool:
        """Whether its own error was measured (its candidate piece run on the reference's inputs)."""
        return any(o is not None and rel_error(o) is not None for o in self.own)

    def worst_contribution(self) -> float | None:
        values = [c for c in self.contributions if c is not None]
        return max(values) if values else None

    def to_json(self) -> dict[str, Any]:
        worst_c = self.worst_contribution()
        return {"index": self.index, "name": self.name,
                **({"candidate_name": self.candidate_name} if self.candidate_name != self.name else {}),
                "op": self.op, "node": self.node, "scope": self.scope,
                "stage": self.stage, "worst": self.worst(),
                "contribution": None if worst_c is None else (json_float(worst_c)),
                "contribution_from": "own" if self.isolated else "beyond inputs",
                "per_image": [{k: json_float(v) if isinstance(v, float) else v for k, v in m.items()}
                              for m in self.per_image]}


def json_float(value: float) -> float | str:
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


def float_tensors(model: onnx.ModelProto) -> dict[str, TensorType]:
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


