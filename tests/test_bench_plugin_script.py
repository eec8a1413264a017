"""scripts/bench_plugin.py's torchvision reference on the CPU: its fp16 case crashed on a GPU (torchvision's
roi_align refuses fp32 RoIs with fp16 features; the same error on the CPU), and its error measure must compare our
fp32-coordinate RoIAlign with a reference of the same semantics."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from maskrt.plugins import roi_align

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_plugin.py"


@pytest.fixture(scope="module")
def bench():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("bench_plugin", SCRIPT)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_reference_runs_and_matches_the_host_build(bench, dtype: torch.dtype) -> None:  # noqa: ANN001
    feats, rois = bench.make_inputs(40, dtype, device="cpu", channels=4)
    timed = bench.torchvision_reference(feats, rois, 7)()  # the fp16 case raised here before the fix
    assert timed.dtype == dtype and timed.shape == (40, 4, 7, 7)
    exact = bench.torchvision_reference([f.float() for f in feats], rois, 7)()
    ours = roi_align.cpu(feats, rois, output_size=7, spatial_scales=bench.P2_P5, sampling_ratio=2)
    tol = 1e-2 if dtype == torch.float16 else 1e-5
    assert (ours.float().reshape(40, 4, 7, 7) - exact).abs().max().item() <= tol
