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
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from maskrt.core.artifacts import GRAPH_FILES, GRAPH_KINDS, OUTPUT_NAMES, EngineInfo, ExportInfo, TensorSpec
from maskrt.core.defaults import (
    DEFAULT_MODEL_NAME,
    DEFAULT_QUEUE_DELAY_US,
    DEFAULT_REQUEST_MAX_PIXELS,
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_SERVER_MAX_BATCH,
)
from maskrt.core.errors import MaskrtError
from maskrt.core.files import sha256
from maskrt.core.outputs import check_apart, check_output_dir, staged_dir
from maskrt.serving.protocol import INPUT, OUTPUT
from maskrt.serving.steps import ORIGINAL_SIZES

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

    def pbtxt(self) -> str:
        reshape = f" reshape: {{ shape: [{', '.join(map(str, self.reshape))}] }}" if self.reshape is not None else ""
        return f'  {{ name: "{self.name}" data_type: {self.dtype} dims: [{", ".join(map(str, self.dims))}]{reshape} }}'


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


def _model_config(name: str, *, backend: str | None, platform: str | None, max_batch: int, inputs: list[Tensor],
                  outputs: list[Tensor], instances: int | None = None, kind: str = "KIND_CPU",
                  profile: bool = False, queue_delay_us: int | None = None, parameters: dict[str, str] | None = None,
                  default_model: str | None = None) -> str:
    lines = [f'name: "{name}"']
    if platform:
        lines.append(f'platform: "{platform}"')
    if backend:
        lines.append(f'backend: "{backend}"')
    if default_model:
        lines.append(f'default_model_filename: "{default_model}"')
    lines.append(f"max_batch_size: {max_batch}")
    lines.append("input [\n" + ",\n".join(t.pbtxt() for t in inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(t.pbtxt() for t in outputs) + "\n]")
    if instances is not None:
        profiles = ' profile: ["0"]' if profile else ""
        lines.append(f"instance_group [ {{ count: {instances} kind: {kind}{profiles} }} ]")
    if queue_delay_us is not None and max_batch > 0:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}")
    for key, value in (parameters or {}).items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def _ensemble_config(name: str, max_batch: int, steps: list[tuple[str, dict[str, str], dict[str, str]]],
                     batched: bool) -> str:
    io = _batch_tensors([Tensor(INPUT, "TYPE_STRING", (1, 1))], batched)
    out = _batch_tensors([Tensor(OUTPUT, "TYPE_STRING", (1, 1))], batched)
    lines = [f'name: "{name}"', 'platform: "ensemble"', f"max_batch_size: {max_batch}",
             "input [\n" + ",\n".join(t.pbtxt() for t in io) + "\n]",
             "output [\n" + ",\n".join(t.pbtxt() for t in out) + "\n]", "ensemble_scheduling {", "  step ["]
    for i, (model, inputs, outputs) in enumerate(steps):
        maps = [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
        maps += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
        lines.append(f'    {{\n      model_name: "{model}"\n      model_version: -1\n' + "\n".join(maps) + "\n    }"
                     + ("," if i < len(steps) - 1 else ""))
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def _model_py(template: str) -> bytes:
    return resources.files("maskrt.serving.triton_models").joinpath(f"{template}.py").read_bytes()


def write_repository(model: str | Path, out: str | Path, options: RepositoryOptions = RepositoryOptions(), *,
                     force: bool = False) -> Repository:
    """Write the repository of `model` (an engine file with its ENGINE.json, or an export folder) to `out`."""
    model, out = Path(model), Path(out)
    o = options
    if not model.exists():
        raise MaskrtError(f"{model}: not found (an engine file from `maskrt build` or an export folder)")
    if o.max_batch < 1 or o.instances < 1:
        raise MaskrtError(f"max_batch and instances must be >= 1, got {o.max_batch}, {o.instances}")
    engine_info: EngineInfo | None = None
    if model.is_file():
        engine_info = EngineInfo.read(model)
        info = engine_info.export
        network = o.network or "tensorrt"
        if network != "tensorrt":
            raise MaskrtError(f"{model}: an engine runs on Triton's tensorrt backend, not {network}")
        if sha256(model) != engine_info.engine_sha256:
            raise MaskrtError(f"{model}: its sha256 differs from ENGINE.json's (changed after the build)")
        inputs = _engine_tensors(engine_info.inputs, str(EngineInfo.path_for(model)))
        outputs = _engine_tensors(engine_info.outputs, str(EngineInfo.path_for(model)))
        where = str(EngineInfo.path_for(model))
    else:
        info = ExportInfo.read(model)
        network = o.network or "onnxruntime"
        if network == "tensorrt":
            raise MaskrtError(f"{model}: the tensorrt network needs an engine: `maskrt build --model {model}`, then "
                              "pass the engine file")
        if network not in NETWORK_BACKENDS:
            raise MaskrtError(f"unknown network backend '{network}' (choose from {', '.join(NETWORK_BACKENDS)})")
        if o.graph not in info.graphs:
            raise MaskrtError(f"{model}: has no {o.graph} graph ({GRAPH_FILES.get(o.graph, o.graph)}); it holds "
                              f"{', '.join(info.graphs)}")
        if network == "onnxruntime" and GRAPH_KINDS[o.graph][0] != "portable":
            raise MaskrtError(f"the {o.graph} graph holds maskrt's TensorRT plugin ops, which Triton's onnxruntime "
                              "backend cannot run: use --graph portable (or portable_int8), or --network python")
        graph_path = info.verified_graph(model, o.graph)
        inputs, outputs = _onnx_tensors(graph_path)
        where = str(graph_path)
    _check_io(inputs, outputs, info, where)
    inp = info.input
    batched = inp.dynamic_batch
    if not batched and inp.batch != 1:
        raise MaskrtError(f"{model}: exported with a static batch of {inp.batch}; Triton batches along a dynamic "
                          "first dimension: export with --dynamic-batch (or a static batch of 1)")
    max_batch = o.max_batch if batched else 0
    if batched and engine_info is not None:
        engine_max = engine_info.profiles[inp.names[0]].max[0]
        if o.max_batch > engine_max:
            raise MaskrtError(f"--max-batch {o.max_batch} exceeds the engine's batch profile (max {engine_max}): "
                              f"build with --batch 1:1:{o.max_batch} or lower --max-batch")
    check_apart([out], [("model", model)])
    check_output_dir(out, force=force)
    name = o.name
    names = {"pre": f"{name}_preprocess", "net": f"{name}_network", "post": f"{name}_postprocess"}
    images, sizes = inp.names
    h = w = -1
    if not inp.dynamic_size:
        h, w = inp.height, inp.width
    # the pre-processing hands the network its inputs in the network's own types (an engine may take INT32 sizes)
    pre_out = [Tensor(images, inputs[0].dtype, (1, 3, h, w)), Tensor(sizes, inputs[1].dtype, (1, 2)),
               Tensor(ORIGINAL_SIZES, "TYPE_INT64", (1, 2))]
    net_in = _batch_tensors(inputs, batched)
    net_out = _batch_tensors(outputs, batched)
    post_in = net_out + _batch_tensors(pre_out[1:], batched)
    with staged_dir(out) as stage:
        # pre-processing
        pre = stage / names["pre"]
        (pre / "1").mkdir(parents=True)
        (pre / "1" / "model.py").write_bytes(_model_py("preprocess"))
        info.write(pre / "1")
        (pre / "config.pbtxt").write_text(_model_config(
            names["pre"], backend="python", platform=None, max_batch=max_batch,
            inputs=_batch_tensors([Tensor(INPUT, "TYPE_STRING", (1, 1))], batched),
            outputs=_batch_tensors(pre_out, batched), instances=o.instances, queue_delay_us=o.queue_delay_us,
            parameters={"max_pixels": str(o.max_pixels)}))
        # network
        net = stage / names["net"]
        (net / "1").mkdir(parents=True)
        if network == "tensorrt":
            from maskrt.plugins import library_path, triton_library_path

            shutil.copyfile(model, net / "1" / "model.plan")
            shutil.copyfile(EngineInfo.path_for(model), net / "1" / "ENGINE.json")
            (net / "plugins").mkdir()
            try:
                library = library_path()
                if sha256(library) != engine_info.plugin_library_sha256:  # type: ignore[union-attr]
                    raise MaskrtError(f"{library}: not the plugin library {model} was built with (sha256 differs "
                                      "from ENGINE.json's); rebuild the engine with this install")
                shutil.copyfile(library, net / "plugins" / PLUGIN_FILE)
                shutil.copyfile(triton_library_path(), net / "plugins" / TRITON_FILE)
            except FileNotFoundError as exc:
                raise MaskrtError(f"the engine needs maskrt's plugin library, which this install lacks "
                                  f"({exc})") from None
            config = _model_config(names["net"], backend="tensorrt", platform="tensorrt_plan", max_batch=max_batch,
                                   inputs=net_in, outputs=net_out, instances=o.instances, kind="KIND_GPU",
                                   profile=True, queue_delay_us=o.queue_delay_us)
        elif network == "onnxruntime":
            shutil.copyfile(graph_path, net / "1" / "model.onnx")
            config = _model_config(names["net"], backend="onnxruntime", platform="onnxruntime_onnx",
                                   max_batch=max_batch, inputs=net_in, outputs=net_out, instances=o.instances,
                                   queue_delay_us=o.queue_delay_us)
        else:  # python: ONNX Runtime in the python backend, the export's folder layout kept
            shutil.copyfile(graph_path, net / "1" / graph_path.name)
            info.write(net / "1")
            (net / "1" / "model.py").write_bytes(_model_py("network"))
            config = _model_config(names["net"], backend="python", platform=None, max_batch=max_batch,
                                   inputs=net_in, outputs=net_out, instances=o.instances,
                                   queue_delay_us=o.queue_delay_us,
                                   parameters={"graph": o.graph, "threads": str(o.threads)})
        (net / "config.pbtxt").write_text(config)
        # post-processing
        post = stage / names["post"]
        (post / "1").mkdir(parents=True)
        (post / "1" / "model.py").write_bytes(_model_py("postprocess"))
        info.write(post / "1")
        (post / "config.pbtxt").write_text(_model_config(
            names["post"], backend="python", platform=None, max_batch=max_batch, inputs=post_in,
            outputs=_batch_tensors([Tensor(OUTPUT, "TYPE_STRING", (1, 1))], batched), instances=o.instances,
            queue_delay_us=o.queue_delay_us, parameters={"score_threshold": repr(float(o.score_threshold))}))
        # the ensemble
        ens = stage / name
        (ens / "1").mkdir(parents=True)
        steps = [
            (names["pre"], {INPUT: INPUT}, {t.name: f"_{t.name}" for t in pre_out}),
            (names["net"], {t.name: f"_{t.name}" for t in inputs}, {t: f"_{t}" for t in OUTPUT_NAMES}),
            (names["post"], {t.name: f"_{t.name}" for t in post_in}, {OUTPUT: OUTPUT}),
        ]
        (ens / "config.pbtxt").write_text(_ensemble_config(name, max_batch, steps, batched))
        command = _command(out, network, names["net"])
        (stage / "README.md").write_text(_readme(model, out, o, network, names, batched, max_batch, command, info,
                                                 engine_info))
    warnings = ()
    if engine_info is not None and engine_info.builder != "tensorrt":
        warnings = (f"{model} was built by {engine_info.builder}: Triton's tensorrt backend runs TensorRT engines "
                    "only; build one with `maskrt build --builder tensorrt` on the serving GPU and write the "
                    "repository again",)
    return Repository(out, (name, *names.values()), network, batched, max_batch, command, warnings)


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
           "python": f"ONNX Runtime inside Triton's python backend on `1/{GRAPH_FILES[o.graph]}` (for a Triton "
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
