"""The only module that touches private internals of other libraries: two of ONNX Runtime's ecosystem.

1. onnxruntime-extensions' Python-op invocation hook (`_ocos.PyCustomOpDef.install_hooker`, `_ocos.Opdef._odlist`).
   Its public hook returns a Python op's outputs as `.flatten().tolist()`: 1 s for the 50 MB of pooled box features
   of r50-fpn at 800x800. Its C++ side also takes a numpy array, so `install_array_hook` returns the arrays.
2. ONNX Runtime's `HistogramCollector.collect` (entropy and percentile calibration): it stacks each tensor's per-image
   values with np.asarray, which fails for a tensor whose shape depends on the image (the mask head's activations);
   `flat_histograms` concatenates the flattened values first (the collector flattens them anyway).

Both are pinned to the versions they were written against (pyproject.toml: onnxruntime ~= 1.32.0, i.e. patch releases
only, and onnxruntime-extensions == 0.15.2); `check_contract` verifies the internals are what this module expects
and refuses with a MaskrtError otherwise; tests/test_ort_internals.py fails on a new version. How to remove each
(docs/architecture.md, "Third-party internals"): (1) run the plugin ops' host build as an ONNX Runtime custom-op
library (C++, the public custom-op API) instead of Python ops; (2) ONNX Runtime's calibrators accepting ragged
tensors upstream, or a calibration reader that pads the mask head's rows.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from importlib.metadata import version

import numpy as np

from maskrt.core.errors import MaskrtError

#: What each internal was written against: distribution -> the version prefix supported.
SUPPORTED = {"onnxruntime": "1.32.", "onnxruntime-extensions": "0.15.2"}


def _installed(distribution: str) -> str:
    for name in (distribution, f"{distribution}-gpu"):  # onnxruntime-gpu installs the same module
        with contextlib.suppress(Exception):
            return version(name)
    return "not installed"


def check_contract(distribution: str) -> None:
    """MaskrtError unless `distribution` is the version this module supports and its internals look as expected."""
    found = _installed(distribution)
    if not found.startswith(SUPPORTED[distribution]):
        raise MaskrtError(f"{distribution} {found}: maskrt relies on an internal of {distribution} "
                          f"{SUPPORTED[distribution]}* (runtime/backends/ort_internals.py); install that version")
    if distribution == "onnxruntime-extensions":
        from onnxruntime_extensions import _ocos

        ok = callable(getattr(getattr(_ocos, "PyCustomOpDef", None), "install_hooker", None)) and \
            isinstance(getattr(getattr(_ocos, "Opdef", None), "_odlist", None), dict)
    else:
        from onnxruntime.quantization.calibrate import HistogramCollector

        ok = list(inspect.signature(HistogramCollector.collect).parameters) == ["self", "name_to_arr"]
    if not ok:
        raise MaskrtError(f"{distribution} {found}: its internals differ from what "
                          "runtime/backends/ort_internals.py expects")


def array_hook(k_id: int, feed: list, attributes: dict) -> tuple:
    """onnxruntime-extensions' Python-op invocation hook returning each output as (shape, flat array) instead of
    (shape, list): the same (k_id, shape, flat values, ...) contract its C++ side reads."""
    from onnxruntime_extensions import _ocos

    op = _ocos.Opdef._odlist.get(k_id)
    if op is None:
        raise RuntimeError(f"no Python op with id {k_id} (was it registered with @onnx_op?)")
    result = op.body(*feed, **op.cast_attributes(attributes))
    fetched: list = []
    for array in result if isinstance(result, tuple) else (result,):
        array = np.ascontiguousarray(array)
        fetched += [array.shape, array.reshape(-1)]
    return (k_id, *fetched)


def install_array_hook() -> None:
    """Make onnxruntime-extensions return Python ops' outputs as arrays (`array_hook`: one copy each, no Python
    object per element)."""
    check_contract("onnxruntime-extensions")
    from onnxruntime_extensions import _ocos

    _ocos.PyCustomOpDef.install_hooker(array_hook)


@contextlib.contextmanager
def flat_histograms() -> Iterator[None]:
    """ONNX Runtime's histogram calibrators, for tensors whose shape depends on the image, while in the block."""
    check_contract("onnxruntime")
    from onnxruntime.quantization.calibrate import HistogramCollector

    original: Callable = HistogramCollector.collect

    def collect(self, name_to_arr: dict) -> object:  # noqa: ANN001
        flat = {name: np.concatenate([np.asarray(a).ravel() for a in values]) if isinstance(values, list) and values
                else values for name, values in name_to_arr.items()}  # fmt: skip
        return original(self, flat)

    HistogramCollector.collect = collect
    try:
        yield
    finally:
        HistogramCollector.collect = original
