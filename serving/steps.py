"""The three steps of a `maskrt triton` ensemble, as plain functions of numpy arrays (the repository's python-backend
models are thin wrappers around them, so they are tested here without a Triton server):

    image [b, 1] BYTES -> PreStep -> images [b, 3, H, W] FP32, image_sizes [b, 2] INT64, original_sizes [b, 2] INT64
    images, image_sizes -> the network (TensorRT plan, ONNX Runtime, or NetworkStep) -> the export's five outputs
    the five outputs, image_sizes, original_sizes -> PostStep -> detections [b, 1] BYTES (serving/protocol.py)

Each step reads the export.json placed beside it, so the pre-processing is the export's own (runtime/preprocess.py)
and the post-processing is `maskrt predict`'s (runtime/postprocess.py), padding a request's images as torchvision pads
one batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from maskrt.core.artifacts import OUTPUT_NAMES, ExportInfo
from maskrt.core.defaults import DEFAULT_REQUEST_MAX_PIXELS, DEFAULT_SCORE_THRESHOLD, check_score_threshold
from maskrt.core.images import decode_rgb
from maskrt.runtime.postprocess import RawOutput, to_detections
from maskrt.runtime.preprocess import preprocessor_for
from maskrt.serving.protocol import coco_results, encode_results, request_images

#: Names of the tensors between the steps (the network's are the export's INPUT_NAMES and OUTPUT_NAMES).
ORIGINAL_SIZES = "original_sizes"


class PreStep:
    """Encoded images -> the network's inputs (resize, normalise, pad) and each image's original size."""

    def __init__(self, info: ExportInfo, max_pixels: int = DEFAULT_REQUEST_MAX_PIXELS) -> None:
        self.preprocessor = preprocessor_for(info)
        self.max_pixels = max_pixels
        self.names = info.input.names

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        blobs = request_images(image)
        images = [decode_rgb(blob, f"image {i}", self.max_pixels) for i, blob in enumerate(blobs)]
        canvas, sizes = self.preprocessor(images)
        original = np.array([img.shape[:2] for img in images], dtype=np.int64)
        return {self.names[0]: canvas.numpy(), self.names[1]: sizes.numpy().astype(np.int64),
                ORIGINAL_SIZES: original}


class PostStep:
    """The network's outputs -> each image's COCO results as JSON (boxes scaled and masks pasted at the original
    size, as `maskrt predict`)."""

    def __init__(self, info: ExportInfo, score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> None:
        self.classes = info.classes
        self.score_threshold = check_score_threshold(score_threshold)

    @torch.no_grad()
    def __call__(self, outputs: dict[str, np.ndarray], image_sizes: np.ndarray,
                 original_sizes: np.ndarray) -> np.ndarray:
        num, boxes, scores, labels, masks = (outputs[name] for name in OUTPUT_NAMES)
        b = len(image_sizes)
        num = np.asarray(num).reshape(b)
        results = []
        for i in range(b):
            raw = RawOutput(num=int(num[i]), boxes=boxes[i], scores=scores[i], labels=labels[i].astype(np.int64),
                            masks=masks[i])
            resized = (int(image_sizes[i][0]), int(image_sizes[i][1]))
            original = (int(original_sizes[i][0]), int(original_sizes[i][1]))
            dets = to_detections(raw, resized, original, score_threshold=self.score_threshold)
            results.append(encode_results(coco_results(dets, self.classes)))
        return np.array(results, dtype=np.object_).reshape(b, 1)


class NetworkStep:
    """The export's graph on ONNX Runtime inside Triton's python backend (for a Triton without the onnxruntime
    backend, e.g. the one PyTriton ships); `folder` holds export.json and the graph file."""

    def __init__(self, folder: str | Path, graph: str = "portable", threads: int | None = None) -> None:
        from maskrt.runtime.backends.ort_session import OnnxRuntimeBackend

        info = ExportInfo.read(folder)
        self.backend = OnnxRuntimeBackend(folder, info, graph, threads)

    def __call__(self, images: np.ndarray, image_sizes: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(OUTPUT_NAMES, self.backend.run_graph(images, image_sizes), strict=True))
