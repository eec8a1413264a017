"""`maskrt predict`: run a deployed model on images."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from maskrt.cli.options import (
    add_command,
    add_model,
    add_threads,
    model_inputs,
    predictor_options,
    unit_float,
)
from maskrt.core.defaults import DEFAULT_SCORE_THRESHOLD
from maskrt.core.errors import MaskrtError
from maskrt.core.files import write_json
from maskrt.core.outputs import check_output_dir, staged_dir

log = logging.getLogger("maskrt")


def _image_files(paths: list[str]) -> list[Path]:
    """The images the user named: files are used as given; a folder is scanned for images only when named as one
    (no image suffix, or a trailing '/'), and must hold some. Every other path is refused by name."""
    from maskrt.core.images import IMAGE_SUFFIXES, list_images

    files: list[Path] = []
    seen: dict[Path, str] = {}
    for text in paths:
        p = Path(text)
        if p.is_dir():
            if p.suffix.lower() in IMAGE_SUFFIXES and not text.endswith("/"):
                raise MaskrtError(f"{text}: is a folder, not an image file (to scan a folder named like an image, "
                                  f"write {text}/)")
            found = list_images(p)
            if not found:
                raise MaskrtError(f"{text}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        elif p.is_file():
            found = [p]
        elif p.exists():
            raise MaskrtError(f"{text}: not a regular file or folder")
        else:
            raise MaskrtError(f"{text}: image not found")
        for f in found:
            key = f.resolve()
            if key in seen:
                log.warning("%s: named twice (%s and %s); predicted once", f, seen[key], text)
                continue
            seen[key] = text
            files.append(f)
    if not files:
        raise MaskrtError("no images given")
    return files


def _overlay_names(files: list[Path]) -> list[str]:
    """One unique overlay file name per input: STEM.overlay.png, numbered when stems repeat (a/x.png, b/x.jpg)."""
    names, seen = [], set()
    for path in files:
        name, n = f"{path.stem}.overlay.png", 1
        while name in seen:
            n += 1
            name = f"{path.stem}.{n}.overlay.png"
        seen.add(name)
        names.append(name)
    return names


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from maskrt.core.images import load_rgb
    from maskrt.runtime.postprocess import coco_results
    from maskrt.runtime.predictor import Predictor
    from maskrt.runtime.visualize import overlay

    out = check_output_dir(args.out, force=args.force)
    files = _image_files(args.images)
    predictor = Predictor.open(args.model, **predictor_options(args, args.score_threshold))
    names = [c["name"] for c in predictor.classes]
    results = []
    with staged_dir(out) as staging:
        for image_id, (path, overlay_name) in enumerate(
            tqdm(list(zip(files, _overlay_names(files), strict=True)), desc="predict", unit="img",
                 disable=args.quiet), start=1):
            image = load_rgb(path)
            try:
                dets = predictor.predict([image])[0]
            except MaskrtError as exc:
                raise MaskrtError(f"{path}: {exc}") from None
            overlay(image, dets, names, staging / overlay_name)
            coco = coco_results(dets, predictor.classes, image_id)
            results += [{**r, "file_name": str(path), "overlay": overlay_name} for r in coco]
        write_json(staging / "results.json", results)
    print(f"wrote {len(results)} detections for {len(files)} image(s) to {out / 'results.json'} and overlays to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """The parsers of this module's commands."""
    pred = add_command(sub, "predict", "detect on images: COCO results JSON + overlay PNGs")
    add_model(pred)
    pred.add_argument("--score-threshold", type=unit_float, default=DEFAULT_SCORE_THRESHOLD,
                      help="drop detections below, in [0, 1] (default %(default)s)")
    add_threads(pred)
    pred.add_argument("--out", required=True, help="output folder (results.json, STEM.overlay.png per image)")
    pred.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    pred.add_argument("images", nargs="+", help="image files or folders")
    pred.set_defaults(func=cmd_predict, io=lambda a: ([a.out], [*model_inputs(a), *(("image", p) for p in a.images)]))
