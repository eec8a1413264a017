"""Locating, loading and calling the built libraries: the CUDA plugin library and the CPU host library.

Both are built by plugins/CMakeLists.txt when the package is installed (``pip install .``, or ``make`` in a
checkout) and installed into the package's ``lib/`` folder. ``MASKRT_PLUGIN_LIBRARY`` / ``MASKRT_HOST_LIBRARY``
point at other builds (e.g. one made with ``cmake -S plugins -B build-plugins`` against your own TensorRT).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from maskrt.plugins._abi import CUDA, HOST, Entry, Library
from maskrt.plugins.spec import PluginIdentity

PLUGIN_LIBRARY = "libmaskrt_plugins.so"
TRITON_LIBRARY = "libmaskrt_triton.so"  # registers PLUGIN_LIBRARY's creators where it is only dlopen()ed (Triton)
HOST_LIBRARY = "libmaskrt_host.so"
BUILD_INFO = "build-info.json"
BUILD_HINT = (
    "reinstall maskrt with nvcc on PATH (`pip install .`, or `make plugin` in a checkout), or build it with "
    "`cmake -S plugins -B build-plugins && cmake --build build-plugins` and set {env} to the built file"
)

_lock = threading.Lock()
_loaded: dict[str, tuple[Any, ...]] = {}  # TensorRT module name -> (library handle, logger, builder)
_handles: dict[Path, Library] = {}
_ERR_LEN = 512


def _installed_dirs() -> list[Path]:
    """The package's lib/ folders (an editable install has the sources' folder and the installed one)."""
    package = importlib.import_module("maskrt.plugins")
    return [Path(folder) / "lib" for folder in package.__path__]


def build_info() -> dict[str, Any]:
    """What the installed build holds (CUDA library or not and why, architectures, TensorRT headers); {} if unknown."""
    for folder in _installed_dirs():
        if (folder / BUILD_INFO).is_file():
            return json.loads((folder / BUILD_INFO).read_text())
    return {}


def _find(name: str, env: str) -> Path:
    override = os.environ.get(env)
    if override:
        if not Path(override).is_file():
            raise FileNotFoundError(f"{env}={override}: no such file; {BUILD_HINT.format(env=env)}")
        return Path(override)
    for folder in _installed_dirs():
        if (folder / name).is_file():
            return folder / name
    reason = build_info().get("cuda_skipped_because", "") if name == PLUGIN_LIBRARY else ""
    raise FileNotFoundError(f"{name} is not installed{f' ({reason})' if reason else ''}: {BUILD_HINT.format(env=env)}")


def library_path() -> Path:
    """The CUDA plugin library (libmaskrt_plugins.so); FileNotFoundError naming how to build it if absent."""
    return _find(PLUGIN_LIBRARY, "MASKRT_PLUGIN_LIBRARY")


def triton_library_path() -> Path:
    """libmaskrt_triton.so, which Triton's tensorrt backend loads (it then registers libmaskrt_plugins.so's creators
    from its own folder, so the two are kept side by side)."""
    return _find(TRITON_LIBRARY, "MASKRT_TRITON_LIBRARY")


def host_library_path() -> Path:
    """The CPU build of the kernel cores (libmaskrt_host.so)."""
    return _find(HOST_LIBRARY, "MASKRT_HOST_LIBRARY")


def open_library(path: Path, table: Mapping[str, Entry]) -> Library:
    """The library at `path` opened once with ctypes, its entry points declared by `table` (maskrt.plugins._abi)."""
    with _lock:
        if path not in _handles:
            _handles[path] = Library(path, table)
        return _handles[path]


def cuda_library() -> Library:
    """The CUDA plugin library opened with ctypes, for its extern "C" functions (signatures: _abi.CUDA)."""
    return open_library(library_path(), CUDA)


def host_library() -> Library:
    """The host library opened with ctypes (signatures: _abi.HOST)."""
    return open_library(host_library_path(), HOST)


def host_threads() -> int:
    """The threads a host op uses when its call names none: every CPU this process may run on."""
    return int(host_library().maskrt_host_threads())


def threads_argument(threads: int | None) -> int:
    """A host op's `threads` argument (per call; None = every CPU this process may run on). Results do not depend
    on it."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    return threads or 0


def call(entry: str, *, device: str, stream_device: Any = None, **arguments: Any) -> None:
    """Calls an extern "C" launcher of the host library (device 'cpu') or of the CUDA library (device 'cuda': the
    current torch stream of `stream_device` is its `stream`), its `arguments` named as the C parameters
    (maskrt.plugins._abi). Every launcher ends with an error buffer and its length and returns 0, -1 for invalid
    arguments (raised here as ValueError with the library's message) or a CUDA error code (RuntimeError)."""
    if device == "cuda":
        import torch

        lib = cuda_library()
        arguments["stream"] = torch.cuda.current_stream(stream_device).cuda_stream
    else:
        lib = host_library()
    err = ctypes.create_string_buffer(_ERR_LEN)
    status = getattr(lib, entry)(**arguments, err=err, errLen=_ERR_LEN)
    if status != 0:
        message = err.value.decode() or f"CUDA error {status}"
        raise (ValueError if status < 0 else RuntimeError)(f"{entry}: {message}")


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


def creators() -> list[PluginIdentity]:
    """The identity of every creator the library registers (one per op spec)."""
    from maskrt.plugins import SPECS  # the package imports this module first

    return [spec.IDENTITY for spec in SPECS.values()]


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
        missing = [c.name for c in creators() if registry.get_creator(c.name, c.version, c.namespace) is None]
        if handle is None or missing:
            raise RuntimeError(f"{name} could not load {path}: creator(s) {missing or 'unknown'} not registered")
        _loaded[name] = (handle, logger, builder)
    return path


def loaded_logger(trt: ModuleType) -> object:
    """The logger `load_into` created for `trt`: TensorRT keeps the first logger it is given, so builders made
    afterwards should use this one (a new one is ignored with a warning)."""
    load_into(trt)
    return _loaded[trt.__name__][1]
