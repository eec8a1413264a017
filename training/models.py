"""Model factory: torchvision Mask R-CNN in six configurations, from torchvision's parts.

- `slim`: CPU-trainable. ResNet-18 + FPN with 64 channels, smaller anchors (16-256 px), a 256-d
  two-layer box head, a 2-conv mask head of 64 channels, 64 sampled RoIs per image, images kept at
  128 px. Trains to a useful model on the shapes dataset in minutes on 2 cores. Its RoI poolers map
  boxes to FPN levels with canonical scale 112 instead of torchvision's 224 (a box of ~112 px goes to
  P4): on 128 px images torchvision's mapping sends every object to P2, the level with the least
  context, and the classifier learns more slowly (6-minute segm AP 37.8 vs 34-36 on the shapes data).
- `r50-fpn`: the architecture of torchvision's `maskrcnn_resnet50_fpn`.
- `r50-fpn-v2`: the architecture of torchvision's `maskrcnn_resnet50_fpn_v2`.
- `r50-c4`: the Mask R-CNN paper's ResNet-C4 head (detectron2's R50-C4): the ResNet-50 stem and stages 1-4 give one
  stride-16 map (1024 channels); the RPN has 15 anchors (sizes 32-512, ratios 0.5/1/2) on it; RoIAlign pools 14x14
  on it (one level); the fifth ResNet stage (res5, torchvision's `layer4`) runs per RoI (7x7x2048), average pooling
  feeds the classifier and box regressor; the mask branch runs the same res5 (shared weights, as detectron2) on the
  detected boxes and deconvolves to 14x14 masks per class (`MaskRCNNPredictor`).
- `slim-c4`: the C4 head at `slim`'s size: ResNet-18 stages 1-3 (256 channels at stride 16), a res5 of one
  torchvision `BasicBlock` (stride 2, 128 channels), 128 px images, anchors 16-256, 32 sampled RoIs per image.
- `mobilenet-fpn`: an edge-sized model: a MobileNetV3-Large FPN backbone (torchvision's `mobilenet_v3_large` features
  and `BackboneWithFPN`, 256 channels, a max-pool level) with the anchors, RPN limits and 320-px sizes of torchvision's
  `fasterrcnn_mobilenet_v3_large_320_fpn`, RoIAlign over its stride-16 and stride-32 maps, a 1024-d box head, a
  2-conv mask head of 128 channels and 128 sampled RoIs per image (torchvision ships no mobile Mask R-CNN; this
  mask head is sized for it). The FPN takes the end of the stride-16 stage (features[12]) and the last map
  (features[16]): torchvision's `backbone_utils.mobilenet_backbone` returns two stride-32 maps (features[13] and
  [16]), which leaves RoIAlign no stride-16 level for small objects and whose equal scales its level mapping
  collapses to one.

A model config is a plain dict (stored in checkpoints) so that a checkpoint rebuilds its own model.
`norm` is "bn" (BatchNorm, trained from scratch) or "frozen_bn" (FrozenBatchNorm2d in the backbone, as
torchvision uses with pretrained weights).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet50
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.resnet import BasicBlock
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from maskrt.core.defaults import MODEL_CONFIGS
from maskrt.core.errors import MaskrtError, check_choice

CONFIGS = MODEL_CONFIGS
#: Backbone normalisations: BatchNorm2d (trained from scratch) or FrozenBatchNorm2d (pretrained, as torchvision's)
NORMS = ("bn", "frozen_bn")

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
    "slim-c4": {  # res5 runs per sampled RoI in training: 32 of them (slim: 64) make a step 0.36 s here, not 0.65 s
        "min_size": 128, "max_size": 128, "norm": "bn", "res5_channels": 128, "anchor_sizes": [16, 32, 64, 128, 256],
        "box_batch_size_per_image": 32, "rpn_batch_size_per_image": 128,
        "rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 500,
        "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 300,
        "box_detections_per_img": 100,
    },
    "r50-c4": {
        "min_size": 800, "max_size": 1333, "norm": "bn", "anchor_sizes": [32, 64, 128, 256, 512],
        "box_batch_size_per_image": 512, "rpn_batch_size_per_image": 256,
        "rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 2000,
        "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
        "box_detections_per_img": 100,
    },
    "mobilenet-fpn": {  # 128 sampled RoIs per image (torchvision: 512): the heads on them made a step 1.9 s, now 0.94 s
        "min_size": 320, "max_size": 640, "norm": "bn", "box_head_dim": 1024, "mask_head_channels": 128,
        "mask_head_convs": 2, "box_batch_size_per_image": 128, "rpn_batch_size_per_image": 256,
        "rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 2000,
        "rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150, "rpn_score_thresh": 0.05,
        "box_detections_per_img": 100,
    },
}


def default_model_config(name: str, num_classes: int, **overrides: Any) -> dict[str, Any]:
    """The model config of `name` for `num_classes` object classes (background excluded)."""
    check_choice("model config", name, CONFIGS)
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


def _norm_layer(cfg: dict[str, Any]) -> type[nn.Module]:
    """FrozenBatchNorm2d for norm "frozen_bn" (torchvision's pretrained layout), else BatchNorm2d."""
    return FrozenBatchNorm2d if cfg["norm"] == "frozen_bn" else nn.BatchNorm2d


def _build_slim(cfg: dict[str, Any], num_labels: int) -> MaskRCNN:
    norm = _norm_layer(cfg)
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
        **_rpn_options(cfg),
        box_head=TwoMLPHead(channels * 7 * 7, cfg["box_head_dim"]),
        box_predictor=FastRCNNPredictor(cfg["box_head_dim"], num_labels),
        box_batch_size_per_image=cfg["box_batch_size_per_image"],
        box_detections_per_img=cfg["box_detections_per_img"],
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2, canonical_scale=canonical),
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2, canonical_scale=canonical),
        mask_head=MaskRCNNHeads(channels, [mask_ch] * cfg["mask_head_convs"], dilation=1),
        mask_predictor=MaskRCNNPredictor(mask_ch, mask_ch, num_labels),
    )


def _rpn_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """MaskRCNN's RPN keyword arguments from a config."""
    keys = ("rpn_batch_size_per_image", "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train",
            "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "rpn_score_thresh")
    return {k: cfg[k] for k in keys if k in cfg}


def _one_level_anchors(sizes: list[int]) -> AnchorGenerator:
    """All anchor sizes x ratios 0.5/1/2 on one feature map (the C4 RPN: 15 anchors per location)."""
    return AnchorGenerator(sizes=(tuple(sizes),), aspect_ratios=((0.5, 1.0, 2.0),))


class C4Backbone(nn.Module):
    """A torchvision ResNet's stem and stages 1-3 (res2-res4): one stride-16 feature map, named "0"."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
        self.body = nn.Sequential(OrderedDict((n, getattr(resnet, n)) for n in names))
        last = resnet.layer3[-1]
        self.out_channels = int((last.bn3 if hasattr(last, "bn3") else last.bn2).weight.shape[0])  # FrozenBN too

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return OrderedDict([("0", self.body(x))])


def _build_c4(cfg: dict[str, Any], num_labels: int) -> MaskRCNN:
    """ResNet-C4 Mask R-CNN: stages 1-4 as the backbone, res5 per RoI shared by the box and mask heads."""
    norm = _norm_layer(cfg)
    if cfg["name"] == "r50-c4":
        body = resnet50(weights=None, norm_layer=norm)
        res5, res5_out = body.layer4, 2048
    else:  # slim-c4: one BasicBlock as res5
        body = resnet18(weights=None, norm_layer=norm)
        res5_out = int(cfg["res5_channels"])
        down = nn.Sequential(nn.Conv2d(256, res5_out, 1, stride=2, bias=False), norm(res5_out))
        res5 = nn.Sequential(BasicBlock(256, res5_out, stride=2, downsample=down, norm_layer=norm))
    backbone = C4Backbone(body)
    pool14 = MultiScaleRoIAlign(["0"], 14, 2)
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=cfg["min_size"], max_size=cfg["max_size"],
        rpn_anchor_generator=_one_level_anchors(cfg["anchor_sizes"]),
        **_rpn_options(cfg),
        box_roi_pool=pool14,
        box_head=nn.Sequential(res5, nn.AdaptiveAvgPool2d(1), nn.Flatten(1)),
        box_predictor=FastRCNNPredictor(res5_out, num_labels),
        box_batch_size_per_image=cfg["box_batch_size_per_image"],
        box_detections_per_img=cfg["box_detections_per_img"],
        mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
        mask_head=res5,  # the same module: detectron2's Res5ROIHeads shares res5 between the box and mask branches
        mask_predictor=MaskRCNNPredictor(res5_out, 256 if cfg["name"] == "r50-c4" else 64, num_labels),
    )


def _build_mobilenet_fpn(cfg: dict[str, Any], num_labels: int) -> MaskRCNN:
    """MobileNetV3-Large FPN Mask R-CNN (torchvision's mobile detector's backbone, RPN and sizes)."""
    norm = _norm_layer(cfg)
    features = mobilenet_v3_large(weights=None, norm_layer=norm).features
    backbone = BackboneWithFPN(features, return_layers={"12": "0", "16": "1"},
                               in_channels_list=[features[12].out_channels, features[16].out_channels],
                               out_channels=256, extra_blocks=LastLevelMaxPool())
    sizes = ((32, 64, 128, 256, 512),) * 3
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * 3)
    channels, mask_ch = backbone.out_channels, cfg["mask_head_channels"]
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=cfg["min_size"], max_size=cfg["max_size"],
        rpn_anchor_generator=anchors,
        **_rpn_options(cfg),
        box_roi_pool=MultiScaleRoIAlign(["0", "1"], 7, 2),
        box_head=TwoMLPHead(channels * 7 * 7, cfg["box_head_dim"]),
        box_predictor=FastRCNNPredictor(cfg["box_head_dim"], num_labels),
        box_batch_size_per_image=cfg["box_batch_size_per_image"],
        box_detections_per_img=cfg["box_detections_per_img"],
        mask_roi_pool=MultiScaleRoIAlign(["0", "1"], 14, 2),
        mask_head=MaskRCNNHeads(channels, [mask_ch] * cfg["mask_head_convs"], dilation=1),
        mask_predictor=MaskRCNNPredictor(mask_ch, mask_ch, num_labels),
    )


def _build_torchvision(cfg: dict[str, Any], num_labels: int) -> MaskRCNN:
    """torchvision's own ResNet-50 FPN Mask R-CNN (v1 or v2), FrozenBatchNorm2d in the body for norm frozen_bn."""
    builder = maskrcnn_resnet50_fpn if cfg["name"] == "r50-fpn" else maskrcnn_resnet50_fpn_v2
    model = builder(weights=None, weights_backbone=None, num_classes=num_labels,
                    min_size=cfg["min_size"], max_size=cfg["max_size"],
                    box_detections_per_img=cfg["box_detections_per_img"])
    if cfg["norm"] == "frozen_bn":
        _freeze_backbone_bn(model.backbone.body)
    return model


#: Each model config's builder: (config, number of labels with the background) -> a randomly initialised model
BUILDERS: dict[str, Callable[[dict[str, Any], int], MaskRCNN]] = {
    "slim": _build_slim, "slim-c4": _build_c4, "r50-c4": _build_c4, "mobilenet-fpn": _build_mobilenet_fpn,
    "r50-fpn": _build_torchvision, "r50-fpn-v2": _build_torchvision,
}
assert set(BUILDERS) == set(CONFIGS) == set(_DEFAULTS), "every model config needs its defaults and its builder"


def build_model(cfg: dict[str, Any]) -> MaskRCNN:
    """Build the (randomly initialised) Mask R-CNN described by a model config."""
    check_choice("model config", cfg.get("name"), CONFIGS)
    return BUILDERS[cfg["name"]](cfg, int(cfg["num_classes"]) + 1)  # + background


def backbone_stages(cfg: dict[str, Any]) -> int:
    """How many backbone stages `--trainable-backbone-layers` counts for a config (torchvision's meaning): 5 for a
    ResNet (conv1, layer1-4), 6 for MobileNetV3 (its stem and the blocks that begin each stride)."""
    return 6 if cfg["name"] == "mobilenet-fpn" else 5


def freeze_backbone(model: MaskRCNN, cfg: dict[str, Any], trainable_layers: int) -> list[str]:
    """Freeze all but the last `trainable_layers` backbone stages, as torchvision's detection builders do
    (`trainable_backbone_layers`); returns the names of the frozen parameters. A C4 model's res5 is its RoI head and
    stays trainable."""
    stages = backbone_stages(cfg)
    if not 0 <= trainable_layers <= stages:
        raise MaskrtError(f"config '{cfg['name']}' has {stages} backbone stages: --trainable-backbone-layers takes "
                          f"0-{stages}, got {trainable_layers}")
    body = model.backbone.body
    if cfg["name"] == "mobilenet-fpn":  # torchvision.models.detection.backbone_utils.mobilenet_backbone's rule
        blocks = list(body.values())
        starts = [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)] + [len(blocks) - 1]
        first = len(blocks) if trainable_layers == 0 else starts[len(starts) - trainable_layers]
        frozen_prefixes = tuple(f"{i}." for i in range(first))
        frozen = [n for n, _ in body.named_parameters() if n.startswith(frozen_prefixes)]
    else:  # torchvision's _resnet_fpn_extractor rule
        train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
        if trainable_layers == 5:
            train.append("bn1")
        frozen = [n for n, _ in body.named_parameters() if not n.startswith(tuple(train))]
    params = dict(body.named_parameters())
    for name in frozen:
        params[name].requires_grad_(False)
    return frozen
