"""Deterministic generator of a COCO-format instance-segmentation dataset of coloured shapes.

Every image has a textured, noisy background and 1-4 shapes of varied colours, sizes and aspect ratios: by default
circle, rectangle and triangle; `classes` picks others from SHAPES (e.g. star and hexagon, for a fine-tuning dataset
whose classes the pretrained model never saw). Category ids are 1..K in the order given. Poses vary only a little
(rectangles, upward-pointing triangles, stars and hexagons turn by at most MAX_TILT radians), as in the classic shapes
dataset: the class is a matter of shape, not of pose. With free rotation the from-scratch `slim` model could not tell
rotated rectangles from the other classes within the 6-minute CPU budget (segm AP 38 vs 58 here). Later shapes
occlude earlier ones; each annotation holds the *visible* mask as compressed RLE with its area and bbox. Placement
rejects a shape that would hide most of an earlier one, so every visible object is annotated. Each image is drawn from
its own RNG seeded by (seed, split, index): the same seed gives byte-identical JSON and PNG files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image, ImageDraw
from tqdm import tqdm

from maskrt.core.errors import MaskrtError
from maskrt.core.outputs import check_output_dir, staged_dir

SHAPES = ("circle", "rectangle", "triangle", "star", "hexagon")
DEFAULT_CLASSES = ("circle", "rectangle", "triangle")


def categories(classes: tuple[str, ...] | list[str] = DEFAULT_CLASSES) -> list[dict]:
    """The COCO categories of a shapes dataset of `classes` (ids 1..K in order); MaskrtError for an unknown shape or
    one named twice."""
    unknown = [c for c in classes if c not in SHAPES]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise MaskrtError(f"shape classes must be distinct names from {', '.join(SHAPES)}, got "
                          f"{','.join(classes) or 'none'}")
    return [{"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(classes, 1)]


CATEGORIES = categories()
_SPLIT_IDS = {"train": 0, "val": 1}
MIN_VISIBLE_FRACTION = 0.7  # a shape stays at least this visible after later shapes are drawn
MIN_VISIBLE_PIXELS = 24
MAX_TILT = 0.2  # radians (~11 degrees) a rectangle or triangle may turn


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float HxWx3 background: colour gradient + stripes or blobs + pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.5) / 3.0
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    kind = rng.integers(0, 3)
    if kind == 0:  # stripes
        freq, phase, amp = rng.uniform(3, 12), rng.uniform(0, 2 * np.pi), rng.uniform(8, 25)
        a2 = rng.uniform(0, np.pi)
        img += amp * np.sin(2 * np.pi * freq * (np.cos(a2) * xx + np.sin(a2) * yy) + phase)[..., None]
    elif kind == 1:  # low-frequency blobs
        coarse = rng.normal(0, 20, (6, 6, 3)).astype(np.float32)
        img += np.asarray(
            [np.asarray(Image.fromarray(coarse[..., c]).resize((size, size), Image.BILINEAR)) for c in range(3)]
        ).transpose(1, 2, 0)
    img += rng.normal(0, rng.uniform(2, 10), img.shape)
    return img


def _regular(cx: float, cy: float, radii: list[float], turn: float) -> list[tuple[float, float]]:
    """The polygon of len(radii) vertices at equal angles from `turn`, vertex i at radius radii[i]."""
    angles = turn + np.arange(len(radii)) * 2 * np.pi / len(radii)
    return [(cx + r * np.cos(t), cy + r * np.sin(t)) for r, t in zip(radii, angles, strict=True)]


def _shape_mask(rng: np.random.Generator, size: int, shape: str) -> np.ndarray:
    """Draw one shape (a name of SHAPES) as a boolean HxW mask."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    r = rng.uniform(0.13, 0.28) * size
    cx, cy = rng.uniform(r * 0.5, size - r * 0.5, 2)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif shape == "star":  # five points, apex up
        draw.polygon(_regular(cx, cy, [1.2 * r, 0.5 * r] * 5, -np.pi / 2 + rng.uniform(-MAX_TILT, MAX_TILT)), fill=1)
    elif shape == "hexagon":
        draw.polygon(_regular(cx, cy, [1.05 * r] * 6, rng.uniform(-MAX_TILT, MAX_TILT)), fill=1)
    elif shape == "rectangle":
        w, h = r * rng.uniform(0.7, 1.3), r * rng.uniform(0.5, 1.1)
        a = rng.uniform(-MAX_TILT, MAX_TILT)
        corners = [(-w, -h), (w, -h), (w, h), (-w, h)]
        pts = [(cx + x * np.cos(a) - y * np.sin(a), cy + x * np.sin(a) + y * np.cos(a)) for x, y in corners]
        draw.polygon(pts, fill=1)
    else:
        a = -np.pi / 2 + rng.uniform(-MAX_TILT, MAX_TILT)  # apex up (image y grows downwards)
        angles = a + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.1, 0.1, 3)
        pts = [(cx + 1.15 * r * np.cos(t), cy + 1.15 * r * np.sin(t)) for t in angles]
        draw.polygon(pts, fill=1)
    return np.asarray(canvas, dtype=bool)


def _colour(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A random colour at least some distance from the local background colour."""
    for _ in range(20):
        c = rng.uniform(0, 255, 3)
        if np.abs(c - avoid).sum() > 150:
            return c
    return 255.0 - avoid


def render_image(seed: int, split: str, index: int, size: int, classes: tuple[str, ...] | list[str] = DEFAULT_CLASSES
                 ) -> tuple[np.ndarray, list[dict]]:
    """Render image `index` of `split` with shapes of `classes`: returns (HxWx3 uint8 image, instances with category
    id (1-based index into `classes`) and mask)."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    canvas = _background(rng, size)
    placed: list[dict] = []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(15):
            category = int(rng.integers(1, len(classes) + 1))
            full = _shape_mask(rng, size, classes[category - 1])
            if full.sum() < MIN_VISIBLE_PIXELS * 2:
                continue
            if all(
                (p["visible"] & ~full).sum() >= max(MIN_VISIBLE_FRACTION * p["full"].sum(), MIN_VISIBLE_PIXELS)
                for p in placed
            ):
                for p in placed:
                    p["visible"] &= ~full
                placed.append({"category_id": category, "full": full, "visible": full.copy()})
                break
    for p in placed:  # paint in placement order: later shapes cover earlier ones
        full = p["full"]
        colour = _colour(rng, canvas[full].mean(axis=0))
        shade = rng.uniform(-25, 25, 3)
        yy, xx = np.nonzero(full)
        t = ((xx - xx.min()) / max(1, int(np.ptp(xx))))[:, None]
        canvas[yy, xx] = colour + shade * (t - 0.5) + rng.normal(0, 4, (len(yy), 3))
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    return image, [{"category_id": p["category_id"], "mask": p["visible"], "full_area": int(p["full"].sum())}
                   for p in placed]


def _annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": float(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": 0,
    }


def generate_split(out: Path, split: str, count: int, size: int, seed: int, progress: bool = True,
                   classes: tuple[str, ...] | list[str] = DEFAULT_CLASSES) -> Path:
    """Write `count` images of `split` under out/split/ and out/annotations/instances_{split}.json."""
    (out / split).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in tqdm(range(count), desc=f"shapes {split}", unit="img", disable=not progress):
        image, instances = render_image(seed, split, index, size, classes)
        image_id = index + 1
        file_name = f"{index:06d}.png"
        Image.fromarray(image).save(out / split / file_name, optimize=False)
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        for inst in instances:
            annotations.append(_annotation(len(annotations) + 1, image_id, inst["category_id"], inst["mask"]))
    dataset = {
        "info": {"description": f"maskrt shapes ({split}, seed {seed}, {size}px)", "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories(classes),
    }
    path = out / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(dataset, separators=(",", ":")))
    return path


def generate(out: str | Path, *, train: int = 400, val: int = 100, size: int = 128, seed: int = 0,
             progress: bool = True, force: bool = False,
             classes: tuple[str, ...] | list[str] = DEFAULT_CLASSES) -> Path:
    """Generate the shapes dataset (train and val splits) as the folder `out`; returns `out`.

    A non-empty `out` is refused unless `force` (then it is replaced, never mixed with old files); the dataset is
    written under a temporary name and renamed when complete."""
    if train < 1 or val < 1:
        raise MaskrtError("the train and val image counts must be at least 1")
    if size < 32:
        raise MaskrtError("the image size must be at least 32 pixels")
    if seed < 0:
        raise MaskrtError(f"the seed must be >= 0, got {seed}")
    categories(classes)
    out = check_output_dir(out, force=force)
    with staged_dir(out) as staging:
        generate_split(staging, "train", train, size, seed, progress, classes)
        generate_split(staging, "val", val, size, seed, progress, classes)
    return out
