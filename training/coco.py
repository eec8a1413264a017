"""A loader for any COCO-format instance-segmentation dataset (the real COCO 2017 layout included).

Handles polygon, compressed-RLE and uncompressed-RLE segmentations, `iscrowd` (crowd regions are kept
for evaluation by pycocotools but never used as training targets), images without annotations and
non-contiguous category ids, which are mapped to contiguous labels 1..K (0 is background) and back.

Bad input gives a MaskrtError naming the file or annotation (duplicate image, annotation or category
ids are errors). Annotations that cannot be used (no or malformed segmentation, polygons of fewer than 3
points or no area, an RLE of another size, malformed or not covering the image, a box of no area) are
skipped, all listed with their ids and reasons in one warning per file, and the SAME cleaned set is what
training learns and what evaluation scores (pycocotools gets the cleaned ground truth).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO

from maskrt.core.artifacts import check_class_list
from maskrt.core.errors import MaskrtError
from maskrt.core.images import load_rgb

log = logging.getLogger("maskrt")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_unique(path: Path, items: list[dict], what: str) -> set:
    ids: set = set()
    for item in items:
        if item["id"] in ids:
            raise MaskrtError(f"{path}: {what} id {item['id']} appears twice (ids must be unique)")
        ids.add(item["id"])
    return ids


def read_coco_json(path: str | Path) -> COCO:
    """Load and validate a COCO instances file into a pycocotools COCO index (quietly): the structure, unique image /
    annotation / category ids, image sizes, and references between them. Annotations are not cleaned here."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MaskrtError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MaskrtError(f"{path}: cannot read annotation file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise MaskrtError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MaskrtError(f"{path}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise MaskrtError(f"{path}: missing or malformed '{key}' list")
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not {"id", "file_name", "height", "width"} <= img.keys():
            raise MaskrtError(f"{path}: images[{i}] needs id, file_name, height and width")
        if not (_is_int(img["height"]) and _is_int(img["width"]) and img["height"] > 0 and img["width"] > 0):
            raise MaskrtError(f"{path}: image {img['id']} needs positive integer height and width")
        if not isinstance(img["file_name"], str) or not img["file_name"] or Path(img["file_name"]).is_absolute() \
                or ".." in Path(img["file_name"]).parts:
            raise MaskrtError(f"{path}: image {img['id']} file_name must be a path inside the image folder")
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise MaskrtError(f"{path}: categories[{i}] needs id and name")
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not {"id", "image_id", "category_id"} <= ann.keys():
            raise MaskrtError(f"{path}: annotations[{i}] needs id, image_id and category_id")
    image_ids = _check_unique(path, data["images"], "image")
    by_file: dict[str, list] = {}
    for img in data["images"]:
        by_file.setdefault(str(Path(img["file_name"])), []).append(img["id"])
    for file_name, same in by_file.items():
        if len(same) > 1:
            log.warning("%s: image ids %s name the same file %s (it counts once per id in training and evaluation)",
                        path, ", ".join(map(str, same)), file_name)
    cat_ids = _check_unique(path, data["categories"], "category")
    check_class_list(data["categories"], path)
    _check_unique(path, data["annotations"], "annotation")
    for ann in data["annotations"]:
        if ann["image_id"] not in image_ids:
            raise MaskrtError(f"{path}: annotation {ann['id']} points at image_id {ann['image_id']}, "
                              "which is not in 'images'")
        if ann["category_id"] not in cat_ids:
            raise MaskrtError(f"{path}: annotation {ann['id']} has unknown category_id {ann['category_id']}")
        ann.setdefault("iscrowd", 0)
    return _index(data)


def _index(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _valid_polygon(poly: object) -> bool:
    """A flat [x1, y1, x2, y2, ...] list of at least 3 finite points enclosing some area."""
    if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
        return False
    try:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        return False
    if not np.all(np.isfinite(xy)):
        return False
    x, y = xy[:, 0], xy[:, 1]
    return abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))) > 0  # shoelace: not all on a line


def rle_counts(counts: object) -> list[int] | None:
    """The run lengths of an RLE's counts (a list of ints, or COCO's compressed string); None when malformed."""
    if isinstance(counts, list):
        return counts if all(_is_int(c) and c >= 0 for c in counts) else None
    if not isinstance(counts, str):
        return None
    out: list[int] = []
    p = 0
    while p < len(counts):  # COCO's string format: 5 bits per char, continuation bit 0x20, deltas after the 2nd
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c <= 63:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        if x < 0:
            return None
        out.append(x)
    return out


def _rle_problem(seg: dict, height: int, width: int) -> str | None:
    if list(seg.get("size", [])) != [height, width]:
        return f"RLE size {seg.get('size')} differs from the image size {[height, width]}"
    counts = rle_counts(seg.get("counts"))
    if counts is None:
        return "malformed RLE counts"
    if sum(counts) != height * width:
        return f"RLE counts cover {sum(counts)} pixels, not {height * width}"
    if sum(counts[1::2]) == 0:
        return "empty mask"
    return None


def clean_annotation(ann: dict, width: int, height: int) -> tuple[dict | None, str | None]:
    """(cleaned annotation, None), or (None, why it cannot be used). The same rules decide what training learns and
    what evaluation scores: a segmentation (polygons with >= 3 points and some area, or a valid RLE of the image's
    size), a finite box of positive size overlapping the image by at least a pixel each way."""
    seg = ann.get("segmentation")
    bbox = ann.get("bbox")
    if seg is None:
        return None, "no segmentation"
    if isinstance(seg, list):
        polys = [p for p in seg if _valid_polygon(p)]
        if not polys:
            return None, "no polygon of 3 or more points with an area"
        ann = {**ann, "segmentation": polys}
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        problem = _rle_problem(seg, height, width)
        if problem:
            return None, problem
    else:
        return None, "malformed segmentation"
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox) \
            or not np.all(np.isfinite(bbox)):
        return None, "missing or malformed bbox"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return None, "box of negative or zero size"
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(float(width), x + w), min(float(height), y + h)
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None, "box of no area inside the image"
    if not isinstance(ann.get("area"), (int, float)) or not np.isfinite(ann["area"]):
        ann = {**ann, "area": float(w * h)}
    return ann, None


class CocoDataset(torch.utils.data.Dataset):
    """A COCO-format split as (image [3,H,W] float in 0..1, target dict) pairs for torchvision detection.

    `train=True` keeps only images with at least one usable non-crowd annotation; `train=False` keeps
    every image (for evaluation). The contiguous label of category `classes[i]["id"]` is i + 1.
    """

    def __init__(self, image_dir: str | Path, ann_file: str | Path, *, train: bool) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.train = train
        raw = read_coco_json(self.ann_file)
        cats = sorted(raw.dataset["categories"], key=lambda c: c["id"])
        self.classes = [{"id": int(c["id"]), "name": str(c["name"])} for c in cats]
        self.cat_to_label = {c["id"]: i + 1 for i, c in enumerate(self.classes)}
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}
        kept: list[dict] = []
        skipped: dict[str, list] = {}
        for ann in raw.dataset["annotations"]:
            img = raw.imgs[ann["image_id"]]
            clean, why = clean_annotation(ann, img["width"], img["height"])
            if clean is None:
                skipped.setdefault(str(why), []).append(ann["id"])
            else:
                kept.append(clean)
        if skipped:
            total = sum(len(ids) for ids in skipped.values())
            log.warning("%s: skipped %d annotation(s) that cannot be used for training or evaluation: %s",
                        self.ann_file, total, "; ".join(f"{why}: id {', '.join(map(str, ids))}"
                                                        for why, ids in skipped.items()))
        # One cleaned set: training learns from it and pycocotools scores against it.
        self.coco = _index({**raw.dataset, "annotations": kept})
        self.targets: dict[int, list[dict]] = {
            img_id: [a for a in self.coco.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0)]
            for img_id in self.coco.imgs
        }
        if not any(self.targets.values()):
            raise MaskrtError(f"{self.ann_file}: zero usable annotations")
        ids = sorted(self.coco.imgs)
        self.ids = [i for i in ids if self.targets[i]] if train else ids
        for img_id in self.ids:
            path = self.image_dir / self.coco.imgs[img_id]["file_name"]
            if not path.is_file():
                raise MaskrtError(f"{path}: image file of image_id {img_id} ({self.ann_file}) not found")

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        rgb = load_rgb(self.image_path(index))
        h, w = rgb.shape[:2]
        if (h, w) != (info["height"], info["width"]):
            raise MaskrtError(f"{self.image_path(index)}: is {w}x{h} but {self.ann_file} says "
                              f"{info['width']}x{info['height']}")
        image = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
        boxes, labels, masks = [], [], []
        for ann in self.targets[img_id]:
            mask = self.coco.annToMask(ann)  # may be empty for a sliver polygon: kept, as evaluation keeps it
            x, y, bw, bh = ann["bbox"]
            boxes.append([max(0.0, x), max(0.0, y), min(float(w), x + bw), min(float(h), y + bh)])
            labels.append(self.cat_to_label[ann["category_id"]])
            masks.append(mask)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8),
            "image_id": img_id,
        }
        return image, target


def is_coco_dataset(folder: str | Path) -> bool:
    """Whether a --data folder is a COCO-format dataset (it has annotations/) rather than a folder of plain images:
    the one place `parity`, `layers` and `quantize` decide it."""
    return (Path(folder) / "annotations").is_dir()


def split_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """The (image_dir, annotation_file) of a split in the COCO layout: annotations/instances_{split}.json and
    {split}/ (the split's exact name, e.g. "val" or "val2017")."""
    root = Path(root)
    if not root.is_dir():
        raise MaskrtError(f"{root}: dataset folder not found")
    ann_dir = root / "annotations"
    ann = ann_dir / f"instances_{split}.json"
    if not ann.is_file():
        have = sorted(p.stem.removeprefix("instances_") for p in ann_dir.glob("instances_*.json"))
        raise MaskrtError(f"{ann}: no such annotation file (splits here: {', '.join(have) or 'none'})")
    image_dir = root / ann.stem.removeprefix("instances_")
    if not image_dir.is_dir():
        raise MaskrtError(f"{image_dir}: image folder for {ann.name} not found")
    return image_dir, ann


def load_split(root: str | Path, split: str, *, train: bool) -> CocoDataset:
    """Load split `split` ("train", "val", or e.g. "train2017") of a COCO-layout dataset folder."""
    image_dir, ann = split_paths(root, split)
    return CocoDataset(image_dir, ann, train=train)


def collate(batch: list) -> tuple[list, list]:
    """Keep images and targets as lists, as torchvision detection models expect."""
    return tuple(zip(*batch, strict=True))
