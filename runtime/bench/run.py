"""`maskrt bench`: latency and throughput of any backend, end to end and per stage.

Stages of one batch: pre-processing (torchvision's transform and padding), network (the backend's `run`: the graph or
engine, outputs copied to the host) and paste (boxes mapped back, masks pasted at the original size). Each timed
iteration runs the same batch; the first `warmup` iterations are not counted. The result holds p50 / p90 / p99 per
stage and end to end, images per second, and the machine, threads and versions it was measured with.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from maskrt.core.errors import MaskrtError
from maskrt.core.machine import machine_facts
from maskrt.core.versions import versions
from maskrt.runtime.postprocess import Detections, to_detections
from maskrt.runtime.predictor import Predictor

STAGES = ("preprocess", "network", "paste")


def synthetic_images(count: int, height: int = 480, width: int = 640, seed: int = 0) -> list[np.ndarray]:
    """`count` seeded random HxWx3 uint8 images (when no image folder is given)."""
    gen = np.random.default_rng(seed)
    return [gen.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 in milliseconds of durations in seconds."""
    ms = np.asarray(values) * 1e3
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99)}


def machine(threads: int | None) -> dict[str, Any]:
    """The machine a measurement ran on, with the threads it used."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    facts = machine_facts()
    return {"platform": platform.platform(), "processor": facts["cpu"], "isa": facts["isa"],
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "onnxruntime_threads": threads,
            "gpu": gpu}


@torch.no_grad()
def timed_predict(predictor: Predictor, images: list[np.ndarray]
                  ) -> tuple[dict[str, float], list[Detections], tuple[int, int]]:
    """One batch through `predictor`: (seconds per stage and end to end, detections, padded (h, w))."""
    t0 = time.perf_counter()
    canvas, sizes = predictor.preprocessor(images)
    t1 = time.perf_counter()
    raws = predictor.backend.run(canvas, sizes)
    t2 = time.perf_counter()
    resized = [(int(h), int(w)) for h, w in sizes.tolist()]
    original = [(int(img.shape[0]), int(img.shape[1])) for img in images]
    detections = [to_detections(raw, r, o, score_threshold=predictor.score_threshold)
                  for raw, r, o in zip(raws, resized, original, strict=True)]
    t3 = time.perf_counter()
    seconds = dict(zip((*STAGES, "end_to_end"), (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True))
    return seconds, detections, (int(canvas.shape[-2]), int(canvas.shape[-1]))


def run_bench(predictor: Predictor, images: list[np.ndarray], *, batch: int = 1, warmup: int = 3, iters: int = 20,
              threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Time `iters` runs of one batch of `batch` images (cycled from `images`) through `predictor`."""
    if batch < 1 or iters < 1 or warmup < 0:
        raise MaskrtError(f"batch and iters must be >= 1 and warmup >= 0, got {batch}, {iters}, {warmup}")
    if not images:
        raise MaskrtError("no images to benchmark")
    chosen = [images[i % len(images)] for i in range(batch)]
    original = [(int(img.shape[0]), int(img.shape[1])) for img in chosen]
    times: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "end_to_end")}
    for i in tqdm(range(warmup + iters), desc=f"bench {predictor.backend.name}", unit="it", disable=not progress):
        seconds, _, padded = timed_predict(predictor, chosen)
        if i >= warmup:
            for stage, value in seconds.items():
                times[stage].append(value)
    end_to_end = np.asarray(times["end_to_end"])
    return {
        "backend": predictor.backend.name, "batch": batch, "warmup": warmup, "iters": iters,
        "image_sizes": original, "padded_size": list(padded),
        "images_per_second": round(batch / float(np.median(end_to_end)), 3),
        "stages": {stage: percentiles(values) for stage, values in times.items()},
        "machine": machine(threads), "versions": backend_versions(predictor.backend.name),
    }


def backend_versions(backend: str) -> dict[str, str]:
    """maskrt's, torch's, ... versions and ONNX Runtime's (and TensorRT's for that backend)."""
    found = dict(versions())
    import onnxruntime

    found["onnxruntime"] = onnxruntime.__version__
    if backend in ("openvino", "compare"):
        try:
            found["openvino"] = __import__("openvino").__version__.split("-")[0]
        except ImportError:
            pass
    if backend == "tensorrt":
        for module in ("tensorrt", "tensorrt_rtx"):
            try:
                found[module] = __import__(module).__version__
            except ImportError:
                continue
    return found


def format_bench(result: dict[str, Any]) -> str:
    """The result as a small table."""
    lines = [f"{result['backend']}: batch {result['batch']} at {result['padded_size'][0]}x{result['padded_size'][1]}, "
             f"{result['iters']} iterations, {result['images_per_second']:.2f} images/s",
             f"{'stage':12s} {'p50 ms':>10s} {'p90 ms':>10s} {'p99 ms':>10s}"]
    for stage, p in result["stages"].items():
        lines.append(f"{stage:12s} {p['p50_ms']:10.2f} {p['p90_ms']:10.2f} {p['p99_ms']:10.2f}")
    return "\n".join(lines)


def load_images(folder: str | Path) -> list[np.ndarray]:
    """Every image of a folder (sorted by name)."""
    from maskrt.core.images import image_folder, load_rgb

    return [load_rgb(f) for f in image_folder(folder)]
