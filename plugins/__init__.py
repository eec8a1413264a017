"""maskrt's TensorRT plugins: one CUDA library (libmaskrt_plugins.so) holding every custom op, plus a CPU build of
the same kernel cores. Build with ``python -m plugins.build``; ops live in submodules (``plugins.roi_align``,
``plugins.nms``).
"""

from plugins._library import library_path, load_into

__all__ = ["library_path", "load_into"]
