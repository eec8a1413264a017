"""The whole exported model.trt.onnx (both plugin ops inside Mask R-CNN) builds with TensorRT-RTX on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from maskrt.export.onnx_export import export_checkpoint
from maskrt.training.checkpoint import make_checkpoint, save_checkpoint
from maskrt.training.models import build_model, default_model_config

try:
    import tensorrt_rtx as trt
except ImportError:  # pragma: no cover - the test extras install it
    if os.environ.get("CI"):
        pytest.fail("tensorrt_rtx not installed: pip install tensorrt-rtx-cu13==1.7.1.116", pytrace=False)
    pytest.skip("tensorrt_rtx not installed", allow_module_level=True)


@pytest.mark.slow
def test_full_slim_model_builds_a_serialized_engine(tmp_path: Path, plugin_library: Path) -> None:
    from maskrt.plugins import load_into

    load_into(trt)
    torch.manual_seed(0)
    cfg = default_model_config("slim", 3)
    ckpt = tmp_path / "slim.pt"
    save_checkpoint(ckpt, make_checkpoint(model_config=cfg, state_dict=build_model(cfg).state_dict(),
                                          classes=[{"id": i, "name": str(i)} for i in (1, 2, 3)]))
    export_checkpoint(ckpt, tmp_path / "export", batch=2, max_detections=50)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse((tmp_path / "export" / "model.trt.onnx").read_bytes())
    assert ok, [parser.get_error(i).desc() for i in range(parser.num_errors)]
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    assert sum(layer.type == trt.LayerType.PLUGIN_V3 for layer in layers) == 4  # 2 RoIAlign + 2 NMS
    shapes = {network.get_output(i).name: tuple(network.get_output(i).shape) for i in range(network.num_outputs)}
    assert shapes == {"num_detections": (2,), "boxes": (2, 50, 4), "scores": (2, 50), "labels": (2, 50),
                      "masks": (2, 50, 28, 28)}
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    assert plan is not None and plan.nbytes > 1_000_000
    assert b"MultiLevelRoIAlign" in bytes(plan) and b"BatchedNMS" in bytes(plan)
