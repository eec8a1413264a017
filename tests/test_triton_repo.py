"""`maskrt triton`: the model repository's configs, read with Triton's own protobuf definitions (tritonclient's
model_config_pb2) and checked against export.json, the ONNX graph and ENGINE.json; and the whole ensemble (python
network) served by a real Triton server (the one PyTriton ships), answering as `maskrt predict` does.

The fast tests write repositories of tiny stand-in exports (an ONNX graph with the export's inputs and outputs and
no nodes; an engine file of a few bytes with its ENGINE.json): what a config says depends only on those records."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx
import pytest
from conftest import random_checkpoint, require_tensorrt_rtx
from google.protobuf import text_format
from serve_util import free_ports, kill_tree, serve_python, start_server, stop_and_check, write_images
from tritonclient.grpc import model_config_pb2 as mc

from maskrt.core.artifacts import EngineInfo, ExportInfo, GraphFile, InputSpec, Profile, TensorSpec
from maskrt.core.errors import MaskrtError
from maskrt.core.files import sha256
from maskrt.serving.repository import RepositoryOptions, write_repository

CLI = [sys.executable, "-m", "maskrt.cli"]
#: The test's own table of what each type is called by ONNX / TensorRT and by Triton.
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64",
                  onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}
TRT_TO_TRITON = {"FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64"}


def cli(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=900)
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A slim model (a few detections per image) exported with a dynamic batch and with the default static batch 1."""
    root = tmp_path_factory.mktemp("triton")
    ckpt = random_checkpoint(root / "slim.pt", "slim", num_classes=3, min_size=96, max_size=160)
    out = {"ckpt": ckpt, "root": root}
    for name, extra in (("dynamic", ["--dynamic-batch"]), ("static", [])):
        cli("export", "--checkpoint", ckpt, "--out", root / name, "--max-detections", "20", *extra)
        out[name] = root / name
    return out


def read_configs(repo: Path) -> dict[str, mc.ModelConfig]:
    """Every MODEL/config.pbtxt of a repository, parsed by Triton's protobuf (a typo or an unknown field fails)."""
    configs = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), mc.ModelConfig())
        assert config.name == path.parent.name, f"{path}: name {config.name} is not its folder's"
        configs[config.name] = config
    return configs


def full_dims(t, batched: bool) -> list[int]:  # noqa: ANN001 - ModelInput / ModelOutput
    """The tensor's shape as the model sees it, batch dim (-1) included."""
    dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
    return [-1, *dims] if batched else dims


def check_ensemble(configs: dict[str, mc.ModelConfig], name: str) -> None:
    """Every step gets each of its model's inputs from the ensemble input or an earlier step, with the producer's
    type and shape; the ensemble's output is produced."""
    ens = configs[name]
    assert ens.platform == "ensemble"
    available = {t.name: (t.data_type, list(t.dims)) for t in ens.input}
    for step in ens.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert model.max_batch_size == ens.max_batch_size, step.model_name
        inputs = {t.name: (t.data_type, list(t.dims)) for t in model.input}
        assert set(step.input_map) == set(inputs), f"{step.model_name}: inputs {set(inputs)} vs {set(step.input_map)}"
        for key, tensor in step.input_map.items():
            assert tensor in available, f"{step.model_name}.{key} reads {tensor}, which nothing produced before"
            assert available[tensor] == inputs[key], f"{step.model_name}.{key}: {available[tensor]} vs {inputs[key]}"
        outputs = {t.name: (t.data_type, list(t.dims)) for t in model.output}
        for key, tensor in step.output_map.items():
            assert key in outputs, f"{step.model_name} has no output {key}"
            available[tensor] = outputs[key]
    for t in ens.output:
        assert available.get(t.name) == (t.data_type, list(t.dims)), f"ensemble output {t.name}"


def check_network(net: mc.ModelConfig, export: Path, graph_inputs: list, graph_outputs: list, batched: bool) -> None:
    """The network's config I/O = the export's names (export.json) with the graph's / engine's types and shapes."""
    info = json.loads((export / "export.json").read_text())
    assert [t.name for t in net.input] == info["input"]["names"]
    assert [t.name for t in net.output] == info["outputs"]
    for declared, (name, dtype, shape) in zip([*net.input, *net.output], [*graph_inputs, *graph_outputs],
                                              strict=True):
        assert declared.name == name
        assert mc.DataType.Name(declared.data_type) == dtype, name
        assert full_dims(declared, batched) == shape, f"{name}: {full_dims(declared, batched)} vs {shape}"


def onnx_io(path: Path) -> tuple[list, list]:
    graph = onnx.load(str(path), load_external_data=False).graph

    def one(v) -> tuple:  # noqa: ANN001
        t = v.type.tensor_type
        return v.name, ONNX_TO_TRITON[t.elem_type], [d.dim_value if d.HasField("dim_value") else -1
                                                     for d in t.shape.dim]

    return [one(v) for v in graph.input], [one(v) for v in graph.output]



def tiny_export(folder: Path, *, dynamic_batch: bool) -> Path:
    """An export folder whose model.onnx has the export's inputs and outputs (dynamic size) and no nodes."""
    from onnx import TensorProto, helper

    b = "batch" if dynamic_batch else 1
    value = helper.make_tensor_value_info
    graph = helper.make_graph([], "tiny", [value("images", TensorProto.FLOAT, [b, 3, "height", "width"]),
                                           value("image_sizes", TensorProto.INT64, [b, 2])], [
        value("num_detections", TensorProto.INT64, [b]), value("boxes", TensorProto.FLOAT, [b, 20, 4]),
        value("scores", TensorProto.FLOAT, [b, 20]), value("labels", TensorProto.INT64, [b, 20]),
        value("masks", TensorProto.FLOAT, [b, 20, 1, 28, 28])])
    folder.mkdir(parents=True)
    onnx.save(helper.make_model(graph), str(folder / "model.onnx"))
    ExportInfo(
        model_config={"name": "slim", "num_classes": 2}, classes=[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        input=InputSpec(height=128, width=128, dynamic_batch=dynamic_batch, dynamic_size=True,
                        height_range=(32, 128), width_range=(32, 128)),
        mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), min_size=96, max_size=128, limits={"max_detections": 20},
        roi_align={}, opset=17, graphs={"portable": GraphFile("model.onnx", sha256(folder / "model.onnx"))},
        checkpoint={}, versions={},
    ).write(folder)
    return folder


def tiny_engine(export: Path, plugin_library: Path) -> Path:
    """An engine file of a few bytes with its ENGINE.json (HALF images and INT32 sizes, as TensorRT may take them):
    `maskrt triton` reads the record and copies the file, it never deserializes it."""
    engine = export.parent / "tiny.engine"
    engine.write_bytes(b"a stand-in for a serialized engine")
    EngineInfo(
        engine=engine.name, engine_sha256=sha256(engine), builder="tensorrt", builder_version="10.0", precision="fp16",
        profiles={"images": Profile((1, 3, 32, 32), (2, 3, 128, 128), (4, 3, 128, 128)),
                  "image_sizes": Profile((1, 2), (2, 2), (4, 2))},
        inputs=(TensorSpec("images", (-1, 3, -1, -1), "HALF"), TensorSpec("image_sizes", (-1, 2), "INT32")),
        outputs=(TensorSpec("num_detections", (-1,), "INT32"), TensorSpec("boxes", (-1, 20, 4), "FLOAT"),
                 TensorSpec("scores", (-1, 20), "FLOAT"), TensorSpec("labels", (-1, 20), "INT32"),
                 TensorSpec("masks", (-1, 20, 1, 28, 28), "HALF")),
        onnx_sha256=sha256(export / "model.onnx"), plugin_library_sha256=sha256(plugin_library),
        compute_capabilities=("8.6",), build_seconds=1.0, export=ExportInfo.read(export),
    ).write(engine)
    return engine


def check_fields(configs: dict[str, mc.ModelConfig], o: RepositoryOptions, network: str, batched: bool) -> None:
    """Each model's config sets exactly the fields its kind needs, with the values the options ask for."""
    name = o.name
    pre, net, post = f"{name}_preprocess", f"{name}_network", f"{name}_postprocess"
    assert set(configs) == {name, pre, net, post}
    backends = {pre: ("python", ""), post: ("python", ""), name: ("", "ensemble"),
                net: {"tensorrt": ("tensorrt", "tensorrt_plan"), "onnxruntime": ("onnxruntime", "onnxruntime_onnx"),
                      "python": ("python", "")}[network]}
    parameters = {pre: {"max_pixels": str(o.max_pixels)}, post: {"score_threshold": repr(float(o.score_threshold))},
                  name: {}, net: {"graph": o.graph, "threads": str(o.threads)} if network == "python" else {}}
    kind, profile = ("KIND_GPU", ["0"]) if network == "tensorrt" else ("KIND_CPU", [])
    for model, config in configs.items():
        ensemble = model == name
        expected = {"name", "input", "output", "backend" if backends[model][0] else "platform"}
        expected |= {"platform"} if backends[model][1] else set()
        expected |= {"max_batch_size"} if batched else set()  # 0 (no batching) is proto3's default, never written
        expected |= {"ensemble_scheduling"} if ensemble else {"instance_group"}
        expected |= {"dynamic_batching"} if batched and not ensemble else set()
        expected |= {"parameters"} if parameters[model] else set()
        assert {f.name for f, _ in config.ListFields()} == expected, model
        assert (config.backend, config.platform) == backends[model], model
        assert config.max_batch_size == (o.max_batch if batched else 0), model
        assert {k: v.string_value for k, v in config.parameters.items()} == parameters[model], model
        if not ensemble:
            assert [(g.count, mc.ModelInstanceGroup.Kind.Name(g.kind), list(g.profile))
                    for g in config.instance_group] == [(o.instances, kind if model == net else "KIND_CPU",
                                                          profile if model == net else [])], model
        if batched and not ensemble:
            assert config.dynamic_batching.max_queue_delay_microseconds == o.queue_delay_us, model
    request = [1] if batched else [1, 1]
    for config in (configs[name], configs[pre]):
        assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == \
            [("image", "TYPE_STRING", request)], config.name
    for config in (configs[name], configs[post]):
        assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in config.output] == \
            [("detections", "TYPE_STRING", request)], config.name
    assert [t.name for t in configs[pre].output] == ["images", "image_sizes", "original_sizes"]
    assert [s.model_name for s in configs[name].ensemble_scheduling.step] == [pre, net, post]
    assert all(s.model_version == -1 for s in configs[name].ensemble_scheduling.step)
    check_ensemble(configs, name)


@pytest.mark.parametrize(("case", "network", "options"), [
    ("dynamic", "onnxruntime", RepositoryOptions(name="shapes", max_batch=4, instances=2, queue_delay_us=250)),
    ("dynamic", "python", RepositoryOptions(network="python", threads=1, score_threshold=0.05, max_pixels=1_000_000)),
    ("static", "onnxruntime", RepositoryOptions()),
    ("static", "python", RepositoryOptions(network="python", instances=3)),
    ("engine", "tensorrt", RepositoryOptions(max_batch=4, instances=2)),
])
def test_configs_are_model_config_messages(tmp_path: Path, request: pytest.FixtureRequest, case: str, network: str,
                                           options: RepositoryOptions) -> None:
    """Every config.pbtxt is protobuf's text format of a Triton ModelConfig (parsing and printing it gives the same
    text back) with the fields its model needs, wired into the ensemble, and the network's I/O is the graph's or
    the engine's."""
    export = tiny_export(tmp_path / "export", dynamic_batch=case != "static")
    model = tiny_engine(export, request.getfixturevalue("plugin_library")) if case == "engine" else export
    repo = write_repository(model, tmp_path / "repo", options)
    batched = case != "static"
    assert (repo.network, repo.batched, repo.max_batch_size) == (network, batched, options.max_batch if batched else 0)
    configs = read_configs(tmp_path / "repo")
    for config in configs.values():
        text = (tmp_path / "repo" / config.name / "config.pbtxt").read_text()
        assert text_format.MessageToString(config) == text, config.name
    check_fields(configs, options, network, batched)
    if case == "engine":
        spec = lambda ts: [(t.name, TRT_TO_TRITON[t.dtype], list(t.shape)) for t in ts]  # noqa: E731
        record = EngineInfo.read(model)
        check_network(configs[f"{options.name}_network"], export, spec(record.inputs), spec(record.outputs), batched)
        assert mc.DataType.Name(configs[f"{options.name}_preprocess"].output[0].data_type) == "TYPE_FP16"
    else:
        check_network(configs[f"{options.name}_network"], export, *onnx_io(export / "model.onnx"), batched=batched)


def test_without_tritonclient_the_writer_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export = tiny_export(tmp_path / "export", dynamic_batch=True)
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # as if tritonclient were not installed
    with pytest.raises(MaskrtError) as error:
        write_repository(export, tmp_path / "repo")
    assert "pip install 'maskrt[client]'" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "repo").exists()

@pytest.mark.slow
def test_onnxruntime_repository(exports: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    proc = cli("triton", "--model", exports["dynamic"], "--out", repo, "--max-batch", "4", "--instances", "2",
               "--name", "shapes")
    assert "shapes_network" in proc.stdout and f"--model-repository={repo.resolve()}" in proc.stdout
    configs = read_configs(repo)
    assert set(configs) == {"shapes", "shapes_preprocess", "shapes_network", "shapes_postprocess"}
    check_ensemble(configs, "shapes")
    net = configs["shapes_network"]
    assert net.platform == "onnxruntime_onnx" and net.backend == "onnxruntime" and net.max_batch_size == 4
    graph = (exports["dynamic"] / "model.onnx").read_bytes()
    assert (repo / "shapes_network" / "1" / "model.onnx").read_bytes() == graph
    check_network(net, exports["dynamic"], *onnx_io(exports["dynamic"] / "model.onnx"), batched=True)
    for config in configs.values():
        if config.platform != "ensemble":
            assert config.HasField("dynamic_batching"), config.name
            assert [(g.count, mc.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == \
                [(2, "KIND_CPU")], config.name
    readme = (repo / "README.md").read_text()
    assert f"tritonserver --model-repository={repo.resolve()}" in readme
    # the python steps read the export's own record
    for step in ("shapes_preprocess", "shapes_postprocess"):
        assert json.loads((repo / step / "1" / "export.json").read_text())["classes"] == \
            json.loads((exports["dynamic"] / "export.json").read_text())["classes"]


@pytest.mark.slow
def test_static_batch_1_export_gives_unbatched_models(exports: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cli("triton", "--model", exports["static"], "--out", repo)
    configs = read_configs(repo)
    check_ensemble(configs, "maskrt")
    for config in configs.values():
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching"), config.name
    net = configs["maskrt_network"]
    check_network(net, exports["static"], *onnx_io(exports["static"] / "model.onnx"), batched=False)
    assert list(configs["maskrt"].input[0].dims) == [1, 1]  # one image per request, the same [b, 1] request form


@pytest.mark.slow
def test_engine_repository(exports: dict[str, Path], tmp_path: Path, plugin_library: Path) -> None:
    require_tensorrt_rtx()
    engine = tmp_path / "slim.engine"
    cli("build", "--model", exports["dynamic"], "--out", engine, "--builder", "tensorrt-rtx", "--batch", "1:2:4",
        "--size", "64x64:96x160:160x160", "--compute-capabilities", "8.6", "-q")
    record = json.loads(engine.with_name("slim.engine.json").read_text())
    proc = cli("triton", "--model", engine, "--out", tmp_path / "too-big", "--max-batch", "8", ok=False)
    assert proc.returncode == 2 and "batch profile" in proc.stderr, proc.stderr
    repo = tmp_path / "repo"
    proc = cli("triton", "--model", engine, "--out", repo, "--max-batch", "4")
    configs = read_configs(repo)
    check_ensemble(configs, "maskrt")
    net = configs["maskrt_network"]
    assert net.platform == "tensorrt_plan" and net.max_batch_size == record["profiles"]["images"]["max"][0] == 4
    assert [(g.count, mc.ModelInstanceGroup.Kind.Name(g.kind), list(g.profile)) for g in net.instance_group] == \
        [(1, "KIND_GPU", ["0"])]
    spec = lambda ts: [(t["name"], TRT_TO_TRITON[t["dtype"]], t["shape"]) for t in ts]  # noqa: E731
    check_network(net, exports["dynamic"], spec(record["inputs"]), spec(record["outputs"]), batched=True)
    folder = repo / "maskrt_network"
    assert (folder / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert sha256(folder / "plugins" / "libmaskrt_plugins.so") == record["plugin_library_sha256"]
    shim = folder / "plugins" / "libmaskrt_triton.so"
    assert shim.is_file()
    assert f"--backend-config=tensorrt,plugins={shim.resolve()}" in proc.stdout
    readme = (repo / "README.md").read_text()
    assert f"--backend-config=tensorrt,plugins={shim.resolve()}" in readme
    # Triton's tensorrt backend is TensorRT: an RTX-built engine is written, with a warning saying so
    assert "warning:" in proc.stderr and "built by tensorrt-rtx" in proc.stderr, proc.stderr
    assert "This engine was built by TensorRT-RTX" in readme


@pytest.mark.slow
@pytest.mark.parametrize(("args", "fragment"), [
    (["--network", "tensorrt"], "needs an engine"),
    (["--graph", "trt"], "cannot run"),
    (["--graph", "trt_fp16"], "has no trt_fp16 graph"),
])
def test_bad_repository_requests(exports: dict[str, Path], tmp_path: Path, args: list[str], fragment: str) -> None:
    proc = cli("triton", "--model", exports["dynamic"], "--out", tmp_path / "repo", *args, ok=False)
    assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "repo").exists()


@pytest.mark.slow
def test_static_batch_above_1_is_refused(exports: dict[str, Path], tmp_path: Path) -> None:
    export = tmp_path / "b2"
    cli("export", "--checkpoint", exports["ckpt"], "--out", export, "--batch", "2", "--max-detections", "20")
    proc = cli("triton", "--model", export, "--out", tmp_path / "repo", ok=False)
    assert proc.returncode == 2 and "--dynamic-batch" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_python_network_ensemble_in_a_real_triton(exports: dict[str, Path], tmp_path: Path) -> None:
    """`--network python` repository served by PyTriton's tritonserver (`maskrt serve --repository`): each image
    request answers as `maskrt predict`, a bad image fails only its own request, and the server stops cleanly."""
    from maskrt.serving.client import Client, ServerError

    serve_python()
    images = write_images(tmp_path / "images")
    pred = tmp_path / "pred"
    cli("predict", "--model", exports["dynamic"], "--score-threshold", "0.05", "--out", pred, "-q", images)
    expected: dict[str, list] = {}
    for r in json.loads((pred / "results.json").read_text()):
        name = Path(r.pop("file_name")).name
        r.pop("image_id"), r.pop("overlay")
        expected.setdefault(name, []).append(r)
    assert all(expected.get(f.name) for f in images.iterdir()), "the model detects on every test image"
    repo = tmp_path / "repo"
    cli("triton", "--model", exports["dynamic"], "--out", repo, "--network", "python", "--score-threshold", "0.05",
        "--threads", "1")
    server = start_server(["--repository", str(repo)], free_ports(3))
    try:
        files = sorted(images.iterdir())
        with Client(server.http) as c:
            assert c.ready()
            for f in files:
                assert c.detect([f.read_bytes()])[0] == expected.get(f.name, []), f.name
        bad = b"\x89PNG\r\n\x1a\n but not a PNG"
        errors: list[str] = []
        local = threading.local()

        def one(i: int) -> bool:
            if not hasattr(local, "client"):
                local.client = Client(server.grpc if i % 2 else server.http)
            if i % 5 == 0:
                try:
                    local.client.detect([bad])
                except ServerError as exc:
                    errors.append(str(exc))
                    return True
                return False
            f = files[i % len(files)]
            return local.client.detect([f.read_bytes()])[0] == expected.get(f.name, [])

        with ThreadPoolExecutor(4) as pool:
            ok = list(pool.map(one, range(30)))
        assert all(ok), f"requests that failed or differed: {[i for i, v in enumerate(ok) if not v]}"
        assert len(errors) == 6 and all("cannot read image" in e for e in errors), errors
        stop_and_check(server)
    finally:
        kill_tree(server)
