"""What every op spec shares: the plugin identity and the float32 rounding of float attributes.

Each op has one spec (``plugins/roi_align/spec.py``: RoIAlignSpec, ``plugins/nms/spec.py``: NMSSpec) that the
exporter, the ONNX Runtime rewrite of model.trt.onnx, the plugin tests and the docs use. A spec's ``IDENTITY`` is
the only place where the op's plugin name, version and namespace are spelled in Python; the C++ side spells them once
per op in its plugin header, and the TensorRT tests check that both agree.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

NAMESPACE = "maskrt"
#: ONNX domain of every maskrt op (TensorRT's ONNX parser finds the creator by op_type + plugin_namespace).
ONNX_DOMAIN = NAMESPACE


@dataclass(frozen=True)
class PluginIdentity:
    """How TensorRT finds an op's creator: plugin name (= ONNX op_type), version and namespace."""

    name: str
    version: str = "1"
    namespace: str = NAMESPACE

    def onnx_attributes(self) -> dict[str, str]:
        """The node attributes TensorRT's ONNX parser reads to find the creator."""
        return {"plugin_version": self.version, "plugin_namespace": self.namespace}

    def check_attributes(self, attributes: Mapping[str, Any], fields: Iterable[str]) -> None:
        """ValueError for an unknown attribute or another plugin version (missing fields are the spec's concern)."""
        unknown = set(attributes) - {"plugin_version", "plugin_namespace", *fields}
        if unknown:
            raise ValueError(f"unknown {self.name} attribute(s): {sorted(unknown)}")
        version = attributes.get("plugin_version", self.version)
        if text(version) != self.version:
            raise ValueError(f"unsupported {self.name} version {version!r} (this build has {self.version!r})")


def text(value: Any) -> str:
    """An ONNX string attribute (bytes from onnx.helper, str from JSON) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def to_float32(value: float) -> float:
    """`value` rounded to the nearest float32 (the precision the ops use for every float attribute)."""
    try:
        return struct.unpack("f", struct.pack("f", float(value)))[0]
    except OverflowError:
        return math.copysign(math.inf, value)
