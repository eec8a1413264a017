"""`maskrt quantize`: fp32 to INT8 (QDQ) - ONNX Runtime's CPU graph and TensorRT's - with accuracy control."""

from __future__ import annotations

import argparse

from maskrt.cli.options import add_command, non_negative_float, positive_int
from maskrt.core.defaults import DEFAULT_MAX_EXCLUDED_NODES


def cmd_quantize(args: argparse.Namespace) -> int:
    from maskrt.runtime.quantize.calibration import quantize_export

    info = quantize_export(args.model, args.calibration, args.out, images=args.images, method=args.method,
                           progress=not args.quiet, force=args.force, max_dap_drop=args.max_dap_drop,
                           data=args.data, checkpoint=args.checkpoint, split=args.split, limit=args.limit,
                           max_excluded=args.max_excluded)
    q = info.quantization
    trt = "trt_int8" in info.graphs
    print(f"wrote {args.out}: model.int8.onnx (INT8 QDQ, {q['method']} calibration on {q['images']} images)"
          f"{' and model.trt.int8.onnx (symmetric Q/DQ for TensorRT, plugins in float)' if trt else ''} beside a "
          f"copy of {args.model}; check {'them' if trt else 'it'} with `maskrt parity --graph portable_int8 --model "
          f"{args.out}`{' and --graph trt_int8' if trt else ''}")
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
    """The parser of `maskrt quantize`."""
    quant = add_command(sub, "quantize", "INT8 post-training quantization (QDQ) of an export, calibrated on images: "
                        "model.int8.onnx for ONNX Runtime / OpenVINO and model.trt.int8.onnx for TensorRT")
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
    quant.add_argument("--split", help="the dataset's split that measures the dAP (with --max-dap-drop; default val)")
    quant.add_argument("--limit", type=positive_int, help="first N images of the split only")
    quant.add_argument("--checkpoint", help="the export's checkpoint (default: the path export.json records)")
    quant.add_argument("--max-excluded", type=positive_int,
                       help=f"most nodes kept in fp32 (default {DEFAULT_MAX_EXCLUDED_NODES})")
    quant.add_argument("--out", required=True, help="new export folder: a copy with model.int8.onnx (and, from "
                       "model.trt.onnx, model.trt.int8.onnx) added")
    quant.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    quant.set_defaults(func=cmd_quantize,
                       io=lambda a: ([a.out], [("export folder", a.model), ("dataset", a.data),
                                               ("checkpoint", a.checkpoint), ("calibration folder", a.calibration)]))
