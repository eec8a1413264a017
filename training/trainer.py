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

Fine-tuning (`init`): the run starts from pretrained weights (training/init_weights.py), with FrozenBatchNorm2d in the
backbone and its first stages frozen (`trainable_backbone_layers`, torchvision's meaning; 3 by default), as torchvision,
detectron2 and mmdetection fine-tune.

Device and precision: the model, the batches and the targets live on `device` (core/devices.py); checkpoints hold CPU
tensors only. `amp` runs the forward pass under autocast (bf16 on a CPU with native bf16 or a GPU that has it, else
fp16 with a gradient scaler); the weights and the optimizer stay fp32, so export and parity are unchanged.

Multi-scale training (`min_sizes`): each step draws one shorter-side size for its batch (from the step's seed, so a
resumed run draws the same); evaluation, export and inference use the config's own min_size.

Multi-process training: launch with `torchrun --nproc_per_node N -m maskrt.cli train ...`; each rank
sees its own shard of every epoch (DistributedSampler) and DDP averages gradients (nccl with one GPU per process,
LOCAL_RANK's, when the device is cuda; gloo on the CPU). Rank 0 evaluates and writes checkpoints.
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
from maskrt.core.devices import amp_dtype, resolve_device
from maskrt.core.errors import MaskrtError
from maskrt.core.files import write_faults, write_json
from maskrt.core.outputs import check_apart, check_output_dir, clean_leftovers
from maskrt.training.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from maskrt.training.coco import CocoDataset, collate, load_split
from maskrt.training.evaluate import evaluate, format_metrics
from maskrt.training.init_weights import InitWeights, apply_init, plan_init, read_init
from maskrt.training.models import backbone_stages, build_model, default_model_config, freeze_backbone

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
    init: Path | None = None  # pretrained weights to start from (training/init_weights.py)
    trainable_backbone_layers: int | None = None  # None: 3 with `init`, all otherwise
    device: str = "cpu"  # cpu, cuda or auto
    amp: bool = False
    min_sizes: list[int] | None = None  # multi-scale training: one of these shorter sides per step


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


def setup_distributed(device: torch.device) -> tuple[int, int]:
    """Initialise torch.distributed when launched by torchrun (which sets WORLD_SIZE and MASTER_ADDR; one process
    too): nccl when the model is on a GPU (each process on its LOCAL_RANK one), gloo when it is on the CPU; returns
    (rank, world)."""
    if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _dist_info()


def _to_cpu(obj: object) -> object:
    """`obj` (an optimizer or scaler state) with every tensor on the CPU: a checkpoint loads on any machine."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _to_device(images: list, targets: list, device: torch.device) -> tuple[list, list]:
    if device.type == "cpu":
        return images, targets
    return ([i.to(device, non_blocking=True) for i in images],
            [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
             for t in targets])


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
        if opts.resume and opts.init:
            raise MaskrtError("--init starts a new run from pretrained weights; --resume continues OUT/last.pt: "
                              "pass one of them")
        if opts.trainable_backbone_layers is not None and not opts.init and not opts.resume:
            raise MaskrtError("--trainable-backbone-layers freezes pretrained backbone stages: it needs --init (a "
                              "run from scratch trains every layer)")
        check_apart([opts.out], [("dataset", opts.data), ("init weights", opts.init)])
        if not opts.resume:
            check_output_dir(opts.out, force=opts.force, option="--resume to continue it, or --force")
        elif Path(opts.out).exists() and not Path(opts.out).is_dir():
            raise MaskrtError(f"{opts.out}: exists and is not a run folder")
        if opts.iters is None and opts.max_minutes is None:
            opts.iters = 2000
        self.device = resolve_device(opts.device)
        self.amp_dtype = amp_dtype(self.device) if opts.amp else None
        self.rank, self.world = setup_distributed(self.device)
        self.out = Path(opts.out)
        self.train_set = load_split(opts.data, opts.train_split, train=True)
        self.val_set: CocoDataset | None = None
        if self.rank == 0:
            self.val_set = load_split(opts.data, opts.val_split, train=False)
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
        init_file = read_init(opts.init, opts.config) if opts.init else None
        if ckpt:
            self.model_config = ckpt["model_config"]
        else:
            base = dict(init_file.model_config) if init_file and init_file.model_config else {}
            base = {k: v for k, v in base.items() if k not in ("name", "num_classes", "norm")}
            pretrained = {"norm": "frozen_bn"} if init_file else {}
            self.model_config = default_model_config(opts.config, len(self.classes),
                                                     **{**base, **pretrained, **opts.model_overrides})
        saved = (ckpt["train_state"] if ckpt else None) or {}
        self.min_sizes = self._train_sizes(opts.min_sizes or saved.get("min_sizes"))
        self.model = build_model(self.model_config)
        self.init: InitWeights | None = None
        self.init_record = ckpt.get("init") if ckpt else None
        if init_file:
            self.init = plan_init(init_file, self.model, self.classes)
            apply_init(self.model, self.init)
            self.init_record = self.init.record()
        self.trainable_layers = self._trainable_layers(saved)
        self.frozen = freeze_backbone(self.model, self.model_config, self.trainable_layers)
        self.model.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if opts.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=opts.lr, momentum=0.9, weight_decay=opts.weight_decay)
        elif opts.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay, fused=True)
        else:
            raise MaskrtError(f"unknown optimizer '{opts.optimizer}' (adamw or sgd)")
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        if ckpt:
            self._restore(ckpt)
        if self.rank == 0:  # every check passed: only now is the run folder touched
            if opts.force and not opts.resume and self.out.is_dir():
                shutil.rmtree(self.out)
            self.out.mkdir(parents=True, exist_ok=True)
            for checkpoint in ("last.pt", "best.pt"):  # temporary files of a save that was killed mid-write
                clean_leftovers(self.out / checkpoint)
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
                    if dist.is_available() and dist.is_initialized() else None)

    def describe(self) -> str:
        """What this run starts from and how it trains: the --init summary line (when fine-tuning), then device,
        precision, frozen stages and sizes."""
        stages = backbone_stages(self.model_config)
        precision = f"{str(self.amp_dtype).removeprefix('torch.')} autocast" if self.amp_dtype else "fp32"
        if self.scaler is not None:
            precision += " with a gradient scaler"
        sizes = ",".join(map(str, self.min_sizes)) if self.min_sizes else str(self.model_config["min_size"])
        processes = f"{self.world} {dist.get_backend()} process(es)" if self.ddp else "1 process"
        line = (f"training {self.model_config['name']} on {self.device} in {precision}, {processes}; "
                f"backbone stages trained {self.trainable_layers} of {stages} ({len(self.frozen)} tensors frozen); "
                f"shorter side {sizes} px (evaluated at {self.model_config['min_size']})")
        return f"{self.init.summary()}\n{line}" if self.init else line

    def _train_sizes(self, sizes: list[int] | None) -> list[int] | None:
        """The multi-scale shorter sides, checked against the config's max_size (a larger one would be capped)."""
        if not sizes or list(sizes) == [self.model_config["min_size"]]:
            return None
        top = self.model_config["max_size"]
        bad = [s for s in sizes if not 32 <= s <= top]
        if bad:
            raise MaskrtError(f"--min-size {','.join(map(str, sizes))}: each size must be in [32, {top}] (config "
                              f"'{self.model_config['name']}' caps the longer side at max_size {top}); got "
                              f"{', '.join(map(str, bad))}")
        return sorted(set(int(s) for s in sizes))

    def _trainable_layers(self, saved: dict) -> int:
        """--trainable-backbone-layers: the saved run's on resume, 3 when starting from pretrained weights, else all."""
        given = self.opts.trainable_backbone_layers
        if "trainable_backbone_layers" in saved:
            if given is not None and given != saved["trainable_backbone_layers"]:
                raise MaskrtError(f"{self.out / 'last.pt'}: the run trains {saved['trainable_backbone_layers']} "
                                  f"backbone stages; --resume cannot change it to {given}")
            return int(saved["trainable_backbone_layers"])
        if given is not None:
            return given
        return 3 if self.init else backbone_stages(self.model_config)

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
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
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
            "optimizer": _to_cpu(self.optimizer.state_dict()), "rng": _rng_state(),
            "schedule": {"lr": self.opts.lr, "warmup_iters": self.opts.warmup_iters,
                         "min_lr_ratio": self.opts.min_lr_ratio, "iters": self.opts.iters,
                         "max_minutes": self.opts.max_minutes},
            "batch_size": self.opts.batch_size, "world_size": self.world, "seed": self.opts.seed,
            "trainable_backbone_layers": self.trainable_layers, "min_sizes": self.min_sizes,
            "amp": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else None,
            "scaler": _to_cpu(self.scaler.state_dict()) if self.scaler else None,
        }
        return make_checkpoint(model_config=self.model_config, state_dict=self.model.state_dict(),
                               classes=self.classes, train_state=train_state, metrics=self.metrics,
                               init=self.init_record)

    def save(self) -> None:
        if self.rank == 0:
            save_checkpoint(self.out / "last.pt", self._checkpoint())

    def run_eval(self) -> dict:
        """Evaluate on val (rank 0), record history and best.pt; other ranks wait."""
        if self.rank == 0:
            assert self.val_set is not None
            self.model.transform.min_size = (self.model_config["min_size"],)  # the model's own size
            self.metrics = evaluate(self.model, self.val_set, progress=self.opts.progress, device=self.device)
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
            flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
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
                if self.min_sizes:  # one size per step, drawn from the step's seed (the global RNG is untouched)
                    draw = torch.Generator().manual_seed(step_seed + 2)
                    self.model.transform.min_size = (self.min_sizes[int(torch.randint(len(self.min_sizes), (),
                                                                                      generator=draw))],)
                # Mask R-CNN's proposal and RoI samplers draw from the global RNG: seeded per step, so a resumed run
                # draws what an uninterrupted one draws whatever ran in between (data loaders, evaluation)
                torch.manual_seed(step_seed + 1)
                factor = lr_factor(self.step, _progress(self.step, self.elapsed, opts), opts)
                for group in self.optimizer.param_groups:
                    group["lr"] = opts.lr * factor
                loss = self.train_step(images, targets)
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

    def train_step(self, images: list[torch.Tensor], targets: list[dict]) -> torch.Tensor:
        """One optimizer step on a batch (moved to the device; forward under autocast with --amp); returns the loss.
        MaskrtError when the loss is not finite (with fp16's gradient scaler such a step is skipped instead)."""
        images, targets = _to_device(images, targets, self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            losses = (self.ddp or self.model)(images, targets)
        loss = sum(loss.float() for loss in losses.values())
        if not torch.isfinite(loss) and self.scaler is None:
            raise MaskrtError(f"training diverged at step {self.step} (loss {loss.item()}); lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:  # fp16: scaled gradients; a step with inf/NaN ones is skipped
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
            self.optimizer.step()
        return loss.detach()

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's BatchNorm statistics (parameters are already identical under DDP)."""
        if self.world > 1:
            for buf in self.model.buffers():
                dist.broadcast(buf, src=0)
