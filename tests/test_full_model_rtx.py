"""The whole exported model.trt.onnx (both plugin ops inside Mask R-CNN) builds with TensorRT-RTX on the CPU:
`maskrt build` with a batch and height/width optimization profile (dynamic-size export) and with a static canvas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import require_tensorrt_rtx

from maskrt.core.artifacts import EngineInfo
from maskrt.core.errors import MaskrtError
from maskrt.export.engine import ShapeRange, build_engine
from maskrt.export.onnx_export import export_checkpoint
from maskrt.training.checkpoint import make_checkpoint, save_checkpoint
from maskrt.training.models import build_model, default_model_config

trt = require_tensorrt_rtx()

CLI = [sys.executable, "-m", "maskrt.cli"]


@pytest.fixture(scope="module")
def slim_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = default_model_config("slim", 3, min_size=96, max_size=160)
    ckpt = tmp_path_factory.mktemp("slim") / "slim.pt"
    _save_random(ckpt, cfg)
    return ckpt


def _save_random(path: Path, cfg: dict) -> None:
    """A checkpoint of `cfg`'s random-init model (seed as set by the caller) with three classes."""
    save_checkpoint(path, make_checkpoint(model_config=cfg, state_dict=build_model(cfg).state_dict(),
                                          classes=[{"id": i, "name": str(i)} for i in (1, 2, 3)]))


def _parse(path: Path):  # noqa: ANN202
    from maskrt.plugins import load_into

    load_into(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    network = trt.Builder(logger).create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(path)), [parser.get_error(i).desc() for i in range(parser.num_errors)]
    return network


@pytest.mark.slow
def test_dynamic_size_engine_with_a_height_width_profile(slim_checkpoint: Path, tmp_path: Path,
                                                         plugin_library: Path) -> None:
    export = tmp_path / "export"
    export_checkpoint(slim_checkpoint, export, dynamic_batch=True, max_detections=50)
    network = _parse(export / "model.trt.onnx")
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    assert sum(layer.type == trt.LayerType.PLUGIN_V3 for layer in layers) == 4  # 2 RoIAlign + 2 NMS
    assert tuple(network.get_input(0).shape) == (-1, 3, -1, -1)  # batch, height and width all dynamic
    shapes = {network.get_output(i).name: tuple(network.get_output(i).shape) for i in range(network.num_outputs)}
    assert shapes == {"num_detections": (-1,), "boxes": (-1, 50, 4), "scores": (-1, 50), "labels": (-1, 50),
                      "masks": (-1, 50, 28, 28)}
    engine = tmp_path / "engines" / "slim.engine"
    proc = subprocess.run([*CLI, "build", "--model", str(export), "--out", str(engine), "--builder", "tensorrt-rtx",
                           "--size", "64x64:96x160:160x160", "--batch", "1:1:2"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    info = EngineInfo.read(engine)
    assert info.builder == "tensorrt-rtx" and info.precision == "fp32" and info.engine == "slim.engine"
    assert info.profiles["images"].min == (1, 3, 64, 64) and info.profiles["images"].opt == (1, 3, 96, 160)
    assert info.profiles["images"].max == (2, 3, 160, 160) and info.profiles["image_sizes"].max == (2, 2)
    assert info.onnx_sha256 == json.loads((export / "export.json").read_text())["graphs"]["trt"]["sha256"]
    assert info.compute_capabilities == ("8.6", "8.9", "12.0")
    plan = engine.read_bytes()
    assert len(plan) > 1_000_000 and b"MultiLevelRoIAlign" in plan and b"BatchedNMS" in plan
    # the profile must lie inside the export's ranges; an existing engine needs --force
    other = tmp_path / "other.engine"
    for args, message in ((["--out", str(other), "--size", "32x32:64x64:192x160"], "outside the export's inputs"),
                          (["--out", str(other), "--size", "100x160"], "outside the export's inputs"),
                          (["--out", str(other), "--size", "128x128:96x96:160x160"], "min <= opt"),
                          (["--out", str(other), "--batch", "2:1:2"], "min <= opt"),
                          (["--out", str(engine)], "exists")):
        proc = subprocess.run([*CLI, "build", "--model", str(export), *args],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not other.exists()


@pytest.mark.slow
def test_static_canvas_engine(slim_checkpoint: Path, tmp_path: Path, plugin_library: Path) -> None:
    export = tmp_path / "export"
    export_checkpoint(slim_checkpoint, export, height=96, width=128, batch=2, max_detections=20)
    network = _parse(export / "model.trt.onnx")
    assert tuple(network.get_input(0).shape) == (2, 3, 96, 128)
    info = build_engine(export, builder="tensorrt-rtx", compute_capabilities=("8.9",))
    assert (export / "model.fp32.engine").stat().st_size > 1_000_000
    assert info.profiles["images"].min == info.profiles["images"].max == (2, 3, 96, 128)
    assert info.compute_capabilities == ("8.9",)
    with pytest.raises(MaskrtError, match="batch 1 does not fit"):
        build_engine(export, tmp_path / "b1.engine", builder="tensorrt-rtx",
                     shapes=ShapeRange((1, 96, 128), (2, 96, 128), (2, 96, 128)))


def _layer_types(network) -> dict[str, set[str]]:  # noqa: ANN001
    """Output data types of the network's layers, per layer type."""
    found: dict[str, set[str]] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        found.setdefault(layer.type.name, set()).add(layer.get_output(0).dtype.name)
    return found


@pytest.mark.slow
def test_fp16_engine_from_the_fp16_graph(slim_checkpoint: Path, tmp_path: Path, plugin_library: Path) -> None:
    """The fp16 graph parses as a strongly typed network whose convolutions and RoIAlign run in fp16 (box decoding
    and NMS stay fp32) and builds with a dynamic batch and size profile."""
    export = tmp_path / "export"
    export_checkpoint(slim_checkpoint, export, dynamic_batch=True, fp16=True)
    with pytest.raises(MaskrtError, match="has no fp16 TensorRT graph"):
        other = tmp_path / "fp32_only"
        export_checkpoint(slim_checkpoint, other)
        build_engine(other, builder="tensorrt-rtx", precision="fp16")
    from maskrt.plugins import load_into

    load_into(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    network = trt.Builder(logger).create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(export / "model.trt.fp16.onnx"))
    types = _layer_types(network)
    assert types["CONVOLUTION"] == {"HALF"}, types["CONVOLUTION"]
    plugins = [network.get_layer(i) for i in range(network.num_layers)
               if network.get_layer(i).type == trt.LayerType.PLUGIN_V3]
    outputs = sorted(layer.get_output(0).dtype.name for layer in plugins)
    assert outputs == ["HALF", "HALF", "INT32", "INT32"]  # 2 RoIAlign on fp16 features, 2 NMS (keep indices)
    for layer in plugins:
        if layer.get_output(0).dtype.name == "INT32":  # BatchedNMS: boxes and scores in fp32
            assert [layer.get_input(i).dtype.name for i in range(3)] == ["FLOAT", "FLOAT", "INT32"]
        else:  # MultiLevelRoIAlign: fp32 RoIs, fp16 features
            assert layer.get_input(0).dtype.name == "FLOAT" and layer.get_input(1).dtype.name == "HALF"
    assert network.get_input(0).dtype.name == "FLOAT" and network.get_output(1).dtype.name == "FLOAT"
    proc = subprocess.run([*CLI, "build", "--model", str(export), "--precision", "fp16", "--builder", "tensorrt-rtx",
                           "--batch", "1:2:2", "--size", "64x64:128x160:160x160", "-q"], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    info = EngineInfo.read(export / "model.fp16.engine")
    assert info.precision == "fp16" and info.profiles["images"].opt == (2, 3, 128, 160)
    assert info.onnx_sha256 == json.loads((export / "export.json").read_text())["graphs"]["trt_fp16"]["sha256"]
    plan = (export / "model.fp16.engine").read_bytes()
    assert b"MultiLevelRoIAlign" in plan and b"BatchedNMS" in plan


def _random_r50(tmp_path: Path, size: int) -> Path:
    """A seeded random-init r50-fpn checkpoint (3 classes) resizing to `size` x `size`."""
    torch.manual_seed(0)
    ckpt = tmp_path / "r50.pt"
    _save_random(ckpt, default_model_config("r50-fpn", 3, min_size=size, max_size=size))
    return ckpt


@pytest.mark.slow
def test_r50_fpn_fp16_engine_at_800(tmp_path: Path, plugin_library: Path) -> None:
    ckpt = _random_r50(tmp_path, 800)
    export_checkpoint(ckpt, tmp_path / "export", height=800, width=800, fp16=True)
    info = build_engine(tmp_path / "export", builder="tensorrt-rtx", precision="fp16", compute_capabilities=("8.9",))
    assert info.precision == "fp16" and info.profiles["images"].min == info.profiles["images"].max == (1, 3, 800, 800)
    fp16_size = (tmp_path / "export" / "model.fp16.engine").stat().st_size
    assert 50_000_000 < fp16_size < 120_000_000  # the r50-fpn weights in fp16 (~88 MB in fp32 ONNX: 44M params)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "mask_side"), [("slim-c4", 14), ("mobilenet-fpn", 28)])
def test_new_configs_build_engines(name: str, mask_side: int, tmp_path: Path, plugin_library: Path) -> None:
    """The C4 head (one-level MultiLevelRoIAlign, res5 per RoI, 14x14 masks) and the MobileNetV3 FPN build with a
    height/width profile (issue 25)."""
    torch.manual_seed(0)
    small = {"min_size": 160, "max_size": 160} if name == "mobilenet-fpn" else {}
    cfg = default_model_config(name, 3, **small)
    ckpt = tmp_path / f"{name}.pt"
    _save_random(ckpt, cfg)
    export = tmp_path / "export"
    export_checkpoint(ckpt, export, max_detections=50)
    network = _parse(export / "model.trt.onnx")
    plugins = [network.get_layer(i) for i in range(network.num_layers)
               if network.get_layer(i).type == trt.LayerType.PLUGIN_V3]
    assert len(plugins) == 4  # 2 RoIAlign + 2 NMS
    levels = 1 if name.endswith("c4") else 2
    pools = [layer for layer in plugins if layer.get_output(0).dtype.name == "FLOAT"]  # NMS outputs int32
    assert [layer.num_inputs for layer in pools] == [1 + levels] * 2  # RoIs + one feature map per level
    masks = next(network.get_output(i) for i in range(network.num_outputs) if network.get_output(i).name == "masks")
    assert tuple(masks.shape)[-2:] == (mask_side, mask_side)
    info = build_engine(export, builder="tensorrt-rtx", shapes=ShapeRange((1, 64, 64), (1, 96, 96), (1, 128, 128)),
                        compute_capabilities=("8.9",))
    plan = (export / "model.fp32.engine").read_bytes()
    assert info.builder == "tensorrt-rtx" and b"MultiLevelRoIAlign" in plan and len(plan) > 1_000_000


def _quantized(checkpoint: Path, root: Path, **export: object) -> Path:
    """The checkpoint exported and quantized (`maskrt quantize`, minmax on two random images)."""
    import numpy as np
    from PIL import Image

    from maskrt.runtime.quantize.calibration import quantize_export

    export_checkpoint(checkpoint, root / "fp", **export)  # type: ignore[arg-type]
    (root / "calibration").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), np.uint8)).save(root / "calibration" / f"{i}.png")
    quantize_export(root / "fp", root / "calibration", root / "export", images=2, progress=False)
    return root / "export"


def _check_int8_engine(export: Path, info: EngineInfo) -> None:
    """An INT8 engine as TensorRT builds it from explicit Q/DQ: strongly typed, no TF32, its network's convolutions
    reading INT8 data and weights (all of the networks' - the output layers stay float), the four plugins, and the
    graph's quantization record."""
    record = json.loads((export / "export.json").read_text())
    net = info.network
    assert info.precision == "int8" and info.strongly_typed and not info.tf32
    assert net["plugin"] == 4 and net["quantize"] > 0 and net["dequantize"] >= net["quantize"], net
    assert 0.8 * net["convolution"] <= net["int8_convolution"] < net["convolution"], net  # the predictors stay float
    assert net["int8_matrix_multiply"] >= 2, net  # the box head's two fully connected layers
    assert info.int8 is not None and info.int8["method"] == "minmax" and info.int8["excluded_nodes"] == []
    assert info.int8["format"].startswith("QDQ for TensorRT")
    assert info.onnx_sha256 == record["graphs"]["trt_int8"]["sha256"]
    plan = (export / info.engine).read_bytes()
    assert b"MultiLevelRoIAlign" in plan and b"BatchedNMS" in plan


@pytest.mark.slow
def test_int8_engine_from_the_trt_int8_graph(slim_checkpoint: Path, tmp_path: Path, plugin_library: Path) -> None:
    """`maskrt build --precision int8` builds model.trt.int8.onnx as a strongly typed INT8 network; an fp32 build of
    the same export is strongly typed too, with TF32 off and no Q/DQ."""
    export = _quantized(slim_checkpoint, tmp_path, dynamic_batch=True)
    proc = subprocess.run([*CLI, "build", "--model", str(export), "--precision", "int8", "--builder", "tensorrt-rtx",
                           "--size", "64x64:128x128:160x160", "-q"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "int8, strongly typed" in proc.stdout
    _check_int8_engine(export, EngineInfo.read(export / "model.int8.engine"))
    fp32 = build_engine(export, builder="tensorrt-rtx", shapes=ShapeRange((1, 64, 64), (1, 96, 96), (1, 128, 128)),
                        compute_capabilities=("8.9",))
    assert fp32.precision == "fp32" and fp32.strongly_typed and not fp32.tf32 and fp32.int8 is None
    assert fp32.network["quantize"] == fp32.network["int8_convolution"] == 0 and fp32.network["plugin"] == 4
    with_tf32 = build_engine(export, tmp_path / "tf32.engine", builder="tensorrt-rtx", tf32=True,
                             shapes=ShapeRange((1, 64, 64), (1, 96, 96), (1, 128, 128)), compute_capabilities=("8.9",))
    assert with_tf32.tf32 and EngineInfo.read(tmp_path / "tf32.engine").tf32


@pytest.mark.slow
def test_r50_fpn_int8_engine(tmp_path: Path, plugin_library: Path) -> None:
    """The r50-fpn export's INT8 graph builds too (a static 320x320 canvas keeps calibration and build short)."""
    ckpt = _random_r50(tmp_path, 320)
    export = _quantized(ckpt, tmp_path, height=320, width=320)
    info = build_engine(export, builder="tensorrt-rtx", precision="int8", compute_capabilities=("8.9",))
    _check_int8_engine(export, info)
    assert info.network["int8_convolution"] >= 70, info.network  # ResNet-50 + FPN + RPN + mask head convolutions
