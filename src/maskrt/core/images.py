"""Image reading shared by training and the runtime: any PIL-readable file to 8-bit RGB."""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from maskrt.core.errors import MaskrtError

# Refuse decompression bombs but allow large real photos (e.g. 100 MP panoramas).
Image.MAX_IMAGE_PIXELS = 200_000_000


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as an HxWx3 uint8 RGB array.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit/float images are converted; 16-bit and
    float images are scaled by their maximum value. Raises MaskrtError naming the file when it is
    missing, unreadable or too large.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                peak = float(arr.max()) if arr.size else 0.0
                scale = 255.0 / peak if peak > 255.0 else 1.0
                arr = np.clip(arr * scale, 0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise MaskrtError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MaskrtError(f"{path}: cannot read image ({exc})") from None
    except Image.DecompressionBombError as exc:
        raise MaskrtError(f"{path}: image too large ({exc})") from None
