"""Checkpoints: one dict per file, written atomically, read back with `torch.load(weights_only=True)`.

Layout (format_version 1)::

    {format_version, model_config, state_dict, classes, train_state, metrics, versions[, init]}

`classes[i]` is {"id": dataset category id, "name": ...} of contiguous label i + 1. `train_state` is
None or {step, optimizer, schedule, rng, ...} for --resume. `init` (optional) names the file a fine-tuning run
started from: {file, sha256, kind}.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import torch

from maskrt.core.artifacts import MAX_CANVAS_SIDE, check_class_list
from maskrt.core.errors import MaskrtError
from maskrt.core.files import durable_write
from maskrt.core.versions import versions
from maskrt.training.models import CONFIGS, NORMS, build_model, default_model_config

FORMAT_VERSION = 1
_KEYS = ("format_version", "model_config", "state_dict", "classes", "train_state", "metrics", "versions")


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save through core.files.durable_write: temporary file, fsync, rename, folder fsync (never torn)."""
    durable_write(path, lambda f: torch.save(obj, f))


def make_checkpoint(*, model_config: dict, state_dict: dict, classes: list[dict],
                    train_state: dict | None = None, metrics: dict | None = None, init: dict | None = None) -> dict:
    """Assemble a checkpoint dict (tensors moved to CPU, so that it loads on a machine without a GPU). `init`: the
    file a fine-tuning run started from ({file, sha256, kind}), None for a run from scratch."""
    return {
        "format_version": FORMAT_VERSION,
        "model_config": dict(model_config),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "classes": [{"id": int(c["id"]), "name": str(c["name"])} for c in classes],
        "train_state": train_state,
        "metrics": metrics or {},
        "versions": versions(),
        "init": init,
    }


def save_checkpoint(path: str | Path, checkpoint: dict) -> None:
    """Write a checkpoint atomically."""
    atomic_save(checkpoint, path)


def load_checkpoint(path: str | Path, *, expect_config: str | None = None) -> dict:
    """Read and validate a checkpoint; MaskrtError naming the file for anything wrong."""
    path = Path(path)
    if not path.is_file():
        raise MaskrtError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message advises weights_only=False, which would run the file's code: never give that advice.
        raise MaskrtError(f"{path}: not a readable maskrt checkpoint (the safe loader rejects it: it is not a "
                          "checkpoint, or it holds Python objects other than tensors and plain data, which maskrt "
                          "refuses to load)") from None
    except Exception as exc:  # torch raises many types for truncated / foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MaskrtError(f"{path}: not a readable maskrt checkpoint ({first})") from None
    return check_checkpoint(ckpt, path, expect_config=expect_config)


def check_checkpoint(ckpt: object, path: Path, *, expect_config: str | None = None) -> dict:
    """`ckpt` (a loaded file) validated as a maskrt checkpoint, of config `expect_config` when given; MaskrtError
    naming `path` for anything wrong."""
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise MaskrtError(f"{path}: not a maskrt checkpoint (no format_version; to use a torchvision "
                          "state_dict, convert it with `maskrt import`)")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise MaskrtError(f"{path}: checkpoint format_version {ckpt['format_version']} is not supported "
                          f"(this maskrt reads version {FORMAT_VERSION})")
    missing = [k for k in _KEYS if k not in ckpt]
    if missing:
        raise MaskrtError(f"{path}: checkpoint lacks {', '.join(missing)}")
    _validate(ckpt, path)
    name = ckpt["model_config"].get("name")
    if expect_config is not None and name != expect_config:
        raise MaskrtError(f"{path}: checkpoint is of config '{name}', not '{expect_config}'")
    return ckpt


def _validate(ckpt: dict, path: Path) -> None:
    """Types and ranges of the fields every command relies on; MaskrtError naming the field."""
    cfg = ckpt["model_config"]
    if not isinstance(cfg, dict):
        raise MaskrtError(f"{path}: model_config must be a dict, got {type(cfg).__name__}")
    if cfg.get("name") not in CONFIGS:
        raise MaskrtError(f"{path}: model_config.name must be one of {', '.join(CONFIGS)}, got {cfg.get('name')!r}")
    for key in ("num_classes", "min_size", "max_size"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MaskrtError(f"{path}: model_config.{key} must be a positive integer, got {value!r}")
    if not cfg["min_size"] <= cfg["max_size"] <= MAX_CANVAS_SIDE:
        raise MaskrtError(f"{path}: model_config needs min_size <= max_size <= {MAX_CANVAS_SIDE}, got "
                          f"{cfg['min_size']} and {cfg['max_size']}")
    _check_config_fields(cfg, path)
    classes = ckpt["classes"]
    ok = isinstance(classes, list) and classes and all(
        isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str) for c in classes)
    if not ok:
        raise MaskrtError(f"{path}: classes must be a non-empty list of {{id: int, name: str}}")
    check_class_list(classes, path)
    if len(classes) != cfg["num_classes"]:
        raise MaskrtError(f"{path}: {len(classes)} classes but model_config.num_classes is {cfg['num_classes']}")
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MaskrtError(f"{path}: state_dict must be a dict of tensors")
    check_finite(state, path)
    if ckpt["train_state"] is not None and not isinstance(ckpt["train_state"], dict):
        raise MaskrtError(f"{path}: train_state must be a dict or None")
    if not isinstance(ckpt["metrics"], dict):
        raise MaskrtError(f"{path}: metrics must be a dict")


def _check_config_fields(cfg: dict, path: Path) -> None:
    """Every model_config field is one its config has, of the type of that config's default (a bad one would crash
    the model builder or the exporter deep inside torchvision)."""
    defaults = default_model_config(cfg["name"], cfg["num_classes"])
    for key, value in cfg.items():
        if key not in defaults:
            raise MaskrtError(f"{path}: model_config.{key} is not a field of config '{cfg['name']}' (its fields: "
                              f"{', '.join(defaults)})")
        want = defaults[key]
        if isinstance(want, str):
            ok = value in NORMS if key == "norm" else isinstance(value, str)
        elif isinstance(want, list):
            ok = isinstance(value, list) and bool(value) and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        elif isinstance(want, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        if not ok:
            kind = "one of " + ", ".join(NORMS) if key == "norm" else type(want).__name__
            raise MaskrtError(f"{path}: model_config.{key} must be {kind} like the config's default {want!r}, got "
                              f"{value!r}")


def check_finite(state: dict[str, torch.Tensor], source: str | Path) -> None:
    """MaskrtError naming the first floating-point tensor that holds NaN or infinity (a diverged run or a corrupt
    file: such a model detects nothing, silently)."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise MaskrtError(f"{source}: weight {name} holds {bad} non-finite value(s) (NaN or infinity); the "
                              "checkpoint is corrupt or its training diverged")


def model_from_checkpoint(ckpt: dict, *, source: str | Path = "checkpoint") -> torch.nn.Module:
    """Build the model of a checkpoint and load its weights (eval mode)."""
    model = build_model(ckpt["model_config"])
    check_weights_fit(ckpt["state_dict"], model.state_dict(), f"{source}: weights do not fit config "
                      f"'{ckpt['model_config'].get('name')}'")
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def check_weights_fit(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    """MaskrtError `what: ...` naming how many keys are missing, unexpected and mis-shaped, and the first of each,
    unless `weights` has exactly `expected`'s keys and shapes."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k} {tuple(weights[k].shape)} where the model has {tuple(expected[k].shape)}" for k in expected
              if k in weights and weights[k].shape != expected[k].shape]
    problems = [f"{len(keys)} {kind} (first: {keys[0]})" for kind, keys in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if keys]
    if problems:
        raise MaskrtError(f"{what}: {'; '.join(problems)}")
