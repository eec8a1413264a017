"""Training: a short run writes its artifacts; SIGKILL at any moment leaves a loadable last.pt; --resume
continues from the saved step to the requested total."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import THREADS

from maskrt.training.checkpoint import load_checkpoint
from maskrt.training.trainer import Trainer, TrainOptions, lr_factor

CLI = [sys.executable, "-m", "maskrt.cli"]


def test_short_run_writes_checkpoints_and_metrics(shapes_dir: Path, tmp_path: Path) -> None:
    opts = TrainOptions(data=shapes_dir, out=tmp_path / "run", iters=4, batch_size=2, eval_every=2,
                        progress=False)
    result = Trainer(opts).train()
    assert result.step == 4
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "segm"}
    assert all(set(metrics[t]) == {"AP", "AP50", "AP75"} for t in metrics)
    last = load_checkpoint(tmp_path / "run" / "last.pt", expect_config="slim")
    best = load_checkpoint(tmp_path / "run" / "best.pt", expect_config="slim")
    assert last["train_state"]["step"] == 4 and best["train_state"]["step"] in (2, 4)
    assert last["classes"] == [{"id": 1, "name": "circle"}, {"id": 2, "name": "rectangle"},
                               {"id": 3, "name": "triangle"}]
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4]
    # the weights changed from their initialisation
    assert not torch.equal(last["state_dict"]["roi_heads.box_predictor.cls_score.weight"],
                           Trainer(TrainOptions(data=shapes_dir, out=tmp_path / "x", iters=1, progress=False))
                           .model.state_dict()["roi_heads.box_predictor.cls_score.weight"])


def test_schedule_warms_up_then_decays() -> None:
    opts = TrainOptions(data=Path("."), out=Path("."), iters=100, warmup_iters=10)
    values = [lr_factor(s, s / 100, opts) for s in range(100)]
    assert values[0] < 0.2 and max(values) == pytest.approx(values[9], rel=0.05)
    assert values[-1] < 0.05 and all(a >= b for a, b in zip(values[10:], values[11:], strict=False))


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(shapes_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped at step 7 (mid-epoch; 12 steps per epoch) and resumed to 16 sees the same images in the same
    order and ends with the same weights as one run of 16 steps: what --resume restores (weights, optimizer, step,
    elapsed time, RNG states, the data order's position) is all the state there is. Tolerance: bit-identical on
    the same machine and thread count (max |difference| 0), checked with 1e-6 so the failure message reads as a
    number (README, Training: --resume)."""
    def options(out: Path, resume: bool = False) -> TrainOptions:
        return TrainOptions(data=shapes_dir, out=out, iters=16, batch_size=2, warmup_iters=4, eval_minutes=0,
                            save_every_s=1e9, resume=resume, progress=False)

    whole = Trainer(options(tmp_path / "whole")).train()
    real_should_stop = Trainer._should_stop
    monkeypatch.setattr(Trainer, "_should_stop", lambda self: self.step >= 7 or real_should_stop(self))
    first = Trainer(options(tmp_path / "split")).train()  # the interruption: last.pt is saved at step 7
    monkeypatch.setattr(Trainer, "_should_stop", real_should_stop)
    rest = Trainer(options(tmp_path / "split", resume=True)).train()
    assert (first.step, rest.resumed_from, rest.step) == (7, 7, 16)
    assert first.seen_indices + rest.seen_indices == whole.seen_indices and len(whole.seen_indices) == 32
    a = load_checkpoint(tmp_path / "whole" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "split" / "last.pt")["state_dict"]
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst <= 1e-6, f"resumed weights differ by up to {worst}"
    key = "roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(a[key], Trainer(options(tmp_path / "x")).model.state_dict()[key])  # it did train


def _step_of(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["train_state"]["step"])


def _train_cmd(data: Path, out: Path, iters: int, *extra: str) -> list[str]:
    return [*CLI, "train", "--data", str(data), "--out", str(out), "--iters", str(iters), "--batch-size", "2",
            "--eval-every", "1000", "--save-every", "0", "-q", *extra]


@pytest.mark.slow
def test_sigkill_then_resume(shapes_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    rng = random.Random(0)
    saved_steps = []
    for attempt in range(2):
        cmd = _train_cmd(shapes_dir, out, 40, *(["--resume"] if attempt else []))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        start_step = _step_of(out / "last.pt") if (out / "last.pt").exists() else 0
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "last.pt").exists() and _step_of(out / "last.pt") >= start_step + 2:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))  # land anywhere: mid-step or mid-save
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = load_checkpoint(out / "last.pt")  # loadable whatever the moment
        saved_steps.append(ckpt["train_state"]["step"])
    assert saved_steps[1] > saved_steps[0] >= 2
    done = subprocess.run(_train_cmd(shapes_dir, out, 10 + saved_steps[1], "--resume"), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resumed from {out / 'last.pt'} at step {saved_steps[1]}" in done.stderr
    assert not list(out.glob(".*.tmp")), "temp files of killed saves are cleaned up on resume"
    final = load_checkpoint(out / "last.pt")
    assert final["train_state"]["step"] == 10 + saved_steps[1]
    assert (out / "metrics.json").is_file()


@pytest.mark.slow
def test_resume_refuses_another_config(shapes_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(TrainOptions(data=shapes_dir, out=out, iters=1, batch_size=2, progress=False)).train()
    bad = subprocess.run([*CLI, "train", "--data", str(shapes_dir), "--out", str(out), "--config", "r50-fpn",
                          "--resume", "--iters", "2"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "is of config 'slim', not 'r50-fpn'" in bad.stderr and "Traceback" not in bad.stderr
