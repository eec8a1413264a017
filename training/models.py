"""Model factory: torchvision Mask R-CNN in three configurations.

- `slim`: CPU-trainable. ResNet-18 + FPN with 64 channels, smaller anchors (16-256 px), a 256-d
  two-layer box head, a 2-conv mask head of 64 channels, 64 sampled RoIs per image, images kept at
  128 px. Trains to a useful model on the shapes dataset in minutes on 2 cores. Its RoI poolers map
  boxes to FPN levels with canonical scale 112 instead of torchvision's 224 (a box of ~112 px goes to
  P4): on 128 px images torchvision's mapping sends every object to P2, the level with the least
  context, and the classifier learns more slowly (6-minute segm AP 37.8 vs 34-36 on the shapes data).
- `r50-fpn`: the architecture of torchvision's `maskrcnn_resnet50_fpn`.
- `r50-fpn-v2`: the architecture of torchvision's `maskrcnn_resnet50_fpn_v2`.

A model config is a plain dict (stored in checkpoints) so that a checkpoint rebuilds its own model.
`norm` is "bn" (BatchNorm, trained from scratch) or "frozen_bn" (FrozenBatchNorm2d in the backbone, as
torchvision uses with pretrained weights).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from maskrt.core.errors import MaskrtError

CONFIGS = ("slim", "r50-fpn", "r50-fpn-v2")

_DEFAULTS: dict[str, dict[str, Any]] = {
    "slim": {
        "min_size": 128, "max_size": 128, "norm": "bn",
        "fpn_channels": 64, "box_head_dim": 256, "mask_head_channels": 64, "mask_head_convs": 2,
        "anchor_sizes": [16, 32, 64, 128, 256], "box_batch_size_per_image": 64, "roi_canonical_scale": 112,
        "rpn_batch_size_per_image": 128,
        "rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 500,
        "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 300,
        "box_detections_per_img": 100,
    },
    "r50-fpn": {"min_size": 800, "max_size": 1333, "norm": "bn", "box_detections_per_img": 100},
    "r50-fpn-v2": {"min_size": 800, "max_size": 1333, "norm": "bn", "box_detections_per_img": 100},
}


def default_model_config(name: str, num_classes: int, **overrides: Any) -> dict[str, Any]:
    """The model config of `name` for `num_classes` object classes (background excluded)."""
    if name not in CONFIGS:
        raise MaskrtError(f"unknown model config '{name}' (choose from {', '.join(CONFIGS)})")
    if num_classes < 1:
        raise MaskrtError(f"num_classes must be at least 1, got {num_classes}")
    unknown = set(overrides) - set(_DEFAULTS[name])
    if unknown:
        raise MaskrtError(f"unknown option(s) for config '{name}': {', '.join(sorted(unknown))}")
    return {"name": name, "num_classes": num_classes, **_DEFAULTS[name], **overrides}


def default_canvas(model_config: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of a static export canvas: min_size x max_size of the config, rounded up to /32."""
    up = lambda v: int(-(-int(v) // 32) * 32)  # noqa: E731
    return up(model_config["min_size"]), up(model_config["max_size"])


def size_range(model_config: dict[str, Any]) -> tuple[int, int]:
    """(min, max) side of a padded batch as torchvision makes it: 32 .. max_size rounded up to 32.

    torchvision resizes so that the long side is at most max_size and pads each side up to a multiple of 32."""
    return 32, int(-(-int(model_config["max_size"]) // 32) * 32)


def _freeze_backbone_bn(backbone_body: nn.Module) -> None:
    """Replace every BatchNorm2d of the ResNet body by FrozenBatchNorm2d (torchvision's pretrained layout)."""
    for name, child in list(backbone_body.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(backbone_body, name, FrozenBatchNorm2d(child.num_features, eps=child.eps))
        else:
            _freeze_backbone_bn(child)


def _build_slim(cfg: dict[str, Any], num_labels: int) -> MaskRCNN:
    norm = FrozenBatchNorm2d if cfg["norm"] == "frozen_bn" else nn.BatchNorm2d
    body = resnet18(weights=None, norm_layer=norm)
    channels = cfg["fpn_channels"]
    backbone = BackboneWithFPN(
        body, return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[64, 128, 256, 512], out_channels=channels, extra_blocks=LastLevelMaxPool(),
    )
    sizes = tuple((s,) for s in cfg["anchor_sizes"])
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes))
    mask_ch = cfg["mask_head_channels"]
    canonical = int(cfg.get("roi_canonical_scale", 224))  # checkpoints older than the key used torchvision's 224
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=cfg["min_size"], max_size=cfg["max_size"],
        rpn_anchor_generator=anchors,
        rpn_batch_size_per_image=cfg["rpn_batch_size_per_image"],
        rpn_pre_nms_top_n_train=cfg["rpn_pre_nms_top_n_train"],
        rpn_post_nms_top_n_train=cfg["rpn_post_nms_top_n_train"],
        rpn_pre_nms_top_n_test=cfg["rpn_pre_nms_top_n_test"],
        rpn_post_nms_top_n_test=cfg["rpn_post_nms_top_n_test"],
        box_head=TwoMLPHead(channels * 7 * 7, cfg["box_head_dim"]),
        box_predictor=FastRCNNPredictor(cfg["box_head_dim"], num_labels),
        box_batch_size_per_image=cfg["box_batch_size_per_image"],
        box_detections_per_img=cfg["box_detections_per_img"],
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2, canonical_scale=canonical),
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2, canonical_scale=canonical),
        mask_head=MaskRCNNHeads(channels, [mask_ch] * cfg["mask_head_convs"], dilation=1),
        mask_predictor=MaskRCNNPredictor(mask_ch, mask_ch, num_labels),
    )


def build_model(cfg: dict[str, Any]) -> MaskRCNN:
    """Build the (randomly initialised) Mask R-CNN described by a model config."""
    name = cfg.get("name")
    if name not in CONFIGS:
        raise MaskrtError(f"unknown model config '{name}' (choose from {', '.join(CONFIGS)})")
    num_labels = int(cfg["num_classes"]) + 1  # + background
    if name == "slim":
        return _build_slim(cfg, num_labels)
    builder = maskrcnn_resnet50_fpn if name == "r50-fpn" else maskrcnn_resnet50_fpn_v2
    model = builder(weights=None, weights_backbone=None, num_classes=num_labels,
                    min_size=cfg["min_size"], max_size=cfg["max_size"],
                    box_detections_per_img=cfg["box_detections_per_img"])
    if cfg["norm"] == "frozen_bn":
        _freeze_backbone_bn(model.backbone.body)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
