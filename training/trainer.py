"""The trainer: warm-up + cosine schedule, progress bar, periodic COCO eval, atomic checkpoints, resume, DDP.

Run directory (RUN):
- last.pt     latest state (weights + optimizer + schedule + RNG), rewritten atomically every `save_every_s`
              seconds, at each evaluation and at the end: a SIGKILL at any moment leaves a loadable file.
- best.pt     the checkpoint with the best segm AP seen so far.
- metrics.json {"bbox": {AP, AP50, AP75}, "segm": {...}} of the final model on the val split (0-100).
- history.jsonl one line per evaluation (step, elapsed, metrics).

The schedule depends on progress = max(step / iters, elapsed / max_minutes), so time-limited runs end
with a decayed learning rate; elapsed training time is part of the saved state, so a resumed run picks
up the schedule where it stopped. Data order is a function of (seed, epoch) and is skipped forward on
resume; the flips and the global torch RNG (Mask R-CNN's samplers) are seeded from (seed, step, rank) at every
step. So a run interrupted and resumed with --iters ends with the weights of an uninterrupted one (bit-identical on
the same machine and thread count: tests/test_train.py); with --max-minutes the schedule follows wall time and a
resumed run only approximates it.

Multi-process training: launch with `torchrun --nproc_per_node N -m maskrt.cli train ...`; each rank
sees its own shard of every epoch (DistributedSampler) and DDP averages gradients. Rank 0 evaluates and
writes checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from maskrt.core.artifacts import check_same_classes
from maskrt.core.errors import MaskrtError
from maskrt.core.files import write_faults, write_json
from maskrt.core.outputs import check_apart, check_output_dir, clean_leftovers
from maskrt.training.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from maskrt.training.coco import CocoDataset, collate, load_split
from maskrt.training.evaluate import evaluate, format_metrics
from maskrt.training.models import build_model, default_model_config

log = logging.getLogger("maskrt")


@dataclass
class TrainOptions:
    """Options of `maskrt train` (see its --help)."""

    data: Path
    out: Path
    config: str = "slim"
    max_minutes: float | None = None
    iters: int | None = None
    batch_size: int = 2
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    min_lr_ratio: float = 0.02
    eval_minutes: float = 3.0
    eval_every: int | None = None
    save_every_s: float = 30.0
    resume: bool = False
    force: bool = False  # a non-empty `out` without `resume`: delete its content and start over
    seed: int = 0
    workers: int = 0
    train_split: str = "train"
    val_split: str = "val"
    progress: bool = True
    model_overrides: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    step: int
    metrics: dict
    model: torch.nn.Module
    seen_indices: list[int]
    resumed_from: int


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed() -> tuple[int, int]:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1); returns (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return _dist_info()


def lr_factor(step: int, progress: float, opts: TrainOptions) -> float:
    """Linear warm-up over `warmup_iters`, then cosine decay to `min_lr_ratio` as progress goes 0 -> 1."""
    warm = min(1.0, (step + 1) / max(1, opts.warmup_iters))
    warm = 0.001 + (1 - 0.001) * warm
    progress = min(max(progress, 0.0), 1.0)
    cosine = opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return warm * cosine


def _progress(step: int, elapsed: float, opts: TrainOptions) -> float:
    parts = []
    if opts.iters:
        parts.append(step / opts.iters)
    if opts.max_minutes:
        parts.append(elapsed / (opts.max_minutes * 60))
    return max(parts) if parts else 0.0


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))


def _batches(sampler: DistributedSampler, epoch: int, batch_size: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    idx = list(sampler)
    return [idx[i:i + batch_size] for i in range(0, len(idx) - batch_size + 1, batch_size)]


def _flip(images: tuple, targets: tuple, gen: torch.Generator) -> tuple[list, list]:
    """Random horizontal flip (p = 0.5) drawn from `gen`."""
    out_i, out_t = [], []
    for img, tgt in zip(images, targets, strict=True):
        if torch.rand((), generator=gen) < 0.5:
            w = img.shape[-1]
            img = img.flip(-1)
            boxes = tgt["boxes"].clone()
            boxes[:, [0, 2]] = w - tgt["boxes"][:, [2, 0]]
            tgt = {**tgt, "boxes": boxes, "masks": tgt["masks"].flip(-1)}
        out_i.append(img)
        out_t.append(tgt)
    return out_i, out_t


class Trainer:
    """Trains one model config on a COCO-format dataset; see the module docstring."""

    def __init__(self, opts: TrainOptions) -> None:
        self.opts = opts
        if opts.iters is not None and opts.iters < 1:
            raise MaskrtError(f"iters must be at least 1, got {opts.iters}")
        if opts.max_minutes is not None and opts.max_minutes <= 0:
            raise MaskrtError(f"max_minutes must be positive, got {opts.max_minutes}")
        if opts.batch_size < 1:
            raise MaskrtError(f"batch_size must be at least 1, got {opts.batch_size}")
        if opts.seed < 0 or opts.workers < 0:
            raise MaskrtError(f"seed and workers must be >= 0, got {opts.seed} and {opts.workers}")
        if opts.resume and opts.force:
            raise MaskrtError("resume and force exclude each other: resume continues the run, force starts over")
        check_apart([opts.out], [("dataset", opts.data)])
        if not opts.resume:
            check_output_dir(opts.out, force=opts.force, option="--resume to continue it, or --force")
        elif Path(opts.out).exists() and not Path(opts.out).is_dir():
            raise MaskrtError(f"{opts.out}: exists and is not a run folder")
        if opts.iters is None and opts.max_minutes is None:
            opts.iters = 2000
        self.rank, self.world = setup_distributed()
        self.out = Path(opts.out)
        self.train_set = load_split(opts.data, opts.train_split, train=True)
        self.val_set: CocoDataset | None = None
        if self.rank == 0:
            self.val_set = load_split(opts.data, opts.val_split, train=False)
            if opts.force and not opts.resume and self.out.is_dir():
                shutil.rmtree(self.out)
            self.out.mkdir(parents=True, exist_ok=True)
            for checkpoint in ("last.pt", "best.pt"):  # temporary files of a save that was killed mid-write
                clean_leftovers(self.out / checkpoint)
        if len(self.train_set) < opts.batch_size * self.world:
            raise MaskrtError(f"{self.train_set.ann_file}: {len(self.train_set)} usable images, fewer than "
                              f"batch size {opts.batch_size} x {self.world} process(es)")
        self.classes = self.train_set.classes
        self.step = 0
        self.elapsed = 0.0
        self.best_ap = -1.0
        self.metrics: dict = {}
        self.resumed_from = 0
        torch.manual_seed(opts.seed + self.rank)
        random.seed(opts.seed + self.rank)
        np.random.seed(opts.seed + self.rank)
        ckpt = self._resume_checkpoint() if opts.resume else None
        self.model_config = (ckpt["model_config"] if ckpt else
                             default_model_config(opts.config, len(self.classes), **opts.model_overrides))
        self.model = build_model(self.model_config)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if opts.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=opts.lr, momentum=0.9, weight_decay=opts.weight_decay)
        elif opts.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay, fused=True)
        else:
            raise MaskrtError(f"unknown optimizer '{opts.optimizer}' (adamw or sgd)")
        if ckpt:
            self._restore(ckpt)
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else None)

    # -- checkpoints ---------------------------------------------------------------------------------
    def _resume_checkpoint(self) -> dict | None:
        path = self.out / "last.pt"
        if not path.is_file():
            log.warning("%s: nothing to resume, starting from scratch", path)
            return None
        ckpt = load_checkpoint(path, expect_config=self.opts.config)
        state = ckpt["train_state"]
        if state is None:
            raise MaskrtError(f"{path}: has no training state to resume from")
        missing = [k for k in ("step", "elapsed_s", "optimizer", "rng") if k not in state]
        if missing:
            raise MaskrtError(f"{path}: train_state lacks {', '.join(missing)}; cannot resume from it")
        check_same_classes(ckpt["classes"], path, self.classes, self.train_set.ann_file)
        return ckpt

    def _restore(self, ckpt: dict) -> None:
        state = ckpt["train_state"]
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed_s"])
        self.best_ap = float(state.get("best_ap", -1.0))
        self.metrics = ckpt.get("metrics") or {}
        if self.rank == 0:
            _set_rng_state(state["rng"])
        else:
            torch.manual_seed(self.opts.seed + self.rank + self.step)
        self.resumed_from = self.step
        log.info("resumed from %s at step %d", self.out / "last.pt", self.step)

    def _checkpoint(self) -> dict:
        train_state = {
            "step": self.step, "elapsed_s": self.elapsed, "best_ap": self.best_ap,
            "optimizer": self.optimizer.state_dict(), "rng": _rng_state(),
            "schedule": {"lr": self.opts.lr, "warmup_iters": self.opts.warmup_iters,
                         "min_lr_ratio": self.opts.min_lr_ratio, "iters": self.opts.iters,
                         "max_minutes": self.opts.max_minutes},
            "batch_size": self.opts.batch_size, "world_size": self.world, "seed": self.opts.seed,
        }
        return make_checkpoint(model_config=self.model_config, state_dict=self.model.state_dict(),
                               classes=self.classes, train_state=train_state, metrics=self.metrics)

    def save(self) -> None:
        if self.rank == 0:
            save_checkpoint(self.out / "last.pt", self._checkpoint())

    def run_eval(self) -> dict:
        """Evaluate on val (rank 0), record history and best.pt; other ranks wait."""
        if self.rank == 0:
            assert self.val_set is not None
            self.metrics = evaluate(self.model, self.val_set, progress=self.opts.progress)
            ap = self.metrics["segm"]["AP"]
            with write_faults(self.out / "history.jsonl"), open(self.out / "history.jsonl", "a") as f:
                f.write(json.dumps({"step": self.step, "elapsed_s": round(self.elapsed, 1), **self.metrics}) + "\n")
            tqdm.write(f"step {self.step}: " + format_metrics(self.metrics).replace("\n", " | "))
            ckpt = self._checkpoint()
            if ap > self.best_ap:
                self.best_ap = ap
                ckpt["train_state"]["best_ap"] = ap
                save_checkpoint(self.out / "best.pt", ckpt)
            save_checkpoint(self.out / "last.pt", ckpt)
        if self.world > 1:
            dist.barrier()
        return self.metrics

    # -- the loop ------------------------------------------------------------------------------------
    def _should_stop(self) -> bool:
        stop = (self.opts.iters is not None and self.step >= self.opts.iters) or (
            self.opts.max_minutes is not None and self.elapsed >= self.opts.max_minutes * 60)
        if self.world > 1:  # all ranks must agree, even when their clocks differ
            flag = torch.tensor([1.0 if stop else 0.0])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def train(self) -> TrainResult:
        """Train until --iters or --max-minutes; evaluate and write metrics.json at the end."""
        opts = self.opts
        net = self.ddp or self.model
        net.train()
        sampler = DistributedSampler(self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=opts.seed, drop_last=True)
        per_epoch = len(sampler) // opts.batch_size
        seen: list[int] = []
        last_save = last_eval = time.monotonic()
        eval_step = self.step
        bar = tqdm(total=opts.iters, initial=self.step, desc="train", unit="it",
                   disable=not opts.progress or self.rank != 0, dynamic_ncols=True)
        if self.step == 0:
            self.save()  # a loadable last.pt exists from the very start
        tick = time.monotonic()
        while not self._should_stop():
            epoch, skip = divmod(self.step, per_epoch)
            batches = _batches(sampler, epoch, opts.batch_size)[skip:]
            loader = DataLoader(self.train_set, batch_sampler=batches, collate_fn=collate,
                                num_workers=opts.workers)
            for batch_index, (images, targets) in enumerate(loader):
                seen.extend(batches[batch_index])
                step_seed = opts.seed * 1_000_003 + self.step * 7919 + self.rank
                images, targets = _flip(images, targets, torch.Generator().manual_seed(step_seed))
                # Mask R-CNN's proposal and RoI samplers draw from the global RNG: seeded per step, so a resumed run
                # draws what an uninterrupted one draws whatever ran in between (data loaders, evaluation)
                torch.manual_seed(step_seed + 1)
                factor = lr_factor(self.step, _progress(self.step, self.elapsed, opts), opts)
                for group in self.optimizer.param_groups:
                    group["lr"] = opts.lr * factor
                losses = net(images, targets)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise MaskrtError(f"training diverged at step {self.step} (loss {loss.item()}); "
                                      "lower --lr")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
                self.optimizer.step()
                self.step += 1
                now = time.monotonic()
                self.elapsed += now - tick  # wall time, data loading and evaluation included
                tick = now
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{opts.lr * factor:.2e}")
                due_eval = (opts.eval_every and self.step - eval_step >= opts.eval_every) or (
                    not opts.eval_every and opts.eval_minutes > 0 and now - last_eval >= opts.eval_minutes * 60)
                if due_eval:
                    self._sync_buffers()
                    self.run_eval()
                    last_eval = last_save = time.monotonic()
                    eval_step = self.step
                elif now - last_save >= opts.save_every_s:
                    self.save()
                    last_save = time.monotonic()
                if self._should_stop():
                    break
        bar.close()
        self._sync_buffers()
        if eval_step != self.step or not self.metrics:
            self.run_eval()
        else:
            self.save()
        if self.rank == 0:
            write_json(self.out / "metrics.json", self.metrics)
        return TrainResult(step=self.step, metrics=self.metrics, model=self.model, seen_indices=seen,
                           resumed_from=self.resumed_from)

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's BatchNorm statistics (parameters are already identical under DDP)."""
        if self.world > 1:
            for buf in self.model.buffers():
                dist.broadcast(buf, src=0)
