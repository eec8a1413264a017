"""`maskrt predict` and `parity`: run a deployed model on images, and hold it to the PyTorch reference."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from maskrt.cli.options import (
    GRAPHS,
    add_command,
    add_model,
    add_precision,
    add_threads,
    model_inputs,
    positive_int,
    predictor_options,
    resamples_count,
    unit_float,
)
from maskrt.core.defaults import DEFAULT_LAYER_IMAGES, DEFAULT_SCORE_THRESHOLD
from maskrt.core.errors import MaskrtError
from maskrt.core.files import write_json
from maskrt.core.outputs import check_output_dir, staged_dir
from maskrt.runtime.parity_bootstrap import DEFAULT_RESAMPLES
from maskrt.runtime.parity_gates import DEFAULT_MIN_DETECTIONS, DEFAULT_MIN_SCORE_PAIRS

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


def cmd_parity(args: argparse.Namespace) -> int:
    from maskrt.core.artifacts import GRAPH_KINDS, EngineInfo
    from maskrt.runtime.parity import Gates, run_parity, summary_line
    from maskrt.runtime.predictor import openvino_precision

    check_output_dir(args.out, force=args.force)
    openvino = openvino_precision(args.backend, args.precision)
    if args.backend == "tensorrt":
        precision = EngineInfo.read(args.model).precision
    elif args.backend == "openvino":
        from maskrt.runtime.openvino_backend import gate_precision

        precision = gate_precision(args.graph, openvino)
    else:
        precision = GRAPH_KINDS[args.graph][1]
    gates = Gates.for_precision(precision, score_floor=args.score_floor, min_detections=args.min_detections,
                                min_score_pairs=args.min_score_pairs, resamples=args.resamples)
    report = run_parity(args.checkpoint, args.model, args.data, args.out, backend=args.backend, graph=args.graph,
                        reference=args.reference, split=args.split, limit=args.limit, gates=gates,
                        progress=not args.quiet, threads=args.threads, device=args.device, precision=openvino,
                        force=args.force)
    print(summary_line(report))
    print(f"wrote {Path(args.out) / 'report.json'} and report.md")
    if args.layers:
        from maskrt.runtime.layers import layers_for_report

        try:
            doc = layers_for_report(report, limit=args.layers_images, threads=args.threads, progress=not args.quiet)
        except MaskrtError as exc:  # the parity verdict stands; say why there is no layer report
            print(f"layers: not compared ({exc})")
        else:
            top = doc["ranking"][0] if doc["ranking"] else None
            print(f"layers: {doc['compared_tensors']} tensors compared; top offender "
                  f"{top['node'] + ' (' + top['op'] + ')' if top else 'none'}; wrote {Path(args.out) / 'layers'}")
    return report["exit_code"]


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

    par = add_command(sub, "parity", "compare a deployed graph with the torch reference; exit 0 passed, 1 a gate "
                      "failed, 3 inconclusive (too few reference detections compared, a dAP interval straddling its "
                      "limit), 2 bad input")
    par.add_argument("--checkpoint", required=True, help="the reference checkpoint")
    par.add_argument("--model", required=True, help="export folder (an engine file for --backend tensorrt)")
    par.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "openvino", "tensorrt"])
    par.add_argument("--graph", default="portable", choices=GRAPHS)
    add_precision(par)
    par.add_argument("--reference", default="plain", choices=["plain", "canvas"],
                     help="plain: torchvision model(images) as its user runs it (default, the gate's reference); "
                     "canvas: torchvision on the candidate's padded batch (diagnostic: export errors only)")
    par.add_argument("--data", required=True,
                     help="COCO-format dataset folder, or a folder of images (then no AP: detection gates only)")
    par.add_argument("--split", default="val")
    par.add_argument("--limit", type=positive_int, help="first N images only")
    par.add_argument("--score-floor", type=unit_float, default=0.3,
                     help="detections at or above this score must find a counterpart on the other side (reference: "
                     "recall, candidate: precision), in [0, 1] (default 0.3)")
    par.add_argument("--min-detections", type=positive_int, default=DEFAULT_MIN_DETECTIONS,
                     help="reference detections at or above the score floor a run must compare to pass; with fewer "
                     f"the verdict is INCONCLUSIVE, exit 3 (default {DEFAULT_MIN_DETECTIONS})")
    par.add_argument("--min-score-pairs", type=positive_int, default=DEFAULT_MIN_SCORE_PAIRS,
                     help="matched pairs the |score diff| gate (max or 99th percentile) must rest on to pass; with "
                     f"fewer it is INCONCLUSIVE unless the pairs beyond its limit fail it (default "
                     f"{DEFAULT_MIN_SCORE_PAIRS})")
    par.add_argument("--resamples", type=resamples_count, default=DEFAULT_RESAMPLES,
                     help="bootstrap resamples of the dAP's 90%% interval (annotated data): a dAP gate passes only "
                     "when the interval lies within its limit, fails when it lies beyond, else INCONCLUSIVE "
                     f"(default {DEFAULT_RESAMPLES}: about 2 s per IoU type for 640 images)")
    par.add_argument("--layers", action="store_true",
                     help="also compare the candidate with a fresh fp32 export of the checkpoint tensor by tensor "
                     "(`maskrt layers`) into OUT/layers/: which node adds the error")
    par.add_argument("--layers-images", type=positive_int, default=DEFAULT_LAYER_IMAGES,
                     help=f"images --layers compares (default {DEFAULT_LAYER_IMAGES})")
    add_threads(par)
    par.add_argument("--out", required=True, help="report folder (report.json, report.md)")
    par.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    par.set_defaults(func=cmd_parity, io=lambda a: ([a.out], [*model_inputs(a), ("dataset", a.data)]))
