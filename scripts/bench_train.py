"""fp32 vs --amp training on this machine: steps per second (one alternated run) and AP after the same minutes.

    .venv/bin/python scripts/bench_train.py                   # slim on a fresh shapes dataset, 3 minutes per run
    .venv/bin/python scripts/bench_train.py --minutes 5 --device cuda

Speed: two trainers of the same config (fp32 and --amp) take turns on the same batches, `--blocks` blocks of `--steps`
steps each, the order swapped every block so that neither always runs first; the ratio is of the median block times.
Accuracy: then one `--minutes` run of each (the trainer's own schedule, evaluated on the val split at the end).
Prints one table and the machine it ran on. Run nothing else meanwhile (two torch jobs on 2 cores slow each other
many times over).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from maskrt.core.devices import resolve_device
from maskrt.core.machine import machine_line
from maskrt.training.coco import collate
from maskrt.training.shapes import generate
from maskrt.training.trainer import Trainer, TrainOptions


def _speed(data: Path, work: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per block of `args.steps` steps, per precision, alternated."""
    trainers = {name: Trainer(TrainOptions(data=data, out=work / f"speed_{name}", config=args.config, iters=10**6,
                                           device=args.device, amp=name == "amp", progress=False, lr=args.lr))
                for name in ("fp32", "amp")}
    loader = DataLoader(trainers["fp32"].train_set, batch_size=2, shuffle=False, collate_fn=collate)
    batches = [b for _, b in zip(range(args.steps), loader, strict=False)]
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for trainer in trainers.values():  # warm-up: first-call allocations and oneDNN kernel selection
        trainer.model.train()
        trainer.train_step(list(batches[0][0]), list(batches[0][1]))
    for block in range(args.blocks):
        order = list(trainers) if block % 2 == 0 else list(reversed(trainers))
        for name in order:
            start = time.perf_counter()
            for images, targets in batches:
                trainers[name].train_step(list(images), list(targets))
            if trainers[name].device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def _accuracy(data: Path, work: Path, args: argparse.Namespace, amp: bool) -> tuple[int, dict]:
    trainer = Trainer(TrainOptions(data=data, out=work / ("amp" if amp else "fp32"), config=args.config,
                                   max_minutes=args.minutes, eval_minutes=10**6, device=args.device, amp=amp,
                                   progress=False, lr=args.lr))
    result = trainer.train()
    return result.step, result.metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="COCO-format dataset (default: a fresh 400/100 shapes dataset)")
    parser.add_argument("--config", default="slim")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--minutes", type=float, default=3.0, help="training minutes per precision (default 3)")
    parser.add_argument("--blocks", type=int, default=6, help="alternated timing blocks per precision (default 6)")
    parser.add_argument("--steps", type=int, default=10, help="steps per timing block (default 10)")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data or generate(work / "data", progress=False)
        times = _speed(data, work, args)
        runs = {name: _accuracy(data, work, args, amp=name == "amp") for name in ("fp32", "amp")}
    device = resolve_device(args.device)
    per_step = {name: statistics.median(t) / args.steps for name, t in times.items()}
    print(f"training {args.config}, {device}, {machine_line()}, torch {torch.__version__}")
    print(f"{'precision':10s} {'steps/s':>8s} {'steps in ' + format(args.minutes, 'g') + ' min':>16s} "
          f"{'bbox AP':>8s} {'segm AP':>8s}")
    for name in ("fp32", "amp"):
        steps, metrics = runs[name]
        print(f"{name:10s} {1 / per_step[name]:8.2f} {steps:16d} {metrics['bbox']['AP']:8.1f} "
              f"{metrics['segm']['AP']:8.1f}")
    print(f"amp / fp32 speed: {per_step['fp32'] / per_step['amp']:.2f}x (median of {args.blocks} alternated blocks "
          f"of {args.steps} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
