"""`maskrt export`, `build` and `quantize`: a checkpoint to ONNX graphs, a graph to an engine, fp32 to INT8."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from maskrt.cli.options import Inputs, add_command, canvas_side, export_batch, non_negative_float, opset, positive_int
from maskrt.core.artifacts import GRAPH_FILES, MAX_EXPORT_BATCH
from maskrt.core.defaults import DEFAULT_ENGINE_MAX_BATCH, DEFAULT_MAX_EXCLUDED_NODES, DEFAULT_RTX_CAPABILITIES

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
                          workspace_mib=args.workspace, timing_cache=args.timing_cache, progress=not args.quiet,
                          force=args.force)
    engine = Path(args.out) if args.out else Path(args.model) / result.engine
    print(f"wrote {engine} and {engine.name}.json ({result.builder} {result.builder_version}, {result.precision}, "
          f"compute capabilities {', '.join(result.compute_capabilities)})")
    return 0


def _build_io(args: argparse.Namespace) -> tuple[list[Path], Inputs]:
    """The engine and its ENGINE.json (and the timing cache) are outputs; the export's files are inputs."""
    engine = Path(args.out) if args.out else Path(args.model) / f"model.{args.precision}.engine"
    export = Path(args.model)
    graphs = [("export file", export / name) for name in ("export.json", *GRAPH_FILES.values())]
    outputs = [engine, Path(f"{engine}.json"), *([Path(args.timing_cache)] if args.timing_cache else [])]
    return outputs, graphs  # an engine is written into its export folder, beside its inputs (never over them)


def cmd_quantize(args: argparse.Namespace) -> int:
    from maskrt.runtime.quantize import quantize_export

    info = quantize_export(args.model, args.calibration, args.out, images=args.images, method=args.method,
                           progress=not args.quiet, force=args.force, max_dap_drop=args.max_dap_drop,
                           data=args.data, checkpoint=args.checkpoint, split=args.split, limit=args.limit,
                           max_excluded=args.max_excluded)
    q = info.quantization
    print(f"wrote {args.out}: model.int8.onnx (INT8 QDQ, {q['method']} calibration on {q['images']} images) beside "
          f"a copy of {args.model}; check it with `maskrt parity --graph portable_int8 --model {args.out}`")
    control = q.get("accuracy_control")
    if control is None:
        return 0
    first, last = control["steps"][0], control["steps"][-1]
    kept = control["excluded_nodes"]
    print(f"accuracy control: dAP {first['dap']['max_abs']:.3f} -> {last['dap']['max_abs']:.3f} (limit "
          f"{control['max_dap_drop']:g}) with {len(kept)} node(s) kept in fp32"
          f"{': ' + ', '.join(kept) if kept else ' (none needed)'}; {last['ms_per_image']} ms/image "
          f"({control['speed_cost']:.2f}x the fully quantized graph, fp32 {control['fp32_ms_per_image']} ms)")
    if not control["met"]:
        dap = last["dap"]
        if dap["max_abs"] > control["max_dap_drop"]:
            why = f"the dAP still exceeds {control['max_dap_drop']:g}"
        elif dap["failed_gates"]:
            why = f"INT8 parity gates still fail ({', '.join(dap['failed_gates'])})"
        else:
            undecided = ", ".join(dap["undecided_gates"])
            why = f"the dAP's interval still straddles {control['max_dap_drop']:g} ({undecided}: more images narrow it)"
        print(f"error: {why} with {len(kept)} node(s) in fp32 (the limit, --max-excluded); the INT8 graph was "
              "written for inspection (`maskrt layers`)")
        return 1
    return 0


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

    bld = add_command(sub, "build", "build model.trt.onnx of an export folder into a TensorRT / TensorRT-RTX engine")
    bld.add_argument("--model", required=True, help="export folder")
    bld.add_argument("--out", help="engine file (default: EXPORT/model.PRECISION.engine); ENGINE.json is written "
                     "beside it")
    bld.add_argument("--precision", default="fp32", choices=["fp32", "fp16"],
                     help="fp16 builds model.trt.fp16.onnx (export with --fp16) as a strongly typed network")
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

    quant = add_command(sub, "quantize", "INT8 post-training quantization (QDQ) of an export's model.onnx, calibrated "
                        "on images")
    quant.add_argument("--model", required=True, help="export folder")
    quant.add_argument("--calibration", required=True, help="folder of calibration images (e.g. DATA/train)")
    quant.add_argument("--images", type=positive_int, default=32, help="calibration images used (default 32)")
    quant.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"],
                       help="activation range calibration (default minmax)")
    quant.add_argument("--max-dap-drop", type=non_negative_float, metavar="D",
                       help="accuracy control: keep the nodes that cost the most accuracy in fp32 until the INT8 "
                       "graph's dAP (box and mask AP against plain model(images) on --data) is at most D; exit 1 "
                       "when --max-excluded nodes are not enough")
    quant.add_argument("--data", help="COCO-format dataset whose --split measures the dAP (with --max-dap-drop)")
    quant.add_argument("--split", default="val")
    quant.add_argument("--limit", type=positive_int, help="first N images of the split only")
    quant.add_argument("--checkpoint", help="the export's checkpoint (default: the path export.json records)")
    quant.add_argument("--max-excluded", type=positive_int, default=DEFAULT_MAX_EXCLUDED_NODES,
                       help=f"most nodes kept in fp32 (default {DEFAULT_MAX_EXCLUDED_NODES})")
    quant.add_argument("--out", required=True, help="new export folder: a copy with model.int8.onnx added")
    quant.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    quant.set_defaults(func=cmd_quantize,
                       io=lambda a: ([a.out], [("export folder", a.model), ("dataset", a.data),
                                               ("checkpoint", a.checkpoint), ("calibration folder", a.calibration)]))
