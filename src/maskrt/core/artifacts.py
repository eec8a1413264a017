"""The schemas of the artifacts maskrt hands from one stage to the next: export.json and ENGINE.json.

Each schema is a dataclass that both writes and reads its file, so the writer (export, engine build) and the readers
(runtime, parity) cannot drift apart. Reading validates every field and raises a one-line MaskrtError naming the file
and the field (e.g. ``export.json: input.height must be a positive integer``).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from maskrt.core.builders import BUILDERS
from maskrt.core.errors import MaskrtError, check_choice
from maskrt.core.files import read_json, sha256, write_json

T = TypeVar("T")

EXPORT_FILE = "export.json"
EXPORT_FORMAT_VERSION = 2  # 2: dynamic height/width (input.dynamic_size, ranges)
ENGINE_FORMAT_VERSION = 3  # 2: I/O tensors, build time, engine sha256, the export's export.json; 3: strongly
#: typed, TF32, the INT8 graph's quantization record


@dataclass(frozen=True)
class GraphKind:
    """One graph an export folder can hold (docs/architecture.md section 3)."""

    name: str  # export.json's key and --graph's value
    file: str
    flavor: str  # the ops it may hold: "portable" (standard ONNX) or "trt" (maskrt's plugin ops)
    precision: str  # its networks' precision, which picks its default parity gates (Gates.for_precision)
    backends: tuple[str, ...]  # the backends that run it (an engine built from it runs on tensorrt)
    written_by: str

    @property
    def portable(self) -> bool:
        return self.flavor == "portable"


#: Every graph kind, in the order the CLI lists them; GRAPHS[name] is the one record of a graph.
GRAPHS: dict[str, GraphKind] = {g.name: g for g in (
    GraphKind("portable", "model.onnx", "portable", "fp32", ("onnxruntime", "openvino"), "maskrt export"),
    GraphKind("trt", "model.trt.onnx", "trt", "fp32", ("onnxruntime", "tensorrt"), "maskrt export"),
    GraphKind("trt_fp16", "model.trt.fp16.onnx", "trt", "fp16", ("onnxruntime", "tensorrt"), "maskrt export --fp16"),
    GraphKind("portable_int8", "model.int8.onnx", "portable", "int8", ("onnxruntime", "openvino"), "maskrt quantize"),
    GraphKind("trt_int8", "model.trt.int8.onnx", "trt", "int8", ("onnxruntime", "tensorrt"), "maskrt quantize"),
)}
#: Every backend: the torch reference and those that run a graph
BACKENDS = ("torch", *dict.fromkeys(b for g in GRAPHS.values() for b in g.backends))


def graph_kind(name: str) -> GraphKind:
    """The record of graph `name`; MaskrtError for a graph maskrt does not know."""
    check_choice("graph", name, GRAPHS)
    return GRAPHS[name]
INPUT_NAMES = ("images", "image_sizes")
#: Export limits. Opsets: RoiAlign-16 and LayerNormalization need 17, torch's TorchScript exporter stops at 20.
MIN_OPSET, MAX_OPSET = 17, 20
#: Largest canvas side: far above any model's max_size (r50: 1333), low enough that an export fits in memory.
MAX_CANVAS_SIDE = 4096
#: Largest static batch (the example batch is traced through the whole model while exporting).
MAX_EXPORT_BATCH = 64
#: Most detection slots per image an export may have (torchvision's r50 keeps 1000 proposals per image).
MAX_DETECTIONS = 1000
#: Largest dimension an engine tensor may declare (masks: slots x 28 x 28 per image, far below).
MAX_DIM = 1 << 20
OUTPUT_NAMES = ("num_detections", "boxes", "scores", "labels", "masks")


class _Fields:
    """Typed access to the fields of one JSON object; errors read 'FILE: path.to.field must be ...'."""

    def __init__(self, value: Any, file: str, path: str = "") -> None:
        self.value, self.file, self.path = value, file, path
        if not isinstance(value, dict):
            raise MaskrtError(f"{self.where} must be a JSON object")

    @property
    def where(self) -> str:
        return f"{self.file}: {self.path or 'the document'}"

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _get(self, key: str, check: Callable[[Any], bool], expected: str) -> Any:
        if key not in self.value:
            raise MaskrtError(f"{self.file}: {self._name(key)} is missing")
        value = self.value[key]
        if not check(value):
            raise MaskrtError(f"{self.file}: {self._name(key)} must be {expected}, got {value!r}"[:300])
        return value

    def int(self, key: str, minimum: int = 0, maximum: int | None = None) -> int:
        ok = lambda v: (isinstance(v, int) and not isinstance(v, bool) and v >= minimum  # noqa: E731
                        and (maximum is None or v <= maximum))
        return self._get(key, ok, f"an integer >= {minimum}" if maximum is None else
                         f"an integer in [{minimum}, {maximum}]")

    def bool(self, key: str) -> bool:
        return self._get(key, lambda v: isinstance(v, bool), "true or false")

    def str(self, key: str) -> str:
        return self._get(key, lambda v: isinstance(v, str) and v != "", "a non-empty string")

    def list(self, key: str, item: Callable[[Any], bool], expected: str, min_len: int = 0) -> list[Any]:
        ok = lambda v: isinstance(v, list) and len(v) >= min_len and all(item(x) for x in v)  # noqa: E731
        return list(self._get(key, ok, expected))

    def obj(self, key: str) -> _Fields:
        return _Fields(self._get(key, lambda v: isinstance(v, dict), "a JSON object"), self.file, self._name(key))

    def raw(self, key: str) -> dict[str, Any]:
        return dict(self.obj(key).value)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_class_list(classes: list[dict[str, Any]], source: str | Path) -> None:
    """MaskrtError naming `source` when a class list holds a category id or a name twice: labels map to classes by id
    AND name everywhere, so either repeated makes two labels indistinguishable."""
    for key in ("id", "name"):
        seen: set = set()
        for c in classes:
            if c[key] in seen:
                raise MaskrtError(f"{source}: classes hold the category {key} {c[key]!r} twice ({key}s must be unique)")
            seen.add(c[key])


def _classes(fields: _Fields) -> list[dict[str, Any]]:
    ok = lambda c: isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)  # noqa: E731
    classes = fields.list("classes", ok, 'a non-empty list of {"id": int, "name": str}', min_len=1)
    check_class_list(classes, fields.file)
    return classes


def check_same_classes(a: list[dict[str, Any]], a_source: str | Path, b: list[dict[str, Any]],
                       b_source: str | Path) -> None:
    """MaskrtError listing the differing entries unless `a` and `b` hold the same classes in the same order: contiguous
    label i + 1 is classes[i] on both sides, and classes agree only when ids AND names agree."""
    pairs = lambda cs: [(int(c["id"]), str(c["name"])) for c in cs]  # noqa: E731
    left, right = pairs(a), pairs(b)
    if left == right:
        return
    show = lambda c: f"id {c[0]} {c[1]!r}" if c else "none"  # noqa: E731
    diffs = [f"label {i + 1}: {show(x)} vs {show(y)}" for i, (x, y) in
             enumerate(itertools.zip_longest(left, right)) if x != y]
    more = f"; and {len(diffs) - 6} more" if len(diffs) > 6 else ""
    raise MaskrtError(f"{a_source} and {b_source} disagree on the classes ({'; '.join(diffs[:6])}{more}); a model "
                      "only runs on data with the classes it was trained on, ids and names alike")


def check_same_model(a: dict[str, Any], a_source: str | Path, b: dict[str, Any], b_source: str | Path) -> None:
    """MaskrtError naming the first differing field unless two model configs (a checkpoint's, an export's) describe
    the same model: the same config and the same value of every field either has."""
    for key in sorted(set(a) | set(b), key=lambda k: (k != "name", k)):
        if a.get(key) != b.get(key):
            raise MaskrtError(f"{a_source} and {b_source} are not the same model: model_config.{key} is "
                              f"{a.get(key)!r} vs {b.get(key)!r}")


def check_compatible(a_config: dict[str, Any], a_classes: list[dict[str, Any]], a_source: str | Path,
                     b_config: dict[str, Any], b_classes: list[dict[str, Any]], b_source: str | Path) -> None:
    """The one check of two model artifacts used together (checkpoint, export, reference export): the same classes by
    id AND name (the list of differing labels says most), then the same model config and fields."""
    check_same_classes(a_classes, a_source, b_classes, b_source)
    check_same_model(a_config, a_source, b_config, b_source)


def _safe_file_name(fields: _Fields, key: str) -> str:
    """A plain file name inside the artifact's folder (no path separators, no '..')."""
    name = fields.str(key)
    if Path(name).name != name or name in (".", ".."):
        raise MaskrtError(f"{fields.file}: {fields._name(key)} must be a file name inside the folder, got {name!r}")
    return name


@dataclass(frozen=True)
class InputSpec:
    """The deploy graph's input. Sizes are multiples of 32.

    A dynamic-size export (`dynamic_size`) takes any height in `height_range` and width in `width_range`: each
    batch runs at its own padded size, as torchvision pads it. `height` x `width` is then the size the graph was
    traced at (and a sensible optimization-profile optimum); a static export takes exactly `height` x `width`.
    """

    height: int
    width: int
    batch: int = 1
    dynamic_batch: bool = False
    dynamic_size: bool = False
    height_range: tuple[int, int] | None = None  # (min, max); None = (height, height)
    width_range: tuple[int, int] | None = None
    names: tuple[str, ...] = INPUT_NAMES
    layout: str = "NCHW float32, RGB, normalised, zero-padded"

    def __post_init__(self) -> None:
        object.__setattr__(self, "height_range", tuple(self.height_range or (self.height, self.height)))
        object.__setattr__(self, "width_range", tuple(self.width_range or (self.width, self.width)))

    def accepts(self, height: int, width: int) -> bool:
        """Whether a padded batch of height x width can run on this graph."""
        (h0, h1), (w0, w1) = self.height_range, self.width_range  # type: ignore[misc]
        return h0 <= height <= h1 and w0 <= width <= w1 and height % 32 == 0 and width % 32 == 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "height_range": list(self.height_range or ()), "width_range":
                list(self.width_range or ()), "names": list(self.names)}

    @classmethod
    def from_fields(cls, inp: _Fields) -> InputSpec:
        """Validate the `input` object of export.json."""
        height, width = inp.int("height", 32, MAX_CANVAS_SIDE), inp.int("width", 32, MAX_CANVAS_SIDE)
        side = lambda v: (isinstance(v, int) and not isinstance(v, bool) and 32 <= v <= MAX_CANVAS_SIDE  # noqa: E731
                          and v % 32 == 0)
        what = f"[min, max], multiples of 32 in [32, {MAX_CANVAS_SIDE}] with min <= max"
        h_range = tuple(inp.list("height_range", side, what, 2))
        w_range = tuple(inp.list("width_range", side, what, 2))
        spec = cls(height, width, batch=inp.int("batch", 1, MAX_EXPORT_BATCH), dynamic_batch=inp.bool("dynamic_batch"),
                   dynamic_size=inp.bool("dynamic_size"), height_range=h_range, width_range=w_range)  # type: ignore[arg-type]
        if height % 32 or width % 32:
            raise MaskrtError(f"{inp.file}: input.height and input.width must be multiples of 32, got {height}x{width}")
        for name, rng in (("height_range", h_range), ("width_range", w_range)):
            if len(rng) != 2 or rng[0] > rng[1]:
                raise MaskrtError(f"{inp.file}: input.{name} must be {what}, got {list(rng)}")
        if not spec.accepts(height, width):
            raise MaskrtError(f"{inp.file}: input.height x width {height}x{width} lies outside its ranges "
                              f"{list(h_range)} x {list(w_range)}")
        if not spec.dynamic_size and (h_range != (height, height) or w_range != (width, width)):
            raise MaskrtError(f"{inp.file}: a static input (dynamic_size false) must have ranges equal to its size")
        return spec


@dataclass(frozen=True)
class GraphFile:
    """One ONNX graph of an export folder: its file, content hash and op counts."""

    file: str
    sha256: str
    ops: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportInfo:
    """export.json: everything a runtime needs to run an export folder without the checkpoint."""

    model_config: dict[str, Any]
    classes: list[dict[str, Any]]
    input: InputSpec
    mean: tuple[float, ...]
    std: tuple[float, ...]
    min_size: int
    max_size: int
    limits: dict[str, Any]
    roi_align: dict[str, dict[str, Any]]
    opset: int
    graphs: dict[str, GraphFile]
    checkpoint: dict[str, str]
    versions: dict[str, str]
    outputs: tuple[str, ...] = OUTPUT_NAMES
    quantization: dict[str, Any] = field(default_factory=dict)  # `maskrt quantize`'s calibration record

    @property
    def max_detections(self) -> int:
        return int(self.limits["max_detections"])

    def to_json(self) -> dict[str, Any]:
        """The export.json document."""
        return {
            "format_version": EXPORT_FORMAT_VERSION,
            "model_config": self.model_config,
            "classes": self.classes,
            "input": self.input.to_json(),
            "outputs": list(self.outputs),
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "resize": {"min_size": self.min_size, "max_size": self.max_size},
            "limits": self.limits,
            "roi_align": self.roi_align,
            "opset": self.opset,
            "graphs": {name: asdict(graph) for name, graph in self.graphs.items()},
            "checkpoint": self.checkpoint,
            "versions": self.versions,
            **({"quantization": self.quantization} if self.quantization else {}),
        }

    def write(self, folder: str | Path) -> Path:
        """Write FOLDER/export.json atomically; returns its path."""
        path = Path(folder) / EXPORT_FILE
        write_json(path, self.to_json())
        return path

    @classmethod
    def from_json(cls, document: Any, where: str = EXPORT_FILE) -> ExportInfo:
        """Validate an export.json document (MaskrtError naming the first bad field)."""
        top = _Fields(document, where)
        version = top.int("format_version")
        if version != EXPORT_FORMAT_VERSION:
            raise MaskrtError(f"{where}: export format_version {version} is not supported "
                              f"(this maskrt reads {EXPORT_FORMAT_VERSION}); export the checkpoint again")
        inp, norm, resize, limits = top.obj("input"), top.obj("normalization"), top.obj("resize"), top.obj("limits")
        three = lambda key: tuple(float(v) for v in norm.list(key, _is_number, "a list of 3 numbers", 3)[:3])  # noqa: E731
        graphs: dict[str, GraphFile] = {}
        graph_fields = top.obj("graphs")
        for flavor in graph_fields.value:
            if flavor not in GRAPHS:
                raise MaskrtError(f"{where}: graphs.{flavor} is not a graph maskrt knows ({', '.join(GRAPHS)})")
            g = graph_fields.obj(flavor)
            graphs[flavor] = GraphFile(_safe_file_name(g, "file"), g.str("sha256"), dict(g.value.get("ops", {})))
        if not graphs:
            raise MaskrtError(f"{where}: graphs names no graph")
        detections = limits.int("max_detections", 1, MAX_DETECTIONS)
        for key in ("rpn_nms_thresh", "box_score_thresh", "box_nms_thresh"):  # what the graphs were exported with
            if key in limits.value:
                limits._get(key, lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
        for key in ("rpn_pre_nms_top_n", "rpn_post_nms_top_n"):
            if key in limits.value:
                limits.int(key, 1, 100_000)
        if detections > limits.value.get("rpn_post_nms_top_n", detections):
            raise MaskrtError(f"{where}: limits.max_detections {detections} exceeds limits.rpn_post_nms_top_n "
                              f"{limits.value['rpn_post_nms_top_n']} (the proposals it keeps from)")
        std, mean = three("std"), three("mean")
        if any(not (math.isfinite(v) and v > 0) for v in std) or not all(math.isfinite(v) for v in mean):
            raise MaskrtError(f"{where}: normalization.std must be positive and mean finite, got {list(std)} and "
                              f"{list(mean)}")
        min_size, max_size = resize.int("min_size", 1, MAX_CANVAS_SIDE), resize.int("max_size", 1, MAX_CANVAS_SIDE)
        if min_size > max_size:
            raise MaskrtError(f"{where}: resize.min_size {min_size} exceeds resize.max_size {max_size}")
        classes, model_config = _classes(top), top.raw("model_config")
        if model_config.get("num_classes", len(classes)) != len(classes):
            raise MaskrtError(f"{where}: {len(classes)} classes but model_config.num_classes is "
                              f"{model_config['num_classes']}")
        return cls(
            model_config=model_config,
            classes=classes,
            input=InputSpec.from_fields(inp),
            mean=mean,
            std=std,
            min_size=min_size,
            max_size=max_size,
            limits=dict(limits.value),
            roi_align={k: dict(v) for k, v in top.raw("roi_align").items()},
            opset=top.int("opset", MIN_OPSET, MAX_OPSET),
            graphs=graphs,
            checkpoint={k: str(v) for k, v in top.raw("checkpoint").items()},
            versions={k: str(v) for k, v in top.raw("versions").items()},
            quantization=top.raw("quantization") if "quantization" in top.value else {},
        )

    @classmethod
    def read(cls, folder: str | Path) -> ExportInfo:
        """Read and validate FOLDER/export.json; MaskrtError naming the folder, file or field."""
        folder = Path(folder)
        if not folder.is_dir():
            raise MaskrtError(f"{folder}: export folder not found (make one with `maskrt export`)")
        path = folder / EXPORT_FILE
        return cls.from_json(read_json(path, "an export folder"), str(path))

    def graph_path(self, folder: str | Path, flavor: str) -> Path:
        """The file of graph `flavor` inside `folder`; MaskrtError when the export has no such graph."""
        if flavor not in self.graphs:
            raise MaskrtError(f"{Path(folder) / EXPORT_FILE}: no '{flavor}' graph (have {', '.join(self.graphs)})")
        return Path(folder) / self.graphs[flavor].file

    def verified_graph(self, folder: str | Path, flavor: str) -> Path:
        """`graph_path`, once the file exists and its sha256 is export.json's; MaskrtError saying what to redo."""
        path = self.graph_path(folder, flavor)
        if not path.is_file():
            raise MaskrtError(f"{path}: missing from the export folder")
        if sha256(path) != self.graphs[flavor].sha256:
            raise MaskrtError(f"{path}: its sha256 differs from the one in export.json (the file was changed after "
                              "the export); export the checkpoint again")
        return path


@dataclass(frozen=True)
class Profile:
    """One optimization profile of an engine input: min / opt / max shapes."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class TensorSpec:
    """One engine input or output: name, shape (-1 where dynamic) and TensorRT data type (e.g. "FLOAT")."""

    name: str
    shape: tuple[int, ...]
    dtype: str


def _check_profiles(profiles: dict[str, Profile], export: ExportInfo, where: str) -> None:
    """Every profile inside the limits `maskrt build` enforces: batch 1..MAX_EXPORT_BATCH (the export's own batch when
    static), the image input's height x width inside the export's ranges."""
    images = export.input.names[0]
    if images not in profiles:
        raise MaskrtError(f"{where}: profiles has no entry for the input '{images}'")
    for name, profile in profiles.items():
        for label, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
            if not shape or not 1 <= shape[0] <= MAX_EXPORT_BATCH or (
                    not export.input.dynamic_batch and shape[0] != export.input.batch):
                raise MaskrtError(f"{where}: profiles.{name}.{label} batch must be in [1, {MAX_EXPORT_BATCH}] and fit "
                                  f"the export, got {list(shape)}")
            if name == images and (len(shape) != 4 or not export.input.accepts(shape[2], shape[3])):
                raise MaskrtError(f"{where}: profiles.{name}.{label} {list(shape)} lies outside the export's input "
                                  f"(height {list(export.input.height_range or ())} x width "
                                  f"{list(export.input.width_range or ())}, multiples of 32)")


@dataclass(frozen=True)
class EngineInfo:
    """ENGINE.json, written beside a serialized TensorRT engine (docs/architecture.md section 3).

    It carries the export.json of the export the engine was built from, so an engine runs without its export
    folder, and the sha256 of the engine, so a corrupt or replaced engine file is refused before it is loaded."""

    engine: str
    engine_sha256: str
    builder: str  # "tensorrt" | "tensorrt-rtx"
    builder_version: str
    precision: str  # "fp32" | "fp16" | "int8"
    profiles: dict[str, Profile]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    onnx_sha256: str
    plugin_library_sha256: str
    compute_capabilities: tuple[str, ...]
    build_seconds: float
    export: ExportInfo
    versions: dict[str, str] = field(default_factory=dict)
    strongly_typed: bool = True  # the network's tensor types decide every layer's precision (TensorRT 11's only mode)
    tf32: bool = False  # fp32 convolutions and matrix products allowed in TF32 (`maskrt build --tf32`)
    int8: dict[str, Any] | None = None  # an INT8 engine: its graph's quantization (calibration, nodes kept in fp32)
    network: dict[str, int] = field(default_factory=dict)  # layers by type (export/engine.py network_layers)

    BUILDERS = tuple(BUILDERS)
    PRECISIONS = ("fp32", "fp16", "int8")
    #: The export graph each precision builds.
    GRAPH_OF = {"fp32": "trt", "fp16": "trt_fp16", "int8": "trt_int8"}

    @staticmethod
    def path_for(engine: str | Path) -> Path:
        """ENGINE.json beside ENGINE (model.fp16.engine -> model.fp16.engine.json)."""
        engine = Path(engine)
        return engine.with_name(engine.name + ".json")

    def to_json(self) -> dict[str, Any]:
        tensors = lambda ts: [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in ts]  # noqa: E731
        return {
            "format_version": ENGINE_FORMAT_VERSION, "engine": self.engine, "engine_sha256": self.engine_sha256,
            "builder": self.builder, "builder_version": self.builder_version, "precision": self.precision,
            "profiles": {k: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)}
                         for k, p in self.profiles.items()},
            "inputs": tensors(self.inputs), "outputs": tensors(self.outputs),
            "onnx_sha256": self.onnx_sha256, "plugin_library_sha256": self.plugin_library_sha256,
            "compute_capabilities": list(self.compute_capabilities), "build_seconds": self.build_seconds,
            "export": self.export.to_json(), "versions": self.versions, "strongly_typed": self.strongly_typed,
            "tf32": self.tf32, "int8": self.int8, "network": self.network,
        }

    def write(self, engine: str | Path) -> Path:
        path = self.path_for(engine)
        write_json(path, self.to_json())
        return path

    @classmethod
    def from_json(cls, document: Any, where: str = "ENGINE.json") -> EngineInfo:
        top = _Fields(document, where)
        version = top.int("format_version")
        if version != ENGINE_FORMAT_VERSION:
            raise MaskrtError(f"{where}: engine format_version {version} is not supported; build the engine again")
        builder, precision = top.str("builder"), top.str("precision")
        if builder not in cls.BUILDERS:
            raise MaskrtError(f"{where}: builder must be one of {', '.join(cls.BUILDERS)}, got {builder!r}")
        if precision not in cls.PRECISIONS:
            raise MaskrtError(f"{where}: precision must be one of {', '.join(cls.PRECISIONS)}, got {precision!r}")
        profiles = {}
        profile_fields = top.obj("profiles")
        dims = lambda p, k: tuple(p.list(k, lambda v: isinstance(v, int) and v >= 0, "a list of sizes"))  # noqa: E731
        for name in profile_fields.value:
            p = profile_fields.obj(name)
            profile = Profile(dims(p, "min"), dims(p, "opt"), dims(p, "max"))
            if not (len(profile.min) == len(profile.opt) == len(profile.max)) or any(
                not lo <= mid <= hi for lo, mid, hi in zip(profile.min, profile.opt, profile.max, strict=True)
            ):
                raise MaskrtError(f"{p.where} must have min <= opt <= max, all of one rank")
            profiles[name] = profile
        ok_tensor = lambda t: (isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(  # noqa: E731
            t.get("dtype"), str) and isinstance(t.get("shape"), list) and all(
                isinstance(d, int) and not isinstance(d, bool) and -1 <= d <= MAX_DIM for d in t["shape"]))
        tensors = lambda key: tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in top.list(  # noqa: E731
            key, ok_tensor, 'a list of {"name", "shape", "dtype"}', 1))
        seconds = top._get("build_seconds", lambda v: _is_number(v) and v >= 0, "a number >= 0")
        export = ExportInfo.from_json(top.obj("export").value, f"{where}: export")
        _check_profiles(profiles, export, where)
        if (precision == "int8") != (document.get("int8") is not None):
            raise MaskrtError(f"{where}: an int8 engine carries its graph's quantization record (int8), no other does")
        if top.bool("tf32") and precision != "fp32":
            raise MaskrtError(f"{where}: tf32 is an fp32 engine's option, not {precision}'s")
        return cls(
            engine=_safe_file_name(top, "engine"),
            engine_sha256=top.str("engine_sha256"),
            builder=builder,
            builder_version=top.str("builder_version"),
            precision=precision,
            profiles=profiles,
            inputs=tensors("inputs"),
            outputs=tensors("outputs"),
            onnx_sha256=top.str("onnx_sha256"),
            plugin_library_sha256=top.str("plugin_library_sha256"),
            compute_capabilities=tuple(top.list("compute_capabilities", lambda v: isinstance(v, str) and bool(
                re.fullmatch(r"\d{1,2}\.\d", v)), "a list of strings such as '8.6'")),
            build_seconds=float(seconds),
            export=export,
            versions={k: str(v) for k, v in top.raw("versions").items()},
            strongly_typed=top.bool("strongly_typed"),
            tf32=top.bool("tf32"),
            int8=None if document.get("int8") is None else top.raw("int8"),
            network={k: int(v) for k, v in top.raw("network").items()},
        )

    @classmethod
    def read(cls, engine: str | Path) -> EngineInfo:
        """Read and validate ENGINE.json beside `engine`; MaskrtError naming the file or field."""
        path = cls.path_for(engine)
        return cls.from_json(read_json(path, "an engine's description"), str(path))
