#!/usr/bin/env python
"""CPU benchmark (not a test): r50-fpn at 800x800, 2 threads, the same images, runs alternated.

End to end (pre-processing, inference, masks pasted at the original size), medians of N runs:
  1. torchvision eager (model(images) with its own transform and paste),
  2. torchvision's own ONNX export on ONNX Runtime (its graph pastes the masks itself),
  3. our model.onnx on ONNX Runtime through the Predictor.
Also the pure network parts of our graph alone (backbone+FPN, RPN head, box head on the post-NMS
proposals, mask head on D RoIs), exported and timed on ONNX Runtime. Prints medians and the ratios
eager/ours, tv-onnx/ours and ours/(sum of its network parts), and our per-stage breakdown from `maskrt bench`
(runtime/bench.py: pre-processing, network, paste).

    python scripts/bench_cpu.py [--runs 7] [--size 800] [--threads 2] [--out bench_cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from maskrt.export.onnx_export import export_checkpoint
from maskrt.runtime.predictor import Predictor
from maskrt.training.checkpoint import make_checkpoint, save_checkpoint
from maskrt.training.models import build_model, default_model_config


def _session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _export(module: nn.Module, args: tuple, path: Path, names: list[str]) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, input_names=names)


def _median_ms(fn, runs: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.out or tempfile.mkdtemp(prefix="bench_cpu_"))
    work.mkdir(parents=True, exist_ok=True)
    size = args.size

    torch.manual_seed(0)
    cfg = default_model_config("r50-fpn", 90, min_size=size, max_size=size)
    model = build_model(cfg).eval()
    with torch.no_grad():  # seeded random init that yields D detections per image
        model.roi_heads.box_predictor.cls_score.weight.mul_(6.0)
    ckpt = work / "r50.pt"
    save_checkpoint(ckpt, make_checkpoint(model_config=cfg, state_dict=model.state_dict(),
                                          classes=[{"id": i, "name": str(i)} for i in range(1, 91)]))
    print(f"exporting ours ({size}x{size}) ...", file=sys.stderr)
    t0 = time.perf_counter()
    export_checkpoint(ckpt, work / "ours")  # dynamic height/width: each image at its own padded size
    export_s = time.perf_counter() - t0
    gen = np.random.default_rng(0)
    image = gen.integers(0, 255, (size, size, 3), dtype=np.uint8)
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255

    print("exporting torchvision's own ONNX graph ...", file=sys.stderr)
    tv_path = work / "torchvision.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, ([tensor],), str(tv_path), dynamo=False, opset_version=17,
                          input_names=["image"])
    tv_sess = _session(tv_path, args.threads)
    ours = Predictor.from_export(work / "ours", threads=args.threads)

    def eager() -> None:
        with torch.no_grad():
            model([tensor])

    def tv_onnx() -> None:  # its graph already pastes the masks at the input (= original) size
        tv_sess.run(None, {"image": tensor.numpy()})

    def our_e2e() -> None:
        ours.predict([image])

    # network parts of our graph alone
    from maskrt.export.deploy import DeployMaskRCNN

    deploy = DeployMaskRCNN(model, height=size, width=size)
    canvas, sizes = ours.preprocessor([image])
    with torch.no_grad():
        feats = list(deploy.backbone(canvas).values())
        props, _ = deploy.proposals(feats, canvas, sizes)
    d = deploy.max_detections

    class Heads(nn.Module):
        def __init__(self, head: nn.Module, predictor: nn.Module) -> None:
            super().__init__()
            self.head, self.predictor = head, predictor

        def forward(self, x: torch.Tensor):  # noqa: ANN201
            return self.predictor(self.head(x))

    parts = {
        "backbone+FPN": (deploy.backbone, (canvas,)),
        "RPN head": (deploy.rpn_head, (feats,)),
        f"box head ({props.shape[1]} RoIs)": (Heads(deploy.box_head, deploy.box_predictor),
                                             (torch.randn(props.shape[1], feats[0].shape[1], 7, 7),)),
        f"mask head ({d} RoIs)": (Heads(deploy.mask_head, deploy.mask_predictor),
                                  (torch.randn(d, feats[0].shape[1], 14, 14),)),
    }
    part_ms = {}
    for name, (module, inputs) in parts.items():
        path = work / f"part_{len(part_ms)}.onnx"
        names = [f"in{i}" for i in range(len(inputs[0]))] if isinstance(inputs[0], list) else ["in0"]
        _export(module, inputs, path, names)
        sess = _session(path, args.threads)
        feed = ({n: t.numpy() for n, t in zip(names, inputs[0], strict=True)} if isinstance(inputs[0], list)
                else {"in0": inputs[0].numpy()})
        sess.run(None, feed)
        part_ms[name] = _median_ms(lambda s=sess, f=feed: s.run(None, f), args.runs)

    print("timing end to end (alternated runs) ...", file=sys.stderr)
    runners = {"torchvision eager": eager, "torchvision ONNX on ORT": tv_onnx, "maskrt model.onnx on ORT": our_e2e}
    for fn in runners.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.runs):
        for name, fn in runners.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1000)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nr50-fpn {size}x{size}, {args.threads} threads, medians of {args.runs} runs (ms)")
    print(f"  export of both graphs      {export_s:9.1f} s")
    for name, ms in med.items():
        print(f"  {name:28s} {ms:9.1f}")
    for name, ms in part_ms.items():
        print(f"  part: {name:22s} {ms:9.1f}")
    from maskrt.runtime.bench import format_bench, run_bench  # our stages, as `maskrt bench` reports them

    print("\n" + format_bench(run_bench(ours, [image], warmup=1, iters=args.runs, threads=args.threads,
                                         progress=False)))
    ours_ms, parts_sum = med["maskrt model.onnx on ORT"], sum(part_ms.values())
    print(f"\n  eager / ours             {med['torchvision eager'] / ours_ms:6.2f}x  (goal >= 2)")
    print(f"  torchvision ONNX / ours  {med['torchvision ONNX on ORT'] / ours_ms:6.2f}x  (goal >= 1.6)")
    print(f"  ours / sum of parts      {ours_ms / parts_sum:6.2f}x  (goal <= 1.25)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
