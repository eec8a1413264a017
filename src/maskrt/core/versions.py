"""Versions recorded in every artifact (checkpoints, exports, engines)."""

import platform

import torch
import torchvision

from maskrt import __version__


def versions() -> dict[str, str]:
    """Return the versions of maskrt and the libraries that shape its artifacts."""
    return {
        "maskrt": __version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }
