"""BatchedNMS attributes: the project's single source of truth for their names, defaults and validation.

The exporter writes them into the BatchedNMS ONNX node, the plugin creator reads them back as fields, and ``nms.cpu``
takes them as keyword arguments; all three use the checks defined here. Thresholds are float32 in the op (ONNX float
attributes), so the spec rounds them once. Semantics: docs/plugins.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from maskrt.plugins.spec import ONNX_DOMAIN, PluginIdentity, to_float32

IDENTITY = PluginIdentity("BatchedNMS")

#: Most candidates (score > score_threshold) per image that enter the NMS; kMaxCandidates in nms_core.h. Above it,
#: only the MAX_CANDIDATES best (descending score, ties by lower index) are considered.
MAX_CANDIDATES = 8192

#: torchvision Mask R-CNN's test-time settings: RPN (probabilities >= 0, so -0.5 keeps every box) and box head.
RPN_IOU_THRESHOLD = 0.7
BOX_IOU_THRESHOLD = 0.5
BOX_SCORE_THRESHOLD = 0.05
KEEP_ALL_SCORE_THRESHOLD = -0.5


@dataclass(frozen=True)
class NMSSpec:
    """The attributes of one BatchedNMS op (validated and rounded to float32 on construction)."""

    IDENTITY: ClassVar[PluginIdentity] = IDENTITY
    FIELDS: ClassVar[tuple[str, ...]] = ("iou_threshold", "score_threshold", "max_output_boxes")
    iou_threshold: float
    score_threshold: float
    max_output_boxes: int

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise in place once
        for name in ("iou_threshold", "score_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            set_(self, name, to_float32(value))
        if not 0.0 <= self.iou_threshold <= 1.0:  # False for NaN
            raise ValueError(f"iou_threshold must be in [0, 1], got {self.iou_threshold!r}")
        if not math.isfinite(self.score_threshold):
            raise ValueError(f"score_threshold must be finite, got {self.score_threshold!r}")
        boxes = self.max_output_boxes
        if isinstance(boxes, bool) or not isinstance(boxes, int) or not 0 <= boxes <= 2**31 - 1:
            raise ValueError(f"max_output_boxes must be an int in [0, 2^31 - 1], got {boxes!r}")

    def onnx_attributes(self) -> dict[str, Any]:
        """The ONNX node attributes (= plugin fields), including the plugin identity TensorRT's parser reads."""
        return {
            **IDENTITY.onnx_attributes(),
            "iou_threshold": self.iou_threshold,
            "score_threshold": self.score_threshold,
            "max_output_boxes": self.max_output_boxes,
        }

    def keywords(self) -> dict[str, Any]:
        """The keyword arguments of ``nms.cpu`` / ``nms.cuda`` for this spec."""
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_onnx_attributes(cls, attributes: dict[str, Any]) -> NMSSpec:
        """Inverse of `onnx_attributes` (every field is required)."""
        IDENTITY.check_attributes(attributes, cls.FIELDS)
        missing = [name for name in cls.FIELDS if name not in attributes]
        if missing:
            raise ValueError(f"{IDENTITY.name} attribute(s) {missing} missing")
        return cls(
            iou_threshold=float(attributes["iou_threshold"]),
            score_threshold=float(attributes["score_threshold"]),
            max_output_boxes=int(attributes["max_output_boxes"]),
        )

    def make_onnx_node(
        self, boxes: str, scores: str, groups: str, keep: str, count: str, name: str | None = None
    ) -> Any:
        """The onnx.NodeProto of this op: inputs boxes [B, N, 4], scores [B, N], groups [B, N]; outputs keep, count."""
        import onnx.helper

        return onnx.helper.make_node(
            IDENTITY.name, [boxes, scores, groups], [keep, count], name=name, domain=ONNX_DOMAIN,
            **self.onnx_attributes(),
        )  # fmt: skip
