"""`maskrt bench compare`'s OpenVINO rows and its C++ runtime row.

The C++ runtime row is maskrt-infer (OpenVINO, model.onnx, f32) kept running in `--stdin` mode. Each round hands it
the round's image (written once as a PNG) and reads back the time of its `Predictor::predict`: from the decoded uint8
image to the pasted masks, as the Python rows' end to end (pre-process, network, paste), with the same threads. The
process and its compiled model live for the whole run, as the Python rows' sessions do.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from maskrt.core.errors import MaskrtError
from maskrt.runtime.native import infer_binary

NATIVE_ROW = "cpp_openvino_f32"
NATIVE_LABEL = "C++ runtime (maskrt-infer), OpenVINO, model.onnx, f32"


def openvino_candidates(export_dir: Path, int8_dir: Path | None) -> dict[str, tuple[Path, str, str]]:
    """The OpenVINO rows (name -> export folder, graph, precision): f32, bf16 where the CPU has it, INT8 where the
    export has model.int8.onnx; none (with a warning) where OpenVINO is not installed."""
    try:
        from maskrt.runtime.backends.openvino_runtime import cpu_supports_bf16, openvino_module

        openvino_module()
    except MaskrtError as exc:
        warnings.warn(f"no OpenVINO rows: {exc}", stacklevel=2)
        return {}
    rows = {"openvino_f32": (export_dir, "portable", "f32")}
    if cpu_supports_bf16():
        rows["openvino_bf16"] = (export_dir, "portable", "bf16")
    if int8_dir is not None:
        rows["openvino_int8"] = (int8_dir, "portable_int8", "f32")
    return rows


class NativeRow:
    """A running maskrt-infer --stdin on an export; calling it with an image returns (stage seconds, detections)."""

    def __init__(self, export_dir: Path, work: Path, threads: int) -> None:
        self.work = work / "cpp-images"
        self.work.mkdir(parents=True, exist_ok=True)
        self.files: dict[int, Path] = {}
        command = [str(infer_binary()), "--model", str(export_dir), "--stdin", "--threads", str(threads),
                   "--score-threshold", "0"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, bufsize=1)
        self._answer("starting maskrt-infer")

    def _answer(self, what: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=30)
            error = (self.process.stderr.read() if self.process.stderr else "").strip().splitlines()
            raise MaskrtError(f"maskrt-infer stopped while {what}: {error[-1] if error else 'no message'}")
        answer = json.loads(line)
        if "error" in answer:
            raise MaskrtError(f"maskrt-infer: {answer['error']}")
        return answer

    def _file(self, image: np.ndarray) -> Path:
        key = id(image)
        if key not in self.files:
            self.files[key] = self.work / f"{len(self.files):04d}.png"
            Image.fromarray(image).save(self.files[key])
        return self.files[key]

    def __call__(self, image: np.ndarray) -> tuple[dict[str, float | None], int]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{self._file(image)}\n")
        self.process.stdin.flush()
        answer = self._answer("predicting")
        stages: dict[str, float | None] = {"pre-process": None, "network": None, "paste": None,
                                           "end_to_end": answer["ms"] / 1000.0}
        return stages, int(answer["detections"])

    def close(self) -> None:
        """Stop the process (end of its input)."""
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def native_row(export_dir: Path, work: Path, threads: int) -> NativeRow | None:
    """The C++ runtime row, or None (with a warning) where maskrt-infer is not built."""
    try:
        return NativeRow(export_dir, work, threads)
    except MaskrtError as exc:
        warnings.warn(f"no C++ runtime row: {exc}", stacklevel=2)
        return None
