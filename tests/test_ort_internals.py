"""The contract of runtime/backends/ort_internals.py, the one module touching other libraries' internals: it fails
loudly on another version of onnxruntime / onnxruntime-extensions, or on internals that moved."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from maskrt.core.errors import MaskrtError
from maskrt.runtime.backends import ort_internals

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("distribution", list(ort_internals.SUPPORTED))
def test_installed_versions_are_the_supported_ones(distribution: str) -> None:
    ort_internals.check_contract(distribution)  # raises on another version or changed internals
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in deps if d.split("=")[0].split("~")[0] == distribution)
    assert pin.replace("~=", "==").split("==")[1].startswith(ort_internals.SUPPORTED[distribution].rstrip("."))


def test_another_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort_internals, "_installed", lambda name: "9.9.9")
    for distribution in ort_internals.SUPPORTED:
        with pytest.raises(MaskrtError, match=f"{distribution} 9.9.9: maskrt relies on an internal"):
            ort_internals.check_contract(distribution)


def test_moved_internals_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxruntime.quantization.calibrate import HistogramCollector
    from onnxruntime_extensions import _ocos

    monkeypatch.delattr(_ocos.PyCustomOpDef, "install_hooker")
    with pytest.raises(MaskrtError, match="its internals differ"):
        ort_internals.install_array_hook()
    monkeypatch.setattr(HistogramCollector, "collect", lambda self, arrays, extra: None)
    with pytest.raises(MaskrtError, match="its internals differ"):
        with ort_internals.flat_histograms():
            pass


def test_flat_histograms_takes_ragged_tensors_and_restores_the_collector() -> None:
    from onnxruntime.quantization.calibrate import HistogramCollector

    original = HistogramCollector.collect
    ragged = {"mask_rows": [np.ones((3, 4), np.float32), np.full((5, 4), 2.0, np.float32)]}
    with pytest.raises(ValueError):  # what ONNX Runtime's collector does with per-image shapes
        HistogramCollector("entropy", True, 16, 16, 0.99, 99.9).collect(dict(ragged))
    with ort_internals.flat_histograms():
        collector = HistogramCollector("entropy", True, 16, 16, 0.99, 99.9)
        collector.collect(dict(ragged))
        hist = collector.histogram_dict["mask_rows"]
        assert int(np.sum(hist[0])) == 32  # every value of both images counted
    assert HistogramCollector.collect is original
