"""The serving protocol and the Triton ensemble's steps without a server (fast tier): PreStep -> the export's graph ->
PostStep answers as the Predictor plus `maskrt predict`'s COCO conversion, and bad request tensors are named."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import random_checkpoint
from PIL import Image

from maskrt.core.artifacts import ExportInfo
from maskrt.core.errors import MaskrtError
from maskrt.export.onnx_export import export_checkpoint
from maskrt.runtime.predictor import Predictor
from maskrt.serving.protocol import coco_results, decode_results, encode_results, request_images
from maskrt.serving.server import DetectFunction
from maskrt.serving.steps import NetworkStep, PostStep, PreStep


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("steps")
    ckpt = random_checkpoint(root / "slim.pt", "slim", num_classes=3, min_size=96, max_size=160)
    export_checkpoint(ckpt, root / "export", dynamic_batch=True, max_detections=20)
    return root / "export"


def png(h: int, w: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_steps_equal_the_predictor(export: Path) -> None:
    info = ExportInfo.read(export)
    blob = png(90, 150, 0)
    image = np.array(Image.open(io.BytesIO(blob)).convert("RGB"))
    with Predictor.from_export(export, score_threshold=0.05) as predictor:
        expected = coco_results(predictor.predict([image])[0], info.classes)
    assert expected, "the model detects on the test image"
    pre, net, post = PreStep(info), NetworkStep(export), PostStep(info, score_threshold=0.05)
    inputs = pre(np.array([[blob]], dtype=np.object_))
    assert inputs["original_sizes"].tolist() == [[90, 150]]
    outputs = net(inputs["images"], inputs["image_sizes"])
    detections = post(outputs, inputs["image_sizes"], inputs["original_sizes"])
    assert detections.shape == (1, 1)
    assert decode_results(detections[0, 0]) == expected


def test_serve_function_answers_each_image_as_alone(export: Path) -> None:
    """Requests of different image sizes in one dynamic batch, and one request holding several images: each image
    gets what it gets alone."""
    a, b = png(90, 150, 1), png(120, 80, 2)
    with Predictor.from_export(export, score_threshold=0.05) as predictor:
        function = DetectFunction(predictor, max_batch=8)
        alone = [function([{"image": np.array([[x]], dtype=np.object_)}])[0]["detections"][0, 0] for x in (a, b)]
        batch = function([{"image": np.array([[a], [b]], dtype=np.object_)}, {"image": np.array([[b]], np.object_)}])
    assert batch[0]["detections"].shape == (2, 1) and batch[1]["detections"].shape == (1, 1)
    assert [batch[0]["detections"][0, 0], batch[0]["detections"][1, 0], batch[1]["detections"][0, 0]] == \
        [alone[0], alone[1], alone[1]]


@pytest.mark.parametrize(("array", "fragment"), [
    (np.zeros((1, 1), np.float32), "must be BYTES"),
    (np.array([b"x", b"y"], dtype=np.object_), "shape [batch, 1]"),
    (np.zeros((0, 1), dtype=np.object_), "empty batch"),
])
def test_request_tensor_errors(array: np.ndarray, fragment: str) -> None:
    with pytest.raises(MaskrtError) as err:
        request_images(array)
    assert fragment in str(err.value)


def test_bad_images_are_named(export: Path) -> None:
    pre = PreStep(ExportInfo.read(export), max_pixels=10_000)
    for blob, fragment in ((b"", "empty"), (b"GIF89a nope", "cannot read image"), (png(200, 200, 3), "megapixels")):
        with pytest.raises(MaskrtError) as err:
            pre(np.array([[blob]], dtype=np.object_))
        assert fragment in str(err.value) and str(err.value).startswith("image 0:"), err.value


def test_results_round_trip() -> None:
    results = [{"category_id": 3, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5,
                "segmentation": {"size": [4, 5], "counts": "abc"}}]
    assert decode_results(encode_results(results)) == results
    with pytest.raises(MaskrtError):
        decode_results(b"{not json")
