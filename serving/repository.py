"""`maskrt triton`: a Triton Inference Server model repository for an engine or an export folder.

    REPO/
      README.md                      the tritonserver command line, the models, the request format
      NAME/config.pbtxt, 1/          ensemble: image bytes in, detections (COCO results JSON) out
      NAME_preprocess/               python backend: decode, resize, normalise, pad (maskrt.serving.steps.PreStep)
      NAME_network/                  tensorrt_plan (model.plan; plugins/ holds the plugin library), onnxruntime_onnx
                                     (model.onnx), or python (ONNX Runtime inside the python backend)
      NAME_postprocess/              python backend: boxes to the original image, masks pasted, COCO results

A client sends `image` (BYTES [b, 1], encoded image files) to NAME and gets `detections` (BYTES [b, 1]), exactly
what `maskrt serve` answers (serving/protocol.py). With a dynamic-batch export every model batches (max_batch_size
= --max-batch, dynamic batcher on); an export with a static batch of 1 gives unbatched models ([1, ...] shapes).

Each config.pbtxt is a Triton `ModelConfig` protobuf message (tritonclient's model_config_pb2, Triton's own
definition) written with protobuf's text format, so a config holds only fields Triton knows. tritonclient comes with
the `client` extra (`pip install 'maskrt[client]'`), not with maskrt itself: it is imported when a repository is
written.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from maskrt.core.artifacts import GRAPHS, OUTPUT_NAMES, EngineInfo, ExportInfo, TensorSpec, graph_kind
from maskrt.core.defaults import (
    DEFAULT_MODEL_NAME,
    DEFAULT_QUEUE_DELAY_US,
    DEFAULT_REQUEST_MAX_PIXELS,
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_SERVER_MAX_BATCH,
)
from maskrt.core.errors import MaskrtError, check_choice
from maskrt.core.files import sha256
from maskrt.core.outputs import check_apart, check_output_dir, staged_dir
from maskrt.serving.protocol import INPUT, OUTPUT
from maskrt.serving.steps import ORIGINAL_SIZES

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
    from tritonclient.grpc.model_config_pb2 import ModelConfig

NETWORK_BACKENDS = ("onnxruntime", "tensorrt", "python")
#: TensorRT's data type names (ENGINE.json) and ONNX's element types -> Triton's.
TRT_TYPES = {"FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16", "BF16": "TYPE_BF16", "INT8": "TYPE_INT8",
             "UINT8": "TYPE_UINT8", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64", "BOOL": "TYPE_BOOL"}
ONNX_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL",
              10: "TYPE_FP16", 16: "TYPE_BF16"}
#: The plugin library's file name in NAME_network/plugins/.
PLUGIN_FILE = "libmaskrt_plugins.so"
#: What Triton loads (`--backend-config=tensorrt,plugins=`): it registers PLUGIN_FILE's creators from its folder.
TRITON_FILE = "libmaskrt_triton.so"


@dataclass(frozen=True)
class Tensor:
    """One model input/output as its config declares it (dims without the batch dim when the model batches)."""

    name: str
    dtype: str  # Triton's TYPE_*
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class RepositoryOptions:
    """What `maskrt triton` writes (see the module docstring)."""

    name: str = DEFAULT_MODEL_NAME
    network: str | None = None  # default: tensorrt for an engine, onnxruntime for an export folder
    graph: str = "portable"
    max_batch: int = DEFAULT_SERVER_MAX_BATCH
    instances: int = 1
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    max_pixels: int = DEFAULT_REQUEST_MAX_PIXELS
    threads: int = 0  # python network: ONNX Runtime threads (0 = one per core)


@dataclass(frozen=True)
class Repository:
    """What was written: the folder, its models and how the network runs."""

    path: Path
    models: tuple[str, ...]
    network: str
    batched: bool
    max_batch_size: int
    command: str
    warnings: tuple[str, ...] = ()


def _batch_tensors(specs: list[Tensor], batched: bool) -> list[Tensor]:
    """Full shapes -> config dims: the leading batch dim dropped when the model batches; a tensor that had only
    the batch dim becomes dims [1] reshaped to [] (Triton needs at least one dim)."""
    if not batched:
        return specs
    out = []
    for t in specs:
        dims = t.dims[1:]
        out.append(Tensor(t.name, t.dtype, dims) if dims else Tensor(t.name, t.dtype, (1,), reshape=()))
    return out


def _engine_tensors(specs: tuple[TensorSpec, ...], where: str) -> list[Tensor]:
    out = []
    for s in specs:
        if s.dtype not in TRT_TYPES:
            raise MaskrtError(f"{where}: tensor {s.name} has type {s.dtype}, which has no Triton type here")
        out.append(Tensor(s.name, TRT_TYPES[s.dtype], tuple(int(d) for d in s.shape)))
    return out


def _onnx_tensors(path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """A graph's inputs and outputs with full shapes (-1 where symbolic)."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
        raise MaskrtError(f"{path}: cannot read the ONNX graph ({str(exc).splitlines()[0]})") from None
    initializers = {i.name for i in graph.initializer}

    def convert(values: list) -> list[Tensor]:
        out = []
        for v in values:
            t = v.type.tensor_type
            if t.elem_type not in ONNX_TYPES:
                raise MaskrtError(f"{path}: tensor {v.name} has ONNX type {t.elem_type}, which has no Triton type")
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            out.append(Tensor(v.name, ONNX_TYPES[t.elem_type], dims))
        return out

    return convert([i for i in graph.input if i.name not in initializers]), convert(list(graph.output))


def _check_io(inputs: list[Tensor], outputs: list[Tensor], info: ExportInfo, where: str) -> None:
    names_in, names_out = tuple(t.name for t in inputs), tuple(t.name for t in outputs)
    if names_in != tuple(info.input.names) or names_out != tuple(info.outputs):
        raise MaskrtError(f"{where}: its inputs {list(names_in)} / outputs {list(names_out)} are not the export's "
                          f"{list(info.input.names)} / {list(info.outputs)}")


# --- configs: Triton's ModelConfig messages ------------------------------------------------------------------------


def _model_config_pb2() -> ModuleType:
    """tritonclient's model_config_pb2 (Triton's ModelConfig protobuf); a one-line MaskrtError without it."""
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError):  # tritonclient.grpc raises RuntimeError when installed without its grpc extra
        raise MaskrtError("writing a Triton model repository needs tritonclient (Triton's config protobufs): "
                          "pip install 'maskrt[client]'") from None
    return model_config_pb2


def _add_tensors(field: RepeatedCompositeFieldContainer, tensors: list[Tensor]) -> None:
    """Append `tensors` to a ModelConfig's repeated `input` or `output` field."""
    pb = _model_config_pb2()
    for t in tensors:
        tensor = field.add(name=t.name, data_type=pb.DataType.Value(t.dtype), dims=t.dims)
        if t.reshape is not None:
            tensor.reshape.SetInParent()  # set even when empty: shape [] (a scalar per batch item)
            tensor.reshape.shape.extend(t.reshape)


def _model_config(name: str, *, backend: str, platform: str = "", max_batch: int, inputs: list[Tensor],
                  outputs: list[Tensor], instances: int, kind: str = "KIND_CPU", profile: bool = False,
                  queue_delay_us: int, parameters: dict[str, str] | None = None) -> ModelConfig:
    """One model's config: `instances` instances of `kind` (pinned to the engine's optimization profile 0 with
    `profile`), a dynamic batcher when it batches (max_batch > 0), and `parameters` as string parameters."""
    pb = _model_config_pb2()
    config = pb.ModelConfig(name=name, platform=platform, backend=backend, max_batch_size=max_batch)
    _add_tensors(config.input, inputs)
    _add_tensors(config.output, outputs)
    config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.Kind.Value(kind),
                              profile=["0"] if profile else [])
    if max_batch > 0:
        config.dynamic_batching.SetInParent()
        config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    return config


def _ensemble_config(name: str, max_batch: int, steps: list[tuple[str, dict[str, str], dict[str, str]]],
                     batched: bool) -> ModelConfig:
    """The ensemble's config: `image` in, `detections` out, and `steps` as (model, input_map, output_map)."""
    pb = _model_config_pb2()
    config = pb.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch)
    _add_tensors(config.input, _batch_tensors([Tensor(INPUT, "TYPE_STRING", (1, 1))], batched))
    _add_tensors(config.output, _batch_tensors([Tensor(OUTPUT, "TYPE_STRING", (1, 1))], batched))
    for model, inputs, outputs in steps:
        config.ensemble_scheduling.step.add(model_name=model, model_version=-1, input_map=inputs,
                                            output_map=outputs)
    return config


def _write_config(folder: Path, config: ModelConfig) -> None:
    """FOLDER/config.pbtxt: `config` in protobuf's text format."""
    from google.protobuf import text_format

    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))


def _model_py(template: str) -> bytes:
    return resources.files("maskrt.serving.triton_models").joinpath(f"{template}.py").read_bytes()


# --- the request: validated before anything is written -------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """A validated request: the model, its records, the network that runs it and the options."""

    model: Path
    options: RepositoryOptions
    info: ExportInfo
    engine: EngineInfo | None  # the engine's ENGINE.json (tensorrt network); None for an export folder
    network: str  # one of NETWORK_BACKENDS
    graph: Path | None  # the export's verified graph (onnxruntime and python networks)
    inputs: list[Tensor]  # the network's, full shapes
    outputs: list[Tensor]

    @property
    def batched(self) -> bool:
        return self.info.input.dynamic_batch

    @property
    def max_batch(self) -> int:
        """Every model's max_batch_size: --max-batch when the export batches, 0 (no batching) otherwise."""
        return self.options.max_batch if self.batched else 0

    @property
    def names(self) -> dict[str, str]:
        name = self.options.name
        return {"pre": f"{name}_preprocess", "net": f"{name}_network", "post": f"{name}_postprocess"}

    @property
    def pre_outputs(self) -> list[Tensor]:
        """The pre-processing's outputs, full shapes: the network's inputs in the network's own types (an engine
        may take INT32 sizes), then the original image sizes."""
        inp = self.info.input
        h, w = (-1, -1) if inp.dynamic_size else (inp.height, inp.width)
        images, sizes = inp.names
        return [Tensor(images, self.inputs[0].dtype, (1, 3, h, w)), Tensor(sizes, self.inputs[1].dtype, (1, 2)),
                Tensor(ORIGINAL_SIZES, "TYPE_INT64", (1, 2))]

    @property
    def post_inputs(self) -> list[Tensor]:
        """The post-processing's inputs, config dims: the network's outputs, then both sizes from the pre-processing."""
        return _batch_tensors(self.outputs, self.batched) + _batch_tensors(self.pre_outputs[1:], self.batched)


def _plan(model: Path, o: RepositoryOptions) -> _Plan:
    """Validate the request and choose the network backend: MaskrtError (nothing written) when it cannot be served."""
    if not model.exists():
        raise MaskrtError(f"{model}: not found (an engine file from `maskrt build` or an export folder)")
    if o.max_batch < 1 or o.instances < 1:
        raise MaskrtError(f"max_batch and instances must be >= 1, got {o.max_batch}, {o.instances}")
    plan = _engine_plan(model, o) if model.is_file() else _export_plan(model, o)
    inp = plan.info.input
    if not inp.dynamic_batch and inp.batch != 1:
        raise MaskrtError(f"{model}: exported with a static batch of {inp.batch}; Triton batches along a dynamic "
                          "first dimension: export with --dynamic-batch (or a static batch of 1)")
    if plan.batched and plan.engine is not None:
        engine_max = plan.engine.profiles[inp.names[0]].max[0]
        if o.max_batch > engine_max:
            raise MaskrtError(f"--max-batch {o.max_batch} exceeds the engine's batch profile (max {engine_max}): "
                              f"build with --batch 1:1:{o.max_batch} or lower --max-batch")
    return plan


def _engine_plan(model: Path, o: RepositoryOptions) -> _Plan:
    """An engine file: the tensorrt network, its tensors from ENGINE.json (which must describe this very file)."""
    engine = EngineInfo.read(model)
    network = o.network or "tensorrt"
    if network != "tensorrt":
        raise MaskrtError(f"{model}: an engine runs on Triton's tensorrt backend, not {network}")
    if sha256(model) != engine.engine_sha256:
        raise MaskrtError(f"{model}: its sha256 differs from ENGINE.json's (changed after the build)")
    where = str(EngineInfo.path_for(model))
    inputs, outputs = _engine_tensors(engine.inputs, where), _engine_tensors(engine.outputs, where)
    _check_io(inputs, outputs, engine.export, where)
    return _Plan(model, o, engine.export, engine, network, None, inputs, outputs)


def _export_plan(model: Path, o: RepositoryOptions) -> _Plan:
    """An export folder: the onnxruntime or python network on its --graph (verified against export.json)."""
    info = ExportInfo.read(model)
    network = o.network or "onnxruntime"
    if network == "tensorrt":
        raise MaskrtError(f"{model}: the tensorrt network needs an engine: `maskrt build --model {model}`, then "
                          "pass the engine file")
    check_choice("network backend", network, NETWORK_BACKENDS)
    kind = graph_kind(o.graph)
    if o.graph not in info.graphs:
        raise MaskrtError(f"{model}: has no {o.graph} graph ({kind.file}); it holds {', '.join(info.graphs)}")
    if network == "onnxruntime" and not kind.portable:
        raise MaskrtError(f"the {o.graph} graph holds maskrt's TensorRT plugin ops, which Triton's onnxruntime "
                          "backend cannot run: use --graph portable (or portable_int8), or --network python")
    graph = info.verified_graph(model, o.graph)
    inputs, outputs = _onnx_tensors(graph)
    _check_io(inputs, outputs, info, str(graph))
    return _Plan(model, o, info, None, network, graph, inputs, outputs)


# --- the models: one folder each ------------------------------------------------------------------------------------


def _python_model(folder: Path, template: str, info: ExportInfo) -> None:
    """FOLDER/1/ of a python-backend model: maskrt's model.py `template` and the export's record it reads."""
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.py").write_bytes(_model_py(template))
    info.write(folder / "1")


def _write_preprocess(stage: Path, plan: _Plan) -> None:
    """NAME_preprocess (python backend): encoded images in, the network's inputs and the original sizes out."""
    o, name = plan.options, plan.names["pre"]
    _python_model(stage / name, "preprocess", plan.info)
    _write_config(stage / name, _model_config(
        name, backend="python", max_batch=plan.max_batch,
        inputs=_batch_tensors([Tensor(INPUT, "TYPE_STRING", (1, 1))], plan.batched),
        outputs=_batch_tensors(plan.pre_outputs, plan.batched), instances=o.instances,
        queue_delay_us=o.queue_delay_us, parameters={"max_pixels": str(o.max_pixels)}))


def _write_network(stage: Path, plan: _Plan) -> None:
    """NAME_network: the engine on the tensorrt backend (its plugin libraries beside it), the graph on the
    onnxruntime backend, or the graph run by ONNX Runtime in the python backend (the export's layout kept)."""
    o, name = plan.options, plan.names["net"]
    folder = stage / name
    config = functools.partial(_model_config, name, max_batch=plan.max_batch,
                               inputs=_batch_tensors(plan.inputs, plan.batched),
                               outputs=_batch_tensors(plan.outputs, plan.batched), instances=o.instances,
                               queue_delay_us=o.queue_delay_us)
    if plan.network == "tensorrt":
        (folder / "1").mkdir(parents=True)
        _copy_engine(folder, plan.model, plan.engine)  # type: ignore[arg-type]
        _write_config(folder, config(backend="tensorrt", platform="tensorrt_plan", kind="KIND_GPU", profile=True))
    elif plan.network == "onnxruntime":
        (folder / "1").mkdir(parents=True)
        shutil.copyfile(plan.graph, folder / "1" / "model.onnx")  # type: ignore[arg-type]
        _write_config(folder, config(backend="onnxruntime", platform="onnxruntime_onnx"))
    else:
        _python_model(folder, "network", plan.info)
        shutil.copyfile(plan.graph, folder / "1" / plan.graph.name)  # type: ignore[arg-type, union-attr]
        _write_config(folder, config(backend="python", parameters={"graph": o.graph, "threads": str(o.threads)}))


def _copy_engine(folder: Path, model: Path, engine: EngineInfo) -> None:
    """FOLDER/1/model.plan with its ENGINE.json, and FOLDER/plugins/: the plugin library the engine was built with
    and the library Triton loads to register it."""
    from maskrt.plugins import library_path, triton_library_path

    shutil.copyfile(model, folder / "1" / "model.plan")
    shutil.copyfile(EngineInfo.path_for(model), folder / "1" / "ENGINE.json")
    (folder / "plugins").mkdir()
    try:
        library = library_path()
        if sha256(library) != engine.plugin_library_sha256:
            raise MaskrtError(f"{library}: not the plugin library {model} was built with (sha256 differs "
                              "from ENGINE.json's); rebuild the engine with this install")
        shutil.copyfile(library, folder / "plugins" / PLUGIN_FILE)
        shutil.copyfile(triton_library_path(), folder / "plugins" / TRITON_FILE)
    except FileNotFoundError as exc:
        raise MaskrtError(f"the engine needs maskrt's plugin library, which this install lacks ({exc})") from None


def _write_postprocess(stage: Path, plan: _Plan) -> None:
    """NAME_postprocess (python backend): the network's outputs and the sizes in, each image's detections out."""
    o, name = plan.options, plan.names["post"]
    _python_model(stage / name, "postprocess", plan.info)
    _write_config(stage / name, _model_config(
        name, backend="python", max_batch=plan.max_batch, inputs=plan.post_inputs,
        outputs=_batch_tensors([Tensor(OUTPUT, "TYPE_STRING", (1, 1))], plan.batched), instances=o.instances,
        queue_delay_us=o.queue_delay_us, parameters={"score_threshold": repr(float(o.score_threshold))}))


def _write_ensemble(stage: Path, plan: _Plan) -> None:
    """NAME (ensemble): `image` -> pre-processing -> network -> post-processing -> `detections`, the tensors in
    between named _TENSOR."""
    names, folder = plan.names, stage / plan.options.name
    (folder / "1").mkdir(parents=True)

    def wire(tensors: list[str] | tuple[str, ...]) -> dict[str, str]:
        return {t: f"_{t}" for t in tensors}

    steps = [
        (names["pre"], {INPUT: INPUT}, wire([t.name for t in plan.pre_outputs])),
        (names["net"], wire([t.name for t in plan.inputs]), wire(OUTPUT_NAMES)),
        (names["post"], wire([t.name for t in plan.post_inputs]), {OUTPUT: OUTPUT}),
    ]
    _write_config(folder, _ensemble_config(plan.options.name, plan.max_batch, steps, plan.batched))


def write_repository(model: str | Path, out: str | Path, options: RepositoryOptions = RepositoryOptions(), *,
                     force: bool = False) -> Repository:
    """Write the repository of `model` (an engine file with its ENGINE.json, or an export folder) to `out`: every
    check first, then the models into a staged folder that replaces `out` only once all of it is written."""
    _model_config_pb2()  # without tritonclient, say so before reading anything
    model, out = Path(model), Path(out)
    plan = _plan(model, options)
    check_apart([out], [("model", model)])
    check_output_dir(out, force=force)
    command = _command(out, plan.network, plan.names["net"])
    with staged_dir(out) as stage:
        _write_preprocess(stage, plan)
        _write_network(stage, plan)
        _write_postprocess(stage, plan)
        _write_ensemble(stage, plan)
        (stage / "README.md").write_text(_readme(model, out, options, plan.network, plan.names, plan.batched,
                                                 plan.max_batch, command, plan.info, plan.engine))
    warnings = ()
    if plan.engine is not None and plan.engine.builder != "tensorrt":
        warnings = (f"{model} was built by {plan.engine.builder}: Triton's tensorrt backend runs TensorRT engines "
                    "only; build one with `maskrt build --builder tensorrt` on the serving GPU and write the "
                    "repository again",)
    return Repository(out, (options.name, *plan.names.values()), plan.network, plan.batched, plan.max_batch,
                      command, warnings)


def _command(out: Path, network: str, net_name: str) -> str:
    repo = out.resolve()
    parts = ["tritonserver", f"--model-repository={repo}"]
    if network == "tensorrt":
        parts.append(f"--backend-config=tensorrt,plugins={repo / net_name / 'plugins' / TRITON_FILE}")
    return " ".join(parts)


def _readme(model: Path, out: Path, o: RepositoryOptions, network: str, names: dict[str, str], batched: bool,
            max_batch: int, command: str, info: ExportInfo, engine: EngineInfo | None) -> str:
    inp = info.input
    size = (f"dynamic {inp.height_range[0]}..{inp.height_range[1]} x {inp.width_range[0]}..{inp.width_range[1]}"  # type: ignore[index]
            if inp.dynamic_size else f"static canvas {inp.height}x{inp.width}")
    net = {"tensorrt": "Triton's tensorrt backend on `1/model.plan` (the engine; `1/ENGINE.json` records its build)",
           "onnxruntime": "Triton's onnxruntime backend on `1/model.onnx`",
           "python": f"ONNX Runtime inside Triton's python backend on `1/{GRAPHS[o.graph].file}` (for a Triton "
                     "without the onnxruntime backend, e.g. the one PyTriton ships: `maskrt serve --repository`)"}
    batching = (f"Every model batches: max_batch_size {max_batch}, dynamic batching (queue delay {o.queue_delay_us} "
                "us). The network batches only requests whose padded images have one shape, so a response never "
                "depends on which other requests it was batched with." if batched else
                "The export has a static batch of 1: the models do not batch (max_batch_size 0, shapes [1, ...]); "
                "export with --dynamic-batch for dynamic batching.")
    plugin = ""
    if network == "tensorrt" and engine is not None:
        built = (f"compute capabilities {', '.join(engine.compute_capabilities)}, {engine.builder} "
                 f"{engine.builder_version}")
        rtx = ("\n**This engine was built by TensorRT-RTX**, whose engines only its own runtime executes; Triton's "
               "tensorrt backend\nruns TensorRT engines: build one with `maskrt build --builder tensorrt` on the "
               "serving GPU and write the\nrepository again.\n" if engine.builder != "tensorrt" else "")
        plugin = f"""
## The plugin library

The engine holds maskrt's TensorRT plugins (MultiLevelRoIAlign, BatchedNMS). `{names['net']}/plugins/{PLUGIN_FILE}`
is the library the engine was built with (sha256 in ENGINE.json: `{engine.plugin_library_sha256}`). Triton's tensorrt
backend only dlopen()s the libraries its `plugins` option names, and maskrt's library does not register itself (it is
found through `getCreators`, as `IPluginRegistry::loadLibrary` and `trtexec --dynamicPlugins` do), so the command above
loads `{TRITON_FILE}` beside it: loaded after TensorRT, it loads `{PLUGIN_FILE}` from its own folder and
registers its plugin creators with TensorRT's registry (it writes why to stderr when it cannot). Keep the two files
together; moving the repository changes the path in that flag. The engine runs only on the GPU kinds it was built
for ({built}).
{rtx}"""
    pre_does = f"decode (any format PIL reads, at most {o.max_pixels / 1e6:g} megapixels), resize, normalise, pad"
    post_does = (f"boxes to the original image, masks pasted at its size (> 0.5), scores >= {o.score_threshold:g}, "
                 "COCO results")
    return f"""# maskrt model repository: `{o.name}`

Written by `maskrt triton` from `{model}` ({size}, {info.max_detections} detection slots, {len(info.classes)}
classes).

## Start the server

```
{command}
```

The pre- and post-processing models run in Triton's python backend and import maskrt: the Python that runs them
needs maskrt installed (`pip install maskrt-*.whl`, which brings torch and onnxruntime), e.g. in the Triton
container, or through the python backend's `EXECUTION_ENV_PATH` with a packed environment.

## Models

| model | backend | does |
|---|---|---|
| `{o.name}` | ensemble | what clients call: `{INPUT}` in, `{OUTPUT}` out |
| `{names['pre']}` | python | {pre_does} |
| `{names['net']}` | {network} | {net[network]} |
| `{names['post']}` | python | {post_does} |

{batching} Instances per model: {o.instances}.

## Requests

`{INPUT}`: BYTES, shape [b, 1]: each element one encoded image file (PNG, JPEG, ...), b <= {max(max_batch, 1)}.
`{OUTPUT}`: BYTES, shape [b, 1]: each element the image's detections as JSON, a list of COCO results
`{{"category_id", "bbox": [x, y, w, h], "score", "segmentation": {{"size", "counts"}}}}` (RLE), the entries of
`maskrt predict`'s results.json. A bad image fails only its own request. A request holding several images pads
them together, as torchvision's `model(images)` pads one batch; one image per request answers each image on its own.

```
from maskrt.serving.client import Client          # or tritonclient directly
results = Client("http://127.0.0.1:8000", model="{o.name}").detect([open("a.jpg", "rb").read()])[0]
```

Measure it: `maskrt bench --server http://127.0.0.1:8000 --server-model {o.name} --images DIR`.
{plugin}"""
