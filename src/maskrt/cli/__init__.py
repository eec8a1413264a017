"""The `maskrt` console script: one entry point, one subcommand per job.

Every subcommand exits non-zero with a one-line `error: ...` message on bad input (no traceback;
set MASKRT_DEBUG=1 to see one). Each command's parser is defined beside its handler, in the module of its stage
(training, export, predict, bench, serve, demo); a handler parses nothing itself and calls the library.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
from contextlib import ExitStack
from pathlib import Path

from maskrt.cli import bench, demo, export, layers, parity, predict, quantize, serve, training
from maskrt.cli.options import Parser, interrupt
from maskrt.core.errors import MaskrtError
from maskrt.core.files import WRITE_ERRNOS
from maskrt.core.outputs import check_apart, output_lock

log = logging.getLogger("maskrt")


def build_parser() -> argparse.ArgumentParser:
    """The `maskrt` parser: every command's, from the modules that handle them."""
    parser = Parser(prog="maskrt", description=__doc__.splitlines()[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (training, export, quantize, predict, parity, layers, bench, serve, demo):
        module.register(sub)
    return parser


def _lead_process() -> bool:
    """False in the non-zero ranks of a torchrun launch (rank 0 holds the run folder's lock for all)."""
    return os.environ.get("RANK", "0") == "0"


def guarded(args: argparse.Namespace) -> int:
    """Run the command with its outputs checked apart from its inputs and locked for the run: before any work, every
    output (`args.io`, set by each command's parser) is checked apart from every input (none is, holds or lies inside
    another: --force never deletes an input), two outputs on one path are refused, and each is locked (one writer)."""
    outputs, inputs = args.io(args)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `maskrt` console script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, interrupt)  # like Ctrl-C: staged outputs and temporary files are cleaned up
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(list(argv))
    args.command_line = shlex.join(["maskrt", *argv])  # what the user ran, for the records that keep it
    try:
        return guarded(args)
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


