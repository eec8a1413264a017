"""Backends: each turns a pre-processed batch into per-image RawOutput (fixed D slots).

Every backend follows the `Backend` protocol: ``run(canvas, sizes)`` with canvas [B, 3, H, W] (normalised, resized,
zero-padded) and sizes [B, 2] (each image's resized h, w), and ``close()``.

- `torch`: torchvision's eager modules built from the checkpoint (the reference).
- `onnxruntime`: model.onnx (portable) or model.trt.onnx (the TensorRT graph; its plugin ops run on
  the CPU through the host build of the plugins, see runtime/trt_graph_ort.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import torch

from maskrt.core.artifacts import GRAPH_KINDS, ExportInfo
from maskrt.core.devices import resolve_device
from maskrt.core.errors import MaskrtError
from maskrt.runtime.postprocess import RawOutput
from maskrt.runtime.reference import eager_detections
from maskrt.runtime.trt_graph_ort import trt_graph_session


class Backend(Protocol):
    """What the Predictor runs: a batch in, one RawOutput per image out."""

    name: str

    def run(self, canvas: torch.Tensor, sizes: torch.Tensor) -> list[RawOutput]:
        """canvas [B, 3, H, W] float32 and sizes [B, 2] int64 (resized h, w) -> B fixed-shape outputs."""
        ...

    def close(self) -> None:
        """Release the backend's resources (sessions, engines); the backend is unusable afterwards."""
        ...


class TorchBackend:
    """The eager torchvision reference."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, max_detections: int, device: str = "cpu") -> None:
        self.torch_device = resolve_device(device)  # outputs come back to the CPU: masks are pasted there
        self.model = model.eval().to(self.torch_device)
        self.max_detections = max_detections
        self._finite = True
        # torchvision drops NaN scores on the way out (an empty result): the backbone's features tell instead
        self._hook = model.backbone.register_forward_hook(self._check_features)

    def _check_features(self, module: torch.nn.Module, inputs: object, output: object) -> None:
        features = output.values() if isinstance(output, dict) else [output]
        self._finite = all(bool(torch.isfinite(f).all()) for f in features if isinstance(f, torch.Tensor))

    def run(self, canvas: torch.Tensor, sizes: torch.Tensor) -> list[RawOutput]:
        self._finite = True
        dets = eager_detections(self.model, canvas.to(self.torch_device), sizes)
        outs = [RawOutput.from_torchvision({k: v.cpu() for k, v in det.items()}, self.max_detections)
                for det in dets]
        if not self._finite:
            raise MaskrtError("the network's backbone features hold non-finite values (NaN or infinity): its weights "
                              "are broken")
        return outs

    def close(self) -> None:
        self._hook.remove()
        self.model = None  # type: ignore[assignment]


def _providers(device: str, graph: str) -> list[str]:
    """ONNX Runtime's execution providers for `device` ("cpu", "cuda": onnxruntime-gpu, model.onnx only, or "auto":
    cuda where that is available for the graph, else cpu)."""
    if device == "auto":
        portable = GRAPH_KINDS.get(graph, ("portable",))[0] == "portable"
        device = "cuda" if portable and "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device != "cuda":
        raise MaskrtError(f"unknown device '{device}' (choose from cpu, cuda, auto)")
    if GRAPH_KINDS.get(graph, ("portable",))[0] != "portable":
        raise MaskrtError(f"the {graph} graph's plugin ops run on the CPU host build in ONNX Runtime; use --graph "
                          "portable with --device cuda, or build a TensorRT engine")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise MaskrtError("--device cuda needs onnxruntime-gpu with a CUDA GPU (pip install 'maskrt[gpu]'; it "
                          "replaces onnxruntime); this onnxruntime offers "
                          f"{', '.join(ort.get_available_providers())}")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def run_in_batches(canvas: torch.Tensor, sizes: torch.Tensor, batch: int, dynamic: bool,
                   run: Callable[[np.ndarray, np.ndarray], Sequence[np.ndarray]]) -> list[RawOutput]:
    """A deploy graph's outputs per image: the whole batch at once on a dynamic-batch graph, else in chunks of the
    static `batch` (the last padded with empty images whose outputs are dropped). `run(images, sizes)` returns the
    graph's (num_detections, boxes, scores, labels, masks)."""
    n = canvas.shape[0]
    step = n if dynamic else batch
    outs: list[RawOutput] = []
    for start in range(0, n, step):
        images = canvas[start:start + step].numpy()
        sz = sizes[start:start + step].numpy()
        real = images.shape[0]
        if real < step:
            images = np.concatenate([images, np.zeros((step - real, *images.shape[1:]), images.dtype)])
            sz = np.concatenate([sz, np.tile(sz[:1], (step - real, 1))])
        num, boxes, scores, labels, masks = run(images, sz)
        for i in range(real):
            outs.append(RawOutput(num=int(num[i]), boxes=np.array(boxes[i]), scores=np.array(scores[i]),
                                  labels=labels[i].astype(np.int64), masks=np.array(masks[i])))
    return outs


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
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or 0
        so.log_severity_level = 3
        if not spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            if GRAPH_KINDS[graph][0] == "trt":
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
