"""Shared fixtures: small generated datasets and a tiny trained checkpoint, made once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shapes dataset (24 train, 8 val images of 96 px)."""
    from maskrt.training.shapes import generate

    return generate(tmp_path_factory.mktemp("shapes"), train=24, val=8, size=96, seed=3, progress=False)


def require_tensorrt_rtx():  # noqa: ANN201
    """The tensorrt_rtx module, for module-level use. Its absence fails in CI (the test extras install it) and skips
    the module elsewhere, with the install command as the reason."""
    try:
        import tensorrt_rtx
    except ImportError:  # pragma: no cover - depends on the environment
        message = "tensorrt_rtx not installed: pip install tensorrt-rtx-cu13==1.7.1.116"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)
    return tensorrt_rtx


def random_checkpoint(path: Path, config: str = "slim", num_classes: int = 2, seed: int = 0, **overrides) -> Path:
    """A seeded random-init checkpoint of `config` with classes 1..num_classes (named "a", "b", ...)."""
    from maskrt.training.checkpoint import make_checkpoint, save_checkpoint
    from maskrt.training.models import build_model, default_model_config

    torch.manual_seed(seed)
    cfg = default_model_config(config, num_classes, **overrides)
    classes = [{"id": i + 1, "name": chr(ord("a") + i)} for i in range(num_classes)]
    save_checkpoint(path, make_checkpoint(model_config=cfg, state_dict=build_model(cfg).state_dict(), classes=classes))
    return path


def nvcc_available() -> bool:
    """Whether this machine could have built the CUDA plugin library (nvcc on PATH or in the CUDA toolkit)."""
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    return shutil.which("nvcc") is not None or os.access(Path(home) / "bin" / "nvcc", os.X_OK)


@pytest.fixture(scope="session")
def plugin_library() -> Path:
    """The installed CUDA plugin library. Skips with the reason where it could not be built (no nvcc); fails where
    nvcc exists but the library is missing (a broken install must not pass as a skip)."""
    from maskrt.plugins import library_path

    try:
        return library_path()
    except FileNotFoundError as error:
        if nvcc_available():
            pytest.fail(f"nvcc is on this machine but the plugin library is missing: {error}", pytrace=False)
        pytest.skip(f"no CUDA compiler, so no plugin library: {error}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip GPU-marked tests with a reason when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine (run scripts/gpu_suite.sh on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
