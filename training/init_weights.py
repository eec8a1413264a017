"""`maskrt train --init FILE`: a new run that starts from pretrained weights (docs/architecture.md section 3).

FILE may be
- a maskrt checkpoint (its model config's structure and sizes are kept; the class count comes from the dataset),
- any Mask R-CNN state_dict that `maskrt import` reads (torchvision's COCO weights included), or
- an ImageNet classification state_dict of the config's backbone: torchvision's `resnet18` (slim, slim-c4),
  `resnet50` (r50-fpn, r50-fpn-v2, r50-c4) or `mobilenet_v3_large` (mobilenet-fpn), with or without `fc` /
  `classifier`. Its keys are mapped into the detector (`conv1.weight` -> `backbone.body.conv1.weight`; a C4 model's
  `layer4` is its per-RoI res5 head).

Every model tensor whose name and shape the file has is loaded. The class-dependent layers (the box predictor and the
mask predictor's per-class logits) are re-initialised when the file's classes (count, ids or names) differ from the
dataset's, as detectron2 does; the mask predictor's class-independent deconvolution is kept. One summary line counts
the tensors loaded, those left at their fresh initialisation (by group) and the file's tensors not used (by group).
A file of another architecture than --config, or one from which nothing fits, is refused.
"""

from __future__ import annotations

import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from maskrt.core.errors import MaskrtError
from maskrt.core.files import sha256
from maskrt.training.checkpoint import check_checkpoint, check_finite
from maskrt.training.torchvision_import import coco_class_names, detect_config

#: The ImageNet classifier each config's backbone is (torchvision's names)
BACKBONE_OF = {"slim": "resnet18", "slim-c4": "resnet18", "r50-fpn": "resnet50", "r50-fpn-v2": "resnet50",
               "r50-c4": "resnet50", "mobilenet-fpn": "mobilenet_v3_large"}
#: Model tensors whose shape depends on the number of classes
CLASS_LAYERS = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")
_RESNET_BLOCKS = {(2, 2, 2, 2, False): "resnet18", (3, 4, 6, 3, False): "resnet34", (3, 4, 6, 3, True): "resnet50",
                  (3, 4, 23, 3, True): "resnet101", (3, 8, 36, 3, True): "resnet152"}


@dataclass
class InitWeights:
    """What `--init` loads into a model, and the counts of its summary line."""

    file: Path
    sha256: str
    kind: str  # "maskrt checkpoint", "Mask R-CNN state_dict (r50-fpn)", "resnet18 classification state_dict"
    state: dict[str, torch.Tensor]  # model key -> tensor, exactly what is loaded
    fresh: Counter  # model tensors left at their initialisation, by group
    ignored: Counter  # file tensors not used, by group
    classes_differ: bool

    def record(self) -> dict:
        """What the new run's checkpoints record of the init file."""
        return {"file": self.file.name, "sha256": self.sha256, "kind": self.kind}

    def summary(self) -> str:
        """One line: loaded, re-initialised and ignored tensor counts with their groups."""
        def groups(counter: Counter) -> str:
            return f" ({', '.join(f'{g} {n}' for g, n in sorted(counter.items()))})" if counter else ""

        why = "; classes differ" if self.classes_differ else ""
        return (f"init from {self.file.name} ({self.kind}): loaded {len(self.state)} tensors, re-initialised "
                f"{sum(self.fresh.values())}{groups(self.fresh)}{why}, ignored {sum(self.ignored.values())} of the "
                f"file's{groups(self.ignored)}")


def _group(key: str) -> str:
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] in ("backbone", "roi_heads", "rpn") and len(parts) > 2 else parts[0]


def _read(path: Path) -> object:
    if not path.exists():
        raise MaskrtError(f"{path}: --init weights file not found")
    if not path.is_file():
        raise MaskrtError(f"{path}: --init needs a weights file, not a folder")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise MaskrtError(f"{path}: the safe loader refuses it: it holds Python objects other than tensors and plain "
                          "data, which maskrt never loads (save a state_dict: torch.save(model.state_dict(), f))") \
            from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MaskrtError(f"{path}: not a readable weights file ({first})") from None


def classifier_arch(state: dict[str, torch.Tensor]) -> str | None:
    """torchvision's name of an ImageNet classifier state_dict's architecture (resnet18/34/50/101/152,
    mobilenet_v3_large/small), "resnet"/"mobilenet" of another depth, None for neither."""
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
        return _RESNET_BLOCKS.get((*blocks, "layer1.0.conv3.weight" in state), "resnet")
    if "features.0.0.weight" in state:
        last = state.get("features.16.0.weight")
        if last is not None and tuple(last.shape[:2]) == (960, 160):
            return "mobilenet_v3_large"
        small = state.get("features.12.0.weight")
        return "mobilenet_v3_small" if small is not None and tuple(small.shape[:2]) == (576, 96) else "mobilenet"
    return None


def _classifier_keys(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, list[str]]:
    """file key -> the model keys it initialises (a shared res5 has two names)."""
    mapping: dict[str, list[str]] = {}
    for key in state:
        if key.startswith("features."):
            targets = ["backbone.body." + key.removeprefix("features.")]
        elif key.startswith("layer4.") and "backbone.body." + key not in model_keys:  # C4: res5 is a head
            rest = key.removeprefix("layer4.")
            targets = [f"roi_heads.box_head.0.{rest}", f"roi_heads.mask_head.{rest}"]
        else:
            targets = ["backbone.body." + key]
        mapping[key] = [t for t in targets if t in model_keys] or targets[:1]
    return mapping


def _differ(a: list[dict] | None, b: list[dict]) -> bool:
    return a is None or [(c["id"], c["name"]) for c in a] != [(c["id"], c["name"]) for c in b]


@dataclass
class InitFile:
    """An --init file, read and checked against the run's config."""

    path: Path
    state: dict[str, torch.Tensor]
    kind: str
    classes: list[dict] | None  # None where the file does not say (a classifier, a non-COCO state_dict)
    model_config: dict | None  # a maskrt checkpoint's (its structure and sizes are kept)


def read_init(path: str | Path, config: str) -> InitFile:
    """Read an --init file for a run of config `config`; MaskrtError (naming the file) for an unreadable, non-tensor
    or non-finite file, or weights of another architecture."""
    path = Path(path)
    obj = _read(path)
    if isinstance(obj, dict) and "format_version" in obj:
        ckpt = check_checkpoint(obj, path, expect_config=config)
        return InitFile(path, ckpt["state_dict"], "maskrt checkpoint", ckpt["classes"], ckpt["model_config"])
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # torchvision reference-script checkpoint
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MaskrtError(f"{path}: not a state_dict of tensors (nor a maskrt checkpoint)")
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    check_finite(state, path)
    if "roi_heads.box_predictor.cls_score.weight" in state:
        try:
            name, labels = detect_config(state)
        except MaskrtError as exc:
            raise MaskrtError(f"{path}: {exc}") from None
        if name != config:
            raise MaskrtError(f"{path}: Mask R-CNN weights of config '{name}', not '{config}' (pass --config {name})")
        names = coco_class_names() if labels == 91 else None
        classes = [{"id": i, "name": n} for i, n in enumerate(names[1:], 1)] if names else None
        return InitFile(path, state, f"Mask R-CNN state_dict, {labels - 1} classes", classes, None)
    arch = classifier_arch(state)
    if arch is None:
        raise MaskrtError(f"{path}: neither Mask R-CNN weights nor an ImageNet ResNet / MobileNetV3 classifier's "
                          "state_dict (no roi_heads.box_predictor, conv1/layer1 or features keys)")
    if arch != BACKBONE_OF[config]:
        fits = sorted(c for c, a in BACKBONE_OF.items() if a == arch)
        hint = f" (it fits --config {' or '.join(fits)})" if fits else ""
        raise MaskrtError(f"{path}: a {arch} classifier's weights; config '{config}' has a {BACKBONE_OF[config]} "
                          f"backbone{hint}")
    return InitFile(path, state, f"{arch} classification state_dict", None, None)


def plan_init(init: InitFile, model: torch.nn.Module, classes: list[dict]) -> InitWeights:
    """What of the --init file fits `model` (built for the dataset's `classes`); MaskrtError when nothing does."""
    path, source, kind = init.path, init.state, init.kind
    target = model.state_dict()
    classes_differ = _differ(init.classes, classes)
    if kind.endswith("classification state_dict"):
        mapping = _classifier_keys(source, set(target))
    else:
        mapping = {k: [k] for k in source}
    state: dict[str, torch.Tensor] = {}
    ignored: Counter = Counter()
    for key, targets in mapping.items():
        used = False
        for name in targets:
            if name in target and tuple(target[name].shape) == tuple(source[key].shape) and not (
                    classes_differ and name.startswith(CLASS_LAYERS)):
                state[name] = source[key]
                used = True
        if not used and not key.endswith("num_batches_tracked"):  # a BatchNorm's step count carries no weight
            ignored[_group(key)] += 1
    if not any(not k.endswith("num_batches_tracked") for k in state):
        raise MaskrtError(f"{path}: none of the file's {len(source)} tensors fits the model by name and shape")
    fresh = Counter(_group(k) for k in target if k not in state and not k.endswith("num_batches_tracked"))
    return InitWeights(file=path, sha256=sha256(path), kind=kind, state=state, fresh=fresh, ignored=ignored,
                       classes_differ=classes_differ and any(k.startswith(CLASS_LAYERS) for k in mapping))


def apply_init(model: torch.nn.Module, init: InitWeights) -> None:
    """Load the planned tensors into `model` (the rest keep their fresh initialisation)."""
    model.load_state_dict(init.state, strict=False)
