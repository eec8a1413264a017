"""`maskrt bench run | compare | server`: three benchmarks, each with its own options.

- run: one backend on a model, end to end and per stage;
- compare: torchvision eager, torchvision's ONNX export and maskrt's graphs (ONNX Runtime, OpenVINO) side by side;
- server: through a served model, and in process beside it with --model.
"""

from __future__ import annotations

import argparse

from maskrt.cli.options import (
    add_command,
    add_model,
    add_threads,
    image_side,
    model_inputs,
    non_negative_int,
    positive_int,
    predictor_options,
)
from maskrt.core.defaults import DEFAULT_MODEL_NAME, MODEL_CONFIGS
from maskrt.core.errors import MaskrtError
from maskrt.core.files import write_atomic, write_json
from maskrt.core.outputs import check_output_file


def _check_outputs(args: argparse.Namespace) -> None:
    for out in (args.json, getattr(args, "markdown", None)):
        if out:
            check_output_file(out, force=args.force)


def _images_or_size(args: argparse.Namespace) -> None:
    if args.images and args.size:
        raise MaskrtError("--size sets the random input images; with --images the images' own sizes are used")


def _write_result(args: argparse.Namespace, result: dict) -> None:
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")


def cmd_run(args: argparse.Namespace) -> int:
    """`maskrt bench run`: one backend on one model."""
    from maskrt.runtime.bench.run import format_bench, load_images, run_bench, synthetic_images
    from maskrt.runtime.predictor import Predictor

    _check_outputs(args)
    _images_or_size(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    predictor = Predictor.open(args.model, **predictor_options(args))
    try:
        side = args.size or 0
        images = (load_images(args.images) if args.images else
                  synthetic_images(args.batch, *((side, side) if side else ())))
        result = run_bench(predictor, images, batch=args.batch, warmup=args.warmup, iters=args.iters,
                           threads=args.threads, progress=not args.quiet)
    finally:
        predictor.close()
    result["model"] = str(args.model)
    print(format_bench(result))
    _write_result(args, result)
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    """`maskrt bench server`: through a served model, and in process beside it when --model is given."""
    from maskrt.core.images import decode_rgb, image_folder
    from maskrt.runtime.bench.run import run_bench, synthetic_images
    from maskrt.runtime.predictor import Predictor
    from maskrt.serving.bench_server import encode_png, format_server_bench, run_server_bench

    _check_outputs(args)
    _images_or_size(args)
    if args.images:
        files = image_folder(args.images)
        blobs = [f.read_bytes() for f in files]
        arrays = [decode_rgb(b, str(f)) for b, f in zip(blobs, files, strict=True)]
    else:
        side = args.size or 0
        arrays = synthetic_images(args.batch, *((side, side) if side else ()))
        blobs = [encode_png(a) for a in arrays]
    result = run_server_bench(args.server, blobs, model=args.server_model, batch=args.batch, warmup=args.warmup,
                              iters=args.iters, concurrency=args.concurrency)
    local = None
    if args.model:
        predictor = Predictor.open(args.model, **predictor_options(args))
        try:
            local = run_bench(predictor, arrays, batch=args.batch, warmup=args.warmup, iters=args.iters,
                              threads=args.threads, progress=not args.quiet)
        finally:
            predictor.close()
        result["in_process"] = local
    print(format_server_bench(result, local))
    _write_result(args, result)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """`maskrt bench compare`: eager, torchvision-ONNX and our graphs side by side (runtime/bench/compare.py)."""
    from maskrt.runtime.bench.compare import format_compare, run_compare
    from maskrt.runtime.bench.run import load_images

    _check_outputs(args)
    _images_or_size(args)
    if args.calibration and not args.int8:
        raise MaskrtError("--calibration sets the images --int8 calibrates on: add --int8 (or drop it)")
    result = run_compare(checkpoint=args.checkpoint, random_config=args.random, export=args.model,
                         images=load_images(args.images) if args.images else None, size=args.size or 800,
                         threads=args.threads, warmup=args.warmup, iters=args.iters, int8=args.int8,
                         calibration=args.calibration, work=args.work, force=args.force, progress=not args.quiet)
    result["command"] = args.command_line
    table = format_compare(result)
    print(table)
    _write_result(args, result)
    if args.markdown:
        write_atomic(args.markdown, f"{table}\n\n`{result['command']}`\n".encode())
        print(f"wrote {args.markdown}")
    return 0


def _io(args: argparse.Namespace) -> tuple[list, list]:
    outputs = [p for p in (args.json, getattr(args, "markdown", None), getattr(args, "work", None)) if p]
    return outputs, [*model_inputs(args), ("images", args.images),
                     ("calibration folder", getattr(args, "calibration", None))]


def _common(p: argparse.ArgumentParser, size_default: str) -> None:
    p.add_argument("--images", help="folder of images (default: seeded random images)")
    p.add_argument("--size", type=image_side, help="side of the seeded random square image(s) used without --images "
                   f"(default {size_default})")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--iters", type=positive_int, default=20, help="timed runs (default 20)")
    p.add_argument("--json", help="also write the result (with machine and versions) to this JSON file")


def register(sub: argparse._SubParsersAction) -> None:
    """The parsers of `maskrt bench` and its three benchmarks."""
    bench = sub.add_parser("bench", help="benchmarks: run (one backend), compare (side by side), server (through a "
                           "served model)", description=__doc__.split("\n\n")[0])
    kinds = bench.add_subparsers(dest="bench_command", required=True, metavar="KIND")

    run = add_command(kinds, "run", "latency (p50/p90/p99) and images/s of a backend, end to end and per stage")
    add_model(run)
    _common(run, "640x480")
    run.add_argument("--batch", type=positive_int, default=1, help="images per run (default 1)")
    add_threads(run)
    run.add_argument("--force", action="store_true", help="replace an existing --json file")
    run.set_defaults(func=cmd_run, io=_io)

    cmp = add_command(kinds, "compare", "eager model(images), torchvision's own ONNX export on ONNX Runtime, "
                      "model.onnx, model.trt.onnx (host plugins), model.int8.onnx, and model.onnx / model.int8.onnx "
                      "on OpenVINO, each end to end, runs alternated, plus the network parts alone (markdown table)")
    which = cmp.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="the model to compare")
    which.add_argument("--random", choices=MODEL_CONFIGS,
                       help="instead of --checkpoint: a seeded random-init model of this config with 90 classes that "
                       "fills its 100 detection slots on every image")
    cmp.add_argument("--model", help="an existing export of the checkpoint (default: exported into --work)")
    _common(cmp, "800x800")
    cmp.add_argument("--threads", type=positive_int, help="threads of every candidate (default: one per core)")
    cmp.add_argument("--int8", action="store_true", help="also time model.int8.onnx, made with `maskrt quantize` when "
                     "the export has none (an export that has one is always timed)")
    cmp.add_argument("--calibration", help="INT8 calibration images folder (default: the benchmark images)")
    cmp.add_argument("--work", help="folder for the exports, torchvision's ONNX graph and the parts (default: a "
                     "temporary one, removed at the end)")
    cmp.add_argument("--markdown", help="also write the table (and the command) to this markdown file")
    cmp.add_argument("--force", action="store_true", help="replace an existing --json / --markdown file or a "
                     "non-empty --work folder")
    cmp.set_defaults(func=cmd_compare, io=_io)

    srv = add_command(kinds, "server", "latency and images/s through a served model (`maskrt serve`, or Triton on a "
                      "`maskrt triton` repository): each request carries --batch encoded images; with --model the "
                      "same images also run in process, and the difference is the cost of serving")
    srv.add_argument("--server", "--url", dest="server", required=True, metavar="URL",
                     help="http://HOST:PORT or grpc://HOST:PORT")
    srv.add_argument("--server-model", default=DEFAULT_MODEL_NAME, help="the served model's name (default %(default)s)")
    srv.add_argument("--concurrency", type=positive_int, default=1,
                     help="client threads sending requests at once (default 1)")
    add_model(srv, required=False)
    _common(srv, "640x480")
    srv.add_argument("--batch", type=positive_int, default=1, help="images per request (default 1)")
    add_threads(srv)
    srv.add_argument("--force", action="store_true", help="replace an existing --json file")
    srv.set_defaults(func=cmd_server, io=_io)
