"""Checkpoints: one dict per file, written atomically, read back with `torch.load(weights_only=True)`.

Layout (format_version 1)::

    {format_version, model_config, state_dict, classes, train_state, metrics, versions}

`classes[i]` is {"id": dataset category id, "name": ...} of contiguous label i + 1. `train_state` is
None or {step, optimizer, schedule, rng, ...} for --resume.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from maskrt.core.errors import MaskrtError
from maskrt.core.versions import versions
from maskrt.training.models import build_model

FORMAT_VERSION = 1
_KEYS = ("format_version", "model_config", "state_dict", "classes", "train_state", "metrics", "versions")


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    A crash (even SIGKILL) at any moment leaves either the previous file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_checkpoint(*, model_config: dict, state_dict: dict, classes: list[dict],
                    train_state: dict | None = None, metrics: dict | None = None) -> dict:
    """Assemble a checkpoint dict (tensors moved to CPU)."""
    return {
        "format_version": FORMAT_VERSION,
        "model_config": dict(model_config),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "classes": [{"id": int(c["id"]), "name": str(c["name"])} for c in classes],
        "train_state": train_state,
        "metrics": metrics or {},
        "versions": versions(),
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
    except Exception as exc:  # torch raises many types for truncated / foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MaskrtError(f"{path}: not a readable maskrt checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise MaskrtError(f"{path}: not a maskrt checkpoint (no format_version; to use a torchvision "
                          "state_dict, convert it with `maskrt import`)")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise MaskrtError(f"{path}: checkpoint format_version {ckpt['format_version']} is not supported "
                          f"(this maskrt reads version {FORMAT_VERSION})")
    missing = [k for k in _KEYS if k not in ckpt]
    if missing:
        raise MaskrtError(f"{path}: checkpoint lacks {', '.join(missing)}")
    name = ckpt["model_config"].get("name")
    if expect_config is not None and name != expect_config:
        raise MaskrtError(f"{path}: checkpoint is of config '{name}', not '{expect_config}'")
    return ckpt


def model_from_checkpoint(ckpt: dict, *, source: str | Path = "checkpoint") -> torch.nn.Module:
    """Build the model of a checkpoint and load its weights (eval mode)."""
    model = build_model(ckpt["model_config"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        detail = str(exc).splitlines()[0]
        raise MaskrtError(f"{source}: weights do not fit config '{ckpt['model_config'].get('name')}' "
                          f"({detail})") from None
    return model.eval()
