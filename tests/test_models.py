"""Model factory and import of torchvision Mask R-CNN state_dict files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

from maskrt.core.defaults import MODEL_CONFIGS
from maskrt.core.errors import MaskrtError
from maskrt.training.checkpoint import load_checkpoint, model_from_checkpoint
from maskrt.training.models import CONFIGS, build_model, default_model_config
from maskrt.training.torchvision_import import import_torchvision


@pytest.mark.parametrize(("name", "builder"), [("r50-fpn", maskrcnn_resnet50_fpn),
                                                ("r50-fpn-v2", maskrcnn_resnet50_fpn_v2)])
def test_r50_configs_have_torchvisions_architecture(name: str, builder) -> None:
    ours = build_model(default_model_config(name, 5)).state_dict()
    ref = builder(weights=None, weights_backbone=None, num_classes=6).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}


def test_slim_is_slim_and_runs() -> None:
    cfg = default_model_config("slim", 3)
    model = build_model(cfg).eval()
    assert model.backbone.out_channels == 64
    assert model.roi_heads.box_head.fc7.out_features == 256
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    with torch.no_grad():
        out = model([torch.rand(3, 128, 128)])[0]
    assert set(out) == {"boxes", "labels", "scores", "masks"}


def test_slim_level_mapping_comes_from_its_config() -> None:
    cfg = default_model_config("slim", 3, roi_canonical_scale=96)
    heads = build_model(cfg).roi_heads
    assert heads.box_roi_pool.canonical_scale == heads.mask_roi_pool.canonical_scale == 96
    # a slim config written before the key existed was trained with torchvision's mapping
    del cfg["roi_canonical_scale"]
    heads = build_model(cfg).roi_heads
    assert heads.box_roi_pool.canonical_scale == heads.mask_roi_pool.canonical_scale == 224


def test_unknown_config() -> None:
    with pytest.raises(MaskrtError, match="unknown model config"):
        default_model_config("r101", 3)
    with pytest.raises(MaskrtError, match="unknown option"):
        default_model_config("slim", 3, colour="blue")
    assert CONFIGS == MODEL_CONFIGS  # one list: what the CLI offers is what the factory builds
    for name in CONFIGS:  # every config has defaults, and its own options are accepted
        assert default_model_config(name, 3, min_size=96)["min_size"] == 96


def _torchvision_like_file(tmp_path: Path, builder, num_classes: int, frozen: bool) -> tuple[Path, torch.nn.Module]:
    """A weights file in the format torchvision publishes (FrozenBatchNorm buffers, no num_batches_tracked)."""
    torch.manual_seed(0)
    if frozen:
        model = builder(weights=None, weights_backbone=None, num_classes=num_classes)
        from maskrt.training.models import _freeze_backbone_bn

        _freeze_backbone_bn(model.backbone.body)
        for m in model.backbone.body.modules():  # non-trivial statistics, as in a trained model
            if hasattr(m, "running_mean") and m.running_mean is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    else:
        model = builder(weights=None, weights_backbone=None, num_classes=num_classes)
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    return path, model.eval()


@pytest.mark.slow
@pytest.mark.parametrize(("builder", "name"), [(maskrcnn_resnet50_fpn, "r50-fpn"),
                                                (maskrcnn_resnet50_fpn_v2, "r50-fpn-v2")])
def test_import_torchvision_weights(tmp_path: Path, builder, name: str) -> None:
    path, ref = _torchvision_like_file(tmp_path, builder, 91, frozen=True)
    if name == "r50-fpn":
        assert "backbone.body.bn1.num_batches_tracked" not in torch.load(path, weights_only=True)
    out = tmp_path / "imported.pt"
    import_torchvision(path, out, min_size=160, max_size=160)
    ckpt = load_checkpoint(out)
    assert ckpt["model_config"]["name"] == name and ckpt["model_config"]["num_classes"] == 90
    assert ckpt["model_config"]["norm"] == "frozen_bn"
    assert ckpt["classes"][0] == {"id": 1, "name": "person"}  # label == COCO category id
    model = model_from_checkpoint(ckpt)
    ref.transform.min_size, ref.transform.max_size = (160,), 160
    ref.roi_heads.score_thresh = model.roi_heads.score_thresh = 0.0
    image = torch.rand(3, 150, 170)
    with torch.no_grad():
        a, b = model([image])[0], ref([image])[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"])


def test_import_reference_checkpoint_with_custom_classes(tmp_path: Path) -> None:
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    path = tmp_path / "ref.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)  # torchvision reference-script layout
    out = tmp_path / "c.pt"
    import_torchvision(path, out, class_names=["cat", "dog"])
    ckpt = load_checkpoint(out)
    assert ckpt["model_config"]["norm"] == "bn" and [c["name"] for c in ckpt["classes"]] == ["cat", "dog"]
    with pytest.raises(MaskrtError, match="c.pt: exists"):
        import_torchvision(path, out, class_names=["cat", "dog"])
    with pytest.raises(MaskrtError, match="2 classes but 3 names"):
        import_torchvision(path, out, class_names=["a", "b", "c"], force=True)


def test_import_rejects_non_mask_rcnn(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(MaskrtError, match="x.pth: not a torchvision Mask R-CNN"):
        import_torchvision(path, tmp_path / "o.pt")
    path.write_bytes(b"garbage")
    with pytest.raises(MaskrtError, match="x.pth: cannot read weights"):
        import_torchvision(path, tmp_path / "o.pt")
    assert not (tmp_path / "o.pt").exists()
