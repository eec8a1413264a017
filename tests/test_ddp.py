"""Training past one process: torchrun, 2 CPU processes (gloo), DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_two_process_torchrun(shapes_dir: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(worker), str(shapes_dir), str(tmp_path / "run"), str(dump)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["step"] == r1["step"] == 3
    assert r0["backend"] == r1["backend"] == "gloo" and r0["device"] == "cpu"  # a CPU model: never nccl
    # the sampler splits the data: disjoint shards, 3 steps x 2 images per rank
    assert len(r0["seen"]) == len(r1["seen"]) == 6
    assert not set(r0["seen"]) & set(r1["seen"])
    # both ranks end with identical weights (and BatchNorm statistics)
    assert r0["state_dict"].keys() == r1["state_dict"].keys()
    for key, value in r0["state_dict"].items():
        assert torch.equal(value, r1["state_dict"][key]), key
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "metrics.json").is_file()
