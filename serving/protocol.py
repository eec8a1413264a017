"""What a served maskrt model takes and returns, in one place for the server, the repository and the client.

A request holds one tensor `image`: BYTES, shape [batch, 1], each element an encoded image file (PNG, JPEG, ... any
format `maskrt predict` reads). The response holds `detections`: BYTES, shape [batch, 1], each element the UTF-8 JSON
list of that image's detections in COCO results form, exactly the entries of `maskrt predict`'s results.json without
its file fields: {"category_id", "bbox" [x, y, w, h], "score", "segmentation" (RLE at the original size)}.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from maskrt.core.errors import MaskrtError
from maskrt.runtime import postprocess
from maskrt.runtime.postprocess import Detections

INPUT = "image"
OUTPUT = "detections"


def coco_results(dets: Detections, classes: list[dict]) -> list[dict[str, Any]]:
    """One image's detections as COCO results (as `maskrt predict` writes them, without image and file fields)."""
    results = postprocess.coco_results(dets, classes)
    for r in results:
        del r["image_id"]
    return results


def encode_results(results: list[dict[str, Any]]) -> bytes:
    """The response element of one image."""
    return json.dumps(results, separators=(",", ":")).encode()


def decode_results(element: bytes | np.bytes_ | str) -> list[dict[str, Any]]:
    """One response element back to the list of COCO results."""
    try:
        results = json.loads(element)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MaskrtError(f"the server's '{OUTPUT}' element is not JSON ({exc})") from None
    if not isinstance(results, list):
        raise MaskrtError(f"the server's '{OUTPUT}' element is not a list of detections")
    return results


def request_images(array: np.ndarray) -> list[bytes]:
    """The encoded images of one request's `image` tensor ([batch, 1] of bytes); MaskrtError for any other form."""
    if array.dtype != np.object_ and array.dtype.kind != "S":
        raise MaskrtError(f"'{INPUT}' must be BYTES (encoded image files), got {array.dtype}")
    if array.ndim != 2 or array.shape[1] != 1:
        raise MaskrtError(f"'{INPUT}' must have shape [batch, 1], got {list(array.shape)}")
    if array.shape[0] == 0:
        raise MaskrtError(f"'{INPUT}' holds no images (an empty batch)")
    out = []
    for element in array[:, 0]:
        if isinstance(element, str):
            element = element.encode("latin-1")
        if not isinstance(element, bytes | np.bytes_):
            raise MaskrtError(f"'{INPUT}' elements must be bytes, got {type(element).__name__}")
        out.append(bytes(element))
    return out
