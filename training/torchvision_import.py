"""Import a Mask R-CNN state_dict file: torchvision's published weights, or weights of any maskrt config's layout.

The config and the number of classes are read from the keys and shapes: the box head tells FPN (`fc6`, torchvision's
v1), FPN v2 (`box_head.0.0.weight`) and C4 (res5 blocks in the box head) apart, the backbone ResNet-50 (bottleneck
blocks) from ResNet-18 and from MobileNetV3 (its `features` layout). A 91-way COCO model gets torchvision's COCO
category names with label == COCO category id.
"""

from __future__ import annotations

from pathlib import Path

import torch

from maskrt.core.artifacts import MAX_CANVAS_SIDE, check_class_list
from maskrt.core.errors import MaskrtError
from maskrt.core.outputs import check_not_input, check_output_file
from maskrt.training.checkpoint import check_finite, make_checkpoint, model_from_checkpoint, save_checkpoint
from maskrt.training.models import default_model_config


def coco_class_names() -> list[str]:
    """torchvision's COCO category names by label (91, "__background__" included); its "N/A" placeholders (the
    unused COCO ids) are named "N/A (id N)", since class names must be unique."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    names = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    return [f"{n} (id {i})" if n == "N/A" else n for i, n in enumerate(names)]


def detect_config(state_dict: dict) -> tuple[str, int]:
    """(config name, number of labels incl. background) of a torchvision Mask R-CNN state_dict."""
    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state_dict:
        raise MaskrtError("not a torchvision Mask R-CNN state_dict (no roi_heads.box_predictor.cls_score)")
    if "roi_heads.mask_predictor.mask_fcn_logits.weight" not in state_dict:
        raise MaskrtError("a Faster R-CNN state_dict (no mask head); maskrt needs Mask R-CNN weights")
    bottleneck = "backbone.body.layer1.0.conv3.weight" in state_dict
    if "roi_heads.box_head.0.0.conv1.weight" in state_dict:  # res5 blocks per RoI: the C4 head
        name = "r50-c4" if bottleneck else "slim-c4"
    elif "roi_heads.box_head.fc6.weight" in state_dict:
        if "backbone.body.0.0.weight" in state_dict:  # MobileNetV3's features[0] (a Conv2dNormActivation)
            name = "mobilenet-fpn"
        else:
            name = "r50-fpn" if bottleneck else "slim"
    elif "roi_heads.box_head.0.0.weight" in state_dict:
        name = "r50-fpn-v2"
    else:
        raise MaskrtError("unrecognised Mask R-CNN box head (expected torchvision's v1 or v2 FPN layout or a C4 res5 "
                          "head)")
    return name, int(state_dict[key].shape[0])


def _check_sizes(min_size: int | None, max_size: int | None) -> None:
    """min_size >= 1, max_size in [min_size, MAX_CANVAS_SIDE], for those given."""
    lo = 1 if min_size is None else min_size
    hi = MAX_CANVAS_SIDE if max_size is None else max_size
    if lo < 1 or hi < lo or hi > MAX_CANVAS_SIDE:
        raise MaskrtError(f"min_size must be >= 1 and max_size in [min_size, {MAX_CANVAS_SIDE}], got {min_size} and "
                          f"{max_size}")


def import_torchvision(weights: str | Path, out: str | Path, *, class_names: list[str] | None = None,
                       min_size: int | None = None, max_size: int | None = None, force: bool = False) -> dict:
    """Convert a Mask R-CNN weights file into a maskrt checkpoint at `out` (an existing `out` is refused unless
    `force`, and never the weights file itself); returns it. `min_size` / `max_size` default to the detected
    config's (800 / 1333 for the ResNet-50 configs)."""
    _check_sizes(min_size, max_size)  # what was given, before reading anything
    weights = Path(weights)
    if not weights.is_file():
        raise MaskrtError(f"{weights}: weights file not found")
    check_not_input(out, [weights])
    check_output_file(out, force=force)
    try:
        sd = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MaskrtError(f"{weights}: cannot read weights ({str(exc).splitlines()[0] if str(exc) else exc!r})") \
            from None
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):  # torchvision reference-script checkpoint
        sd = sd["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise MaskrtError(f"{weights}: not a state_dict of tensors")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    check_finite(sd, weights)
    try:
        name, num_labels = detect_config(sd)
    except MaskrtError as exc:
        raise MaskrtError(f"{weights}: {exc}") from None
    # FrozenBatchNorm2d (torchvision's pretrained layout) keeps no batch count
    frozen = not any(k.startswith("backbone.body.") and k.endswith(".num_batches_tracked") for k in sd)
    if class_names is None:
        names = coco_class_names() if num_labels == 91 else [f"class_{i}" for i in range(num_labels)]
        class_names = names[1:]
    if len(class_names) != num_labels - 1:
        raise MaskrtError(f"{weights}: has {num_labels - 1} classes but {len(class_names)} names were given")
    cfg = default_model_config(name, num_labels - 1, norm="frozen_bn" if frozen else "bn")
    min_size = cfg["min_size"] if min_size is None else min_size
    max_size = cfg["max_size"] if max_size is None else max_size
    _check_sizes(min_size, max_size)  # again with the config's defaults filled in
    cfg.update(min_size=min_size, max_size=max_size)
    classes = [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
    check_class_list(classes, "--classes")
    ckpt = make_checkpoint(model_config=cfg, state_dict=sd, classes=classes,
                           metrics={})
    model_from_checkpoint(ckpt, source=weights)  # proves the weights fit before anything is written
    save_checkpoint(out, ckpt)
    return ckpt
