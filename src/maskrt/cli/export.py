"""`maskrt export` and `build`: a checkpoint to ONNX graphs, a graph to an engine."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from maskrt.cli.options import Inputs, add_command, canvas_side, export_batch, opset, positive_int
from maskrt.core.artifacts import GRAPHS, MAX_EXPORT_BATCH
from maskrt.core.defaults import DEFAULT_ENGINE_MAX_BATCH, DEFAULT_RTX_CAPABILITIES

T = TypeVar("T")


def cmd_export(args: argparse.Namespace) -> int:
    from maskrt.export.onnx_export import export_checkpoint

    info = export_checkpoint(args.checkpoint, args.out, height=args.height, width=args.width, batch=args.batch,
                             dynamic_batch=args.dynamic_batch, max_detections=args.max_detections, opset=args.opset,
                             fp16=args.fp16, force=args.force)
    inp = info.input
    (h0, h1), (w0, w1) = inp.height_range, inp.width_range  # type: ignore[misc]
    size = f"dynamic height {h0}..{h1} x width {w0}..{w1}" if inp.dynamic_size else f"static {inp.height}x{inp.width}"
    files = ", ".join(g.file for g in info.graphs.values())
    print(f"wrote {args.out}: {files}, export.json ({size}, batch "
          f"{'dynamic' if args.dynamic_batch else args.batch}, {args.max_detections} detections, opset {args.opset})")
    return 0


def _triple(text: str, parse: Callable[[str], T], example: str) -> tuple[T, T, T]:
    """'MIN:OPT:MAX' (or one value for all three) -> (min, opt, max)."""
    parts = text.split(":")
    if len(parts) not in (1, 3):
        raise argparse.ArgumentTypeError(f"must be MIN:OPT:MAX or one value, e.g. {example}, got {text}")
    values = [parse(p) for p in parts]
    return (values[0],) * 3 if len(values) == 1 else tuple(values)  # type: ignore[return-value]


def _hw(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"must be HEIGHTxWIDTH, e.g. 800x1344, got {text}")
    return int(parts[0]), int(parts[1])


def _batch_profile(text: str) -> tuple[int, int, int]:
    def one(part: str) -> int:
        if not part.strip().isdigit() or not 1 <= int(part) <= MAX_EXPORT_BATCH:
            raise argparse.ArgumentTypeError(f"batch sizes must be integers in [1, {MAX_EXPORT_BATCH}], got {text}")
        return int(part)

    return _triple(text, one, "1:1:4")


def _size_profile(text: str) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    try:
        return _triple(text, _hw, "32x32:800x1344:1344x1344")
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (in --size MINHxMINW:OPTHxOPTW:MAXHxMAXW)") from None


_batch_profile.__name__ = "batch profile"
_size_profile.__name__ = "size profile"


def cmd_build(args: argparse.Namespace) -> int:
    from maskrt.core.artifacts import ExportInfo
    from maskrt.export.engine import ShapeRange, build_engine, default_shapes

    info = ExportInfo.read(args.model)
    shapes = default_shapes(info)
    batch = args.batch or (shapes.min[0], shapes.opt[0], shapes.max[0])
    size = args.size or ((shapes.min[1], shapes.min[2]), (shapes.opt[1], shapes.opt[2]), (shapes.max[1], shapes.max[2]))
    shapes = ShapeRange(*((b, *hw) for b, hw in zip(batch, size, strict=True)))  # type: ignore[arg-type]
    caps = tuple(c.strip() for c in args.compute_capabilities.split(",")) if args.compute_capabilities else None
    hw = ":".join(f"{s[1]}x{s[2]}" for s in (shapes.min, shapes.opt, shapes.max))
    print(f"building the {args.precision} TensorRT graph of {args.model}: batch "
          f"{shapes.min[0]}:{shapes.opt[0]}:{shapes.max[0]}, size {hw} (min:opt:max); this takes a while")
    result = build_engine(args.model, args.out, builder=args.builder, precision=args.precision, shapes=shapes,
                          compute_capabilities=caps,
                          workspace_mib=args.workspace, timing_cache=args.timing_cache, tf32=args.tf32,
                          progress=not args.quiet, force=args.force)
    engine = Path(args.out) if args.out else Path(args.model) / result.engine
    print(f"wrote {engine} and {engine.name}.json ({result.builder} {result.builder_version}, {result.precision}"
          f"{' with TF32' if result.tf32 else ''}, strongly typed, compute capabilities "
          f"{', '.join(result.compute_capabilities)})")
    return 0


def _build_io(args: argparse.Namespace) -> tuple[list[Path], Inputs]:
    """The engine and its ENGINE.json (and the timing cache) are outputs; the export's files are inputs."""
    engine = Path(args.out) if args.out else Path(args.model) / f"model.{args.precision}.engine"
    export = Path(args.model)
    graphs = [("export file", export / name) for name in ("export.json", *(g.file for g in GRAPHS.values()))]
    outputs = [engine, Path(f"{engine}.json"), *([Path(args.timing_cache)] if args.timing_cache else [])]
    return outputs, graphs  # an engine is written into its export folder, beside its inputs (never over them)


def register(sub: argparse._SubParsersAction) -> None:
    """The parsers of this module's commands."""
    exp = add_command(sub, "export", "export a checkpoint: model.onnx (portable), model.trt.onnx (TensorRT plugins), "
                      "export.json")
    exp.add_argument("--checkpoint", required=True)
    exp.add_argument("--out", required=True, help="export folder")
    exp.add_argument("--height", type=canvas_side,
                     help="static canvas height, a multiple of 32 (default: dynamic height and width, each batch at "
                     "the size torchvision pads it to; with --width only, the height comes from the config)")
    exp.add_argument("--width", type=canvas_side,
                     help="static canvas width, a multiple of 32 (default: dynamic; see --height)")
    exp.add_argument("--batch", type=export_batch, default=1, help="static batch size, 1 to 64 (default 1)")
    exp.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic")
    exp.add_argument("--max-detections", type=positive_int, default=100,
                     help="detection slots per image (default 100; at most the model's post-NMS proposals)")
    exp.add_argument("--opset", type=opset, default=17, help="ONNX opset, 17 to 20 (default 17)")
    exp.add_argument("--fp16", action="store_true",
                     help="also write model.trt.fp16.onnx: the TensorRT graph with fp16 networks (build --precision "
                     "fp16)")
    exp.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    exp.set_defaults(func=cmd_export, io=lambda a: ([a.out], [("checkpoint", a.checkpoint)]))

    bld = add_command(sub, "build", "build the TensorRT graph of an export folder (fp32, fp16 or int8) into a "
                      "TensorRT / TensorRT-RTX engine")
    bld.add_argument("--model", required=True, help="export folder")
    bld.add_argument("--out", help="engine file (default: EXPORT/model.PRECISION.engine); ENGINE.json is written "
                     "beside it")
    bld.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                     help="the graph built, as a strongly typed network: fp32 model.trt.onnx, fp16 model.trt.fp16.onnx "
                     "(export with --fp16), int8 model.trt.int8.onnx (`maskrt quantize`)")
    bld.add_argument("--tf32", action="store_true",
                     help="let fp32 convolutions and matrix products use TF32 (Ampere and newer: faster, but beyond "
                     "the fp32 parity gates; default off: fp32 means fp32)")
    bld.add_argument("--builder", choices=["tensorrt", "tensorrt-rtx"],
                     help="default: whichever is installed, tensorrt first (tensorrt-rtx builds without a GPU, for "
                     "RTX GPUs; tensorrt builds on a GPU, for that GPU)")
    bld.add_argument("--batch", type=_batch_profile, metavar="MIN:OPT:MAX",
                     help=f"batch profile of a dynamic-batch export (default 1:1:{DEFAULT_ENGINE_MAX_BATCH}; a static "
                     "batch is fixed)")
    bld.add_argument("--size", type=_size_profile, metavar="MINHxMINW:OPTHxOPTW:MAXHxMAXW",
                     help="height x width profile, multiples of 32 inside the export's ranges (default: the whole "
                     "range, optimum the traced size; one HxW fixes it)")
    bld.add_argument("--compute-capabilities", help="tensorrt-rtx targets, e.g. 8.6,8.9 (default "
                     f"{','.join(DEFAULT_RTX_CAPABILITIES)})")
    bld.add_argument("--workspace", type=positive_int, metavar="MiB", help="cap on the builder's scratch memory")
    bld.add_argument("--timing-cache", metavar="FILE",
                     help="kernel timing cache: read when it exists, written after the build (faster rebuilds)")
    bld.add_argument("--force", action="store_true", help="replace an existing engine")
    bld.set_defaults(func=cmd_build, io=_build_io)
