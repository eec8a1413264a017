"""`maskrt layers`: compare a deployed graph with the fp32 model.onnx tensor by tensor, and rank its nodes by the
error each adds (runtime/parity/layers.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from maskrt.cli.options import add_command, non_negative_float, positive_int
from maskrt.core.artifacts import GRAPHS
from maskrt.core.defaults import DEFAULT_LAYER_CHUNK_MIB, DEFAULT_LAYER_IMAGES, DEFAULT_LAYER_TOLERANCE


def cmd_layers(args: argparse.Namespace) -> int:
    from maskrt.runtime.parity.layers import LayerRequest, compare_layers
    from maskrt.runtime.predictor import openvino_precision

    request = LayerRequest(graph=args.graph, backend=args.backend,
                           precision=openvino_precision(args.backend, args.precision),
                           images=args.images, data=args.data, split=args.split, limit=args.limit,
                           reference=args.reference, checkpoint=args.checkpoint, tolerance=args.tolerance,
                           threads=args.threads, chunk_mib=args.chunk_mib)
    doc = compare_layers(args.model, args.out, request, progress=not args.quiet, force=args.force)
    top = doc["ranking"][:3]
    ranked = "; ".join(f"{r['node']} ({r['op']}, {r['stage']}) {r['contribution']:.3g}"
                       if isinstance(r["contribution"], float) else f"{r['node']} {r['contribution']}" for r in top)
    first = doc["first_over_tolerance"]
    print(f"layers {args.backend}/{args.graph}: {doc['compared_tensors']} tensors compared on {len(doc['images'])} "
          f"image(s); top offenders: {ranked or 'none'}; first over {args.tolerance:g}: "
          f"{first['node'] if first else 'none'}")
    print(f"wrote {Path(args.out) / 'layers.json'}, layers.md and layers.png")
    return 0


def _inputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    return [("export folder", args.model), ("images", args.images), ("dataset", args.data),
            ("reference", args.reference), ("checkpoint", args.checkpoint)]


def register(sub: argparse._SubParsersAction) -> None:
    """The parser of `maskrt layers`."""
    lay = add_command(sub, "layers", "compare a graph of an export with the fp32 model.onnx tensor by tensor and "
                      "rank its nodes by the error each adds (which layer broke parity)")
    lay.add_argument("--model", required=True, help="export folder")
    lay.add_argument("--graph", default="portable_int8", choices=list(GRAPHS),
                     help="the candidate graph (default portable_int8)")
    lay.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "openvino"],
                     help="what runs the candidate (the reference is always fp32 model.onnx on onnxruntime)")
    lay.add_argument("--precision", choices=["f32", "bf16"], help="--backend openvino: its inference precision "
                     "(default f32)")
    source = lay.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images")
    source.add_argument("--data", help="COCO-format dataset folder (its --split images)")
    lay.add_argument("--split", default="val")
    lay.add_argument("--limit", type=positive_int, default=DEFAULT_LAYER_IMAGES,
                     help=f"images compared (default {DEFAULT_LAYER_IMAGES})")
    ref = lay.add_mutually_exclusive_group()
    ref.add_argument("--reference", help="export folder whose model.onnx is the reference (default: --model's own)")
    ref.add_argument("--checkpoint", help="export the reference model.onnx anew from this checkpoint (when the "
                     "export's own model.onnx is in doubt)")
    lay.add_argument("--tolerance", type=non_negative_float, default=DEFAULT_LAYER_TOLERANCE,
                     help=f"relative L2 error that counts as a difference (default {DEFAULT_LAYER_TOLERANCE:g})")
    lay.add_argument("--threads", type=positive_int, help="runtime threads (default: one per physical core)")
    lay.add_argument("--chunk-mib", type=positive_int, default=DEFAULT_LAYER_CHUNK_MIB,
                     help="memory for the tensors marked at once, per image and side (default "
                     f"{DEFAULT_LAYER_CHUNK_MIB})")
    lay.add_argument("--out", required=True, help="report folder (layers.json, layers.md, layers.png)")
    lay.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    lay.set_defaults(func=cmd_layers, io=lambda a: ([a.out], _inputs(a)))
