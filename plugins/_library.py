"""Locating and loading the built libraries (the CUDA plugin library and the CPU host library)."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from plugins._paths import BUILD_COMMAND, HOST_LIBRARY, PLUGIN_LIBRARY

_lock = threading.Lock()
_loaded: dict[str, tuple[Any, ...]] = {}  # TensorRT module name -> (library handle, logger, builder)
_host: ctypes.CDLL | None = None
_cuda: ctypes.CDLL | None = None

#: The (name, version, namespace) of every creator the library must register.
CREATORS: tuple[tuple[str, str, str], ...] = (("MultiLevelRoIAlign", "1", "maskrt"), ("BatchedNMS", "1", "maskrt"))


def library_path() -> Path:
    """The built CUDA plugin library (libmaskrt_plugins.so); FileNotFoundError naming the build command if absent."""
    override = os.environ.get("MASKRT_PLUGIN_LIBRARY")
    path = Path(override) if override else PLUGIN_LIBRARY
    if not path.is_file():
        raise FileNotFoundError(f"plugin library {path} not found: build it with `{BUILD_COMMAND}` (or `make plugin`)")
    return path


def host_library() -> ctypes.CDLL:
    """The CPU library (libmaskrt_host.so), built with the C++ compiler on first use when absent."""
    global _host
    with _lock:
        if _host is None:
            if not HOST_LIBRARY.is_file():
                from plugins.build import build

                build(cuda=False, verbose=False)
            _host = ctypes.CDLL(str(HOST_LIBRARY))
        return _host


def cuda_library() -> ctypes.CDLL:
    """The CUDA plugin library opened with ctypes, for its extern "C" launchers (tests, benchmarks)."""
    global _cuda
    with _lock:
        if _cuda is None:
            _cuda = ctypes.CDLL(str(library_path()))
        return _cuda


def ensure_rtx_parser_symlink() -> None:
    """TensorRT-RTX's ONNX parser dlopens `libtensorrt_rtx.so` for plugin nodes, but the wheel ships only
    `libtensorrt_rtx.so.1`: create the missing symlink next to it (the parser aborts without it)."""
    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    if spec is None or not spec.submodule_search_locations:
        return
    folder = Path(next(iter(spec.submodule_search_locations)))
    link, target = folder / "libtensorrt_rtx.so", folder / "libtensorrt_rtx.so.1"
    if link.exists() or not target.is_file():
        return
    try:
        link.symlink_to(target.name)
    except FileExistsError:
        pass
    except OSError as error:
        raise RuntimeError(
            f"cannot create {link} -> {target.name} ({error}); TensorRT-RTX's ONNX parser needs it for plugin "
            "nodes: create it once by hand"
        ) from error


def load_into(trt: ModuleType) -> Path:
    """Registers the plugin library with a `tensorrt` or `tensorrt_rtx` module (idempotent); returns its path.

    Afterwards the module's plugin registry has every maskrt creator, so the ONNX parser resolves our nodes.
    """
    path = library_path()
    name = trt.__name__
    with _lock:
        if name in _loaded:
            return path
        if name.startswith("tensorrt_rtx"):
            ensure_rtx_parser_symlink()
        # A logger and a builder must exist before loadLibrary, else TensorRT-RTX fails silently.
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        registry = trt.get_plugin_registry()
        handle = registry.load_library(str(path))
        missing = [c for c in CREATORS if registry.get_creator(*c) is None]
        if handle is None or missing:
            raise RuntimeError(f"{name} could not load {path}: creator(s) {missing or 'unknown'} not registered")
        _loaded[name] = (handle, logger, builder)
    return path
