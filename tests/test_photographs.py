"""Parity against plain torchvision on real photographs at odd sizes and modes (issue 11).

A torchvision Mask R-CNN R50-FPN state_dict (seeded random init, 3 classes) is written by the test, imported with
`maskrt import`, given a smaller resize than COCO's (MIN_SIZE, MAX_SIZE) and exported with dynamic height/width. The
photographs are the ones scikit-image ships (skimage/data): a 451x300 RGB PNG, a 640x427 JPEG, a 512x512 grayscale
PNG, a 500x500 RGBA PNG and a portrait JPEG made from a 600x400 photograph rotated by 90 degrees. The reference is
plain `model([image])` (and `model([a, b])` for a mixed batch); the matching below is the test's own, not maskrt's
parity code.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.ops import box_iou

from maskrt.core.images import load_rgb
from maskrt.export.onnx_export import FORBIDDEN_IN_TRT
from maskrt.runtime.predictor import Predictor
from maskrt.runtime.preprocess import to_tensor
from maskrt.training.checkpoint import load_checkpoint, save_checkpoint

CLI = [sys.executable, "-m", "maskrt.cli"]
SKIMAGE_PHOTOS = {"chelsea.png": ("RGB", (451, 300)), "rocket.jpg": ("RGB", (640, 427)),
                  "camera.png": ("L", (512, 512)), "logo.png": ("RGBA", (500, 500))}
SCORE_FLOOR, MATCH_IOU = 0.1, 0.9
MIN_SIZE, MAX_SIZE = 480, 800  # the r50-fpn model's resize (torchvision's defaults are 800, 1333)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The photographs, copied into one folder (plus the portrait JPEG), their modes and sizes checked."""
    data = importlib.resources.files("skimage") / "data"
    folder = tmp_path_factory.mktemp("photos")
    for name, (mode, size) in SKIMAGE_PHOTOS.items():
        with Image.open(data / name) as im:  # type: ignore[arg-type]
            assert (im.mode, im.size) == (mode, size), name  # the odd sizes and modes this test is about
            (folder / name).write_bytes((data / name).read_bytes())
    with Image.open(data / "coffee.png") as im:  # type: ignore[arg-type]
        im.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(folder / "coffee_portrait.jpg", quality=92)
    return folder


@pytest.fixture(scope="module")
def r50(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint imported from a torchvision state_dict, dynamic-size export with a dynamic batch)."""
    root = tmp_path_factory.mktemp("r50")
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4)
    torch.save(model.state_dict(), root / "maskrcnn_r50_fpn.pth")
    (root / "classes.txt").write_text("cat\nrocket\nperson\n")
    proc = subprocess.run([*CLI, "import", "--weights", str(root / "maskrcnn_r50_fpn.pth"), "--classes",
                           str(root / "classes.txt"), "--out", str(root / "r50.pt"), "-q"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # torchvision's resize rule at a smaller scale than COCO's 800/1333 (a third of the pixels, the same code paths:
    # the photographs are still resized up and down to odd sizes); the plain model is built with the same sizes
    ckpt = load_checkpoint(root / "r50.pt")
    ckpt["model_config"].update(min_size=MIN_SIZE, max_size=MAX_SIZE)
    save_checkpoint(root / "r50.pt", ckpt)
    proc = subprocess.run([*CLI, "export", "--checkpoint", str(root / "r50.pt"), "--out", str(root / "export"),
                           "--dynamic-batch", "-q"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((root / "export" / "export.json").read_text())["input"]
    side = -(-MAX_SIZE // 32) * 32
    assert info["dynamic_size"] and info["height_range"] == [32, side] and info["width_range"] == [32, side]
    for name in ("model.onnx", "model.trt.onnx"):  # full shape inference passes with symbolic height/width
        onnx.checker.check_model(onnx.load(str(root / "export" / name)), full_check=True)
    return root / "r50.pt", root / "export"


def _plain_model(checkpoint: Path) -> torch.nn.Module:
    """The imported weights in a model built by torchvision itself (not by maskrt)."""
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4, min_size=MIN_SIZE,
                                  max_size=MAX_SIZE).eval()
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    return model


def _compare(ref: dict[str, torch.Tensor], cand, found: list[bool], score_diffs: list[float],  # noqa: ANN001
             mask_ious: list[float]) -> None:
    """Greedy same-label matching (box IoU >= MATCH_IOU) of the reference's detections with score >= SCORE_FLOOR."""
    keep = ref["scores"] >= SCORE_FLOOR
    boxes, scores, labels = ref["boxes"][keep], ref["scores"][keep], ref["labels"][keep]
    masks = ref["masks"][keep][:, 0] > 0.5
    ious = box_iou(boxes, torch.from_numpy(cand.boxes)) if len(cand) else torch.zeros((len(boxes), 0))
    used = torch.zeros(len(cand), dtype=torch.bool)
    for i in torch.argsort(scores, descending=True).tolist():
        ok = (torch.from_numpy(cand.labels) == labels[i]) & ~used & (ious[i] >= MATCH_IOU) if len(cand) else used
        found.append(bool(ok.any()))
        if ok.any():
            j = int(torch.where(ok, ious[i], torch.tensor(-1.0)).argmax())
            used[j] = True
            score_diffs.append(abs(float(scores[i]) - float(cand.scores[j])))
            a, b = masks[i].numpy(), cand.masks[j]
            if a.any():  # two empty masks would score IoU 1.0 and prove nothing: only real masks are counted
                mask_ious.append(float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum()))


@pytest.mark.slow
def test_both_graphs_find_what_plain_torchvision_finds(photos: Path, r50: tuple[Path, Path]) -> None:
    """Both graphs against one pass of plain torchvision (each photo alone, and a mixed landscape + portrait batch)."""
    checkpoint, export = r50
    model = _plain_model(checkpoint)
    files = sorted(photos.iterdir())
    images = [load_rgb(f) for f in files]
    batches = [[i] for i in range(len(images))] + [[0, len(images) - 1]]  # one mixed landscape + portrait batch
    with torch.no_grad():
        refs = [model([to_tensor(images[i]) for i in batch]) for batch in batches]
    for graph in ("portable", "trt"):
        found: list[bool] = []
        score_diffs: list[float] = []
        mask_ious: list[float] = []
        with Predictor.from_export(export, graph=graph) as predictor:
            for batch, batch_refs in zip(batches, refs, strict=True):
                cands = predictor.predict([images[i] for i in batch])
                for ref, cand in zip(batch_refs, cands, strict=True):
                    _compare(ref, cand, found, score_diffs, mask_ious)
        assert len(found) >= 100, "the reference must have detections above the floor for this test to mean anything"
        assert np.mean(found) >= 0.99, f"{graph}: found {np.mean(found):.4f} of plain torchvision's detections"
        assert np.median(score_diffs) <= 1e-4, (graph, np.median(score_diffs))
        assert len(mask_ious) >= 20, f"{graph}: only {len(mask_ious)} matched detections have a non-empty mask"
        assert np.median(mask_ious) >= 0.95, (graph, np.median(mask_ious))


# bf16 is not gated here: this random-init model's detections are degenerate boxes (0.02 px high, scores 0.97) whose
# IoU any rounding upsets (OpenVINO bf16: recall 0.15, median box IoU 0.65); tests/test_openvino.py gates bf16 on the
# trained real-accuracy model.
CANDIDATES = ("portable", "trt", "openvino-f32")


@pytest.fixture(scope="module")
def parity_reports(photos: Path, r50: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The parity gate on the photographs: model.onnx, model.trt.onnx and OpenVINO f32 (issue 23) in one process with
    one reference pass (OpenVINO runs outside the pytest process: README, OpenVINO; `maskrt parity` itself on a folder
    of images: test_parity_faults.py, test_export_parity.py)."""
    checkpoint, export = r50
    root = tmp_path_factory.mktemp("photo_parity")
    from maskrt.runtime.parity.compare import Candidate, Gates

    gates = Gates.for_precision("fp32", score_floor=SCORE_FLOOR)
    specs = [Candidate(export, root / graph, graph=graph, gates=gates) for graph in ("portable", "trt")]
    if importlib.util.find_spec("openvino") is not None:
        specs.append(Candidate(export, root / "openvino-f32", backend="openvino", precision="f32", gates=gates))
    script = ("import pickle, sys; from maskrt.runtime.parity.compare import run_parity_many; "
              "ckpt, specs, data = pickle.load(sys.stdin.buffer); run_parity_many(ckpt, specs, data, progress=False)")
    proc = subprocess.run([sys.executable, "-c", script], input=pickle.dumps((checkpoint, specs, photos)),
                          capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return {name: root / name for name in CANDIDATES}


@pytest.mark.slow
@pytest.mark.parametrize("candidate", CANDIDATES)
def test_parity_gate_passes_on_the_photographs(parity_reports: dict[str, Path], candidate: str) -> None:
    if candidate.startswith("openvino") and importlib.util.find_spec("openvino") is None:
        pytest.skip("the openvino extra is not installed (make test installs it)")
    out = parity_reports[candidate]
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and report["reference"] == "plain" and report["summary"]["images"] == 5
    assert report["summary"]["reference_detections_above_floor"] >= 100
    markdown = (out / "report.md").read_text()
    assert "vs plain reference" in markdown and "plain torchvision model(images)" in markdown
    for figure in [report["figures"]["matches"], *(f["file"] for f in report["figures"]["worst"])]:
        assert f"]({figure})" in markdown
        with Image.open(out / figure) as im:
            assert im.format == "PNG" and im.width > 100
    assert len(report["figures"]["worst"]) == 4


@pytest.mark.slow
def test_r50_trt_graph_builds_a_dynamic_size_engine(r50: tuple[Path, Path], plugin_library: Path) -> None:
    """The dynamic-size r50-fpn model.trt.onnx holds no op TensorRT-RTX cannot build and builds with an H/W
    optimization profile (32..MAX_SIZE per side, optimum MIN_SIZE x MAX_SIZE) on this GPU-less machine."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed (pip install tensorrt-rtx-cu13)")
    from maskrt.export.engine import build_engine

    _, export = r50
    ops = {node.op_type for node in onnx.load(str(export / "model.trt.onnx")).graph.node}
    assert not ops & FORBIDDEN_IN_TRT and {"MultiLevelRoIAlign", "BatchedNMS"} <= ops
    info = build_engine(export, builder="tensorrt-rtx", compute_capabilities=("8.9",))
    side = -(-MAX_SIZE // 32) * 32
    assert info.profiles["images"].min == (1, 3, 32, 32) and info.profiles["images"].opt == (1, 3, MIN_SIZE, side)
    assert info.profiles["images"].max == (4, 3, side, side)
    assert (export / "model.fp32.engine").stat().st_size > 100_000_000  # the r50-fpn weights are inside
