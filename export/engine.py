"""`maskrt build`: the TensorRT graph of an export folder -> a serialized TensorRT / TensorRT-RTX engine + ENGINE.json.

fp32 engines come from model.trt.onnx, fp16 engines from model.trt.fp16.onnx (export/deploy.py says which parts are
fp16 and why the rest stays fp32), int8 engines from model.trt.int8.onnx (`maskrt quantize`: explicit symmetric Q/DQ,
runtime/quantize/tensorrt_qdq.py). Every build is a strongly typed network - the graph's tensor types and Q/DQ nodes
decide each layer's precision, TensorRT 11's only mode: no precision builder flags, no calibrator - and fp32 means
fp32: TF32 (on by default in TensorRT, and changing convolution and matrix-product results on Ampere and newer GPUs
beyond the fp32 parity gates) is off unless `tf32` asks for it; ENGINE.json records both.

The engine carries one optimization profile for `images` [B, 3, H, W] and `image_sizes` [B, 2]: batch and H/W
ranges (min / opt / max). By default they are the export's own: its batch (1..4 for a dynamic batch, optimum 1)
and, for a dynamic-size export, its height/width ranges with the traced size as optimum, so every batch runs at
the size torchvision pads it to. A static export gives a fixed profile.

Builders: `tensorrt-rtx` (pip tensorrt-rtx; builds on a machine without a GPU, for RTX-class GPUs: compute
capabilities 8.6, 8.9 and 12.0 by default - 7.5 has no fp32 GEMM there) and `tensorrt` (full TensorRT; builds for
the GPU it runs on). The plugin library is loaded into the builder first (maskrt.plugins.load_into) and its sha256
is recorded in ENGINE.json.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from maskrt.core.artifacts import GRAPHS, MAX_EXPORT_BATCH, EngineInfo, ExportInfo, Profile, TensorSpec
from maskrt.core.builders import import_builder, installed_builder
from maskrt.core.defaults import DEFAULT_ENGINE_MAX_BATCH, DEFAULT_RTX_CAPABILITIES
from maskrt.core.errors import MaskrtError, check_choice
from maskrt.core.files import sha256, write_atomic
from maskrt.core.outputs import check_output_file
from maskrt.core.versions import versions
from maskrt.export.onnx_export import check_graph

#: The GPUs TensorRT-RTX runs engines on; an RTX engine is built for all of them unless told otherwise.
RTX_COMPUTE_CAPABILITIES = ("7.5", "8.6", "8.9", "12.0")


@dataclass(frozen=True)
class ShapeRange:
    """min / opt / max of the dynamic input dimensions: batch, height, width."""

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]


def default_shapes(info: ExportInfo) -> ShapeRange:
    """The export's own ranges: batch (static, or 1:1:4), height/width ranges with the traced size as optimum."""
    inp = info.input
    if inp.dynamic_batch:
        batch = (1, 1, DEFAULT_ENGINE_MAX_BATCH)
    else:
        batch = (inp.batch, inp.batch, inp.batch)
    (h0, h1), (w0, w1) = inp.height_range, inp.width_range  # type: ignore[misc]
    return ShapeRange((batch[0], h0, w0), (batch[1], inp.height, inp.width), (batch[2], h1, w1))


def check_shapes(info: ExportInfo, shapes: ShapeRange) -> None:
    """MaskrtError unless min <= opt <= max, sizes are multiples of 32 inside the export's ranges, and the batch
    fits the export (static: exactly its batch)."""
    inp = info.input
    for name, shape in (("min", shapes.min), ("opt", shapes.opt), ("max", shapes.max)):
        b, h, w = shape
        if not inp.accepts(h, w):
            raise MaskrtError(f"the {name} shape {h}x{w} is outside the export's inputs: multiples of 32 in height "
                              f"{list(inp.height_range or ())} x width {list(inp.width_range or ())}")
        if not 1 <= b <= MAX_EXPORT_BATCH or (not inp.dynamic_batch and b != inp.batch):
            raise MaskrtError(f"the {name} batch {b} does not fit the export (batch "
                              f"{'dynamic, at most ' + str(MAX_EXPORT_BATCH) if inp.dynamic_batch else inp.batch})")
    for i, dim in enumerate(("batch", "height", "width")):
        if not shapes.min[i] <= shapes.opt[i] <= shapes.max[i]:
            raise MaskrtError(f"the profile's {dim} must satisfy min <= opt <= max, got "
                              f"{shapes.min[i]} / {shapes.opt[i]} / {shapes.max[i]}")


def _profiles(shapes: ShapeRange) -> dict[str, Profile]:
    dims = lambda s: {"images": (s[0], 3, s[1], s[2]), "image_sizes": (s[0], 2)}  # noqa: E731
    lo, mid, hi = dims(shapes.min), dims(shapes.opt), dims(shapes.max)
    return {name: Profile(lo[name], mid[name], hi[name]) for name in lo}


def _compute_capabilities(trt: ModuleType, builder: str, config: object, wanted: tuple[str, ...] | None
                          ) -> tuple[str, ...]:
    """Set (RTX) or report (TensorRT: the build GPU's) the compute capabilities the engine runs on."""
    if builder == "tensorrt-rtx":
        wanted = wanted or DEFAULT_RTX_CAPABILITIES
        members = {cc: getattr(trt.ComputeCapability, "SM" + cc.replace(".", ""), None) for cc in wanted}
        unknown = [cc for cc, m in members.items() if m is None]
        if unknown:
            raise MaskrtError(f"TensorRT-RTX cannot build for compute capability {', '.join(unknown)} "
                              f"(it supports {', '.join(RTX_COMPUTE_CAPABILITIES)} and newer)")
        config.num_compute_capabilities = len(members)  # type: ignore[attr-defined]
        for i, member in enumerate(members.values()):
            config.set_compute_capability(member, i)  # type: ignore[attr-defined]
        return tuple(wanted)
    if wanted:
        raise MaskrtError("TensorRT builds for the GPU it runs on; --compute-capabilities is for tensorrt-rtx")
    import torch

    if not torch.cuda.is_available():
        raise MaskrtError("TensorRT builds engines on a GPU and none is visible (use --builder tensorrt-rtx to "
                          "build without one)")
    major, minor = torch.cuda.get_device_capability()
    return (f"{major}.{minor}",)


def _progress_monitor(trt: ModuleType) -> object:
    """A TensorRT IProgressMonitor that shows each build phase as a tqdm bar (nested phases below their parents)."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    class Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            depth = len(bars)
            bars[phase_name] = tqdm(total=num_steps, desc=phase_name, position=depth, leave=depth == 0, unit="step")

        def step_complete(self, phase_name: str, step: int) -> bool:
            if phase_name in bars:
                bars[phase_name].n = step + 1
                bars[phase_name].refresh()
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            bar = bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return Monitor()


def _tensors(network: object, count: str, get: str) -> tuple[TensorSpec, ...]:
    """The network's inputs or outputs as TensorSpecs (shape -1 where dynamic)."""
    items = [getattr(network, get)(i) for i in range(getattr(network, count))]
    return tuple(TensorSpec(t.name, tuple(int(d) for d in t.shape), t.dtype.name) for t in items)


def strongly_typed(trt: ModuleType) -> int:
    """The network creation flags of a strongly typed network: the STRONGLY_TYPED bit where the bindings have it
    (TensorRT 10, TensorRT-RTX); none in TensorRT 11, where every network is strongly typed and the flag, deprecated,
    is ignored."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def network_layers(trt: ModuleType, network: object) -> dict[str, int]:
    """What the parsed network holds, by TensorRT layer type: every layer, the Q/DQ layers, the convolutions and
    matrix products and how many of them read both operands through a DequantizeLinear (what TensorRT runs in INT8 in
    a strongly typed network), the plugin layers. Read from the network definition: an engine cannot be inspected
    without a GPU to deserialize it on."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]  # type: ignore[attr-defined]
    producer = {layer.get_output(j).name: layer.type for layer in layers for j in range(layer.num_outputs)}
    kinds = {"quantize": trt.LayerType.QUANTIZE, "dequantize": trt.LayerType.DEQUANTIZE,
             "convolution": trt.LayerType.CONVOLUTION, "matrix_multiply": trt.LayerType.MATRIX_MULTIPLY,
             "plugin": trt.LayerType.PLUGIN_V3}
    counts = {"layers": len(layers), **{name: sum(layer.type == kind for layer in layers)
                                         for name, kind in kinds.items()}}
    for name in ("convolution", "matrix_multiply"):
        counts[f"int8_{name}"] = sum(
            layer.type == kinds[name] and layer.num_inputs >= 2 and all(
                layer.get_input(k) is not None and producer.get(layer.get_input(k).name) == kinds["dequantize"]
                for k in range(2)) for layer in layers)
    return counts


def build_engine(export_dir: str | Path, engine: str | Path | None = None, *, builder: str | None = None,
                 precision: str = "fp32", shapes: ShapeRange | None = None,
                 compute_capabilities: tuple[str, ...] | None = None, workspace_mib: int | None = None,
                 timing_cache: str | Path | None = None, tf32: bool = False, progress: bool = False,
                 force: bool = False) -> EngineInfo:
    """Build the TensorRT graph of `export_dir` into `engine` (default EXPORT/model.PRECISION.engine) + ENGINE.json.

    fp32 builds model.trt.onnx, fp16 model.trt.fp16.onnx (`maskrt export --fp16`), int8 model.trt.int8.onnx (`maskrt
    quantize`), each as a strongly typed network: its tensor types and Q/DQ nodes decide the precision, the same
    mechanism for TensorRT and TensorRT-RTX (which has no precision builder flags). `tf32` lets fp32 layers use TF32
    (fp32 engines only). `builder` None: whichever is installed (tensorrt first). `workspace_mib` caps the builder's
    scratch memory; `timing_cache` is read when it exists and written back after the build (later builds reuse its
    kernel timings). Both files are written atomically; an existing engine is refused unless `force`."""
    from maskrt.plugins._library import load_into, loaded_logger

    check_choice("precision", precision, EngineInfo.PRECISIONS)
    if tf32 and precision != "fp32":
        raise MaskrtError(f"--tf32 lets fp32 layers use TF32; an {precision} engine takes its precision from its graph "
                          "(drop --tf32)")
    graph = EngineInfo.GRAPH_OF[precision]
    info = ExportInfo.read(export_dir)
    if graph not in info.graphs:
        how = ("export the checkpoint again with --fp16" if precision == "fp16" else
               f"make it with `maskrt quantize --model {export_dir} ...`")
        raise MaskrtError(f"{export_dir}: has no {precision} TensorRT graph ({GRAPHS[graph].file}); {how}")
    onnx_path = info.verified_graph(export_dir, graph)
    check_graph(onnx_path, "trt")  # onnx.checker + no op TensorRT cannot build (a portable graph is refused here)
    int8 = None
    if precision == "int8":  # TensorRT's explicit quantization: symmetric Q/DQ, plugins in float
        import onnx

        from maskrt.export.int8_graph import check_trt_int8

        check_trt_int8(onnx.load(str(onnx_path)), onnx_path)
        q = info.quantization or {}
        control = q.get("accuracy_control")
        int8 = {"method": q.get("method"), "images": q.get("images"), "calibration": q.get("calibration"),
                **(q.get("trt_int8") or {}), "accuracy_control": None if control is None else {
                    "max_dap_drop": control.get("max_dap_drop"), "met": control.get("met")}}
    engine = Path(engine) if engine is not None else Path(export_dir) / f"model.{precision}.engine"
    check_output_file(engine, force=force)
    check_output_file(EngineInfo.path_for(engine), force=force)
    if workspace_mib is not None and workspace_mib < 1:
        raise MaskrtError(f"the workspace must be at least 1 MiB, got {workspace_mib}")
    cache_path = Path(timing_cache) if timing_cache is not None else None
    if cache_path is not None and cache_path.is_dir():
        raise MaskrtError(f"{cache_path}: is a folder, expected a timing-cache file")
    shapes = shapes or default_shapes(info)
    check_shapes(info, shapes)
    builder = builder or installed_builder()
    trt = import_builder(builder)
    try:
        plugin_library = load_into(trt)
    except (FileNotFoundError, RuntimeError) as exc:
        raise MaskrtError(f"cannot load the plugin library into {builder}: {exc}") from None
    started = time.perf_counter()
    logger = loaded_logger(trt)
    trt_builder = trt.Builder(logger)
    network = trt_builder.create_network(strongly_typed(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
        raise MaskrtError(f"{onnx_path}: {builder}'s ONNX parser refuses it ({errors})")
    config = trt_builder.create_builder_config()
    if tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:  # on by default in TensorRT: fp32 means fp32
        config.clear_flag(trt.BuilderFlag.TF32)
    profiles = _profiles(shapes)
    profile = trt_builder.create_optimization_profile()
    for name, p in profiles.items():
        profile.set_shape(name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    capabilities = _compute_capabilities(trt, builder, config, compute_capabilities)
    if workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _progress_monitor(trt) if progress else None  # a local reference keeps it alive during the build
    if monitor is not None:
        config.progress_monitor = monitor
    plan = trt_builder.build_serialized_network(network, config)
    if plan is None:
        raise MaskrtError(f"{builder} could not build {onnx_path} (see its messages above)")
    data = bytes(plan)
    result = EngineInfo(engine=engine.name, engine_sha256=hashlib.sha256(data).hexdigest(), builder=builder,
                        builder_version=trt.__version__, precision=precision, profiles=profiles,
                        inputs=_tensors(network, "num_inputs", "get_input"),
                        outputs=_tensors(network, "num_outputs", "get_output"),
                        onnx_sha256=info.graphs[graph].sha256, plugin_library_sha256=sha256(plugin_library),
                        compute_capabilities=capabilities, build_seconds=round(time.perf_counter() - started, 2),
                        export=info, versions=versions(), strongly_typed=True, tf32=tf32, int8=int8,
                        network=network_layers(trt, network))
    engine.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(engine, data)
    result.write(engine)
    if cache_path is not None:
        write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    return result
