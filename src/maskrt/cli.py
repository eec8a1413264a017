"""The `maskrt` console script: one entry point, one subcommand per job.

Every subcommand exits non-zero with a one-line `error: ...` message on bad input (no traceback;
set MASKRT_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shlex
import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import NoReturn, TypeVar

from maskrt.core.artifacts import (
    GRAPH_FILES,
    MAX_CANVAS_SIDE,
    MAX_EXPORT_BATCH,
    MAX_OPSET,
    MIN_OPSET,
    check_same_classes,
)
from maskrt.core.defaults import (
    DEFAULT_ENGINE_MAX_BATCH,
    DEFAULT_MODEL_NAME,
    DEFAULT_QUEUE_DELAY_US,
    DEFAULT_REQUEST_MAX_PIXELS,
    DEFAULT_RTX_CAPABILITIES,
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_SERVER_MAX_BATCH,
)
from maskrt.core.errors import MaskrtError
from maskrt.core.files import WRITE_ERRNOS, write_json
from maskrt.core.outputs import check_apart, check_output_dir, check_output_file, output_lock, staged_dir
from maskrt.runtime.parity_gates import DEFAULT_MIN_DETECTIONS

log = logging.getLogger("maskrt")
GRAPHS = list(GRAPH_FILES)  # portable, trt, trt_fp16 (export --fp16), portable_int8 (maskrt quantize)
BACKENDS = ["torch", "onnxruntime", "openvino", "tensorrt"]
T = TypeVar("T")


def _checked(convert: Callable[[str], T], ok: Callable[[T], bool], requirement: str) -> Callable[[str], T]:
    """An argparse type: `convert` the text, then refuse values that are not `ok` ("must be <requirement>")."""

    def parse(text: str) -> T:
        value = convert(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__name__ = convert.__name__  # argparse names it in "invalid int value: 'x'"
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _checked(int, lambda v: v >= 0, ">= 0")
_image_side = _checked(int, lambda v: v >= 32, "at least 32 pixels")
_positive_float = _checked(float, lambda v: v > 0 and math.isfinite(v), "positive and finite")
_non_negative_float = _checked(float, lambda v: v >= 0 and math.isfinite(v), ">= 0 and finite")
_unit_float = _checked(float, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")  # NaN fails every comparison
_canvas_side = _checked(int, lambda v: v % 32 == 0 and 32 <= v <= MAX_CANVAS_SIDE,
                        f"a multiple of 32 in [32, {MAX_CANVAS_SIDE}]")
_export_batch = _checked(int, lambda v: 1 <= v <= MAX_EXPORT_BATCH, f"in [1, {MAX_EXPORT_BATCH}]")
_port = _checked(int, lambda v: 1 <= v <= 65535, "a port in 1..65535")
_model_name = _checked(str, lambda v: bool(re.fullmatch(r"[A-Za-z0-9_.-]+", v)), "letters, digits, '.', '_', '-'")
_opset = _checked(int, lambda v: MIN_OPSET <= v <= MAX_OPSET, f"in [{MIN_OPSET}, {MAX_OPSET}]")


# -- subcommands ---------------------------------------------------------------------------------------
def cmd_data_shapes(args: argparse.Namespace) -> int:
    from maskrt.training.shapes import generate

    out = generate(args.out, train=args.train, val=args.val, size=args.size, seed=args.seed,
                   progress=not args.quiet, force=args.force)
    print(f"wrote shapes dataset to {out} ({args.train} train, {args.val} val, {args.size}px, seed {args.seed})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from maskrt.training.evaluate import format_metrics
    from maskrt.training.trainer import Trainer, TrainOptions

    opts = TrainOptions(data=Path(args.data), out=Path(args.out), config=args.config,
                        max_minutes=args.max_minutes, iters=args.iters, batch_size=args.batch_size,
                        lr=args.lr, eval_minutes=args.eval_minutes, eval_every=args.eval_every,
                        resume=args.resume, force=args.force, seed=args.seed, workers=args.workers,
                        progress=not args.quiet, save_every_s=args.save_every)
    trainer = Trainer(opts)
    result = trainer.train()
    if trainer.rank == 0:
        print(f"trained {result.step} steps; checkpoints in {opts.out} (last.pt, best.pt)")
        print(format_metrics(result.metrics))
    return 0


def _eval_out(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else Path(args.checkpoint).with_name(f"eval_{args.split}.json")


def cmd_eval(args: argparse.Namespace) -> int:
    from maskrt.training.checkpoint import load_checkpoint, model_from_checkpoint
    from maskrt.training.coco import load_split
    from maskrt.training.evaluate import evaluate, format_metrics

    out = _eval_out(args)
    check_output_file(out, force=args.force)
    ckpt = load_checkpoint(args.checkpoint)
    dataset = load_split(args.data, args.split, train=False)
    check_same_classes(ckpt["classes"], args.checkpoint, dataset.classes, dataset.ann_file)
    model = model_from_checkpoint(ckpt, source=args.checkpoint)
    metrics = evaluate(model, dataset, progress=not args.quiet)
    write_json(out, metrics)
    print(format_metrics(metrics))
    print(f"wrote {out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from maskrt.training.torchvision_import import import_torchvision

    names = None
    if args.classes:
        path = Path(args.classes)
        if not path.is_file():
            raise MaskrtError(f"{path}: class-names file not found")
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise MaskrtError(f"{path}: not a readable UTF-8 text file of class names ({exc})") from None
    ckpt = import_torchvision(args.weights, args.out, class_names=names, min_size=args.min_size,
                              max_size=args.max_size, force=args.force)
    cfg = ckpt["model_config"]
    print(f"wrote {args.out}: config {cfg['name']}, {cfg['num_classes']} classes, norm {cfg['norm']}")
    return 0


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
    from maskrt.runtime.visualize import overlay

    out = check_output_dir(args.out, force=args.force)
    files = _image_files(args.images)
    predictor = _predictor_for_model(args)
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

    check_output_dir(args.out, force=args.force)
    openvino = _openvino_precision(args)
    if args.backend == "tensorrt":
        precision = EngineInfo.read(args.model).precision
    elif args.backend == "openvino":
        from maskrt.runtime.openvino_backend import gate_precision

        precision = gate_precision(args.graph, openvino)
    else:
        precision = GRAPH_KINDS[args.graph][1]
    gates = Gates.for_precision(precision, score_floor=args.score_floor, min_detections=args.min_detections)
    report = run_parity(args.checkpoint, args.model, args.data, args.out, backend=args.backend, graph=args.graph,
                        reference=args.reference, split=args.split, limit=args.limit, gates=gates,
                        progress=not args.quiet, threads=args.threads, device=args.device, precision=openvino,
                        force=args.force)
    print(summary_line(report))
    print(f"wrote {Path(args.out) / 'report.json'} and report.md")
    return report["exit_code"]


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


def _openvino_precision(args: argparse.Namespace) -> str:
    """--precision (OpenVINO's f32 | bf16; default f32), refused with any other backend."""
    if args.precision is not None and args.backend != "openvino":
        raise MaskrtError(f"--precision {args.precision} is OpenVINO's inference precision: it needs --backend "
                          "openvino (TensorRT engines take theirs from `maskrt build --precision`)")
    return args.precision or "f32"


def _predictor_for_model(args: argparse.Namespace):  # noqa: ANN202
    """The Predictor of --model / --backend (an export folder, an engine file, or a checkpoint for torch)."""
    from maskrt.runtime.predictor import Predictor

    model = Path(args.model)
    threshold = getattr(args, "score_threshold", 0.0)
    precision = _openvino_precision(args)
    if args.backend == "tensorrt":
        if model.is_dir():
            raise MaskrtError(f"{model}: --backend tensorrt takes an engine file (see `maskrt build`)")
        return Predictor.from_engine(model, score_threshold=threshold)
    if model.is_dir():
        return Predictor.from_export(model, backend=args.backend, graph=args.graph, threads=args.threads,
                                     checkpoint=args.checkpoint, score_threshold=threshold, device=args.device,
                                     precision=precision)
    if args.backend == "torch":
        return Predictor.from_checkpoint(model, score_threshold=threshold)
    raise MaskrtError(f"{model}: the {args.backend} backend needs an export folder (see `maskrt export`)")


def cmd_bench(args: argparse.Namespace) -> int:
    from maskrt.runtime.bench import format_bench, load_images, run_bench, synthetic_images

    for out in (args.json, args.markdown):
        if out:
            check_output_file(out, force=args.force)
    if args.compare and args.server:
        raise MaskrtError("--compare and --server are separate benchmarks: choose one")
    if args.compare:
        return _bench_compare(args)
    if args.server:
        return _bench_server(args)
    if args.concurrency != 1:
        raise MaskrtError("--concurrency belongs to --server")
    if not args.model:
        raise MaskrtError("bench needs --model (or --compare with --checkpoint or --random)")
    for option, value in (("--random", args.random), ("--work", args.work), ("--markdown", args.markdown),
                          ("--calibration", args.calibration), ("--int8", args.int8)):
        if value:
            raise MaskrtError(f"{option} belongs to --compare")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    predictor = _predictor_for_model(args)
    side = args.size or 0
    images = load_images(args.images) if args.images else synthetic_images(args.batch, *((side, side) if side else ()))
    result = run_bench(predictor, images, batch=args.batch, warmup=args.warmup, iters=args.iters,
                       threads=args.threads, progress=not args.quiet)
    result["model"] = str(args.model)
    print(format_bench(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _bench_server(args: argparse.Namespace) -> int:
    """`maskrt bench --server URL`: through a served model, and in process beside it when --model is given."""
    from maskrt.core.images import decode_rgb, image_folder
    from maskrt.runtime.bench import run_bench, synthetic_images
    from maskrt.serving.bench_server import encode_png, format_server_bench, run_server_bench

    for option, value in (("--random", args.random), ("--work", args.work), ("--markdown", args.markdown),
                          ("--calibration", args.calibration), ("--int8", args.int8)):
        if value:
            raise MaskrtError(f"{option} belongs to --compare")
    if args.images and args.size:
        raise MaskrtError("--size sets the random input images; with --images the images' own sizes are used")
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
        predictor = _predictor_for_model(args)
        try:
            local = run_bench(predictor, arrays, batch=args.batch, warmup=args.warmup, iters=args.iters,
                              threads=args.threads, progress=not args.quiet)
        finally:
            predictor.close()
        result["in_process"] = local
    print(format_server_bench(result, local))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _bench_compare(args: argparse.Namespace) -> int:
    """`maskrt bench --compare`: eager, torchvision-ONNX and our graphs side by side (runtime/bench_compare.py)."""
    from maskrt.runtime.bench import load_images
    from maskrt.runtime.bench_compare import format_compare, run_compare

    if (args.checkpoint is None) == (args.random is None):
        raise MaskrtError("--compare needs one of --checkpoint CKPT or --random CONFIG")
    if args.backend != "onnxruntime" or args.graph != "portable" or args.batch != 1 or args.device != "cpu" or \
            args.precision:
        raise MaskrtError("--compare runs every backend, graph and precision itself, one image at a time, on the CPU: "
                          "drop --backend, --graph, --precision, --batch and --device")
    if args.images and args.size:
        raise MaskrtError("--size sets the random input image; with --images the images' own sizes are used")
    result = run_compare(checkpoint=args.checkpoint, random_config=args.random, export=args.model,
                         images=load_images(args.images) if args.images else None, size=args.size or 800,
                         threads=args.threads, warmup=args.warmup, iters=args.iters, int8=args.int8,
                         calibration=args.calibration, work=args.work, force=args.force, progress=not args.quiet)
    result["command"] = args.command_line
    table = format_compare(result)
    print(table)
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    if args.markdown:
        from maskrt.core.files import write_atomic

        write_atomic(args.markdown, f"{table}\n\n`{result['command']}`\n".encode())
        print(f"wrote {args.markdown}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from maskrt.runtime.quantize import quantize_export

    info = quantize_export(args.model, args.calibration, args.out, images=args.images, method=args.method,
                           progress=not args.quiet, force=args.force)
    q = info.quantization
    print(f"wrote {args.out}: model.int8.onnx (INT8 QDQ, {q['method']} calibration on {q['images']} images) beside "
          f"a copy of {args.model}; check it with `maskrt parity --graph portable_int8 --model {args.out}`")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from maskrt.serving.server import ServeOptions, bound_malloc_arenas, check_ports_free, pytriton_available, serve

    pytriton_available()  # before loading the model: say how to install it first
    bound_malloc_arenas()  # before the model's and the server's threads start
    port = args.port
    grpc_port = args.grpc_port or port + 1
    metrics_port = args.metrics_port or port + 2
    if len({port, grpc_port, metrics_port}) != 3:
        raise MaskrtError(f"HTTP, gRPC and metrics need three different ports, got {port}, {grpc_port}, "
                          f"{metrics_port}")
    for p in (grpc_port, metrics_port):
        if not 1 <= p <= 65535:
            raise MaskrtError(f"port {p} is outside 1..65535 (--port {port} puts gRPC and metrics at +1, +2)")
    options = ServeOptions(host=args.host, http_port=port, grpc_port=grpc_port, metrics_port=metrics_port,
                           model_name=args.name, max_batch=args.max_batch, queue_delay_us=args.queue_delay_us,
                           max_pixels=int(args.max_megapixels * 1e6), verbose=args.verbose)
    signal.signal(signal.SIGINT, _interrupt)  # Ctrl-C stops the server even where SIGINT came in ignored (a `&` job)
    if (args.model is None) == (args.repository is None):
        raise MaskrtError("serve needs one of --model (an export folder, engine or checkpoint) or --repository")
    repository = None
    if args.repository:
        repository = Path(args.repository).resolve()
        if not repository.is_dir() or not any(repository.glob("*/config.pbtxt")):
            raise MaskrtError(f"{args.repository}: not a Triton model repository (no MODEL/config.pbtxt; `maskrt "
                              "triton` writes one)")
    check_ports_free(options)  # before loading the model
    if args.model and args.backend is None:  # what the model file is says how it runs
        model = Path(args.model)
        args.backend = ("onnxruntime" if model.is_dir() else
                        "tensorrt" if Path(f"{model}.json").is_file() else "torch")
    predictor = _predictor_for_model(args) if args.model else None
    urls = options.urls()

    def ready() -> None:
        if predictor is not None:
            what = (f"{args.model} as model '{args.name}' ({predictor.backend.name}); dynamic batching up to "
                    f"{args.max_batch} images")
        else:
            models = sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))  # type: ignore[union-attr]
            what = f"the models of {repository}: {', '.join(models)}"
        print(f"serving {what}, with Triton Inference Server: HTTP {urls['http']}, gRPC {urls['grpc']}, metrics "
              f"{urls['metrics']}; Ctrl-C stops", flush=True)

    try:
        serve(predictor, options, repository=repository, on_ready=ready)
    except KeyboardInterrupt:
        pass
    finally:
        if predictor is not None:
            predictor.close()
    print("stopped", flush=True)
    return 0


def cmd_triton(args: argparse.Namespace) -> int:
    from maskrt.serving.repository import RepositoryOptions, write_repository

    options = RepositoryOptions(name=args.name, network=args.network, graph=args.graph, max_batch=args.max_batch,
                                instances=args.instances, queue_delay_us=args.queue_delay_us,
                                score_threshold=args.score_threshold, max_pixels=int(args.max_megapixels * 1e6),
                                threads=args.threads or 0)
    repo = write_repository(args.model, args.out, options, force=args.force)
    batching = (f"dynamic batching up to {repo.max_batch_size} images" if repo.batched else
                "no batching (static batch 1 export)")
    print(f"wrote {repo.path}: models {', '.join(repo.models)} ({repo.network} network, {batching}, "
          f"{args.instances} instance(s) each)")
    print(f"start it: {repo.command}   (see {repo.path / 'README.md'})")
    for warning in repo.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


DEMO_MARKER = ".maskrt-demo"


def cmd_demo(args: argparse.Namespace) -> int:
    from maskrt.export.onnx_export import export_checkpoint
    from maskrt.runtime.parity import Candidate, run_parity_many, summary_line
    from maskrt.training.evaluate import format_metrics
    from maskrt.training.shapes import generate
    from maskrt.training.trainer import Trainer, TrainOptions

    root = Path(args.out)
    data, run, export = root / "data", root / "run", root / "export"
    marker = root / DEMO_MARKER  # the demo replaces its own data, run, export and reports: never someone else's
    own = lambda p: p.name in ("data", "run", "export", DEMO_MARKER) or p.name.startswith(  # noqa: E731
        ("parity_", ".maskrt-"))
    if root.exists() and (not root.is_dir() or not (marker.is_file() or all(map(own, root.iterdir())))):
        raise MaskrtError(f"{root}: exists and is not a folder `maskrt demo` made (no {DEMO_MARKER}); choose a new or "
                          "empty folder")
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by `maskrt demo`, which replaces data/, run/, export/ and parity_*/ here on each run\n")
    if not (data / "annotations" / "instances_val.json").is_file():
        print(f"[1/4] generating the shapes dataset in {data}")
        generate(data, train=400, val=100, size=128, seed=0, progress=not args.quiet, force=True)
    else:
        print(f"[1/4] using the shapes dataset in {data}")
    print(f"[2/4] training the slim model for {args.minutes} minutes in {run}")
    opts = TrainOptions(data=data, out=run, config="slim", max_minutes=args.minutes, progress=not args.quiet,
                        force=True)
    result = Trainer(opts).train()
    print(f"slim Mask R-CNN, {result.step} steps, val metrics (COCO AP, 0-100):")
    print(format_metrics(result.metrics))
    print(f"[3/4] exporting {run / 'last.pt'} to {export}")
    export_checkpoint(run / "last.pt", export, force=True)
    print(f"[4/4] parity of both graphs against plain torchvision model(images) ({args.parity_images} val images)")
    candidates = [Candidate(export, root / f"parity_{graph}", graph=graph) for graph in ("portable", "trt")]
    reports = run_parity_many(run / "last.pt", candidates, data, limit=args.parity_images, progress=not args.quiet,
                              force=True)  # one reference pass for both graphs
    for report in reports:
        print(summary_line(report))
    print(f"reports: {root}/parity_*/report.md")
    codes = [report["exit_code"] for report in reports]
    return 1 if 1 in codes else max(codes)  # a failed gate first, then inconclusive (3), else 0


# -- what each command reads and writes -------------------------------------------------------------------
Inputs = list[tuple[str, "str | Path | None"]]


def _model_inputs(args: argparse.Namespace) -> Inputs:
    """--model (with the ENGINE.json beside an engine file) and --checkpoint, where the command has them."""
    model = getattr(args, "model", None)
    items: Inputs = [("model", model), ("checkpoint", getattr(args, "checkpoint", None))]
    if model and Path(model).is_file():
        items.append(("engine description", f"{model}.json"))
    return items


def _build_io(args: argparse.Namespace) -> tuple[list[Path], Inputs]:
    engine = Path(args.out) if args.out else Path(args.model) / f"model.{args.precision}.engine"
    export = Path(args.model)
    graphs = [("export file", export / name) for name in ("export.json", *GRAPH_FILES.values())]
    outputs = [engine, Path(f"{engine}.json"), *([Path(args.timing_cache)] if args.timing_cache else [])]
    return outputs, graphs  # an engine is written into its export folder, beside its inputs (never over them)


#: command -> (outputs, (what, path) inputs). Before any work, every output is checked apart from every input (none
#: is, holds or lies inside another: --force never deletes an input) and locked for the run (one writer per output).
_IO: dict[str, Callable[[argparse.Namespace], tuple[list, Inputs]]] = {
    "data": lambda a: ([a.out], []),
    "train": lambda a: ([a.out], [("dataset", a.data)]),
    "eval": lambda a: ([_eval_out(a)], [("checkpoint", a.checkpoint), ("dataset", a.data)]),
    "import": lambda a: ([a.out], [("weights file", a.weights), ("class-names file", a.classes)]),
    "export": lambda a: ([a.out], [("checkpoint", a.checkpoint)]),
    "predict": lambda a: ([a.out], [*_model_inputs(a), *(("image", p) for p in a.images)]),
    "parity": lambda a: ([a.out], [*_model_inputs(a), ("dataset", a.data)]),
    "build": _build_io,
    "bench": lambda a: ([p for p in (a.json, a.markdown, a.work) if p],
                        [*_model_inputs(a), ("images", a.images), ("calibration folder", a.calibration)]),
    "quantize": lambda a: ([a.out], [("export folder", a.model), ("calibration folder", a.calibration)]),
    "serve": lambda a: ([], []),
    "triton": lambda a: ([a.out], _model_inputs(a)),
    "demo": lambda a: ([a.out], []),
}


def _lead_process() -> bool:
    """False in the non-zero ranks of a torchrun launch (rank 0 holds the run folder's lock for all)."""
    return os.environ.get("RANK", "0") == "0"


def _guarded(args: argparse.Namespace) -> int:
    """Run the command with its outputs checked apart from its inputs and locked (see `_IO`)."""
    outputs, inputs = _IO[args.command](args)
    check_apart(outputs, inputs)
    seen: dict[Path, str] = {}
    for out in outputs:
        if Path(out).resolve() in seen:
            raise MaskrtError(f"{out}: named for two outputs ({seen[Path(out).resolve()]} and {out}); choose two paths")
        seen[Path(out).resolve()] = str(out)
    with ExitStack() as stack:
        if _lead_process():
            for out in outputs:
                stack.enter_context(output_lock(out))
        return args.func(args)


# -- parser --------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with maskrt's error format: one line `error: ...` (and exit code 2), the usage left to --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="maskrt", description=__doc__.splitlines()[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        return p

    def add_model(p: argparse.ArgumentParser, required: bool = True) -> None:  # what `_predictor_for_model` reads
        p.add_argument("--model", required=required,
                       help="export folder (a checkpoint for --backend torch, an engine file for --backend tensorrt)")
        p.add_argument("--backend", default="onnxruntime", choices=BACKENDS)
        p.add_argument("--graph", default="portable", choices=GRAPHS, help="which ONNX graph")
        p.add_argument("--checkpoint", help="checkpoint for --backend torch with an export folder")
        add_precision(p)

    def add_precision(p: argparse.ArgumentParser) -> None:
        p.add_argument("--precision", choices=["f32", "bf16"],
                       help="--backend openvino: its inference precision (default f32, gated like fp32; bf16 needs a "
                       "CPU with native bfloat16, AVX-512 BF16 or AMX, and has gates of its own)")

    def add_serving(p: argparse.ArgumentParser, name_help: str, batch_help: str) -> None:  # serve and triton
        p.add_argument("--name", default=DEFAULT_MODEL_NAME, type=_model_name, help=name_help)
        p.add_argument("--max-batch", type=_positive_int, default=DEFAULT_SERVER_MAX_BATCH, help=batch_help)
        p.add_argument("--queue-delay-us", type=_non_negative_int, default=DEFAULT_QUEUE_DELAY_US,
                       help="how long the dynamic batcher waits to fill a batch, microseconds (default %(default)s)")
        p.add_argument("--max-megapixels", type=_positive_float, default=DEFAULT_REQUEST_MAX_PIXELS / 1e6,
                       help="refuse larger images before decoding them (default %(default)g)")

    def add_threads(p: argparse.ArgumentParser) -> None:
        p.add_argument("--threads", type=_positive_int,
                       help="ONNX Runtime intra-op threads (default: one per physical core)")
        p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                       help="ONNX Runtime device: cuda runs model.onnx with onnxruntime-gpu (extra [gpu])")

    data = sub.add_parser("data", help="generate datasets", description="generate datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="KIND")
    shapes = data_sub.add_parser("shapes", help="a COCO-format shapes dataset (deterministic)",
                                 description="Generate a COCO-format instance-segmentation dataset of shapes.")
    shapes.add_argument("--out", required=True, help="output folder")
    shapes.add_argument("--train", type=_positive_int, default=400, help="train images (default 400)")
    shapes.add_argument("--val", type=_positive_int, default=100, help="val images (default 100)")
    shapes.add_argument("--size", type=_image_side, default=128, help="image side in pixels (default 128, min 32)")
    shapes.add_argument("--seed", type=_non_negative_int, default=0,
                        help="seed; same seed => identical files (default 0)")
    shapes.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    shapes.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    shapes.set_defaults(func=cmd_data_shapes)

    train = add("train", "train Mask R-CNN on a COCO-format dataset")
    train.add_argument("--data", required=True, help="dataset folder (annotations/instances_{train,val}.json)")
    train.add_argument("--config", default="slim", choices=["slim", "r50-fpn", "r50-fpn-v2"])
    train.add_argument("--out", required=True, help="run folder: last.pt, best.pt, metrics.json")
    train.add_argument("--max-minutes", type=_positive_float, help="wall-clock budget in minutes")
    train.add_argument("--iters", type=_positive_int, help="total steps (default 2000 without --max-minutes)")
    train.add_argument("--batch-size", type=_positive_int, default=2,
                       help="images per step and process (default 2: more updates per minute on a CPU)")
    train.add_argument("--lr", type=_positive_float, default=1e-3, help="peak AdamW learning rate")
    train.add_argument("--eval-minutes", type=_positive_float, default=3.0,
                       help="evaluate every N minutes (default 3)")
    train.add_argument("--eval-every", type=_positive_int, help="evaluate every N steps instead")
    train.add_argument("--save-every", type=_non_negative_float, default=30.0, metavar="SECONDS",
                       help="rewrite OUT/last.pt at most this often (default 30; 0 = every step)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    train.add_argument("--force", action="store_true",
                       help="delete a non-empty --out run folder and start over (without it, such a folder is refused)")
    train.add_argument("--seed", type=_non_negative_int, default=0)
    train.add_argument("--workers", type=_non_negative_int, default=0, help="data-loader worker processes")
    train.set_defaults(func=cmd_train)

    ev = add("eval", "COCO box and mask AP of a checkpoint (pycocotools)")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--data", required=True, help="dataset folder")
    ev.add_argument("--split", default="val")
    ev.add_argument("--out", help="metrics JSON (default: eval_SPLIT.json beside the checkpoint)")
    ev.add_argument("--force", action="store_true", help="replace an existing metrics file")
    ev.set_defaults(func=cmd_eval)

    imp = add("import", "convert a torchvision Mask R-CNN state_dict file into a maskrt checkpoint")
    imp.add_argument("--weights", required=True, help="e.g. maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    imp.add_argument("--out", required=True, help="checkpoint to write")
    imp.add_argument("--classes", help="text file, one class name per line (default: COCO names for 91 labels)")
    imp.add_argument("--min-size", type=_positive_int, default=800)
    imp.add_argument("--max-size", type=_positive_int, default=1333)
    imp.add_argument("--force", action="store_true", help="replace an existing --out checkpoint")
    imp.set_defaults(func=cmd_import)

    exp = add("export", "export a checkpoint: model.onnx (portable), model.trt.onnx (TensorRT plugins), export.json")
    exp.add_argument("--checkpoint", required=True)
    exp.add_argument("--out", required=True, help="export folder")
    exp.add_argument("--height", type=_canvas_side,
                     help="static canvas height, a multiple of 32 (default: dynamic height and width, each batch at "
                     "the size torchvision pads it to; with --width only, the height comes from the config)")
    exp.add_argument("--width", type=_canvas_side,
                     help="static canvas width, a multiple of 32 (default: dynamic; see --height)")
    exp.add_argument("--batch", type=_export_batch, default=1, help="static batch size, 1 to 64 (default 1)")
    exp.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic")
    exp.add_argument("--max-detections", type=_positive_int, default=100,
                     help="detection slots per image (default 100; at most the model's post-NMS proposals)")
    exp.add_argument("--opset", type=_opset, default=17, help="ONNX opset, 17 to 20 (default 17)")
    exp.add_argument("--fp16", action="store_true",
                     help="also write model.trt.fp16.onnx: the TensorRT graph with fp16 networks (build --precision "
                     "fp16)")
    exp.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    exp.set_defaults(func=cmd_export)

    pred = add("predict", "detect on images: COCO results JSON + overlay PNGs")
    add_model(pred)
    pred.add_argument("--score-threshold", type=_unit_float, default=DEFAULT_SCORE_THRESHOLD,
                      help="drop detections below, in [0, 1] (default %(default)s)")
    add_threads(pred)
    pred.add_argument("--out", required=True, help="output folder (results.json, STEM.overlay.png per image)")
    pred.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    pred.add_argument("images", nargs="+", help="image files or folders")
    pred.set_defaults(func=cmd_predict)

    par = add("parity", "compare a deployed graph with the torch reference; exit 0 passed, 1 a gate failed, 3 "
              "inconclusive (too few reference detections compared), 2 bad input")
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
    par.add_argument("--limit", type=_positive_int, help="first N images only")
    par.add_argument("--score-floor", type=_unit_float, default=0.3,
                     help="detections at or above this score must find a counterpart on the other side (reference: "
                     "recall, candidate: precision), in [0, 1] (default 0.3)")
    par.add_argument("--min-detections", type=_positive_int, default=DEFAULT_MIN_DETECTIONS,
                     help="reference detections at or above the score floor a run must compare to pass; with fewer "
                     f"the verdict is INCONCLUSIVE, exit 3 (default {DEFAULT_MIN_DETECTIONS})")
    add_threads(par)
    par.add_argument("--out", required=True, help="report folder (report.json, report.md)")
    par.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    par.set_defaults(func=cmd_parity)

    bld = add("build", "build model.trt.onnx of an export folder into a TensorRT / TensorRT-RTX engine")
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
    bld.add_argument("--workspace", type=_positive_int, metavar="MiB", help="cap on the builder's scratch memory")
    bld.add_argument("--timing-cache", metavar="FILE",
                     help="kernel timing cache: read when it exists, written after the build (faster rebuilds)")
    bld.add_argument("--force", action="store_true", help="replace an existing engine")
    bld.set_defaults(func=cmd_build)

    bench = add("bench", "latency (p50/p90/p99) and images/s of a backend, end to end and per stage; --compare: "
                "torchvision eager, torchvision's ONNX export and our graphs side by side; --server: through a "
                "served model")
    add_model(bench, required=False)
    bench.add_argument("--images", help="folder of images (default: seeded random images, 640x480 or --size)")
    bench.add_argument("--size", type=_image_side, help="side of the seeded random square image(s) used without "
                       "--images (default 640x480; with --compare 800)")
    bench.add_argument("--batch", type=_positive_int, default=1, help="images per run (default 1)")
    bench.add_argument("--warmup", type=_non_negative_int, default=3, help="untimed runs first (default 3)")
    bench.add_argument("--iters", type=_positive_int, default=20, help="timed runs (default 20)")
    add_threads(bench)
    bench.add_argument("--json", help="also write the result (with machine and versions) to this JSON file")
    srv_group = bench.add_argument_group(
        "--server", "through a served model (`maskrt serve`, or Triton on a `maskrt triton` repository): each request "
        "carries --batch encoded images; with --model the same images also run in process, and the difference is the "
        "cost of serving")
    srv_group.add_argument("--server", metavar="URL", help="http://HOST:PORT or grpc://HOST:PORT")
    srv_group.add_argument("--server-model", default=DEFAULT_MODEL_NAME,
                           help="the served model's name (default %(default)s)")
    srv_group.add_argument("--concurrency", type=_positive_int, default=1,
                           help="client threads sending requests at once (default 1)")
    cmp = bench.add_argument_group(
        "--compare", "eager model(images), torchvision's own ONNX export on ONNX Runtime, model.onnx, model.trt.onnx "
        "(host plugins) and model.int8.onnx, each end to end, runs alternated, plus the network parts alone; "
        "--model is then an existing export of the checkpoint (default: exported into --work)")
    cmp.add_argument("--compare", action="store_true", help="compare the candidates side by side (markdown table)")
    cmp.add_argument("--random", choices=["slim", "r50-fpn", "r50-fpn-v2"],
                     help="instead of --checkpoint: a seeded random-init model of this config with 90 classes that "
                     "fills its 100 detection slots on every image")
    cmp.add_argument("--int8", action="store_true", help="also time model.int8.onnx, made with `maskrt quantize` when "
                     "the export has none (an export that has one is always timed)")
    cmp.add_argument("--calibration", help="INT8 calibration images folder (default: the benchmark images)")
    cmp.add_argument("--work", help="folder for the exports, torchvision's ONNX graph and the parts (default: a "
                     "temporary one, removed at the end)")
    cmp.add_argument("--markdown", help="also write the table (and the command) to this markdown file")
    bench.add_argument("--force", action="store_true", help="replace an existing --json / --markdown file or a "
                       "non-empty --work folder")
    bench.set_defaults(func=cmd_bench)

    quant = add("quantize", "INT8 post-training quantization (QDQ) of an export's model.onnx, calibrated on images")
    quant.add_argument("--model", required=True, help="export folder")
    quant.add_argument("--calibration", required=True, help="folder of calibration images (e.g. DATA/train)")
    quant.add_argument("--images", type=_positive_int, default=32, help="calibration images used (default 32)")
    quant.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"],
                       help="activation range calibration (default minmax)")
    quant.add_argument("--out", required=True, help="new export folder: a copy with model.int8.onnx added")
    quant.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    quant.set_defaults(func=cmd_quantize)

    srv = add("serve", "serve a model with a real Triton Inference Server (PyTriton) on this machine: HTTP, gRPC, "
              "health, metrics, dynamic batching; images in, COCO results out (Ctrl-C stops)")
    add_model(srv, required=False)
    srv.set_defaults(backend=None)  # default: onnxruntime for an export folder, tensorrt for an engine (ENGINE.json
    # beside it), torch for a checkpoint
    srv.add_argument("--repository", help="instead of --model: serve a `maskrt triton --network python` model "
                     "repository with the Triton binary PyTriton ships (python backend only)")
    srv.add_argument("--score-threshold", type=_unit_float, default=DEFAULT_SCORE_THRESHOLD,
                     help="drop detections below, in [0, 1] (default %(default)s, as predict)")
    add_threads(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                     "only; 0.0.0.0 for every interface)")
    srv.add_argument("--port", type=_port, default=8000, help="HTTP port (default 8000); gRPC and metrics default "
                     "to PORT+1 and PORT+2")
    srv.add_argument("--grpc-port", type=_port, help="gRPC port (default PORT+1)")
    srv.add_argument("--metrics-port", type=_port, help="Prometheus metrics port (default PORT+2)")
    add_serving(srv, name_help="model name clients ask for (default maskrt)",
                batch_help="largest dynamic batch and request, in images (default %(default)s; 1 = no batching)")
    srv.add_argument("--verbose", action="store_true", help="Triton's and PyTriton's logs")
    srv.set_defaults(func=cmd_serve)

    tri = add("triton", "write a Triton Inference Server model repository (ensemble of pre-processing, network, "
              "post-processing) for an engine or an export folder")
    tri.add_argument("--model", required=True, help="engine file (tensorrt_plan) or export folder")
    tri.add_argument("--out", required=True, help="repository folder to write")
    add_serving(tri, name_help="the ensemble's name; its steps are NAME_preprocess, NAME_network, NAME_postprocess",
                batch_help="max_batch_size of every model (default %(default)s; a static batch 1 export does not "
                           "batch)")
    tri.add_argument("--network", choices=["onnxruntime", "tensorrt", "python"],
                     help="network backend (default: tensorrt for an engine, onnxruntime for an export folder; "
                     "python runs the graph with ONNX Runtime in Triton's python backend)")
    tri.add_argument("--graph", default="portable", choices=GRAPHS,
                     help="the export's graph (onnxruntime: portable or portable_int8; python: any)")
    tri.add_argument("--instances", type=_positive_int, default=1, help="instances of each model (default 1)")
    tri.add_argument("--score-threshold", type=_unit_float, default=DEFAULT_SCORE_THRESHOLD,
                     help="post-processing drops detections below, in [0, 1] (default %(default)s)")
    tri.add_argument("--threads", type=_positive_int, help="--network python: ONNX Runtime threads per instance")
    tri.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    tri.set_defaults(func=cmd_triton)

    demo = add("demo", "the end-to-end demo on the embedded default (shapes dataset, slim model)")
    demo.add_argument("--out", default="demo", help="work folder (default ./demo)")
    demo.add_argument("--minutes", type=_positive_float, default=4.0, help="training budget (default 4)")
    demo.add_argument("--parity-images", type=_positive_int, default=50, help="val images checked (default 50)")
    demo.set_defaults(func=cmd_demo)
    return parser


def _version() -> str:
    """maskrt's version and what its plugin build holds."""
    from maskrt import __version__
    from maskrt.plugins import build_info

    info = build_info()
    if info.get("cuda"):
        plugins = f"CUDA plugin library for {', '.join(info['cuda_architectures'])} + CPU host library"
    elif info:
        plugins = f"CPU host library only ({info['cuda_skipped_because']}): no TensorRT engines"
    else:
        plugins = "no plugin build found"
    return f"maskrt {__version__} (plugins: {plugins})"


def _one_line(exc: MaskrtError) -> str:
    """The error's message on one line. An error raised in a data-loader worker comes back with the worker's
    traceback in its message: keep only the original message (its last line)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    return lines[-1].split("MaskrtError: ", 1)[-1]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `maskrt` console script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _interrupt)  # like Ctrl-C: staged outputs and temporary files are cleaned up
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["maskrt", *argv])  # what the user ran, for the records that keep it
    try:
        return _guarded(args)
    except MaskrtError as exc:
        if os.environ.get("MASKRT_DEBUG"):
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `maskrt ... | head -1`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a write the machine refused where no output path was at hand to name
        if exc.errno not in WRITE_ERRNOS or os.environ.get("MASKRT_DEBUG"):
            raise
        print(f"error: {exc.filename or 'an output'}: cannot be written ({exc.strerror})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
