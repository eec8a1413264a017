"""core/images.py: maskrt's pixel limit is applied per call and leaves Pillow's process-wide bomb check alone."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from maskrt.core.errors import MaskrtError
from maskrt.core.images import decode_rgb


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 7, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_importing_maskrt_leaves_pillows_guard_as_it_was() -> None:
    code = ("from PIL import Image; before = Image.MAX_IMAGE_PIXELS; "
            "import maskrt.core.images, maskrt.runtime.predictor; print(before, Image.MAX_IMAGE_PIXELS)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = proc.stdout.split()
    assert before == after != "None"


def test_maskrts_limit_replaces_pillows_for_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow alone refuses 20x20 (more than twice its limit)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(_png(20, 20)))
    assert decode_rgb(_png(20, 20), "a.png", max_pixels=400).shape == (20, 20, 3)  # maskrt's limit decides
    with pytest.raises(MaskrtError, match=r"a\.png: 20x21 is 0 megapixels, more than the limit of 0\.0004"):
        decode_rgb(_png(20, 21), "a.png", max_pixels=400)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored after each call
