"""`maskrt layers`, part 2 (runtime/parity/layers.py has the whole story): the two sides run with their tensors marked
as outputs (ONNX Runtime, OpenVINO) in chunks of bounded memory, each node's own piece run alone (`node_subgraph`),
and the contributions ranked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from maskrt.core.errors import MaskrtError
from maskrt.runtime.backends.ort_session import session_options
from maskrt.runtime.backends.trt_graph_ort import trt_graph_session
from maskrt.runtime.parity.layers_match import (
    UNKNOWN_BYTES,
    Run,
    TensorRecord,
    TensorType,
    contribution,
    float_tensors,
    rel_error,
    stage_of,
    tensor_metrics,
)


class OnnxRuntimeSide:
    """An ONNX graph on ONNX Runtime's CPU provider. `with_outputs(names)` runs the graph with those tensors as its
    outputs (a new session), `isolated(model)` runs a piece of it (`node_subgraph`)."""

    def __init__(self, path: Path, kind: str, threads: int | None) -> None:
        self.model = onnx.load(str(path))
        self.kind, self.threads = kind, threads
        self.types = float_tensors(self.model)

    def _session(self, model: onnx.ModelProto) -> ort.InferenceSession:
        so = session_options(self.threads)
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
        from maskrt.runtime.backends.openvino_runtime import compile_config, openvino_core

        self.core, self.work = openvino_core(), work
        self.model = onnx.load(str(path))
        self.base = self.core.read_model(str(path))
        self.config = compile_config(precision, threads)
        names = {name for op in self.base.get_ops() for out in op.outputs() for name in out.get_names()}
        self.types = {n: t for n, t in float_tensors(self.model).items() if n in names}

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
def tensor_records(model: onnx.ModelProto, pairs: dict[str, str]) -> list[TensorRecord]:
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
        size = sizes.get(record.name, UNKNOWN_BYTES)
        if chunks[-1] and used + size > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(record)
        used += size
    return chunks


def compare_chunk(records: list[TensorRecord], ref: OnnxRuntimeSide, cand: OnnxRuntimeSide | OpenVinoSide,
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


def rank_contributions(records: list[TensorRecord], model: onnx.ModelProto) -> None:
    """Each tensor's own contribution per image: its relative error beyond the worst of the compared tensors its
    node reads (directly, or through tensors not compared)."""
    by_name = {r.name: r for r in records}
    sources = _compared_sources(model, set(by_name))
    for record in records:
        feeding = frozenset().union(*(sources.get(i, frozenset()) for i in record.inputs))
        inputs = [by_name[n] for n in feeding]
        for k, metrics in enumerate(record.per_image):
            own = record.own[k] if k < len(record.own) else None
            if own is not None and (own_rel := rel_error(own)) is not None:
                # at most the output's own error: a node run alone may pick another kernel (float rounding apart)
                total = rel_error(metrics)
                record.contributions.append(own_rel if total is None else min(own_rel, total))
            else:
                inherited = [rel_error(i.per_image[k]) for i in inputs]
                record.contributions.append(contribution(rel_error(metrics), inherited))


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


def ranked_by_module(ranked: list[TensorRecord], shared: dict[str, list[str]]
                     ) -> list[tuple[TensorRecord, float, list[str]]]:
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


