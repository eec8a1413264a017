"""The C++ runtime (runtime/cpp: libmaskrt_runtime.so + maskrt-infer) as the Python side finds and runs it.

pip builds it into the package (maskrt/runtime/cpp/bin/maskrt-infer, lib/libmaskrt_runtime.so, include/maskrt/
runtime.hpp, build-info.json); ``MASKRT_INFER`` points at another build (e.g. ``cmake -S runtime/cpp -B build/cpp``).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from maskrt.core.errors import MaskrtError

BINARY = "maskrt-infer"
BUILD_HINT = ("reinstall maskrt (`make test` / `pip install .` build it with CMake: it needs libpng, libjpeg and "
              "OpenSSL headers), or build it with `cmake -S runtime/cpp -B build/cpp` and set MASKRT_INFER to it")


def _installed_dirs() -> list[Path]:
    """The package's runtime/cpp folders (an editable install has the sources' folder and the installed one)."""
    package = importlib.import_module("maskrt.runtime")
    return [Path(folder) / "cpp" for folder in package.__path__]


def build_info() -> dict[str, Any]:
    """What the installed C++ runtime build holds ({"built", "tensorrt", ...}); {} when unknown."""
    for folder in _installed_dirs():
        if (folder / "build-info.json").is_file():
            return json.loads((folder / "build-info.json").read_text())
    return {}


def infer_binary() -> Path:
    """maskrt-infer: MASKRT_INFER, else the installed one; MaskrtError saying how to build it when absent."""
    override = os.environ.get("MASKRT_INFER")
    if override:
        if not Path(override).is_file():
            raise MaskrtError(f"MASKRT_INFER={override}: no such file; {BUILD_HINT}")
        return Path(override)
    for folder in _installed_dirs():
        if (folder / "bin" / BINARY).is_file():
            return folder / "bin" / BINARY
    reason = build_info().get("skipped_because")
    raise MaskrtError(f"the C++ runtime is not built{f' ({reason})' if reason else ''}: {BUILD_HINT}")


def run_infer(args: list[str], *, binary: Path | None = None, timeout: float | None = None
              ) -> subprocess.CompletedProcess:
    """maskrt-infer ARGS, its output captured; MaskrtError with its one-line error when it exits non-zero."""
    command = [str(binary or infer_binary()), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        message = lines[-1].removeprefix("error: ") if lines else (done.stderr.strip()[-300:] or "no message")
        raise MaskrtError(f"maskrt-infer failed (exit {done.returncode}): {message}")
    return done
