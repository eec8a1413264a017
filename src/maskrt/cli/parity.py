"""`maskrt parity`: hold a deployed model to the PyTorch reference (docs/architecture.md section 7)."""

from __future__ import annotations

import argparse
from pathlib import Path

from maskrt.cli.options import (
    GRAPHS,
    add_command,
    add_precision,
    add_threads,
    model_inputs,
    positive_int,
    resamples_count,
    unit_float,
)
from maskrt.core.defaults import DEFAULT_LAYER_IMAGES, DEFAULT_SCORE_FLOOR
from maskrt.core.errors import MaskrtError
from maskrt.core.outputs import check_output_dir, staged_dir
from maskrt.runtime.parity.bootstrap import DEFAULT_RESAMPLES
from maskrt.runtime.parity.gates import DEFAULT_MIN_DETECTIONS, DEFAULT_MIN_SCORE_PAIRS


def _parity_of_runtimes(args: argparse.Namespace) -> int:
    """`maskrt parity --runtime cpp`: maskrt-infer against the Python runtime (runtime/parity/runtimes.py)."""
    from maskrt.core.images import image_folder
    from maskrt.runtime.parity.runtimes import RuntimeRequest, compare_runtimes, summary_line
    from maskrt.training.coco import is_coco_dataset, split_paths

    if args.checkpoint is not None or args.layers:
        raise MaskrtError("--runtime cpp compares the C++ runtime with the Python one on the same model: drop "
                          "--checkpoint and --layers (the Python runtime itself is held to the torch reference by "
                          "`maskrt parity --runtime python`)")
    backend = args.backend or "openvino"
    if backend not in ("openvino", "tensorrt"):
        raise MaskrtError(f"--runtime cpp runs --backend openvino or tensorrt, not {backend}")
    out = check_output_dir(args.out, force=args.force)
    folder = split_paths(args.data, args.split)[0] if is_coco_dataset(args.data) else args.data
    images = image_folder(folder)[: args.limit]
    request = RuntimeRequest(Path(args.model), images, backend=backend, graph=args.graph,
                             precision=args.precision or "f32", threads=args.threads,
                             min_pairs=args.min_detections)
    with staged_dir(out) as staging:
        report = compare_runtimes(request, staging, progress=not args.quiet)
    print(summary_line(report))
    print(f"wrote {out / 'report.json'} and report.md")
    return report["exit_code"]


def cmd_parity(args: argparse.Namespace) -> int:
    from maskrt.runtime.parity.compare import Candidate, Gates, candidate_precision, run_parity, summary_line
    from maskrt.runtime.predictor import openvino_precision

    if args.runtime == "cpp":
        return _parity_of_runtimes(args)
    if args.checkpoint is None:
        raise MaskrtError("--checkpoint is required: the reference checkpoint the deployed model is held to")
    args.backend = args.backend or "onnxruntime"
    if args.layers_images is not None and not args.layers:
        raise MaskrtError("--layers-images sets how many images --layers compares: add --layers (or drop it)")
    check_output_dir(args.out, force=args.force)
    openvino = openvino_precision(args.backend, args.precision)
    precision = candidate_precision(args.backend, args.model, args.graph, openvino)
    gates = Gates.for_precision(precision, score_floor=args.score_floor, min_detections=args.min_detections,
                                min_score_pairs=args.min_score_pairs, resamples=args.resamples)
    candidate = Candidate(args.model, args.out, backend=args.backend, graph=args.graph, gates=gates,
                          threads=args.threads, device=args.device, precision=openvino)
    report = run_parity(args.checkpoint, candidate, args.data, reference=args.reference, split=args.split,
                        limit=args.limit, progress=not args.quiet, force=args.force)
    print(summary_line(report))
    print(f"wrote {Path(args.out) / 'report.json'} and report.md")
    if args.layers and report["verdict"] == "passed":  # nothing to find: no node is an offender of a passing graph
        print("layers: not compared (every gate passed; `maskrt layers` compares a passing graph on request)")
    elif args.layers:
        from maskrt.runtime.parity.layers import layers_for_report

        try:
            doc = layers_for_report(report, limit=args.layers_images or DEFAULT_LAYER_IMAGES, threads=args.threads,
                                    progress=not args.quiet)
        except MaskrtError as exc:  # the parity verdict stands; say why there is no layer report
            print(f"layers: not compared ({exc})")
        else:
            top = doc["ranking"][0] if doc["ranking"] else None
            print(f"layers: {doc['compared_tensors']} tensors compared; top offender "
                  f"{top['node'] + ' (' + top['op'] + ')' if top else 'none'}; wrote {Path(args.out) / 'layers'}")
    return report["exit_code"]


def register(sub: argparse._SubParsersAction) -> None:
    """The parser of `maskrt parity`."""
    par = add_command(sub, "parity", "compare a deployed graph with the torch reference; exit 0 passed, 1 a gate "
                      "failed, 3 inconclusive (too few reference detections compared, a dAP interval straddling its "
                      "limit), 2 bad input")
    par.add_argument("--checkpoint", help="the reference checkpoint (required, but for --runtime cpp)")
    par.add_argument("--model", required=True, help="export folder (an engine file for --backend tensorrt)")
    par.add_argument("--backend", choices=["onnxruntime", "openvino", "tensorrt"],
                     help="the candidate's backend (default onnxruntime; openvino with --runtime cpp)")
    par.add_argument("--runtime", default="python", choices=["python", "cpp"],
                     help="python: hold the model, run by the Python runtime, to the torch reference (default); cpp: "
                     "hold the C++ runtime (maskrt-infer) to the Python runtime on the same model and images - the "
                     "same detections, scores within 1e-4, boxes within 0.01 px, mask IoU >= 0.99, both ways")
    par.add_argument("--graph", default="portable", choices=list(GRAPHS))
    add_precision(par)
    par.add_argument("--reference", default="plain", choices=["plain", "canvas"],
                     help="plain: torchvision model(images) as its user runs it (default, the gate's reference); "
                     "canvas: torchvision on the candidate's padded batch (diagnostic: export errors only)")
    par.add_argument("--data", required=True,
                     help="COCO-format dataset folder, or a folder of images (then no AP: detection gates only)")
    par.add_argument("--split", default="val")
    par.add_argument("--limit", type=positive_int, help="first N images only")
    par.add_argument("--score-floor", type=unit_float, default=DEFAULT_SCORE_FLOOR,
                     help="detections at or above this score must find a counterpart on the other side (reference: "
                     "recall, candidate: precision), in [0, 1] (default %(default)s)")
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
                     "(`maskrt layers`) into OUT/layers/ when a gate did not pass: which node adds the error")
    par.add_argument("--layers-images", type=positive_int,
                     help=f"images --layers compares (default {DEFAULT_LAYER_IMAGES})")
    add_threads(par)
    par.add_argument("--out", required=True, help="report folder (report.json, report.md)")
    par.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    par.set_defaults(func=cmd_parity, io=lambda a: ([a.out], [*model_inputs(a), ("dataset", a.data)]))
