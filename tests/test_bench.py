"""`maskrt bench`: per-stage latency percentiles and throughput for the CPU backends, written as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import random_checkpoint
from PIL import Image

from maskrt.export.onnx_export import export_checkpoint

CLI = [sys.executable, "-m", "maskrt.cli"]


@pytest.fixture(scope="module")
def slim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bench")
    random_checkpoint(root / "slim.pt")
    export_checkpoint(root / "slim.pt", root / "export", dynamic_batch=True)
    return root / "slim.pt", root / "export"


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_bench_writes_percentiles_per_stage(slim: tuple[Path, Path], tmp_path: Path, backend: str) -> None:
    ckpt, export = slim
    model = export if backend == "onnxruntime" else ckpt
    for size in ((90, 120), (150, 100)):
        Image.new("RGB", size, (120, 30, 200)).save(tmp_path / f"img{size[0]}.png")
    out = tmp_path / "bench.json"
    proc = subprocess.run([*CLI, "bench", "--model", str(model), "--backend", backend, "--images", str(tmp_path),
                           "--batch", "2", "--warmup", "1", "--iters", "4", "--threads", "1", "--json", str(out), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["backend"] == backend and result["batch"] == 2 and result["iters"] == 4
    assert result["image_sizes"] == [[100, 150], [120, 90]] and result["padded_size"] == [128, 128]
    assert set(result["stages"]) == {"preprocess", "network", "paste", "end_to_end"}
    for p in result["stages"].values():
        assert 0 < p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"]
    e2e = result["stages"]["end_to_end"]["p50_ms"]
    assert e2e >= result["stages"]["network"]["p50_ms"] and result["images_per_second"] > 0
    assert result["machine"]["onnxruntime_threads"] == 1 and "torch" in result["versions"]
    assert "images/s" in proc.stdout and "end_to_end" in proc.stdout
    again = subprocess.run([*CLI, "bench", "--model", str(model), "--backend", backend, "--json", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists (pass --force" in again.stderr
