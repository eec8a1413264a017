"""Bad input to export / predict / parity: one-line errors naming the file, or correct handling."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskrt.core.artifacts import EXPORT_FORMAT_VERSION
from maskrt.core.errors import MaskrtError
from maskrt.core.images import load_rgb
from maskrt.export.onnx_export import export_checkpoint
from maskrt.runtime.predictor import Predictor
from maskrt.training.checkpoint import make_checkpoint, save_checkpoint
from maskrt.training.models import build_model, default_model_config

CLI = [sys.executable, "-m", "maskrt.cli"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    cfg = default_model_config("slim", 2)
    ckpt = root / "slim.pt"
    save_checkpoint(ckpt, make_checkpoint(model_config=cfg, state_dict=build_model(cfg).state_dict(),
                                          classes=[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]))
    export_checkpoint(ckpt, root / "export")
    return root / "export"


def _one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr


def _edit_info(folder: Path, change) -> None:  # noqa: ANN001
    info = json.loads((folder / "export.json").read_text())
    change(info)
    (folder / "export.json").write_text(json.dumps(info))


def _broken_copy(export_dir: Path, tmp_path: Path, mutate) -> Path:  # noqa: ANN001
    bad = tmp_path / "bad"
    shutil.copytree(export_dir, bad)
    mutate(bad)
    return bad


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: (d / "export.json").write_text("{not json"), "export.json: corrupt"),
        (lambda d: (d / "export.json").unlink(), "export.json: missing"),
        (lambda d: (d / "model.onnx").unlink(), "model.onnx: missing from the export folder"),
        (lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:5000]),
         "model.onnx: its sha256 differs from the one in export.json"),
        (lambda d: (d / "export.json").write_text(json.dumps({"format_version": EXPORT_FORMAT_VERSION})),
         "export.json: input is missing"),
        (lambda d: _edit_info(d, lambda i: i["input"].update(height="800")), "input.height must be an integer"),
        (lambda d: _edit_info(d, lambda i: i.update(classes=[])), "classes must be a non-empty list"),
        (lambda d: _edit_info(d, lambda i: i["graphs"]["portable"].update(file="../../x/model.onnx")),
         "graphs.portable.file must be a file name inside the folder"),
        (lambda d: _edit_info(d, lambda i: i.update(format_version=9)), "format_version 9 is not supported"),
    ],
)
def test_broken_export_folder(export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, mutate,  # noqa: ANN001
                              fragment: str) -> None:
    from maskrt.cli import main

    bad = _broken_copy(export_dir, tmp_path, mutate)
    image = tmp_path / "img.png"
    Image.new("RGB", (50, 40)).save(image)
    code = main(["predict", "--model", str(bad), "--out", str(tmp_path / "o"), str(image)])
    _one_line_error(subprocess.CompletedProcess([], code, "", capsys.readouterr().err), fragment)


@pytest.mark.slow
def test_unreadable_and_missing_images(export_dir: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    proc = subprocess.run([*CLI, "predict", "--model", str(export_dir), "--out", str(tmp_path / "o"), str(junk)],
                          capture_output=True, text=True, timeout=300)
    _one_line_error(proc, "junk.png: cannot read image")
    proc = subprocess.run([*CLI, "predict", "--model", str(export_dir), "--out", str(tmp_path / "o"),
                           str(tmp_path / "nope.jpg")], capture_output=True, text=True, timeout=300)
    _one_line_error(proc, "nope.jpg: image not found")


def test_image_modes_are_converted(export_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    files = {
        "gray.png": Image.fromarray(rng.integers(0, 255, (60, 80), dtype=np.uint8), "L"),
        "rgba.png": Image.fromarray(rng.integers(0, 255, (60, 80, 4), dtype=np.uint8), "RGBA"),
        "deep.png": Image.fromarray(rng.integers(0, 65535, (60, 80), dtype=np.uint16)),
        "palette.png": Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).convert("P"),
        "large.png": Image.fromarray(rng.integers(0, 255, (1500, 2000, 3), dtype=np.uint8)),
    }
    predictor = Predictor.from_export(export_dir)
    for name, im in files.items():
        im.save(tmp_path / name)
        arr = load_rgb(tmp_path / name)
        assert arr.dtype == np.uint8 and arr.shape[2] == 3, name
        dets = predictor.predict([arr])[0]
        assert dets.masks.shape[1:] == arr.shape[:2], name  # pasted at the original size
    assert load_rgb(tmp_path / "deep.png").max() > 200  # 16-bit scaled, not clipped to white/black


def test_torch_backend_needs_checkpoint(export_dir: Path) -> None:
    with pytest.raises(MaskrtError, match="needs a checkpoint"):
        Predictor.from_export(export_dir, backend="torch")


def test_onnxruntime_threads_default_to_onnxruntimes_choice_and_can_be_set(export_dir: Path) -> None:
    for graph in ("portable", "trt"):
        default = Predictor.from_export(export_dir, graph=graph)
        assert default.backend.session.get_session_options().intra_op_num_threads == 0  # one per physical core
        pinned = Predictor.from_export(export_dir, graph=graph, threads=3)
        assert pinned.backend.session.get_session_options().intra_op_num_threads == 3
        default.close()
        pinned.close()
    with pytest.raises(MaskrtError, match="threads must be at least 1"):
        Predictor.from_export(export_dir, threads=0)


def test_each_image_is_resized_once(export_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = Predictor.from_export(export_dir)
    calls = []
    resize = predictor.preprocessor.resize
    monkeypatch.setattr(type(predictor.preprocessor), "resize", lambda self, image: calls.append(1) or resize(image))
    images = [np.zeros((40, 60, 3), np.uint8), np.zeros((90, 30, 3), np.uint8)]
    outs, resized, original = predictor.raw(images)
    assert len(calls) == 2 and len(outs) == 2
    assert original == [(40, 60), (90, 30)] and all(r[0] > 0 and r[1] > 0 for r in resized)


def test_predict_outputs_never_collide_or_touch_inputs(export_dir: Path, tmp_path: Path) -> None:
    from maskrt.cli import main

    inputs = [tmp_path / "a" / "x.png", tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.png"]
    for path in inputs:
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    before = {p: p.read_bytes() for p in inputs}
    out = tmp_path / "out"
    assert main(["predict", "--model", str(export_dir), "--out", str(out), "--score-threshold", "0", "-q",
                 *map(str, inputs)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "x.2.overlay.png", "x.3.overlay.png",
                                                     "x.overlay.png"]
    results = json.loads((out / "results.json").read_text())
    assert {r["file_name"] for r in results} <= set(map(str, inputs))
    assert all(p.read_bytes() == data for p, data in before.items())
    assert main(["predict", "--model", str(export_dir), "--out", str(out), "-q", str(inputs[0])]) == 2  # not empty


@pytest.mark.slow
def test_every_reader_of_a_graph_verifies_it_the_same_way(export_dir: Path, tmp_path: Path) -> None:
    """ExportInfo.verified_graph is the one check: every command that reads a graph refuses a changed one with its
    message, before any work."""
    def change_both(d: Path) -> None:
        (d / "model.trt.onnx").write_bytes(b"changed")
        (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:-1] + b"\0")

    bad = _broken_copy(export_dir, tmp_path, change_both)
    image = tmp_path / "img.png"
    Image.new("RGB", (50, 40)).save(image)
    (tmp_path / "cal").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "cal" / "c.png")
    runs = {
        "model.onnx": [["predict", "--model", str(bad), "--out", str(tmp_path / "p"), str(image)],
                       ["predict", "--model", str(bad), "--backend", "openvino", "--out", str(tmp_path / "v"),
                        str(image)],
                       ["quantize", "--model", str(bad), "--calibration", str(image.parent / "cal"), "--out",
                        str(tmp_path / "q")],
                       ["triton", "--model", str(bad), "--out", str(tmp_path / "t")]],
        "model.trt.onnx": [["build", "--model", str(bad), "--out", str(tmp_path / "e.engine")],
                           ["predict", "--model", str(bad), "--graph", "trt", "--out", str(tmp_path / "r"),
                            str(image)]],
    }
    for graph, argvs in runs.items():
        for argv in argvs:
            proc = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=300)
            _one_line_error(proc, f"{graph}: its sha256 differs from the one in export.json (the file was changed")
