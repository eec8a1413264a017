"""ONNX Runtime: model.onnx (portable), model.trt.onnx / model.trt.fp16.onnx (the TensorRT graph; its plugin ops run
on the CPU through the host build of the plugins, trt_graph_ort.py) and model.int8.onnx."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from maskrt.core.artifacts import GRAPHS, ExportInfo, graph_kind
from maskrt.core.devices import DEVICES
from maskrt.core.errors import MaskrtError, check_choice
from maskrt.runtime.backends.base import run_in_batches
from maskrt.runtime.backends.trt_graph_ort import trt_graph_session
from maskrt.runtime.postprocess import RawOutput


def session_options(threads: int | None = None, spinning: bool = False) -> ort.SessionOptions:
    """maskrt's ONNX Runtime session options, the one place they are made: `threads` intra-op threads (None: one per
    physical core), warnings and errors only, and idle workers that block at once unless `spinning` (torch runs
    between ONNX Runtime's calls on the same cores: spinning workers would take them)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or 0
    so.log_severity_level = 3
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _providers(device: str, graph: str) -> list[str]:
    """ONNX Runtime's execution providers for `device` ("cpu", "cuda": onnxruntime-gpu, model.onnx only, or "auto":
    cuda where that is available for the graph, else cpu)."""
    check_choice("device", device, DEVICES)
    if device == "auto":
        portable = graph_kind(graph).portable
        device = "cuda" if portable and "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if not graph_kind(graph).portable:
        raise MaskrtError(f"the {graph} graph's plugin ops run on the CPU host build in ONNX Runtime; use --graph "
                          "portable with --device cuda, or build a TensorRT engine")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise MaskrtError("--device cuda needs onnxruntime-gpu with a CUDA GPU (pip install 'maskrt[gpu]'; it "
                          "replaces onnxruntime); this onnxruntime offers "
                          f"{', '.join(ort.get_available_providers())}")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]



class OnnxRuntimeBackend:
    """ONNX Runtime on model.onnx, model.trt.onnx or model.trt.fp16.onnx (static or dynamic batch).

    `threads` sets ONNX Runtime's intra-op threads; None uses its default, one per physical core. `device` "cuda"
    runs model.onnx with the CUDAExecutionProvider (onnxruntime-gpu). `spinning` False (the default) makes idle
    workers block at once instead of spin-waiting: the runtime's pre-processing and paste run in torch between ONNX
    Runtime's ops and runs, and spinning workers take their cores (r50-fpn model.onnx at 800x800 on 2 cores: 1156 ms
    with spinning, 1010 ms without).
    """

    name = "onnxruntime"

    def __init__(self, export_dir: str | Path, info: ExportInfo, graph: str = "portable",
                 threads: int | None = None, device: str = "cpu", spinning: bool = False) -> None:
        if threads is not None and threads < 1:
            raise MaskrtError(f"threads must be at least 1, got {threads}")
        path = info.verified_graph(export_dir, graph)
        providers = _providers(device, graph)
        so = session_options(threads, spinning)
        try:
            if GRAPHS[graph].flavor == "trt":
                self.session = trt_graph_session(path, so, threads)  # the plugin ops: ONNX Runtime's threads
            else:
                self.session = ort.InferenceSession(str(path), so, providers=providers)
        except MaskrtError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise MaskrtError(f"{path}: cannot load ({str(exc).splitlines()[0]})") from None
        self.batch = info.input.batch
        self.dynamic = info.input.dynamic_batch
        self.input_names = info.input.names

    def run(self, canvas: torch.Tensor, sizes: torch.Tensor) -> list[RawOutput]:
        return run_in_batches(canvas, sizes, self.batch, self.dynamic, self.run_graph)

    def run_graph(self, images: np.ndarray, image_sizes: np.ndarray) -> list[np.ndarray]:
        """One call of the graph as exported: (num_detections, boxes, scores, labels, masks) of a batch of the
        graph's own size, in its own dtypes (a server step that hands them on unchanged)."""
        return self.session.run(None, {self.input_names[0]: images, self.input_names[1]: image_sizes})

    def close(self) -> None:
        self.session = None
