"""Where OpenVINO's CPU time goes on an export's model.onnx: per network stage, per op type and per kernel.

    python scripts/profile_openvino.py --model EXPORT [--graph portable|portable_int8] [--precision f32 bf16]
        [--threads 2] [--iters 3]

Compiles the graph with PERF_COUNT on, runs it on one random canvas of the export's size (an r50-fpn seeded random
export from `maskrt bench compare --random r50-fpn --size 800 --work W` gives W/export) and prints, per precision,
the wall time and the sum of OpenVINO's per-node times split by stage (from the exporter's node names), op type and
executed kernel. The README's CPU section quotes it for the goals that are not met.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import numpy as np

from maskrt.core.artifacts import ExportInfo
from maskrt.runtime.backends.openvino_runtime import PRECISIONS, openvino_core

#: node-name fragments of the exporter's module paths -> stage (first match wins)
STAGES = (("mask_head", "mask head"), ("mask_predictor", "mask head"), ("box_head", "box head"),
          ("box_predictor", "box head"), ("rpn", "RPN"), ("fpn", "FPN"), ("body", "backbone"))


def stage_of(node_name: str) -> str:
    """The network stage a node belongs to, from its name; "other" for decoding, NMS, RoIAlign and glue."""
    name = node_name.lower()
    return next((stage for key, stage in STAGES if key in name), "other")


def profile(model_path: Path, height: int, width: int, precision: str, threads: int, iters: int) -> None:
    core = openvino_core()
    compiled = core.compile_model(core.read_model(str(model_path)), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": str(threads), "PERF_COUNT": "YES"})
    request = compiled.create_infer_request()
    inputs = {"images": np.random.default_rng(0).uniform(-1, 1, (1, 3, height, width)).astype(np.float32),
              "image_sizes": np.array([[height, width]], np.int64)}
    for _ in range(2):
        request.infer(inputs)
    walls: list[float] = []
    by_stage, by_op, by_kernel = collections.Counter(), collections.Counter(), collections.Counter()
    for _ in range(iters):
        start = time.perf_counter()
        request.infer(inputs)
        walls.append((time.perf_counter() - start) * 1e3)
        for node in request.profiling_info:
            ms = node.real_time.total_seconds() * 1e3 / iters
            by_stage[stage_of(node.node_name)] += ms
            by_op[node.node_type] += ms
            by_kernel[f"{node.node_type}/{node.exec_type}"] += ms
    print(f"== {model_path.name}, {precision}, {threads} threads: wall p50 {np.median(walls):.0f} ms, "
          f"sum of node times {sum(by_op.values()):.0f} ms")
    for title, counter in (("stages", by_stage), ("op types", by_op), ("kernels", by_kernel)):
        print(f"{title}: " + ", ".join(f"{k} {v:.0f}" for k, v in counter.most_common(10)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="export folder")
    parser.add_argument("--graph", default="portable", choices=["portable", "portable_int8"])
    parser.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    info = ExportInfo.read(args.model)
    for precision in args.precision:
        profile(info.graph_path(args.model, args.graph), info.input.height, info.input.width, precision,
                args.threads, args.iters)


if __name__ == "__main__":
    main()
