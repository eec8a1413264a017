"""The ResNet-C4 configs (slim-c4, r50-c4) and the edge config (mobilenet-fpn) through the pipeline (issue 25):
their architecture, `maskrt import` of their state_dict layout, a few training steps, the export of both graphs and
their parity against plain `model(images)` with the two-sided gates. (TensorRT-RTX builds them: test_full_model_rtx;
trained to real AP: `maskrt demo --config`, README "Model configs".)"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from maskrt.core.defaults import MODEL_CONFIGS
from maskrt.export.deploy import DeployMaskRCNN
from maskrt.training.checkpoint import load_checkpoint, model_from_checkpoint
from maskrt.training.models import build_model, default_model_config
from maskrt.training.torchvision_import import import_torchvision

NEW_CONFIGS = ("slim-c4", "r50-c4", "mobilenet-fpn")
#: r50-c4 at its default size runs res5 on 1000 RoIs per image (about 1 TFLOP): a small input and few RoIs keep its
#: test short on 2 cores (the architecture is the same).
SMALL = {"r50-c4": {"min_size": 128, "max_size": 128, "box_batch_size_per_image": 32, "rpn_pre_nms_top_n_train": 200,
                    "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100}}


def _model(name: str, classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(default_model_config(name, classes, **SMALL.get(name, {}))).eval()


@pytest.mark.parametrize("name", ["slim-c4", "r50-c4"])
def test_c4_configs_have_the_c4_head(name: str) -> None:
    """One stride-16 map; 15 anchors per location; RoIAlign 14x14 on it; res5 per RoI shared by the box and mask
    branches (7x7 after res5, average-pooled for the box predictor); 14x14 masks per class from a deconvolution."""
    model = _model(name)
    feats = model.backbone(torch.zeros(1, 3, 128, 192))
    assert list(feats) == ["0"] and feats["0"].shape[-2:] == (8, 12)  # stride 16
    assert feats["0"].shape[1] == model.backbone.out_channels == (1024 if name == "r50-c4" else 256)
    assert model.rpn.anchor_generator.num_anchors_per_location() == [15]
    heads = model.roi_heads
    assert heads.box_roi_pool.featmap_names == heads.mask_roi_pool.featmap_names == ["0"]
    assert heads.box_roi_pool.output_size == heads.mask_roi_pool.output_size == (14, 14)
    res5 = heads.box_head[0]
    assert res5 is heads.mask_head  # one set of res5 weights, as in detectron2's Res5ROIHeads
    pooled = torch.zeros(2, feats["0"].shape[1], 14, 14)
    with torch.no_grad():
        assert res5(pooled).shape[-2:] == (7, 7)
        assert heads.box_head(pooled).shape == (2, heads.box_predictor.cls_score.in_features)
        assert heads.mask_predictor(heads.mask_head(pooled)).shape == (2, 4, 14, 14)
        out = model([torch.rand(3, 100, 140)])[0]
    assert out["masks"].shape[1:] == (1, 100, 140)
    deploy = DeployMaskRCNN(model, height=128, width=128)
    assert deploy.box_spec.spatial_scales == deploy.mask_spec.spatial_scales == (1 / 16,)
    assert deploy.mask_size == 14


def test_an_image_without_detections_keeps_the_c4_mask_side() -> None:
    """The reference's fixed slots of an image where nothing is detected have the model's mask side (14 for C4), so
    that they compare with the graph's outputs (a 28x28 default broke parity on the first empty image)."""
    import numpy as np

    from maskrt.runtime.parity.reference import PlainReference

    model = _model("slim-c4")
    with torch.no_grad():  # background always wins: no detection
        model.roi_heads.box_predictor.cls_score.bias[0] = 50.0
    raws, dets = PlainReference(model, 100)([np.zeros((90, 120, 3), np.uint8)])
    assert raws[0].num == 0 and len(dets[0]) == 0 and raws[0].masks.shape == (100, 14, 14)


def test_mobilenet_fpn_is_torchvisions_mobile_detector_with_a_stride_16_level() -> None:
    model = _model("mobilenet-fpn")
    cfg = default_model_config("mobilenet-fpn", 3)
    assert (cfg["min_size"], cfg["max_size"]) == (320, 640)  # torchvision's *_320_fpn mobile detectors
    feats = model.backbone(torch.zeros(1, 3, 320, 320))
    assert {k: v.shape[-1] for k, v in feats.items()} == {"0": 20, "1": 10, "pool": 5}  # strides 16, 32, 64
    assert model.backbone.out_channels == 256
    assert model.rpn.anchor_generator.num_anchors_per_location() == [15, 15, 15]
    assert model.rpn._post_nms_top_n["testing"] == 150 and model.rpn.score_thresh == 0.05
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1"]
    deploy = DeployMaskRCNN(model, height=320, width=320)
    assert deploy.box_spec.spatial_scales == (1 / 16, 1 / 32) and deploy.mask_size == 28
    with torch.no_grad():
        out = model([torch.rand(3, 128, 96)])[0]
    assert out["masks"].shape[1:] == (1, 128, 96)


def test_every_config_is_known_and_builds_from_its_own_checkpoint(tmp_path: Path) -> None:
    assert set(MODEL_CONFIGS) >= {"slim", "r50-fpn", "r50-fpn-v2", *NEW_CONFIGS}
    from maskrt.training.checkpoint import make_checkpoint, save_checkpoint

    for name in ("slim-c4", "mobilenet-fpn"):
        model = _model(name)
        cfg = default_model_config(name, 3)
        path = tmp_path / f"{name}.pt"
        save_checkpoint(path, make_checkpoint(model_config=cfg, state_dict=model.state_dict(),
                                              classes=[{"id": i, "name": str(i)} for i in (1, 2, 3)]))
        again = model_from_checkpoint(load_checkpoint(path))
        image = torch.rand(3, 96, 112)
        with torch.no_grad():
            a, b = model([image])[0], again([image])[0]
        assert torch.equal(a["scores"], b["scores"]) and torch.equal(a["masks"], b["masks"])


@pytest.mark.parametrize("name", ["slim", "slim-c4", "mobilenet-fpn",
                                  pytest.param("r50-c4", marks=pytest.mark.slow)])
def test_import_detects_each_layout(name: str, tmp_path: Path) -> None:
    """`maskrt import` of a state_dict of each config's layout: the config is read from the keys (and the norm from
    the BatchNorm buffers), the sizes default to the config's, and the imported model computes what the original
    does."""
    model = _model(name, classes=4)
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    out = tmp_path / "imported.pt"
    import_torchvision(path, out, class_names=["a", "b", "c", "d"])
    ckpt = load_checkpoint(out)
    cfg = default_model_config(name, 4)
    assert ckpt["model_config"]["name"] == name and ckpt["model_config"]["norm"] == "bn"
    assert (ckpt["model_config"]["min_size"], ckpt["model_config"]["max_size"]) == (cfg["min_size"], cfg["max_size"])
    imported = model_from_checkpoint(ckpt)
    imported.transform = model.transform  # same resize as the original (r50-c4 is built small here)
    image = torch.rand(3, 90, 120)
    with torch.no_grad():
        a, b = model([image])[0], imported([image])[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"])


def _train_a_few_steps(name: str, data: Path, out: Path) -> Path:
    from maskrt.training.trainer import Trainer, TrainOptions

    result = Trainer(TrainOptions(data=data, out=out, config=name, iters=2, eval_every=10**9, progress=False,
                                  model_overrides=SMALL.get(name, {}))).train()
    assert result.step == 2
    return out / "last.pt"


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_CONFIGS)
def test_a_few_steps_then_both_graphs_pass_parity(name: str, shapes_dir: Path, tmp_path: Path) -> None:
    """Train two steps, export both graphs (dynamic size) and gate them against plain `model(images)` with the fp32
    two-sided gates. The briefly trained model's scores spread above the 0.05 floor (its classifier has not learnt
    the background yet), so every slot is evidence; the C4 graphs pool one level and return 14x14 masks."""
    from maskrt.export.onnx_export import export_checkpoint
    from maskrt.runtime.parity.compare import Candidate, Gates, run_parity_many

    ckpt = _train_a_few_steps(name, shapes_dir, tmp_path / "run")
    export = tmp_path / "export"
    info = export_checkpoint(ckpt, export)
    assert info.input.dynamic_size
    side = 14 if name.endswith("c4") else 28
    for graph in ("model.onnx", "model.trt.onnx"):
        masks = next(o for o in onnx.load(str(export / graph)).graph.output if o.name == "masks")
        assert [d.dim_value for d in masks.type.tensor_type.shape.dim[-2:]] == [side, side]
    levels = 1 if name.endswith("c4") else 2
    assert len(info.roi_align["box"]["spatial_scales"]) == len(info.roi_align["mask"]["spatial_scales"]) == levels
    gates = Gates(score_floor=0.05, min_detections=100)
    candidates = [Candidate(export, tmp_path / graph, graph=graph, gates=gates) for graph in ("portable", "trt")]
    for report in run_parity_many(ckpt, candidates, shapes_dir, limit=2, progress=False):
        summary = report["summary"]
        assert report["verdict"] == "passed", (report["graph"], report["reason"],
                                               [g for g in report["gates"] if g["passed"] is False])
        assert summary["reference_detections_above_floor"] >= 100, summary
        assert summary["candidate_detections_above_floor"] >= 100, summary
