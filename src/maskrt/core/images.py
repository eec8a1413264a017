"""Image reading shared by training and the runtime: any PIL-readable file to 8-bit RGB, upright.

- EXIF orientation is applied, so pixels (and every box and mask) are in the orientation viewers show.
- Images larger than MAX_IMAGE_PIXELS (default 100 megapixels; ``MASKRT_MAX_IMAGE_PIXELS`` changes it) are refused
  before they are decoded, as are paths that are not regular files (folders, FIFOs, devices).
"""

import io
import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from maskrt.core.defaults import DEFAULT_FILE_MAX_PIXELS
from maskrt.core.errors import MaskrtError

_PIL_GUARD = threading.Lock()  # maskrt's own size check replaces Pillow's bomb check during one header read

#: The file suffixes read as images when a folder is given.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: str | Path) -> list[Path]:
    """The image files of a folder (by suffix, regular files only), sorted by name; [] when it holds none."""
    return sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())


def image_folder(folder: str | Path, what: str = "images") -> list[Path]:
    """`list_images` of a folder that must exist and hold at least one image (MaskrtError naming it otherwise)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MaskrtError(f"{folder}: not a folder of {what}")
    files = list_images(folder)
    if not files:
        raise MaskrtError(f"{folder}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def max_image_pixels() -> int:
    """The pixel limit: MASKRT_MAX_IMAGE_PIXELS if set (a positive integer), else DEFAULT_FILE_MAX_PIXELS."""
    text = os.environ.get("MASKRT_MAX_IMAGE_PIXELS")
    if text is None:
        return DEFAULT_FILE_MAX_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise MaskrtError(f"MASKRT_MAX_IMAGE_PIXELS={text!r}: must be a positive integer")
    return int(text)


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as an HxWx3 uint8 RGB array, EXIF orientation applied.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit/float images are converted; 16-bit and
    float images are scaled by their maximum value. Raises MaskrtError naming the file when it is
    missing, not a regular file, unreadable or larger than the pixel limit.
    """
    path = Path(path)
    if not path.exists():
        raise MaskrtError(f"{path}: image file not found")
    if not path.is_file():
        raise MaskrtError(f"{path}: not a regular file")
    return _decode(path, str(path), max_image_pixels())


def decode_rgb(data: bytes, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """`load_rgb` of encoded image bytes (a request body, e.g. PNG or JPEG); `name` is what errors call it and
    `max_pixels` the limit (default: `max_image_pixels()`), checked from the header before decoding."""
    if not data:
        raise MaskrtError(f"{name}: empty (no image bytes)")
    return _decode(io.BytesIO(data), name, max_image_pixels() if max_pixels is None else max_pixels)


def _open_header(source: Path | io.BytesIO) -> Image.Image:
    """Image.open (header only) with Pillow's own decompression-bomb check off for this call alone: the caller
    checks the size against maskrt's limit, which may be above Pillow's; the process-wide setting is restored."""
    with _PIL_GUARD:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(source)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _decode(source: Path | io.BytesIO, name: str, limit: int) -> np.ndarray:
    """Decode an image file or stream to HxWx3 uint8 RGB (see `load_rgb`)."""
    try:
        with _open_header(source) as im:
            w, h = im.size
            if w * h > limit:
                raise MaskrtError(f"{name}: {w}x{h} is {w * h / 1e6:.0f} megapixels, more than the limit of "
                                  f"{limit / 1e6:g} (set MASKRT_MAX_IMAGE_PIXELS to raise it)")
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                peak = float(arr.max()) if arr.size else 0.0
                scale = 255.0 / peak if peak > 255.0 else 1.0
                arr = np.clip(arr * scale, 0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except UnidentifiedImageError as exc:
        reason = exc if isinstance(source, Path) else "not an image file: no format PIL reads"
        raise MaskrtError(f"{name}: cannot read image ({reason})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise MaskrtError(f"{name}: cannot read image ({exc})") from None
    except MemoryError:
        raise MaskrtError(f"{name}: not enough memory to decode it") from None
