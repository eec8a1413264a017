"""A loader for any COCO-format instance-segmentation dataset (the real COCO 2017 layout included).

Handles polygon, compressed-RLE and uncompressed-RLE segmentations, `iscrowd` (crowd regions are kept
for evaluation by pycocotools but never used as training targets), images without annotations and
non-contiguous category ids, which are mapped to contiguous labels 1..K (0 is background) and back.

Bad input gives a MaskrtError naming the file or annotation; degenerate annotations (a polygon with
fewer than 3 points, a box or mask of no area) are skipped with one warning per file.
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

from maskrt.core.errors import MaskrtError
from maskrt.core.images import load_rgb

log = logging.getLogger("maskrt")


def read_coco_json(path: str | Path) -> COCO:
    """Load and validate a COCO instances file into a pycocotools COCO index (quietly)."""
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
    image_ids = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not {"id", "file_name", "height", "width"} <= img.keys():
            raise MaskrtError(f"{path}: images[{i}] needs id, file_name, height and width")
        image_ids.add(img["id"])
    cat_ids = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise MaskrtError(f"{path}: categories[{i}] needs id and name")
        cat_ids.add(cat["id"])
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not {"id", "image_id", "category_id"} <= ann.keys():
            raise MaskrtError(f"{path}: annotations[{i}] needs id, image_id and category_id")
        if ann["image_id"] not in image_ids:
            raise MaskrtError(f"{path}: annotation {ann['id']} points at image_id {ann['image_id']}, "
                              "which is not in 'images'")
        if ann["category_id"] not in cat_ids:
            raise MaskrtError(f"{path}: annotation {ann['id']} has unknown category_id {ann['category_id']}")
        ann.setdefault("iscrowd", 0)
        if "area" not in ann and "bbox" in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _valid_polygon(poly: object) -> bool:
    """A flat [x1, y1, x2, y2, ...] list of at least 3 finite points."""
    if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
        return False
    try:
        return bool(np.all(np.isfinite(np.asarray(poly, dtype=np.float64))))
    except (TypeError, ValueError):
        return False


def _usable(ann: dict, width: int, height: int) -> tuple[dict | None, str | None]:
    """Return (cleaned annotation, None) or (None, reason it is degenerate)."""
    seg = ann.get("segmentation")
    bbox = ann.get("bbox")
    if seg is None:
        return None, "no segmentation"
    if isinstance(seg, list):
        polys = [p for p in seg if _valid_polygon(p)]
        if not polys:
            return None, "polygon with fewer than 3 points"
        ann = {**ann, "segmentation": polys}
    elif not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
        return None, "malformed segmentation"
    elif list(seg["size"]) != [height, width]:
        return None, f"RLE size {seg['size']} differs from the image size {[height, width]}"
    if bbox is None or len(bbox) != 4 or not np.all(np.isfinite(bbox)):
        return None, "missing or malformed bbox"
    x, y, w, h = bbox
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(float(width), x + w), min(float(height), y + h)
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None, "box of no area"
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
        self.coco = read_coco_json(self.ann_file)
        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        self.classes = [{"id": int(c["id"]), "name": str(c["name"])} for c in cats]
        self.cat_to_label = {c["id"]: i + 1 for i, c in enumerate(self.classes)}
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}
        self.targets: dict[int, list[dict]] = {}
        skipped: list[str] = []
        for img_id, img in self.coco.imgs.items():
            anns = []
            for ann in self.coco.imgToAnns.get(img_id, []):
                if ann.get("iscrowd", 0):
                    continue
                clean, why = _usable(ann, img["width"], img["height"])
                if clean is None:
                    skipped.append(f"{ann['id']} ({why})")
                else:
                    anns.append(clean)
            self.targets[img_id] = anns
        if skipped:
            more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            log.warning("%s: skipped %d degenerate annotation(s): %s%s", self.ann_file, len(skipped),
                        ", ".join(skipped[:5]), more)
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
            mask = self.coco.annToMask(ann)
            if not mask.any():
                continue
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


def split_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """The (image_dir, annotation_file) of a split in the COCO layout: root/{split}*/ + annotations/."""
    root = Path(root)
    if not root.is_dir():
        raise MaskrtError(f"{root}: dataset folder not found")
    ann_dir = root / "annotations"
    candidates = [ann_dir / f"instances_{split}.json", *sorted(ann_dir.glob(f"instances_{split}*.json"))]
    ann = next((p for p in candidates if p.is_file()), None)
    if ann is None:
        raise MaskrtError(f"{ann_dir}: no instances_{split}*.json annotation file")
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
