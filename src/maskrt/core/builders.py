"""Which TensorRT builds and runs engines: discovery of the `tensorrt` / `tensorrt_rtx` Python modules, shared by
the engine build (export/engine.py) and the engine runtime (runtime/backends/tensorrt_engine.py) without either
importing the other."""

from __future__ import annotations

import importlib
from types import ModuleType

from maskrt.core.defaults import RTX_REQUIREMENT
from maskrt.core.errors import MaskrtError, check_choice

#: builder name -> its Python module; the default is the first one installed
BUILDERS = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}


def installed_builder() -> str:
    """The builder to use when none is named: full TensorRT where it is installed, else TensorRT-RTX."""
    for name, module in BUILDERS.items():
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        return name
    raise MaskrtError(f"no TensorRT builder is installed (pip install {RTX_REQUIREMENT} builds engines "
                      "without a GPU; full TensorRT needs a GPU machine)")


def import_builder(builder: str) -> ModuleType:
    """The `tensorrt_rtx` or `tensorrt` module, or a MaskrtError saying how to get it."""
    check_choice("builder", builder, BUILDERS)
    try:
        return importlib.import_module(BUILDERS[builder])
    except ImportError:
        hint = f"pip install {RTX_REQUIREMENT}" if builder == "tensorrt-rtx" else \
            "install NVIDIA TensorRT 10 with its Python bindings (it needs a GPU machine)"
        raise MaskrtError(f"the {builder} builder is not installed ({hint})") from None
