"""`maskrt bench --server URL`: latency and throughput through a served model, beside the same run in process.

Each request carries `batch` encoded images (the benchmark images cycled); `concurrency` client threads send
`iters` requests in all after `warmup` untimed ones. Latency is a request's round trip as a client sees it (encode,
transport, Triton's queue and batching, decode, network, paste, COCO/RLE encoding); Triton's own split (queue and
compute per request) comes from its Prometheus metrics when they are reachable.
"""

from __future__ import annotations

import io
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from maskrt.core.defaults import DEFAULT_MODEL_NAME
from maskrt.core.errors import MaskrtError
from maskrt.runtime.bench.run import percentiles
from maskrt.serving.client import Client

METRICS = ("nv_inference_request_success", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
           "nv_inference_compute_infer_duration_us", "nv_inference_exec_count")


def encode_png(image: np.ndarray) -> bytes:
    """An HxWx3 uint8 image as PNG bytes (what a client sends for a generated image)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def default_metrics_url(url: str) -> str:
    """`maskrt serve`'s metrics address for a server URL: the HTTP port + 2 (gRPC port + 1)."""
    parsed = urlparse(url)
    port = (parsed.port or 0) + (2 if parsed.scheme == "http" else 1)
    return f"http://{parsed.hostname}:{port}/metrics"


def read_metrics(url: str, model: str) -> dict[str, float] | None:
    """Triton's counters of `model` (None when the metrics endpoint cannot be read)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except (OSError, ValueError):
        return None
    found: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in METRICS and f'model="{model}"' in line:
            found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return found or None


def run_server_bench(url: str, images: list[bytes], *, model: str = DEFAULT_MODEL_NAME, batch: int = 1, warmup: int = 3,
                     iters: int = 20, concurrency: int = 1, metrics_url: str | None = None) -> dict[str, Any]:
    """Time `iters` requests of `batch` images at `concurrency` through the server at `url`."""
    if batch < 1 or iters < 1 or warmup < 0 or concurrency < 1:
        raise MaskrtError(f"batch, iters and concurrency must be >= 1 and warmup >= 0, got {batch}, {iters}, "
                          f"{concurrency}, {warmup}")
    if not images:
        raise MaskrtError("no images to benchmark")
    request = [images[i % len(images)] for i in range(batch)]
    with Client(url, model) as probe:
        if not probe.ready():
            raise MaskrtError(f"{url}: no server ready with model '{model}' (is `maskrt serve` running?)")
        for _ in range(warmup):
            probe.detect(request)
    metrics_url = metrics_url or default_metrics_url(url)
    before = read_metrics(metrics_url, model)
    clients = [Client(url, model) for _ in range(concurrency)]

    def worker(k: int) -> list[float]:
        times = []
        for _ in range(k, iters, concurrency):
            t0 = time.perf_counter()
            clients[k].detect(request)
            times.append(time.perf_counter() - t0)
        return times

    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            latencies = [t for times in pool.map(worker, range(concurrency)) for t in times]
    finally:
        for c in clients:
            c.close()
    wall = time.perf_counter() - t0
    after = read_metrics(metrics_url, model)
    result: dict[str, Any] = {"server": url, "model": model, "batch": batch, "warmup": warmup, "iters": iters,
                              "concurrency": concurrency, "end_to_end": percentiles(latencies),
                              "images_per_second": round(iters * batch / wall, 3)}
    if before and after:
        n = after.get("nv_inference_request_success", 0) - before.get("nv_inference_request_success", 0)
        if n > 0:
            per = {key: (after.get(key, 0) - before.get(key, 0)) / n / 1e3 for key in METRICS[1:4]}
            batches = after.get("nv_inference_exec_count", 0) - before.get("nv_inference_exec_count", 0)
            result["triton"] = {"requests": int(n), "request_ms": round(per[METRICS[1]], 3),
                                "queue_ms": round(per[METRICS[2]], 3), "compute_ms": round(per[METRICS[3]], 3),
                                "executions": int(batches)}
    return result


def format_server_bench(result: dict[str, Any], local: dict[str, Any] | None = None) -> str:
    """The server run (and the in-process run of the same images, with the difference) as text."""
    e = result["end_to_end"]
    lines = [f"through the server {result['server']} (model '{result['model']}'): {result['iters']} requests of "
             f"{result['batch']} image(s), concurrency {result['concurrency']}: p50 {e['p50_ms']:.2f} ms, p90 "
             f"{e['p90_ms']:.2f} ms, p99 {e['p99_ms']:.2f} ms, {result['images_per_second']:.2f} images/s"]
    if "triton" in result:
        t = result["triton"]
        lines.append(f"  Triton's metrics: per request {t['request_ms']:.2f} ms in the server, of which queue "
                     f"{t['queue_ms']:.2f} ms and compute {t['compute_ms']:.2f} ms; {t['requests']} requests in "
                     f"{t['executions']} executions (dynamic batching)")
    if local is not None:
        p = local["stages"]["end_to_end"]
        lines.append(f"in process ({local['backend']}, same images, batch {local['batch']}): p50 {p['p50_ms']:.2f} "
                     f"ms, p90 {p['p90_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms, {local['images_per_second']:.2f} "
                     f"images/s")
        lines.append(f"serving overhead at p50: {e['p50_ms'] - p['p50_ms']:+.2f} ms per request "
                     f"(x{e['p50_ms'] / p['p50_ms']:.2f}; image decoding, transport, queueing and the COCO/RLE "
                     f"encoding of the results)")
    return "\n".join(lines)
