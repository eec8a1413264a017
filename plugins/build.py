"""Build the maskrt plugin libraries.

    python -m plugins.build [--arch sm_80 ...] [--host-only] [--force]

Produces, under the repository's build/plugins/ folder:

* ``libmaskrt_plugins.so`` -- the CUDA plugin library for TensorRT / TensorRT-RTX (nvcc, static CUDA runtime, no
  libnvinfer link), SASS for every requested architecture plus PTX of the newest one;
* ``libmaskrt_host.so`` -- the same kernel cores compiled by the C++ compiler, for the CPU (``roi_align.cpu``,
  ``nms.cpu``).

A library is rebuilt only when its sources, compiler command or architectures changed (a stamp file next to it
holds their hash). TensorRT headers come from ``$TENSORRT_ROOT/include``, else the C++ compiler's include path,
else NVIDIA's Apache-2.0 headers shipped in the ``kernel-lens==2.0.1`` wheel, downloaded once with
``pip download`` (never installed) and cached under build/plugins/_deps/.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from plugins._paths import BUILD_COMMAND, BUILD_DIR, HOST_LIBRARY, PLUGIN_LIBRARY, PLUGINS_DIR, REPO_ROOT

__all__ = ["BUILD_COMMAND", "BUILD_DIR", "HOST_LIBRARY", "PLUGIN_LIBRARY", "REPO_ROOT", "BuildError", "build"]

DEFAULT_ARCHS: tuple[str, ...] = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_120")
HEADERS_WHEEL = "kernel-lens==2.0.1"
HEADERS_IN_WHEEL = "kernel_lens/include/tensorrt/"

CUDA_SOURCES = (
    "roi_align/roi_align_kernel.cu",
    "roi_align/roi_align_plugin.cpp",
    "nms/nms_kernel.cu",
    "nms/nms_plugin.cpp",
    "common/logging.cpp",
    "library.cpp",
)
HOST_SOURCES = ("host_api.cpp",)
SOURCE_SUFFIXES = (".h", ".cuh", ".cu", ".cpp")
CUDA_HOME_FALLBACKS: tuple[str, ...] = ("/usr/local/cuda",)


class BuildError(RuntimeError):
    """A build step failed or a tool is missing; the message is meant for the user as is."""


@dataclass(frozen=True)
class BuildResult:
    """What `build` produced and whether it had to compile."""

    plugin_library: Path | None
    host_library: Path | None
    rebuilt: tuple[Path, ...]


def find_nvcc() -> Path:
    """nvcc from $NVCC, PATH, $CUDA_HOME/bin or /usr/local/cuda/bin."""
    candidates = [os.environ.get("NVCC"), shutil.which("nvcc")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), *CUDA_HOME_FALLBACKS):
        if home:
            candidates.append(str(Path(home) / "bin" / "nvcc"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise BuildError(
        "nvcc not found (looked at $NVCC, PATH, $CUDA_HOME/bin, /usr/local/cuda/bin): install the CUDA toolkit "
        "(12.8 or newer, for sm_120) or build only the CPU library with `python -m plugins.build --host-only`"
    )


def find_cxx() -> Path:
    """The C++ compiler from $CXX, else g++ or c++ on PATH."""
    for candidate in (os.environ.get("CXX"), shutil.which("g++"), shutil.which("c++")):
        if candidate and shutil.which(candidate):
            return Path(shutil.which(candidate) or candidate)
    raise BuildError("no C++ compiler found ($CXX, g++, c++): install one, e.g. `apt-get install g++`")


def _compiler_include_dirs(cxx: Path) -> list[Path]:
    """The C++ compiler's system include search path."""
    proc = subprocess.run(
        [str(cxx), "-x", "c++", "-E", "-v", "-"], input="", capture_output=True, text=True, check=False
    )
    dirs, inside = [], False
    for line in proc.stderr.splitlines():
        if line.startswith("#include <...> search starts here"):
            inside = True
        elif line.startswith("End of search list"):
            break
        elif inside:
            dirs.append(Path(line.strip()))
    return dirs


def _download_headers(deps_dir: Path) -> Path:
    """Fetch the kernel-lens wheel (no dependencies, not installed) and unpack only its TensorRT headers."""
    target = deps_dir / "tensorrt-include"
    if (target / "NvInfer.h").is_file():
        return target
    deps_dir.mkdir(parents=True, exist_ok=True)
    wheel_dir = deps_dir / "wheels"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", HEADERS_WHEEL, "-d", str(wheel_dir)]
    print(f"[plugins.build] TensorRT headers not found; fetching them from {HEADERS_WHEEL}", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(wheel_dir.glob("kernel_lens-*.whl")) if wheel_dir.is_dir() else []
    if proc.returncode != 0 or not wheels:
        raise BuildError(
            "TensorRT headers not found ($TENSORRT_ROOT/include, compiler include path) and `pip download "
            f"{HEADERS_WHEEL}` failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}. "
            "Set TENSORRT_ROOT to a TensorRT 10 installation."
        )
    partial = deps_dir / "tensorrt-include.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    with zipfile.ZipFile(wheels[-1]) as wheel:
        for member in wheel.namelist():
            if member.startswith(HEADERS_IN_WHEEL) and member.endswith(".h"):
                (partial / Path(member).name).write_bytes(wheel.read(member))
    if not (partial / "NvInfer.h").is_file():
        raise BuildError(f"{wheels[-1].name} holds no {HEADERS_IN_WHEEL}NvInfer.h")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def find_tensorrt_headers(cxx: Path | None = None) -> Path | None:
    """Folder holding NvInfer.h to add with -isystem, or None when the compiler finds it by itself."""
    root = os.environ.get("TENSORRT_ROOT")
    if root:
        for folder in (Path(root) / "include", Path(root)):
            if (folder / "NvInfer.h").is_file():
                return folder
        raise BuildError(f"TENSORRT_ROOT={root} holds no include/NvInfer.h")
    for folder in _compiler_include_dirs(cxx or find_cxx()):
        if (folder / "NvInfer.h").is_file():
            return None
    return _download_headers(BUILD_DIR / "_deps")


def gencode_flags(archs: Sequence[str]) -> list[str]:
    """-gencode flags: SASS for each `sm_XY`, plus PTX of the newest one (for future GPUs)."""
    numbers = []
    for arch in archs:
        number = arch.removeprefix("sm_")
        if not number.isdigit():
            raise BuildError(f"invalid architecture {arch!r}: expected e.g. sm_80")
        numbers.append(number)
    if not numbers:
        raise BuildError("no architecture given")
    flags = []
    for number in numbers:
        flags += ["-gencode", f"arch=compute_{number},code=sm_{number}"]
    newest = max(numbers, key=int)
    return flags + ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]


def _source_digest(command: Sequence[str]) -> str:
    digest = hashlib.sha256("\0".join(command).encode())
    for path in sorted(PLUGINS_DIR.rglob("*")):
        if path.suffix in SOURCE_SUFFIXES and path.is_file():
            digest.update(str(path.relative_to(PLUGINS_DIR)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _compile(output: Path, command: list[str], *, force: bool, verbose: bool) -> bool:
    """Runs `command` (which writes to output + '.tmp') unless the stamp says output is current."""
    stamp = output.with_name(output.name + ".stamp")
    digest = _source_digest(command)
    if not force and output.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return False
    tmp = output.with_name(output.name + ".tmp")
    if verbose:
        print("[plugins.build]", " ".join(command), file=sys.stderr)
    proc = subprocess.run(command, capture_output=True, text=True, cwd=PLUGINS_DIR, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"building {output.name} failed:\n{proc.stderr.strip() or proc.stdout.strip()}")
    tmp.replace(output)
    stamp.write_text(digest + "\n")
    return True


@contextmanager
def _build_lock() -> Iterator[None]:
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(
    archs: Sequence[str] = DEFAULT_ARCHS,
    *,
    cuda: bool = True,
    host: bool = True,
    force: bool = False,
    verbose: bool = True,
) -> BuildResult:
    """Builds the requested libraries (skipping those already up to date) and returns their paths."""
    rebuilt: list[Path] = []
    with _build_lock():
        cxx = find_cxx()
        if host:
            command = [
                str(cxx), "-std=c++17", "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-fvisibility=hidden",
                "-Wall", "-Wextra", *HOST_SOURCES, "-o", str(HOST_LIBRARY) + ".tmp",
            ]  # fmt: skip
            if _compile(HOST_LIBRARY, command, force=force, verbose=verbose):
                rebuilt.append(HOST_LIBRARY)
        if cuda:
            nvcc = find_nvcc()
            headers = find_tensorrt_headers(cxx)
            command = [
                str(nvcc), "-std=c++17", "-O3", "-shared", "--cudart", "static", "-ccbin", str(cxx),
                "-Xcompiler", "-fPIC,-fvisibility=hidden,-Wall",
                *(["-isystem", str(headers)] if headers else []),
                *gencode_flags(archs),
                # fail on any undefined symbol (proves no libnvinfer dependency); keep static cudart private
                "-Xlinker", "-z,defs", "-Xlinker", "--exclude-libs,ALL",
                *CUDA_SOURCES, "-o", str(PLUGIN_LIBRARY) + ".tmp",
            ]  # fmt: skip
            if _compile(PLUGIN_LIBRARY, command, force=force, verbose=verbose):
                rebuilt.append(PLUGIN_LIBRARY)
    return BuildResult(PLUGIN_LIBRARY if cuda else None, HOST_LIBRARY if host else None, tuple(rebuilt))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=BUILD_COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--arch", action="append", metavar="SM",
        help=f"GPU architecture to compile for (repeatable; default: {' '.join(DEFAULT_ARCHS)} + PTX)",
    )  # fmt: skip
    parser.add_argument("--host-only", action="store_true", help="build only the CPU library (no nvcc needed)")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    try:
        result = build(tuple(args.arch or DEFAULT_ARCHS), cuda=not args.host_only, force=args.force)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for library in (result.plugin_library, result.host_library):
        if library is not None:
            state = "built" if library in result.rebuilt else "up to date"
            print(f"{library.relative_to(REPO_ROOT)}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
