"""The C ABI of the built libraries: every extern "C" entry point Python calls, with its full ctypes signature.

One table per library (``HOST``, ``CUDA``, ``DRIVER``, ``TRITON``) lists each entry point's return type and its
parameters in order, named as in the C prototype (plugins/**/*.cpp, *.cu). `Library` opens a library and declares
``argtypes`` / ``restype`` of every entry point of its table once; it exposes only those, so nothing is called
undeclared. A call then fails instead of passing garbage:

- a value of the wrong kind is a ``ctypes.ArgumentError`` (a float or a pointer for an integer, a float or an integer
  for a pointer, a ``float*`` for an ``int32_t*``): pointers are typed where the C side is (``float const*`` is
  ``POINTER(c_float)``; wrap an address with `pointer`), only ``void*`` takes a plain address;
- a missing, extra or unknown argument is a ``TypeError`` (ctypes alone lets extra arguments through);
- arguments may be passed by their C names, so a launcher of 20 parameters need not rely on their order.

tests/test_plugin_abi.py parses the C prototypes and checks them against these tables, so a C change without a
Python change fails there. ``getCreators`` / ``setLoggerFinder`` of the plugin library are TensorRT's loader ABI,
never called from Python, and are not listed.
"""

from __future__ import annotations

import ctypes
import inspect
import keyword
from collections.abc import Mapping
from ctypes import POINTER, c_char, c_char_p, c_float, c_int, c_int32, c_int64, c_uint16, c_void_p
from pathlib import Path
from typing import Any, NamedTuple

#: A ctypes type (c_int, POINTER(c_float), ...); None as a return type is C's void.
CType = Any

_FLOAT_P = POINTER(c_float)
_INT32_P = POINTER(c_int32)
_INT64_P = POINTER(c_int64)
_UINT16_P = POINTER(c_uint16)
_VOID_PP = POINTER(c_void_p)
_BUFFER = POINTER(c_char)  # char*: a buffer the library writes into (ctypes.create_string_buffer)


class Entry(NamedTuple):
    """One entry point's C signature: return type and (name, type) of each parameter in order."""

    restype: CType
    params: tuple[tuple[str, CType], ...]

    @property
    def argtypes(self) -> list[CType]:
        return [ctype for _, ctype in self.params]


_ERROR = (("err", _BUFFER), ("errLen", c_int))
_STREAM = (("stream", c_void_p),)
_THREADS = (("threads", c_int),)  # per call: 0 = every CPU the process may run on

_ROI_ALIGN = (
    ("rois", _FLOAT_P), ("features", _VOID_PP), ("heights", _INT64_P), ("widths", _INT64_P), ("numLevels", c_int),
    ("scales", _FLOAT_P), ("batch", c_int64), ("numRois", c_int64), ("channels", c_int64), ("outHeight", c_int),
    ("outWidth", c_int), ("samplingRatio", c_int), ("aligned", c_int), ("canonicalLevel", c_int),
    ("canonicalScale", c_float), ("levelEps", c_float), ("dtype", c_int), ("out", c_void_p),
)  # fmt: skip

_NMS = (
    ("boxes", _FLOAT_P), ("scores", c_void_p), ("scoreType", c_int), ("groups", _INT32_P), ("batch", c_int64),
    ("numBoxes", c_int64), ("iouThreshold", c_float), ("scoreThreshold", c_float), ("maxOutputBoxes", c_int),
    ("keep", _INT32_P), ("count", _INT32_P),
)  # fmt: skip

#: libmaskrt_host.so (plugins/host_api.cpp)
HOST: dict[str, Entry] = {
    "maskrt_roi_align_host": Entry(c_int, (*_ROI_ALIGN, *_THREADS, *_ERROR)),
    "maskrt_nms_host": Entry(c_int, (*_NMS, *_THREADS, *_ERROR)),
    "maskrt_host_threads": Entry(c_int, ()),
    "maskrt_float_to_half": Entry(None, (("in", _FLOAT_P), ("out", _UINT16_P), ("n", c_int64))),
    "maskrt_half_to_float": Entry(None, (("in", _UINT16_P), ("out", _FLOAT_P), ("n", c_int64))),
}

#: libmaskrt_plugins.so (plugins/roi_align/roi_align_kernel.cu, plugins/nms/nms_kernel.cu)
CUDA: dict[str, Entry] = {
    "maskrt_roi_align_cuda": Entry(c_int, (*_ROI_ALIGN, *_STREAM, *_ERROR)),
    "maskrt_nms_workspace_size": Entry(c_int64, (("batch", c_int64), ("numBoxes", c_int64))),
    "maskrt_nms_cuda": Entry(
        c_int, (*_NMS, ("workspace", c_void_p), ("workspaceBytes", c_int64), *_STREAM, *_ERROR)
    ),
}

#: libmaskrt_driver.so (plugins/driver/plugin_driver.cpp)
DRIVER: dict[str, Entry] = {
    "maskrt_drive_plugin": Entry(c_int, (
        ("library", c_char_p), ("name", c_char_p), ("fieldText", c_char_p), ("nbInputs", c_int32),
        ("nbOutputs", c_int32), ("ranks", _INT32_P), ("dims", _INT64_P), ("types", _INT32_P), ("inputs", _VOID_PP),
        ("outputs", _VOID_PP), ("workspace", c_void_p), ("workspaceSize", _INT64_P), ("execute", c_int),
        ("stream", c_void_p), ("steps", _BUFFER), ("stepsLen", c_int), ("err", _BUFFER), ("errLen", c_int),
    )),  # fmt: skip
}

#: libmaskrt_triton.so (plugins/triton/triton_register.cpp)
TRITON: dict[str, Entry] = {
    "maskrt_triton_status": Entry(c_char_p, ()),
}


def pointer(address: int, ctype: CType) -> Any:
    """`address` (e.g. ``tensor.data_ptr()``) as a ``ctype*``, for a parameter typed ``POINTER(ctype)``."""
    return ctypes.cast(address, POINTER(ctype))


class EntryPoint:
    """One declared entry point: called with its arguments by position or by C name, exactly as many as the C
    function takes."""

    def __init__(self, name: str, function: Any, entry: Entry) -> None:
        self.name, self.function, self.entry = name, function, entry
        function.argtypes, function.restype = entry.argtypes, entry.restype
        # A C name that is a Python keyword ("in") is passed as name_ by keyword.
        names = [f"{n}_" if keyword.iskeyword(n) else n for n, _ in entry.params]
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        self.signature = inspect.Signature([inspect.Parameter(n, kind) for n in names])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{self.name}{self.signature}: {error}") from None
        return self.function(*bound.args)

    def __repr__(self) -> str:
        return f"<{self.name}{self.signature}>"


class Library:
    """A built library opened with ctypes; its attributes are the entry points of `table`, each declared once."""

    def __init__(self, path: Path | str, table: Mapping[str, Entry], mode: int = ctypes.DEFAULT_MODE) -> None:
        self.path = Path(path)
        self.handle = ctypes.CDLL(str(path), mode)
        self.entry_points = {name: EntryPoint(name, getattr(self.handle, name), entry) for name, entry in table.items()}

    def __getattr__(self, name: str) -> EntryPoint:
        try:
            return self.__dict__["entry_points"][name]
        except KeyError:
            raise AttributeError(f"{name} is not an entry point of {self.path.name} in maskrt.plugins._abi") from None
