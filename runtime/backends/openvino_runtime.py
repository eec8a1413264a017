"""OpenVINO on the CPU: model.onnx (fp32) and model.int8.onnx (INT8 QDQ) as exported, in f32 or bf16.

OpenVINO reads the export's ONNX graphs unchanged (its ONNX frontend), with the same dynamic batch, height and width.
`precision` is OpenVINO's INFERENCE_PRECISION_HINT: "f32" runs every op in fp32 (parity with fp32 gates), "bf16"
lets the CPU plugin run its heavy ops (convolutions, matmuls) in bfloat16 where the CPU has native bf16 (AVX-512
BF16, AMX), and is gated by the bf16 parity gates. bf16 is refused on a CPU without it (OpenVINO would fall back
to f32 silently). The TensorRT graphs (maskrt plugin ops) do not run here.

`openvino` is an optional dependency (`pip install 'maskrt[openvino]'`; `make test` installs it).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch

from maskrt.core.artifacts import GRAPHS, OUTPUT_NAMES, ExportInfo, graph_kind
from maskrt.core.errors import MaskrtError, check_choice
from maskrt.runtime.backends.base import run_in_batches
from maskrt.runtime.postprocess import RawOutput

#: OpenVINO inference precisions maskrt offers (INFERENCE_PRECISION_HINT), default first.
PRECISIONS = ("f32", "bf16")
#: The parity gates of each (graph precision, OpenVINO precision): bf16 on an INT8 graph keeps the INT8 gates.
GATE_PRECISION = {("fp32", "f32"): "fp32", ("fp32", "bf16"): "bf16", ("int8", "f32"): "int8", ("int8", "bf16"): "int8"}


def openvino_module():  # noqa: ANN201
    """The `openvino` module, or a MaskrtError saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise MaskrtError("--backend openvino needs OpenVINO: pip install 'maskrt[openvino]' (openvino==2026.4.1)") \
            from None
    return openvino


@cache
def openvino_core():  # noqa: ANN201
    """The process's one `openvino.Core`, shared by every backend (OpenVINO's guidance: one Core per process)."""
    return openvino_module().Core()


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively on this CPU (AVX-512 BF16 or AMX)."""
    return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def compile_config(precision: str, threads: int | None = None) -> dict[str, str]:
    """maskrt's OpenVINO CPU compile configuration, the one place it is made: the inference precision, latency mode
    (one request at a time) and `threads` inference threads (None: OpenVINO's default)."""
    return {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
            **({"INFERENCE_NUM_THREADS": str(threads)} if threads else {})}


def gate_precision(graph: str, precision: str) -> str:
    """The parity gates' precision for `graph` run by OpenVINO at `precision`."""
    return GATE_PRECISION[(GRAPHS[graph].precision, precision)]


def check_openvino(graph: str, precision: str) -> None:
    """Refuse what OpenVINO cannot run here: an unknown precision, a graph with maskrt's plugin ops, bf16 on a CPU
    without native bfloat16."""
    check_choice("OpenVINO precision", precision, PRECISIONS)
    if not graph_kind(graph).portable:
        raise MaskrtError(f"the {graph} graph holds maskrt's TensorRT plugin ops: OpenVINO runs the portable "
                          "graphs (--graph portable or portable_int8)")
    if precision == "bf16" and not cpu_supports_bf16():
        raise MaskrtError("--precision bf16 needs a CPU with native bfloat16 (AVX-512 BF16 or AMX); this CPU's "
                          "OpenVINO plugin offers only f32 here (use --precision f32)")


class OpenVinoBackend:
    """OpenVINO's CPU plugin on model.onnx or model.int8.onnx, compiled once (per backend) with `threads` inference
    threads (None: OpenVINO's default, one per physical core) and `precision` f32 or bf16."""

    name = "openvino"

    def __init__(self, export_dir: str | Path, info: ExportInfo, graph: str = "portable",
                 threads: int | None = None, precision: str = "f32") -> None:
        if threads is not None and threads < 1:
            raise MaskrtError(f"threads must be at least 1, got {threads}")
        check_openvino(graph, precision)
        path = info.verified_graph(export_dir, graph)
        config = compile_config(precision, threads)
        try:
            core = openvino_core()
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with its frontend's message
            raise MaskrtError(f"{path}: OpenVINO cannot load it ({str(exc).strip().splitlines()[0][:300]})") from None
        self.request = self.compiled.create_infer_request()
        self.precision = precision
        self.batch = info.input.batch
        self.dynamic = info.input.dynamic_batch

    def run(self, canvas: torch.Tensor, sizes: torch.Tensor) -> list[RawOutput]:
        def infer(images: np.ndarray, sz: np.ndarray) -> list[np.ndarray]:
            result = self.request.infer({"images": images, "image_sizes": sz})
            return [result[name] for name in OUTPUT_NAMES]

        return run_in_batches(canvas, sizes, self.batch, self.dynamic, infer)

    def close(self) -> None:
        self.request = None
        self.compiled = None
