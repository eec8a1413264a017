"""Shared fixtures: small generated datasets and a tiny trained checkpoint, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shapes dataset (24 train, 8 val images of 96 px)."""
    from training.shapes import generate

    return generate(tmp_path_factory.mktemp("shapes"), train=24, val=8, size=96, seed=3, progress=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip GPU-marked tests with a reason when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine (run scripts/gpu_suite.sh on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
