"""maskrt: Mask R-CNN from PyTorch training to optimized inference, with parity checks."""

__version__ = "0.1.0"
