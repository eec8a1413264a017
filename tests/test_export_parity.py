"""Export (both ONNX flavors) and parity against the torch reference, on CPU.

(a) the slim model trained to real accuracy (conftest.accurate_model, segm AP >= 45) and its four-graph export, (b)
seeded random-init r50-fpn-v2 (dynamic size) and r50-fpn (a static canvas) at batch 2, both graphs (r50-fpn with a
dynamic size: test_photographs.py; the C4 and mobilenet configs: test_model_configs.py); an image set with zero
detections (an inconclusive verdict, never a pass). Faults the gate must catch: test_parity_faults.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from conftest import ACCURATE, VAL_FP32

from maskrt.export.onnx_export import FORBIDDEN_IN_TRT, export_checkpoint
from maskrt.runtime.parity.compare import Candidate, Gates, ReferenceCache, run_parity, run_parity_many
from maskrt.training.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from maskrt.training.models import build_model, default_model_config

CLI = [sys.executable, "-m", "maskrt.cli"]
CLASSES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "rectangle"}, {"id": 3, "name": "triangle"}]


def _random_checkpoint(path: Path, config: str, height: int, width: int, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = default_model_config(config, 3, min_size=min(height, width), max_size=max(height, width))
    model = build_model(cfg)  # seeded random init: distinct, unsaturated scores well above the floor
    save_checkpoint(path, make_checkpoint(model_config=cfg, state_dict=model.state_dict(), classes=CLASSES))
    return path


def _graph_ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.slow
def test_trained_slim_export_holds_each_graphs_ops(accurate_model, accurate_export: Path) -> None:  # noqa: ANN001
    """The trained slim model's export (conftest.accurate_export: `export --fp16`, then `quantize`): the graphs hold
    the ops of their flavor, and the level mapping of the checkpoint's poolers reaches the export record and every
    plugin node. (Their parity: the clean rows of test_parity_faults.py, all four graphs on the COCO split and on a
    folder of images.)"""
    export = accurate_export
    info = json.loads((export / "export.json").read_text())
    assert info["classes"] == CLASSES and info["opset"] >= 17
    assert info["roi_align"]["box"]["sampling_ratio"] == 2 and info["roi_align"]["box"]["aligned"] == 0
    portable, trt = _graph_ops(export / "model.onnx"), _graph_ops(export / "model.trt.onnx")
    assert "RoiAlign" in portable and "NonMaxSuppression" in portable
    assert {"MultiLevelRoIAlign", "BatchedNMS"} <= trt and not trt & FORBIDDEN_IN_TRT
    canonical = float(load_checkpoint(accurate_model.checkpoint)["model_config"]["roi_canonical_scale"])
    assert info["roi_align"]["box"]["canonical_scale"] == info["roi_align"]["mask"]["canonical_scale"] == canonical
    pools = [n for n in onnx.load(str(export / "model.trt.onnx")).graph.node if n.op_type == "MultiLevelRoIAlign"]
    assert len(pools) == 2
    for node in pools:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["canonical_scale"] == canonical
    assert "RoiAlign" not in _graph_ops(export / "model.trt.fp16.onnx")
    int8 = _graph_ops(export / "model.int8.onnx")
    assert {"QuantizeLinear", "DequantizeLinear", "RoiAlign", "NonMaxSuppression"} <= int8


@pytest.mark.slow
@pytest.mark.parametrize(("config", "height", "width", "batch", "static"), [
    # r50-fpn with a dynamic size at batch 1 and 2: tests/test_photographs.py (five photographs, a mixed batch)
    ("r50-fpn-v2", 128, 224, 2, False),
    ("r50-fpn", 128, 224, 2, True),
])
def test_random_r50_parity(config: str, height: int, width: int, batch: int, static: bool, shapes_dir: Path,
                           tmp_path: Path) -> None:
    """Dynamic-size exports against plain model(images); a static canvas larger than torchvision's padding against
    the same-canvas reference (the export itself is exact; its canvas effect is test_static_canvas_effect's). Both
    graphs against one reference pass."""
    ckpt = _random_checkpoint(tmp_path / "r50.pt", config, height, width)
    size = {"height": height, "width": width} if static else {}
    export_checkpoint(ckpt, tmp_path / "export", batch=batch, **size)
    gates = Gates(score_floor=0.05)
    candidates = [Candidate(tmp_path / "export", tmp_path / graph, graph=graph, gates=gates)
                  for graph in ("portable", "trt")]
    reports = run_parity_many(ckpt, candidates, shapes_dir, limit=2, progress=False,
                              reference="canvas" if static else "plain")
    for report in reports:
        assert report["verdict"] == "passed", (report["graph"], report["reason"], report["gates"])
        assert report["summary"]["reference_detections_above_floor"] >= gates.min_detections
        assert report["summary"]["unmatched_candidate_detections"] == 0
        assert report["raw_outputs"]["num_detections"]["abs"]["max"] == 0
        assert report["raw_outputs"]["scores"]["abs"]["max"] < 1e-4


def test_the_reference_cache_runs_plain_model_once_per_image(world: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """parity.ReferenceCache (accuracy control's steps, the fault catalogue): a second run on the same checkpoint
    reuses plain model(images)'s outputs, with the same result; another checkpoint runs it again."""
    from maskrt.runtime.parity import reference

    calls: list[int] = []
    original = reference.PlainReference.__call__

    def counting(self, images):  # noqa: ANN001, ANN202
        calls.append(len(images))
        return original(self, images)

    monkeypatch.setattr(reference.PlainReference, "__call__", counting)
    cache = ReferenceCache()
    gates = Gates(score_floor=0.05, min_detections=1, min_score_pairs=1)

    def run(checkpoint: Path, out: str) -> dict:
        (report,) = run_parity_many(checkpoint, [Candidate(world / "export", tmp_path / out, gates=gates)],
                                    world / "data", progress=False, figures=False, cache=cache)
        return report

    first = run(world / "ckpt.pt", "first")
    assert sum(calls) == first["summary"]["images"] == 8
    second = run(world / "ckpt.pt", "second")
    assert sum(calls) == 8  # nothing ran again
    assert second["summary"]["coco"]["delta"] == first["summary"]["coco"]["delta"]
    assert second["per_image"] == first["per_image"] and second["raw_outputs"] == first["raw_outputs"]
    other = tmp_path / "other.pt"
    other.write_bytes((world / "ckpt.pt").read_bytes() + b"")  # the same weights in another file: same sha256
    run(other, "third")
    assert sum(calls) == 8
    changed = load_checkpoint(world / "ckpt.pt")
    changed["state_dict"]["roi_heads.box_predictor.cls_score.bias"] += 1.0
    save_checkpoint(other, changed)
    run(other, "fourth")
    assert sum(calls) == 16  # another checkpoint: the reference runs again


def test_fast_tier_whole_model_against_plain_torchvision(tmp_path: Path, shapes_dir: Path) -> None:
    """The fast tier's whole-model check: a seeded random slim model whose scores spread over its 100 detection slots,
    exported, both graphs on ONNX Runtime against plain torchvision `model(images)` through the parity gate (fp32
    gates), with the evidence counted: every slot of both images compared."""
    from maskrt.runtime.bench.compare import random_checkpoint

    ckpt = random_checkpoint(tmp_path / "slim.pt", "slim")
    export_checkpoint(ckpt, tmp_path / "export")
    gates = Gates(score_floor=0.05, min_detections=100)
    candidates = [Candidate(tmp_path / "export", tmp_path / graph, graph=graph, gates=gates)
                  for graph in ("portable", "trt")]
    for report in run_parity_many(ckpt, candidates, shapes_dir / "val", limit=2, progress=False):  # 90 classes: images
        summary = report["summary"]
        assert report["passed"], (report["graph"], [g for g in report["gates"] if g["passed"] is False])
        assert summary["images"] == 2 and summary["reference_detections_above_floor"] >= 150, summary
        assert summary["candidate_detections_above_floor"] == summary["reference_detections_above_floor"]


@pytest.mark.slow
def test_zero_detections_are_inconclusive(tmp_path: Path, shapes_dir: Path) -> None:
    """A model that detects nothing: parity compares nothing, so its verdict is INCONCLUSIVE (exit 3), never PASSED;
    predict writes empty results."""
    torch.manual_seed(0)
    cfg = default_model_config("slim", 3)
    model = build_model(cfg)
    with torch.no_grad():  # background always wins: no detection at all
        model.roi_heads.box_predictor.cls_score.bias[0] = 50.0
    ckpt = tmp_path / "empty.pt"
    save_checkpoint(ckpt, make_checkpoint(model_config=cfg, state_dict=model.state_dict(), classes=CLASSES))
    export_checkpoint(ckpt, tmp_path / "export")
    proc = subprocess.run([*CLI, "parity", "--checkpoint", str(ckpt), "--model", str(tmp_path / "export"), "--data",
                           str(shapes_dir / "val"), "--out", str(tmp_path / "rep"), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "INCONCLUSIVE" in proc.stdout
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["verdict"] == "inconclusive" and not report["passed"] and report["summary"]["images"] == 8
    assert report["summary"]["reference_detections_above_floor"] == 0
    assert report["summary"]["candidate_detections_above_floor"] == 0
    assert {g["passed"] for g in report["gates"]} == {None}  # nothing measured: no gate passes on no evidence
    out = tmp_path / "pred"
    proc = subprocess.run([*CLI, "predict", "--model", str(tmp_path / "export"), "--out", str(out), "-q",
                           str(shapes_dir / "val")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "results.json").read_text()) == []
    assert len(list(out.glob("*.png"))) == 8


@pytest.mark.slow
def test_int8_quantize_then_parity(accurate_model, accurate_export: Path, low_precision_reports: dict,  # noqa: ANN001
                                   tmp_path: Path) -> None:
    """The INT8 pipeline on the trained slim model: `maskrt quantize` (QDQ, calibrated on training images) writes the
    graph that passes the INT8 gates on the whole validation split (the fixture's, byte for byte:
    conftest.low_precision_reports gates it), and `maskrt parity --graph portable_int8` on 32 of those images says
    INCONCLUSIVE (exit 3): on so few, the dAP's 90% interval straddles the 1.0 limit, and the report says about how
    many images would decide it."""
    export_checkpoint(accurate_model.checkpoint, tmp_path / "export")
    proc = subprocess.run([*CLI, "quantize", "--model", str(tmp_path / "export"), "--calibration",
                           str(accurate_model.data / "train"), "--images", "32", "--out", str(tmp_path / "int8"), "-q"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((tmp_path / "int8" / "export.json").read_text())
    assert info["quantization"]["method"] == "minmax" and info["quantization"]["images"] == 32
    assert info["graphs"]["portable_int8"]["file"] == "model.int8.onnx"
    ops = _graph_ops(tmp_path / "int8" / "model.int8.onnx")
    assert {"QuantizeLinear", "DequantizeLinear", "RoiAlign", "NonMaxSuppression"} <= ops
    assert sorted(p.name for p in (tmp_path / "int8").iterdir()) == ["export.json", "model.int8.onnx", "model.onnx",
                                                                      "model.trt.int8.onnx", "model.trt.onnx"]
    fixture = json.loads((accurate_export / "export.json").read_text())["graphs"]["portable_int8"]
    assert info["graphs"]["portable_int8"]["sha256"] == fixture["sha256"]  # the graph gated on the whole split

    whole = low_precision_reports["portable_int8"]
    assert whole["verdict"] == "passed" and whole["summary"]["images"] == ACCURATE["val"], whole["reason"]
    assert whole["summary"]["reference_detections_above_floor"] >= 2000
    assert whole["summary"]["coco"]["reference"]["segm"]["AP"] >= ACCURATE["min_ap"]  # a model with real accuracy
    for t in ("bbox", "segm"):
        interval = whole["summary"]["coco"]["interval"][t]
        assert interval["confidence"] == 0.9 and interval["resamples"] == 1000
        assert interval["low"] <= whole["summary"]["coco"]["delta"][t] <= interval["high"]
        assert -1.0 <= interval["low"] and interval["high"] <= 1.0, interval
    gates = {g["gate"]: g for g in whole["gates"]}
    assert gates["bbox dAP"]["limit"] == gates["segm dAP"]["limit"] == 1.0 and gates["precision"]["limit"] == 0.9
    assert gates["p99 score diff"]["pairs"] >= 2000  # the tail rests on enough pairs
    assert whole["raw_outputs"]["scores"]["abs"]["max"] > 0  # INT8 does change the numbers

    proc = subprocess.run([*CLI, "parity", "--checkpoint", str(accurate_model.checkpoint), "--model",
                           str(tmp_path / "int8"), "--graph", "portable_int8", "--data", str(accurate_model.data),
                           "--limit", str(VAL_FP32), "--out", str(tmp_path / "report"), "-q"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 3, proc.stdout + proc.stderr[-2000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["verdict"] == "inconclusive" and report["precision"] == "int8" and report["graph"] == "portable_int8"
    assert report["summary"]["reference_detections_above_floor"] >= report["evidence"]["min_detections"] == 50
    assert not [g for g in report["gates"] if g["passed"] is False], report["reason"]
    undecided = [g for g in report["gates"] if g["status"] == "inconclusive"]
    assert undecided and {g["gate"] for g in undecided} <= {"bbox dAP", "segm dAP"}, report["reason"]
    assert all(g["decide_images"] > VAL_FP32 for g in undecided if g["decide_images"] is not None)
    assert "straddles the limit" in report["reason"] and "INCONCLUSIVE" in proc.stdout
    assert report["machine"]["cpu"]  # the report names the CPU it ran on
    markdown = (tmp_path / "report" / "report.md").read_text()  # the interval beside the point value, the machine
    assert "90% interval of delta" in markdown and "| INCONCLUSIVE |" in markdown and "straddles" in markdown
    assert f"Machine: {report['machine']['cpu']}" in markdown and "pairs)" in markdown


@pytest.mark.slow
def test_static_canvas_effect(accurate_model, tmp_path: Path) -> None:  # noqa: ANN001
    """A static canvas wider than torchvision's padding (96 px images -> 128x192) is measured, not hidden: against
    the plain reference its outputs differ more than against the same-canvas reference, which it matches exactly."""
    ckpt = accurate_model.checkpoint
    info = export_checkpoint(ckpt, tmp_path / "export", height=128, width=192)
    assert not info.input.dynamic_size and info.input.height_range == (128, 128)
    dims = onnx.load(str(tmp_path / "export" / "model.trt.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 128, 192]
    reports = {}
    for reference in ("plain", "canvas"):
        reports[reference] = run_parity(ckpt, Candidate(tmp_path / "export", tmp_path / reference, graph="trt"),
                                        accurate_model.data, reference=reference, limit=VAL_FP32, progress=False)
        assert f"vs {reference} reference" in (tmp_path / reference / "report.md").read_text()
    plain, canvas = reports["plain"], reports["canvas"]
    assert canvas["verdict"] == "passed" and canvas["raw_outputs"]["scores"]["abs"]["max"] < 1e-4
    assert canvas["summary"]["reference_detections_above_floor"] >= 50
    assert plain["summary"]["coco"]["delta"].keys() == {"bbox", "segm"}  # the canvas effect, in dAP
    assert plain["raw_outputs"]["scores"]["abs"]["max"] > 10 * canvas["raw_outputs"]["scores"]["abs"]["max"]


@pytest.mark.slow
def test_another_checkpoints_export_is_rejected(accurate_model, tmp_path: Path) -> None:  # noqa: ANN001
    """An export of another checkpoint (one FPN convolution x1.5) fails parity against the trained one, and the report
    says the checkpoint does not match the export."""
    ckpt = load_checkpoint(accurate_model.checkpoint)
    key = "backbone.fpn.layer_blocks.0.0.weight"  # one conv of the FPN (P2 output)
    ckpt["state_dict"][key] = ckpt["state_dict"][key] * 1.5
    bad = tmp_path / "perturbed.pt"
    save_checkpoint(bad, ckpt)
    export_checkpoint(bad, tmp_path / "export")
    proc = subprocess.run([*CLI, "parity", "--checkpoint", str(accurate_model.checkpoint), "--model",
                           str(tmp_path / "export"), "--data", str(accurate_model.data), "--limit", "16",
                           "--out", str(tmp_path / "rep"), "-q"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED (gate" in proc.stdout
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["verdict"] == "failed" and not report["passed"] and not report["checkpoint_matches_export"]
    assert report["summary"]["reference_detections_above_floor"] >= 50


@pytest.mark.slow
def test_dynamic_batch(accurate_model, tmp_path: Path) -> None:  # noqa: ANN001
    from maskrt.core.images import load_rgb
    from maskrt.runtime.predictor import Predictor
    from maskrt.training.coco import load_split

    info = export_checkpoint(accurate_model.checkpoint, tmp_path / "export", dynamic_batch=True)
    assert info.input.dynamic_batch
    dims = onnx.load(str(tmp_path / "export" / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    ds = load_split(accurate_model.data, "val", train=False)
    images = [load_rgb(ds.image_path(i)) for i in range(3)]
    ref = Predictor.from_export(tmp_path / "export", backend="torch", checkpoint=accurate_model.checkpoint)
    for graph in ("portable", "trt"):
        pred = Predictor.from_export(tmp_path / "export", graph=graph)
        for n in (1, 3):  # one session, two batch sizes
            got, _, _ = pred.raw(images[:n])
            want, _, _ = ref.raw(images[:n])
            assert [g.num for g in got] == [w.num for w in want] and sum(g.num for g in got) > 0
            for g, w in zip(got, want, strict=True):
                _assert_same_detections(g, w)


def _assert_same_detections(got, want, box_tol: float = 1e-3, score_tol: float = 1e-5) -> None:
    """The same detections (label, box, score within tolerance), allowing detections whose scores tie
    within `score_tol` to come out in either order."""
    n = got.num
    assert n == want.num
    free = list(range(n))
    for i in range(n):
        hit = [j for j in free if got.labels[i] == want.labels[j] and abs(got.scores[i] - want.scores[j]) < score_tol
               and abs(got.boxes[i] - want.boxes[j]).max() < box_tol]
        assert hit, f"detection {i} ({got.labels[i]}, {got.scores[i]:.6f}, {got.boxes[i]}) has no counterpart"
        free.remove(hit[0])
