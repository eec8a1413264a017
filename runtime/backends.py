"""Backends: each turns a pre-processed batch into per-image RawOutput (fixed D slots).

- `torch`: torchvision's eager modules built from the checkpoint (the reference).
- `onnxruntime`: model.onnx (portable) or model.trt.onnx (the TensorRT graph; its plugin ops run on
  the CPU through the host build of plugins/, see runtime/trt_graph_ort.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskrt.errors import MaskrtError
from runtime.postprocess import RawOutput
from runtime.reference import eager_detections

EXPORT_FILES = ("export.json", "model.onnx", "model.trt.onnx")


def read_export_info(export_dir: str | Path) -> dict[str, Any]:
    """Read and validate DIR/export.json; MaskrtError naming the file when missing or corrupt."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise MaskrtError(f"{export_dir}: export folder not found (make one with `maskrt export`)")
    path = export_dir / "export.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise MaskrtError(f"{path}: missing (not an export folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MaskrtError(f"{path}: corrupt ({exc})") from None
    needed = ("format_version", "classes", "input", "normalization", "resize", "limits", "graphs")
    if not isinstance(info, dict) or any(k not in info for k in needed):
        raise MaskrtError(f"{path}: incomplete (needs {', '.join(needed)})")
    if info["format_version"] != 1:
        raise MaskrtError(f"{path}: export format_version {info['format_version']} is not supported")
    return info


class TorchBackend:
    """The eager torchvision reference."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, max_detections: int) -> None:
        self.model = model.eval()
        self.max_detections = max_detections

    def run(self, resized: list[torch.Tensor], canvas: torch.Tensor, sizes: torch.Tensor) -> list[RawOutput]:
        outs = []
        d = self.max_detections
        for det in eager_detections(self.model, canvas, sizes):
            n = min(len(det["scores"]), d)
            m = det["masks"].shape[-1] if len(det["masks"]) else 28
            raw = RawOutput(num=n, boxes=np.zeros((d, 4), np.float32), scores=np.zeros(d, np.float32),
                            labels=np.zeros(d, np.int64), masks=np.zeros((d, m, m), np.float32))
            raw.boxes[:n] = det["boxes"][:n].numpy()
            raw.scores[:n] = det["scores"][:n].numpy()
            raw.labels[:n] = det["labels"][:n].numpy()
            raw.masks[:n] = det["masks"][:n].numpy()
            outs.append(raw)
        return outs


class OnnxRuntimeBackend:
    """ONNX Runtime on model.onnx or model.trt.onnx (static or dynamic batch)."""

    name = "onnxruntime"

    def __init__(self, export_dir: str | Path, info: dict[str, Any], graph: str = "portable",
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        if graph not in info["graphs"]:
            raise MaskrtError(f"{export_dir}/export.json: no '{graph}' graph (have {', '.join(info['graphs'])})")
        path = Path(export_dir) / info["graphs"][graph]["file"]
        if not path.is_file():
            raise MaskrtError(f"{path}: missing from the export folder")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or min(2, os.cpu_count() or 1)
        so.log_severity_level = 3
        try:
            if graph == "trt":
                from runtime.trt_graph_ort import trt_graph_session

                self.session = trt_graph_session(path, so)
            else:
                self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except MaskrtError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise MaskrtError(f"{path}: cannot load ({str(exc).splitlines()[0]})") from None
        self.batch = int(info["input"]["batch"])
        self.dynamic = bool(info["input"]["dynamic_batch"])

    def run(self, resized: list[torch.Tensor], canvas: torch.Tensor, sizes: torch.Tensor) -> list[RawOutput]:
        n = canvas.shape[0]
        step = n if self.dynamic else self.batch
        outs: list[RawOutput] = []
        for start in range(0, n, step):
            images = canvas[start:start + step].numpy()
            sz = sizes[start:start + step].numpy()
            real = images.shape[0]
            if real < step:  # static batch: pad with empty images, drop their outputs
                images = np.concatenate([images, np.zeros((step - real, *images.shape[1:]), images.dtype)])
                sz = np.concatenate([sz, np.tile(sz[:1], (step - real, 1))])
            num, boxes, scores, labels, masks = self.session.run(None, {"images": images, "image_sizes": sz})
            for i in range(real):
                outs.append(RawOutput(num=int(num[i]), boxes=boxes[i], scores=scores[i],
                                      labels=labels[i].astype(np.int64), masks=masks[i]))
        return outs
