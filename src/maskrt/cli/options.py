"""What every command's parser shares: argparse value types, the option groups several commands take, and the
inputs a model option names (for the output-apart-from-input check of `maskrt.cli.guarded`)."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from maskrt.core.artifacts import BACKENDS, GRAPHS, MAX_CANVAS_SIDE, MAX_EXPORT_BATCH, MAX_OPSET, MIN_OPSET
from maskrt.core.defaults import (
    DEFAULT_MODEL_NAME,
    DEFAULT_QUEUE_DELAY_US,
    DEFAULT_REQUEST_MAX_PIXELS,
    DEFAULT_SERVER_MAX_BATCH,
)

#: (what, path) of each input a command reads; outputs must lie apart from them all
Inputs = list[tuple[str, "str | Path | None"]]
T = TypeVar("T")


def checked(convert: Callable[[str], T], ok: Callable[[T], bool], requirement: str) -> Callable[[str], T]:
    """An argparse type: `convert` the text, then refuse values that are not `ok` ("must be <requirement>")."""

    def parse(text: str) -> T:
        value = convert(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__name__ = convert.__name__  # argparse names it in "invalid int value: 'x'"
    return parse


positive_int = checked(int, lambda v: v >= 1, "a positive integer")
resamples_count = checked(int, lambda v: 100 <= v <= 100_000, "in [100, 100000]")
non_negative_int = checked(int, lambda v: v >= 0, ">= 0")
image_side = checked(int, lambda v: 32 <= v <= MAX_CANVAS_SIDE, f"in [32, {MAX_CANVAS_SIDE}] pixels")
positive_float = checked(float, lambda v: v > 0 and math.isfinite(v), "positive and finite")
non_negative_float = checked(float, lambda v: v >= 0 and math.isfinite(v), ">= 0 and finite")
unit_float = checked(float, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")  # NaN fails every comparison
canvas_side = checked(int, lambda v: v % 32 == 0 and 32 <= v <= MAX_CANVAS_SIDE,
                      f"a multiple of 32 in [32, {MAX_CANVAS_SIDE}]")
export_batch = checked(int, lambda v: 1 <= v <= MAX_EXPORT_BATCH, f"in [1, {MAX_EXPORT_BATCH}]")
port = checked(int, lambda v: 1 <= v <= 65535, "a port in 1..65535")
model_name = checked(str, lambda v: bool(re.fullmatch(r"[A-Za-z0-9_.-]+", v)), "letters, digits, '.', '_', '-'")
opset = checked(int, lambda v: MIN_OPSET <= v <= MAX_OPSET, f"in [{MIN_OPSET}, {MAX_OPSET}]")
backbone_layers = checked(int, lambda v: 0 <= v <= 6, "in [0, 6] (5 for a ResNet)")


def size_list(text: str) -> list[int]:
    """An argparse type: comma-separated image sides, each at least 32 pixels."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be image sides in pixels, e.g. 96,112,128; got {text}") from None
    if not sizes or any(s < 32 for s in sizes):
        raise argparse.ArgumentTypeError(f"must be image sides of at least 32 pixels, got {text}")
    return sizes


def interrupt(signum: int, frame: object) -> None:
    """A signal handler that stops the command as Ctrl-C does (staged outputs and temporary files cleaned up)."""
    raise KeyboardInterrupt


class Parser(argparse.ArgumentParser):
    """argparse with maskrt's error format: one line `error: ...` (and exit code 2), the usage left to --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def add_command(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand's parser, with -q/--quiet."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def add_model(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--model, --backend, --graph, --checkpoint and --precision: what `predictor_options` reads."""
    p.add_argument("--model", required=required,
                   help="export folder (a checkpoint for --backend torch, an engine file for --backend tensorrt)")
    p.add_argument("--backend", default="onnxruntime", choices=BACKENDS)
    p.add_argument("--graph", default="portable", choices=list(GRAPHS), help="which ONNX graph")
    p.add_argument("--checkpoint", help="checkpoint for --backend torch with an export folder")
    add_precision(p)


def add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=["f32", "bf16"],
                   help="--backend openvino: its inference precision (default f32, gated like fp32; bf16 needs a "
                   "CPU with native bfloat16, AVX-512 BF16 or AMX, and has gates of its own)")


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int,
                   help="ONNX Runtime intra-op threads (default: one per physical core)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="where ONNX Runtime and torch (--backend torch, parity's reference) run: cuda runs model.onnx "
                   "with onnxruntime-gpu (extra [gpu]) and torch on the GPU; auto: cuda where available (default cpu)")


def add_torch_device(p: argparse.ArgumentParser, default: str) -> None:
    """--device for what runs in torch (training, evaluation, the torch backend and reference)."""
    p.add_argument("--device", default=default, choices=["cpu", "cuda", "auto"],
                   help=f"where torch runs: cuda (under torchrun, each process its LOCAL_RANK GPU), cpu, or auto "
                   f"(cuda where torch sees a GPU); default {default}")


def add_serving(p: argparse.ArgumentParser, name_help: str, batch_help: str) -> None:
    """The options `serve` and `triton` share."""
    p.add_argument("--name", default=DEFAULT_MODEL_NAME, type=model_name, help=name_help)
    p.add_argument("--max-batch", type=positive_int, default=DEFAULT_SERVER_MAX_BATCH, help=batch_help)
    p.add_argument("--queue-delay-us", type=non_negative_int, default=DEFAULT_QUEUE_DELAY_US,
                   help="how long the dynamic batcher waits to fill a batch, microseconds (default %(default)s)")
    p.add_argument("--max-megapixels", type=positive_float, default=DEFAULT_REQUEST_MAX_PIXELS / 1e6,
                   help="refuse larger images before decoding them (default %(default)g)")


def predictor_options(args: argparse.Namespace, score_threshold: float | None = None) -> dict:
    """The keyword arguments of `Predictor.open` from the options `add_model` and `add_threads` define."""
    options = {"backend": args.backend, "graph": args.graph, "checkpoint": args.checkpoint, "threads": args.threads,
               "device": args.device, "precision": args.precision}
    if score_threshold is not None:
        options["score_threshold"] = score_threshold
    return options


def model_inputs(args: argparse.Namespace) -> Inputs:
    """--model (with the ENGINE.json beside an engine file) and --checkpoint, where the command has them."""
    model = getattr(args, "model", None)
    items: Inputs = [("model", model), ("checkpoint", getattr(args, "checkpoint", None))]
    if model and Path(model).is_file():
        items.append(("engine description", f"{model}.json"))
    return items
