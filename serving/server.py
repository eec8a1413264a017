"""`maskrt serve`: a real Triton Inference Server on this machine, through PyTriton, with a Predictor as the model.

Triton (the `tritonserver` binary PyTriton ships) owns HTTP, gRPC, health, metrics and the dynamic batcher; it hands
each batch of requests to `DetectFunction` in this process. The function decodes every image, runs images of one size
together (a dynamic-size export pads a batch to its largest image, so running mixed sizes together would change the
results with the load) and answers each request with its images' COCO results (serving/protocol.py).

PyTriton returns one error for the whole batch when the function raises: a malformed request that Triton's own
checks let through (non-image bytes, an image over the pixel limit, an empty batch) fails the requests batched with
it too. `--max-batch 1` isolates every request at the cost of batching.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskrt.core.defaults import (
    DEFAULT_MODEL_NAME,
    DEFAULT_QUEUE_DELAY_US,
    DEFAULT_REQUEST_MAX_PIXELS,
    DEFAULT_SERVER_MAX_BATCH,
)
from maskrt.core.errors import MaskrtError
from maskrt.core.images import decode_rgb
from maskrt.runtime.postprocess import Detections
from maskrt.runtime.predictor import Predictor
from maskrt.serving.protocol import (
    INPUT,
    OUTPUT,
    coco_results,
    encode_results,
    request_images,
)

log = logging.getLogger("maskrt")


@dataclass(frozen=True)
class ServeOptions:
    """Where and how `serve` listens: HTTP on `http_port`, gRPC and metrics on their own ports."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_name: str = DEFAULT_MODEL_NAME
    max_batch: int = DEFAULT_SERVER_MAX_BATCH
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    max_pixels: int = DEFAULT_REQUEST_MAX_PIXELS
    verbose: bool = False

    def urls(self) -> dict[str, str]:
        """The endpoints a client uses."""
        return {"http": f"http://{self.host}:{self.http_port}", "grpc": f"grpc://{self.host}:{self.grpc_port}",
                "metrics": f"http://{self.host}:{self.metrics_port}/metrics"}


class DetectFunction:
    """PyTriton's inference callable: a batch of requests -> one response per request (see the module docstring)."""

    def __init__(self, predictor: Predictor, max_pixels: int = DEFAULT_REQUEST_MAX_PIXELS,
                 max_batch: int = DEFAULT_SERVER_MAX_BATCH) -> None:
        self.predictor = predictor
        self.max_pixels = max_pixels
        self.max_batch = max_batch
        self.static = predictor.preprocessor.canvas is not None  # every image is padded to the same canvas

    def __call__(self, requests: list) -> list[dict[str, np.ndarray]]:
        images: list[np.ndarray] = []
        counts: list[int] = []
        for r, request in enumerate(requests):
            try:
                blobs = request_images(np.asarray(request[INPUT]))
            except KeyError:
                raise MaskrtError(f"request {r}: no '{INPUT}' input") from None
            counts.append(len(blobs))
            images += [decode_rgb(blob, f"request {r} image {i}", self.max_pixels) for i, blob in enumerate(blobs)]
        results = [encode_results(coco_results(d, self.predictor.classes)) for d in self.detect(images)]
        responses, start = [], 0
        for n in counts:
            responses.append({OUTPUT: np.array(results[start:start + n], dtype=np.object_).reshape(n, 1)})
            start += n
        return responses

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        """Detections of each image, images of one padded size run together (at most max_batch at a time)."""
        groups: dict[object, list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            groups[None if self.static else image.shape[:2]].append(i)
        out: list[Detections | None] = [None] * len(images)
        for members in groups.values():
            for s in range(0, len(members), self.max_batch):
                chunk = members[s:s + self.max_batch]
                for i, dets in zip(chunk, self.predictor.predict([images[i] for i in chunk]), strict=True):
                    out[i] = dets
        return out  # type: ignore[return-value]


def bound_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (unless MALLOC_ARENA_MAX is set): with an arena per request thread a server's memory
    steps up unpredictably under concurrent requests (measured at concurrency 8: +7% and +12% over 200 requests after
    a 48-request warm-up without the cap; with 2 arenas within 2% over 800 requests). Call before threads start; a
    no-op where malloc is not glibc's."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        ctypes.CDLL(None).mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def check_ports_free(options: ServeOptions) -> None:
    """MaskrtError naming the first of the server's ports that something already listens on (Triton would fail to
    bind it, and PyTriton would then talk to whatever holds it)."""
    for what, port in (("HTTP", options.http_port), ("gRPC", options.grpc_port), ("metrics", options.metrics_port)):
        with socket.socket(socket.AF_INET6 if ":" in options.host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server's TIME_WAIT is no obstacle
            try:
                sock.bind((options.host, port))
            except OSError as exc:
                raise MaskrtError(f"{options.host}:{port} ({what}) is not free ({exc.strerror}): another server "
                                  "listens there? choose --port (gRPC and metrics follow at +1, +2)") from None


def pytriton_available() -> None:
    """MaskrtError saying how to install serving when PyTriton is missing."""
    try:
        import pytriton  # noqa: F401
    except ImportError:
        raise MaskrtError("`maskrt serve` needs PyTriton: `make serve-env` makes .venv-serve with it (a Python with a "
                          "shared libpython, e.g. /usr/bin/python3.11 -m venv; pip install -e '.[serve]'), then run "
                          ".venv-serve/bin/maskrt serve") from None


def serve(predictor: Predictor | None, options: ServeOptions, *, repository: Path | None = None,
          on_ready: Callable[[], None] | None = None) -> None:
    """Serve `predictor` (or every model of a `maskrt triton` `repository`, with the Triton binary PyTriton ships)
    until interrupted (Ctrl-C / SIGTERM raise KeyboardInterrupt; Triton is stopped on the way out)."""
    pytriton_available()
    check_ports_free(options)
    from pytriton.exceptions import PyTritonError
    from pytriton.triton import TritonConfig
    from tritonclient.utils import InferenceServerException

    if not options.verbose:
        for name in ("pytriton", "tritonclient"):
            logging.getLogger(name).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="maskrt-serve-") as tmp:
        log_file = None if options.verbose else Path(tmp) / "tritonserver.log"  # Triton's log: on the console or here
        config = TritonConfig(http_address=options.host, http_port=options.http_port, grpc_address=options.host,
                              grpc_port=options.grpc_port, metrics_address=options.host,
                              metrics_port=options.metrics_port, allow_gpu_metrics=False,
                              log_verbose=1 if options.verbose else 0, exit_on_error=True, log_file=log_file,
                              model_repository=repository)
        try:
            _serve(predictor, options, config, on_ready)
        except (MaskrtError, PyTritonError, InferenceServerException) as exc:
            if log_file is not None and log_file.exists():  # the reason is usually in Triton's log: show its end
                tail = log_file.read_text(errors="replace").splitlines()[-15:]
                print("\n".join(["tritonserver.log (last lines):", *tail]), file=sys.stderr)
            raise MaskrtError(f"Triton: {str(exc).strip().splitlines()[-1]}") from None


def _serve(predictor: Predictor | None, options: ServeOptions, config: object,
           on_ready: Callable[[], None] | None) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton

    started = time.perf_counter()
    with Triton(config=config) as triton:  # type: ignore[arg-type]
        if predictor is not None:
            function = DetectFunction(predictor, options.max_pixels, options.max_batch)
            batcher = DynamicBatcher(max_queue_delay_microseconds=options.queue_delay_us)
            triton.bind(model_name=options.model_name, infer_func=function,
                        inputs=[Tensor(name=INPUT, dtype=np.bytes_, shape=(1,))],
                        outputs=[Tensor(name=OUTPUT, dtype=np.bytes_, shape=(1,))],
                        config=ModelConfig(max_batch_size=options.max_batch, batcher=batcher), strict=True)
        triton.run()  # returns once Triton is up and the models are loaded
        log.debug("Triton up in %.1f s", time.perf_counter() - started)
        if on_ready is not None:
            on_ready()
        try:
            while triton.is_alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            return  # leaving the context stops Triton and its backend processes
        raise MaskrtError("the Triton server stopped unexpectedly (run with --verbose to see its log)")
