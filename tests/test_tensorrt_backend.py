"""The tensorrt backend and `maskrt build` on a machine without a GPU: every check before an engine runs.

An engine built here by TensorRT-RTX is refused with a one-line error when it or this machine does not match its
ENGINE.json (corrupt file, other TensorRT, other plugin library, no GPU); `maskrt build` refuses a graph TensorRT
cannot build. Running the engine needs TensorRT on a GPU it supports (scripts/gpu_suite.sh)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_checkpoint, require_tensorrt_rtx
from PIL import Image

from maskrt.core.artifacts import EngineInfo
from maskrt.core.errors import MaskrtError
from maskrt.core.files import sha256
from maskrt.export.engine import build_engine
from maskrt.export.onnx_export import export_checkpoint
from maskrt.runtime.predictor import Predictor

require_tensorrt_rtx()
pytestmark = pytest.mark.slow  # every test needs the engine the module builds (about 7 s)

CLI = [sys.executable, "-m", "maskrt.cli"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, plugin_library: Path) -> tuple[Path, Path]:
    """(export folder, engine) of a seeded slim model; the engine carries a dynamic batch and size profile."""
    root = tmp_path_factory.mktemp("engine")
    random_checkpoint(root / "slim.pt")
    export_checkpoint(root / "slim.pt", root / "export", dynamic_batch=True)
    build_engine(root / "export", root / "slim.engine", builder="tensorrt-rtx")
    return root / "export", root / "slim.engine"


def _copy(engine: Path, tmp_path: Path) -> Path:
    shutil.copy(engine, tmp_path / engine.name)
    shutil.copy(EngineInfo.path_for(engine), EngineInfo.path_for(tmp_path / engine.name))
    return tmp_path / engine.name


def _edit(engine: Path, change) -> None:  # noqa: ANN001
    path = EngineInfo.path_for(engine)
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_engine_json_describes_the_engine(built: tuple[Path, Path]) -> None:
    export, engine = built
    info = EngineInfo.read(engine)
    assert info.engine_sha256 == sha256(engine) and info.export.classes == [{"id": 1, "name": "a"},
                                                                            {"id": 2, "name": "b"}]
    assert [t.name for t in info.inputs] == ["images", "image_sizes"]
    assert [(t.name, t.dtype) for t in info.outputs] == [("num_detections", "INT32"), ("boxes", "FLOAT"),
                                                         ("scores", "FLOAT"), ("labels", "INT32"), ("masks", "FLOAT")]
    assert info.inputs[0].shape == (-1, 3, -1, -1) and info.profiles["images"].max == (4, 3, 128, 128)
    assert info.build_seconds > 0 and info.builder == "tensorrt-rtx"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_no_gpu_is_a_clear_error(built: tuple[Path, Path]) -> None:
    with pytest.raises(MaskrtError, match="runs engines on a CUDA GPU and none is visible"):
        Predictor.from_engine(built[1])


@pytest.mark.parametrize(("damage", "message"), [
    (lambda e: e.write_bytes(e.read_bytes()[:-100] + bytes(100)), "is not the engine its ENGINE.json describes"),
    (lambda e: EngineInfo.path_for(e).unlink(), r"slim.engine.json: missing"),
    (lambda e: _edit(e, lambda d: d.update(builder_version="1.0.0.1")), "built with tensorrt-rtx 1.0.0.1 but"),
    (lambda e: _edit(e, lambda d: d.update(plugin_library_sha256="0" * 64)), "built with another plugin library"),
    (lambda e: _edit(e, lambda d: d.update(format_version=1)), "format_version 1 is not supported"),
    (lambda e: e.unlink(), "engine file not found"),
])
def test_a_mismatched_engine_is_refused_before_loading(built: tuple[Path, Path], tmp_path: Path, damage,  # noqa: ANN001
                                                       message: str) -> None:
    engine = _copy(built[1], tmp_path)
    damage(engine)
    with pytest.raises(MaskrtError, match=message):
        Predictor.from_engine(engine)


def test_cli_errors(built: tuple[Path, Path], tmp_path: Path) -> None:
    export, engine = built
    Image.new("RGB", (60, 40)).save(tmp_path / "img.png")
    for model, message in ((export, "--backend tensorrt takes an engine file"),
                           (engine, "none is visible" if not torch.cuda.is_available() else "")):
        proc = subprocess.run([*CLI, "predict", "--backend", "tensorrt", "--model", str(model), "--out",
                               str(tmp_path / "o"), str(tmp_path / "img.png")], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


def test_build_refuses_a_graph_tensorrt_cannot_build(built: tuple[Path, Path], tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(built[0], export)
    shutil.copy(export / "model.onnx", export / "model.trt.onnx")  # the portable graph under the TensorRT name
    document = json.loads((export / "export.json").read_text())
    document["graphs"]["trt"]["sha256"] = sha256(export / "model.trt.onnx")
    (export / "export.json").write_text(json.dumps(document))
    with pytest.raises(MaskrtError, match="the TensorRT graph still holds .*NonMaxSuppression"):
        build_engine(export, builder="tensorrt-rtx")
    assert not (export / "model.fp32.engine").exists()


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_engine_matches_the_cpu_run_of_its_graph(built: tuple[Path, Path]) -> None:
    """Where the engine can run (TensorRT-RTX on an RTX-class GPU): same detections as model.trt.onnx on the CPU."""
    export, engine = built
    try:
        predictor = Predictor.from_engine(engine)
    except MaskrtError as exc:
        pytest.skip(f"this machine cannot run the engine: {exc}")
    images = [torch.randint(0, 255, (96, 128, 3), dtype=torch.uint8).numpy() for _ in range(3)]
    reference = Predictor.from_export(export, graph="trt")
    got, _, _ = predictor.raw(images)
    want, _, _ = reference.raw(images)
    for g, w in zip(got, want, strict=True):
        assert g.num == w.num and abs(g.scores - w.scores).max() < 1e-3


def test_a_missing_plugin_library_is_named(built: tuple[Path, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    export, engine = built
    monkeypatch.setenv("MASKRT_PLUGIN_LIBRARY", str(tmp_path / "libmaskrt_plugins.so"))
    with pytest.raises(MaskrtError, match="needs the CUDA plugin library: MASKRT_PLUGIN_LIBRARY=.*no such file"):
        Predictor.from_engine(engine)
    proc = subprocess.run([*CLI, "build", "--model", str(export), "--builder", "tensorrt-rtx", "--out",
                           str(tmp_path / "x.engine")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MASKRT_PLUGIN_LIBRARY": str(tmp_path / "libmaskrt_plugins.so")})
    assert proc.returncode == 2 and "cannot load the plugin library" in proc.stderr, proc.stderr
    assert not (tmp_path / "x.engine").exists()
