"""The Predictor: images -> Detections on the original images, with any backend.

    from maskrt.runtime.predictor import Predictor
    predictor = Predictor.from_export("exports/slim", backend="onnxruntime", graph="portable")
    detections = predictor.predict([load_rgb("a.jpg")])

Pre-processing (runtime/preprocess.py) and post-processing (runtime/postprocess.py) are shared, so
backends differ only in how the network and its inference logic run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from maskrt.core.artifacts import BACKENDS, ExportInfo, check_compatible
from maskrt.core.defaults import KEEP_ALL_SCORES, check_score_threshold
from maskrt.core.errors import MaskrtError, check_choice
from maskrt.runtime.backends.base import Backend
from maskrt.runtime.backends.eager_torch import TorchBackend
from maskrt.runtime.backends.ort_session import OnnxRuntimeBackend
from maskrt.runtime.postprocess import Detections, RawOutput, to_detections
from maskrt.runtime.preprocess import Preprocessor, preprocessor_for
from maskrt.training.checkpoint import load_checkpoint, model_from_checkpoint
from maskrt.training.models import default_canvas


def check_finite_outputs(outs: list[RawOutput]) -> None:
    """MaskrtError when a network output holds NaN or infinity (a broken graph or weights): an error, never an empty
    or garbage result. The caller names the image."""
    for i, out in enumerate(outs):
        bad = [name for name in ("boxes", "scores", "masks") if not np.isfinite(getattr(out, name)).all()]
        if bad:
            where = f" (image {i + 1} of the batch)" if len(outs) > 1 else ""
            raise MaskrtError(f"the network's {' and '.join(bad)} hold non-finite values (NaN or infinity){where}: "
                              "its weights or graph are broken")


def openvino_precision(backend: str, precision: str | None) -> str:
    """OpenVINO's inference precision (f32 when None); MaskrtError when one is named for another backend."""
    if precision is not None and backend != "openvino":
        raise MaskrtError(f"--precision {precision} is OpenVINO's inference precision: it needs --backend "
                          "openvino (TensorRT engines take theirs from `maskrt build --precision`)")
    return precision or "f32"


def default_backend(model: str | Path) -> str:
    """How a model path runs when no backend is named: onnxruntime for an export folder, tensorrt for an engine
    (its ENGINE.json beside it), torch for a checkpoint."""
    model = Path(model)
    return "onnxruntime" if model.is_dir() else "tensorrt" if Path(f"{model}.json").is_file() else "torch"


class Predictor:
    """Runs one backend on batches of HxWx3 uint8 RGB images."""

    def __init__(self, backend: Backend, preprocessor: Preprocessor, classes: list[dict], *,
                 score_threshold: float = KEEP_ALL_SCORES) -> None:
        self.backend = backend
        self.preprocessor = preprocessor
        self.classes = classes
        self.score_threshold = score_threshold

    @classmethod
    def from_export(cls, export_dir: str | Path, *, backend: str = "onnxruntime", graph: str = "portable",
                    checkpoint: str | Path | None = None, score_threshold: float = KEEP_ALL_SCORES,
                    threads: int | None = None, device: str = "cpu", spinning: bool = False,
                    precision: str = "f32") -> Predictor:
        """A predictor on an export folder; backend 'torch' runs `checkpoint` with the export's canvas on `device`
        (`threads`, `device` and `spinning`: OnnxRuntimeBackend's; `threads` and `precision` f32|bf16:
        OpenVinoBackend's)."""
        check_score_threshold(score_threshold)
        check_choice("backend", backend, BACKENDS)
        info = ExportInfo.read(export_dir)
        pre = preprocessor_for(info)
        if backend == "torch":
            if checkpoint is None:
                raise MaskrtError("the torch backend needs a checkpoint")
            ckpt = load_checkpoint(checkpoint)
            check_compatible(ckpt["model_config"], ckpt["classes"], checkpoint, info.model_config, info.classes,
                             Path(export_dir) / "export.json")
            impl: Backend = TorchBackend(model_from_checkpoint(ckpt, source=checkpoint), info.max_detections, device)
        elif backend == "onnxruntime":
            impl = OnnxRuntimeBackend(export_dir, info, graph, threads, device, spinning)
        elif backend == "openvino":
            from maskrt.runtime.backends.openvino_runtime import OpenVinoBackend

            if device not in ("cpu", "auto"):
                raise MaskrtError("--backend openvino runs on the CPU (drop --device)")
            impl = OpenVinoBackend(export_dir, info, graph, threads, precision)
        else:  # tensorrt
            raise MaskrtError(f"{export_dir}: the tensorrt backend runs an engine file: build one with `maskrt build "
                              f"--model {export_dir}` and pass it as the model")
        return cls(impl, pre, info.classes, score_threshold=score_threshold)

    @classmethod
    def from_engine(cls, engine: str | Path, *, score_threshold: float = KEEP_ALL_SCORES) -> Predictor:
        """A predictor on a TensorRT engine built by `maskrt build` (its ENGINE.json carries the export's record)."""
        from maskrt.core.artifacts import EngineInfo
        from maskrt.runtime.backends.tensorrt_engine import TensorRTBackend

        check_score_threshold(score_threshold)
        info = EngineInfo.read(engine)
        return cls(TensorRTBackend(engine, info), preprocessor_for(info.export), info.export.classes,
                   score_threshold=score_threshold)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, *, height: int | None = None, width: int | None = None,
                        score_threshold: float = KEEP_ALL_SCORES, device: str = "cpu") -> Predictor:
        """The torch reference straight from a checkpoint, on `device`: each batch padded as torchvision pads it, or
        to a static canvas when `height` and/or `width` are given (the other side from the model config)."""
        check_score_threshold(score_threshold)
        ckpt = load_checkpoint(checkpoint)
        model = model_from_checkpoint(ckpt, source=checkpoint)
        h, w = default_canvas(ckpt["model_config"])
        canvas = None if height is None and width is None else (height or h, width or w)
        pre = Preprocessor(ckpt["model_config"]["min_size"], ckpt["model_config"]["max_size"],
                           tuple(model.transform.image_mean), tuple(model.transform.image_std),  # type: ignore[arg-type]
                           canvas=canvas)
        backend = TorchBackend(model, int(ckpt["model_config"].get("box_detections_per_img", 100)), device)
        return cls(backend, pre, ckpt["classes"], score_threshold=score_threshold)

    @classmethod
    def open(cls, model: str | Path, *, backend: str = "onnxruntime", graph: str = "portable",
             checkpoint: str | Path | None = None, score_threshold: float = KEEP_ALL_SCORES, threads: int | None = None,
             device: str = "cpu", precision: str | None = None) -> Predictor:
        """The predictor of a model path as a user names it: an export folder (every backend but tensorrt; torch
        with `checkpoint`), an engine file (tensorrt) or a checkpoint (torch). `precision` is OpenVINO's (f32 when
        None) and refused with another backend."""
        precision = openvino_precision(backend, precision)
        if checkpoint is not None and backend != "torch":
            raise MaskrtError(f"--checkpoint is the model of --backend torch; the {backend} backend runs the model "
                              "itself (drop --checkpoint)")
        model = Path(model)
        if backend == "tensorrt":
            if model.is_dir():
                raise MaskrtError(f"{model}: --backend tensorrt takes an engine file (see `maskrt build`)")
            return cls.from_engine(model, score_threshold=score_threshold)
        if model.is_dir():
            return cls.from_export(model, backend=backend, graph=graph, threads=threads, checkpoint=checkpoint,
                                   score_threshold=score_threshold, device=device, precision=precision)
        if backend == "torch":
            return cls.from_checkpoint(model, score_threshold=score_threshold, device=device)
        raise MaskrtError(f"{model}: the {backend} backend needs an export folder (see `maskrt export`)")

    def raw(self, images: list[np.ndarray]) -> tuple[list[RawOutput], list[tuple[int, int]], list[tuple[int, int]]]:
        """Fixed-shape outputs of a batch, with each image's resized and original (h, w)."""
        canvas, sizes = self.preprocessor(images)
        outs = self.backend.run(canvas, sizes)
        check_finite_outputs(outs)
        resized = [(int(h), int(w)) for h, w in sizes.tolist()]
        return outs, resized, [(int(img.shape[0]), int(img.shape[1])) for img in images]

    @torch.no_grad()
    def predict(self, images: list[np.ndarray]) -> list[Detections]:
        """Detections (original-image pixels, masks at the original size) for each image."""
        outs, resized, original = self.raw(images)
        device = getattr(self.backend, "device", "cpu")  # a GPU backend's masks are pasted on its GPU
        return [to_detections(o, r, s, score_threshold=self.score_threshold, device=device)
                for o, r, s in zip(outs, resized, original, strict=True)]

    def close(self) -> None:
        """Release the backend (ONNX Runtime session, engine)."""
        self.backend.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
