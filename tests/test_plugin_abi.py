"""The C ABI table (maskrt.plugins._abi) against the C sources and the built libraries, and what it refuses.

Every extern "C" entry point (MASKRT_EXPORT) of plugins/ must be in the table with the same parameter names and
types, and every maskrt_* symbol a built library exports must be declared in its table; a swapped, mistyped, missing
or extra argument raises instead of reaching the C function.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from ctypes import POINTER, c_char, c_char_p, c_float, c_int, c_int32, c_int64, c_uint16, c_void_p
from pathlib import Path
from typing import Any

import pytest
import torch

from maskrt.plugins import _abi
from maskrt.plugins._abi import Entry, pointer

REPO = Path(__file__).resolve().parents[1]
#: The plugin library's TensorRT loader ABI (IPluginRegistry::loadLibrary calls them), never called from Python.
TENSORRT_LOADER_ABI = {"getCreators", "setLoggerFinder"}
#: C type (as written in plugins/, whitespace normalized) -> its ctypes type.
C_TYPES: dict[str, Any] = {
    "void": None, "int": c_int, "int32_t": c_int32, "int64_t": c_int64, "float": c_float,
    "void*": c_void_p, "void const*": c_void_p, "char const*": c_char_p, "char*": POINTER(c_char),
    "float*": POINTER(c_float), "float const*": POINTER(c_float), "uint16_t*": POINTER(c_uint16),
    "uint16_t const*": POINTER(c_uint16), "int32_t*": POINTER(c_int32), "int32_t const*": POINTER(c_int32),
    "int64_t*": POINTER(c_int64), "int64_t const*": POINTER(c_int64), "void* const*": POINTER(c_void_p),
    "void const* const*": POINTER(c_void_p),
}  # fmt: skip
_PROTOTYPE = re.compile(r"^MASKRT_EXPORT\s+(?P<ret>[^(]*?)\s*(?P<name>\w+)\s*\((?P<params>[^)]*)\)", re.M)


def _ctype(c_type: str) -> Any:
    normalized = " ".join(re.sub(r"\s*\*", "* ", c_type).split())
    assert normalized in C_TYPES, f"no ctypes mapping for C type {c_type!r}: add it to C_TYPES and to _abi"
    return C_TYPES[normalized]


def c_prototypes() -> dict[str, tuple[Path, Entry]]:
    """Every MASKRT_EXPORT function of plugins/ but the loader ABI: name -> (source file, its signature)."""
    found: dict[str, tuple[Path, Entry]] = {}
    for source in sorted(p for ext in ("cpp", "cu", "h", "cuh") for p in (REPO / "plugins").rglob(f"*.{ext}")):
        for match in _PROTOTYPE.finditer(source.read_text()):
            name = match["name"]
            if name in TENSORRT_LOADER_ABI:
                continue
            assert name not in found, f"{name} exported by {found[name][0]} and {source}"
            params = []
            for param in filter(None, (p.strip() for p in match["params"].split(","))):
                c_type, param_name = re.fullmatch(r"(.*?)\s*(\w+)", param).groups()
                params.append((param_name, _ctype(c_type)))
            found[name] = (source, Entry(_ctype(match["ret"]), tuple(params)))
    return found


TABLES = {"HOST": _abi.HOST, "CUDA": _abi.CUDA, "DRIVER": _abi.DRIVER, "TRITON": _abi.TRITON}
DECLARED = {name: entry for table in TABLES.values() for name, entry in table.items()}


def test_the_table_matches_the_c_prototypes() -> None:
    """A C signature changed (a parameter added, removed, renamed or retyped) without the table fails here."""
    prototypes = c_prototypes()
    assert len(prototypes) >= 10, sorted(prototypes)
    assert sorted(prototypes) == sorted(DECLARED), "entry points in the C sources vs maskrt.plugins._abi"
    for name, (source, entry) in prototypes.items():
        declared = DECLARED[name]
        assert declared.restype == entry.restype, f"{name} ({source.name}) returns {entry.restype}"
        assert [n for n, _ in declared.params] == [n for n, _ in entry.params], f"{name} ({source.name})"
        assert declared.params == entry.params, f"{name} ({source.name}): parameter types differ"


def _library_path(table: str) -> Path:
    from maskrt.plugins import host_library_path, library_path, triton_library_path
    from maskrt.plugins.driver import driver_path

    find: dict[str, Callable[[], Path]] = {"HOST": host_library_path, "CUDA": library_path, "DRIVER": driver_path,
                                           "TRITON": triton_library_path}  # fmt: skip
    try:
        return find[table]()
    except FileNotFoundError as error:
        if table == "HOST":
            raise
        pytest.skip(f"not built here (no nvcc): {error}")


@pytest.mark.parametrize("table", sorted(TABLES))
def test_built_libraries_export_exactly_the_declared_entry_points(table: str) -> None:
    path = _library_path(table)
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("needs nm (binutils)")
    dynamic = subprocess.run([nm, "-D", "--defined-only", str(path)], capture_output=True, text=True, check=True)
    exported = {line.split()[-1] for line in dynamic.stdout.splitlines() if line.strip()}
    assert sorted(s for s in exported if s.startswith("maskrt_")) == sorted(TABLES[table])


@pytest.mark.parametrize("table", ["HOST", "CUDA", "DRIVER"])
def test_opened_libraries_declare_every_entry_point(table: str) -> None:
    from maskrt.plugins._library import open_library

    lib = open_library(_library_path(table), TABLES[table])
    for name, entry in TABLES[table].items():
        function = getattr(lib, name).function
        assert function.restype is entry.restype, name
        assert function.argtypes == entry.argtypes and len(function.argtypes) == len(entry.params), name
    with pytest.raises(AttributeError, match="not an entry point"):
        lib.maskrt_undeclared  # noqa: B018


def test_the_triton_shim_is_declared() -> None:
    """In a process of its own: loading the shim runs its registration constructor."""
    path = _library_path("TRITON")
    code = ("import sys; from maskrt.plugins._abi import TRITON, Library\n"
            "f = Library(sys.argv[1], TRITON).maskrt_triton_status\n"
            "print(len(f.function.argtypes), f.function.restype.__name__, f().decode())")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("0 c_char_p no TensorRT in this process yet"), proc.stdout


@pytest.fixture
def nms_host() -> tuple[_abi.EntryPoint, dict[str, Any], torch.Tensor]:
    """maskrt_nms_host and valid arguments by name: 2 disjoint boxes of one image, both kept."""
    from maskrt.plugins._library import host_library

    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]])
    scores, groups = torch.tensor([[0.9, 0.8]]), torch.zeros(1, 2, dtype=torch.int32)
    keep, count = torch.empty(1, 2, dtype=torch.int32), torch.empty(1, dtype=torch.int32)
    args = dict(
        boxes=pointer(boxes.data_ptr(), c_float), scores=scores.data_ptr(), scoreType=0,
        groups=pointer(groups.data_ptr(), c_int32), batch=1, numBoxes=2, iouThreshold=0.5, scoreThreshold=0.05,
        maxOutputBoxes=2, keep=pointer(keep.data_ptr(), c_int32), count=pointer(count.data_ptr(), c_int32),
        threads=1, err=ctypes.create_string_buffer(256), errLen=256,
    )  # fmt: skip
    args["_tensors"] = (boxes, scores, groups, keep)  # kept alive with the pointers
    return host_library().maskrt_nms_host, args, count


def _positional(args: dict[str, Any]) -> list[Any]:
    return [v for k, v in args.items() if not k.startswith("_")]


def test_a_well_typed_call_runs(nms_host: tuple[_abi.EntryPoint, dict[str, Any], torch.Tensor]) -> None:
    fn, args, count = nms_host
    assert fn(*_positional(args)) == 0 and count.tolist() == [2]
    count.zero_()
    assert fn(**{k: v for k, v in args.items() if not k.startswith("_")}) == 0 and count.tolist() == [2]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda a: a.update(boxes=a["groups"], groups=a["boxes"]), "argument 1:"),  # float* <-> int32* swapped
        (lambda a: a.update(boxes=a["_tensors"][0].data_ptr()), "argument 1:"),  # a bare address for a float*
        (lambda a: a.update(scores=0.5), "argument 2:"),  # a float for a void*
        (lambda a: a.update(batch=ctypes.c_void_p(1)), "argument 5:"),  # a pointer for an int64_t
        (lambda a: a.update(maxOutputBoxes=2.0), "argument 9:"),  # a float for an int
        (lambda a: a.update(iouThreshold=a["keep"]), "argument 7:"),  # a pointer for a float
        (lambda a: a.update(maxOutputBoxes=ctypes.c_int64(2)), "argument 9:"),  # int64_t for an int
        (lambda a: a.update(threads=1.0), "argument 12:"),  # a float for the thread count
        (lambda a: a.update(errLen=a["keep"]), "argument 14:"),  # a pointer for the length
    ],
)
def test_a_mistyped_argument_raises(nms_host: tuple[_abi.EntryPoint, dict[str, Any], torch.Tensor],
                                    change: Callable[[dict[str, Any]], None], error: str) -> None:  # fmt: skip
    fn, args, _ = nms_host
    change(args)
    with pytest.raises(ctypes.ArgumentError, match=error):
        fn(*_positional(args))


def test_a_missing_extra_or_unknown_argument_raises(
    nms_host: tuple[_abi.EntryPoint, dict[str, Any], torch.Tensor],
) -> None:
    fn, args, _ = nms_host
    values = _positional(args)
    named = {k: v for k, v in args.items() if not k.startswith("_")}
    with pytest.raises(TypeError, match="maskrt_nms_host.*missing a required argument: 'errLen'"):
        fn(*values[:-1])
    with pytest.raises(TypeError, match="too many positional arguments"):
        fn(*values, 0)  # ctypes alone passes extra arguments of a cdecl function through
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_boxes'"):
        fn(**{**named, "num_boxes": 2})
    with pytest.raises(TypeError, match="multiple values for argument 'boxes'"):
        fn(named["boxes"], **named)


def test_roi_align_level_arrays_swapped_raise() -> None:
    """The per-level arrays of RoIAlign: int64 heights and float scales swapped is refused (not read as garbage)."""
    from maskrt.plugins._library import call

    heights, widths = (c_int64 * 1)(8), (c_int64 * 1)(8)
    scales, features = (c_float * 1)(0.25), (c_void_p * 1)(0)
    args = dict(rois=None, features=features, heights=scales, widths=widths, numLevels=1, scales=heights, batch=0,
                numRois=0, channels=1, outHeight=7, outWidth=7, samplingRatio=2, aligned=0, canonicalLevel=4,
                canonicalScale=224.0, levelEps=1e-6, dtype=0, out=None, threads=0)  # fmt: skip
    with pytest.raises(ctypes.ArgumentError, match="argument 3:"):
        call("maskrt_roi_align_host", device="cpu", **args)
    with pytest.raises(TypeError, match="missing a required argument: 'out'"):
        call("maskrt_roi_align_host", device="cpu", **{k: v for k, v in args.items() if k != "out"})


def test_cuda_entry_points_check_types_without_a_gpu() -> None:
    """Declared argtypes are checked before any CUDA call, so this runs on a CPU-only machine."""
    from maskrt.plugins._library import cuda_library

    _library_path("CUDA")  # skips where it is not built
    lib = cuda_library()
    assert lib.maskrt_nms_workspace_size(batch=1, numBoxes=0) >= 0
    with pytest.raises(ctypes.ArgumentError, match="argument 2:"):
        lib.maskrt_nms_workspace_size(1, 2.5)
    with pytest.raises(TypeError, match="missing a required argument: 'numBoxes'"):
        lib.maskrt_nms_workspace_size(1)
