"""RoIAlign attributes: the project's single source of truth for their names, defaults and validation.

The exporter writes them into the MultiLevelRoIAlign ONNX node, the plugin creator reads them back as fields, and
``roi_align.cpu`` takes them as keyword arguments; all three use the defaults and checks defined here. Semantics:
docs/architecture.md section 4 and docs/plugins.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from maskrt.plugins.spec import ONNX_DOMAIN, PluginIdentity, to_float32

IDENTITY = PluginIdentity("MultiLevelRoIAlign")

DEFAULT_SAMPLING_RATIO = 2
DEFAULT_ALIGNED = False
DEFAULT_CANONICAL_LEVEL = 4
DEFAULT_CANONICAL_SCALE = 224.0
DEFAULT_LEVEL_EPS = 1e-6
MAX_LEVELS = 8  # kMaxLevels in roi_align_core.h

#: P2-P5 of an FPN backbone, finest first (torchvision Mask R-CNN).
FPN_P2_P5_SCALES: tuple[float, ...] = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


def scale_level(scale: float) -> int:
    """Pyramid level l of a spatial scale 2^-l; ValueError when the scale is not a power of two."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"spatial scale {scale!r} is not a positive finite number")
    mantissa, exponent = math.frexp(float(scale))
    if mantissa != 0.5:
        raise ValueError(f"spatial scale {scale!r} is not a power of two (1/4, 1/8, ...)")
    return 1 - exponent


def normalize_output_size(output_size: int | Sequence[int]) -> tuple[int, int]:
    """An int or (h, w) as a validated (h, w) tuple of positive ints."""
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        raise ValueError(f"output_size must be an int or a pair of ints, got {output_size!r}")
    if min(size) <= 0:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    return size[0], size[1]


@dataclass(frozen=True)
class RoIAlignSpec:
    """The attributes of one MultiLevelRoIAlign op (validated on construction)."""

    IDENTITY: ClassVar[PluginIdentity] = IDENTITY
    FIELDS: ClassVar[tuple[str, ...]] = ("output_height", "output_width", "sampling_ratio", "aligned",
                                         "spatial_scales", "canonical_level", "canonical_scale", "level_eps")
    output_size: tuple[int, int]
    spatial_scales: tuple[float, ...]
    sampling_ratio: int = DEFAULT_SAMPLING_RATIO
    aligned: bool = DEFAULT_ALIGNED
    canonical_level: int = DEFAULT_CANONICAL_LEVEL
    canonical_scale: float = DEFAULT_CANONICAL_SCALE
    level_eps: float = DEFAULT_LEVEL_EPS
    levels: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise in place once
        set_(self, "output_size", normalize_output_size(self.output_size))  # type: ignore[arg-type]
        scales = (self.spatial_scales,) if isinstance(self.spatial_scales, (int, float)) else self.spatial_scales
        scales = tuple(float(s) for s in scales)
        if not 1 <= len(scales) <= MAX_LEVELS:
            raise ValueError(f"spatial_scales must hold 1 to {MAX_LEVELS} values, got {len(scales)}")
        levels = tuple(scale_level(s) for s in scales)
        if any(b != a + 1 for a, b in zip(levels, levels[1:], strict=False)):
            raise ValueError(
                f"spatial_scales {scales} must be consecutive pyramid levels, finest first (each half the previous)"
            )
        set_(self, "spatial_scales", scales)
        set_(self, "levels", levels)
        if isinstance(self.sampling_ratio, bool) or not isinstance(self.sampling_ratio, int):
            raise ValueError(f"sampling_ratio must be an int (<= 0: adaptive), got {self.sampling_ratio!r}")
        if self.aligned not in (0, 1):  # also accepts True/False
            raise ValueError(f"aligned must be a bool or 0/1, got {self.aligned!r}")
        set_(self, "aligned", bool(self.aligned))
        if isinstance(self.canonical_level, bool) or not isinstance(self.canonical_level, int):
            raise ValueError(f"canonical_level must be an int, got {self.canonical_level!r}")
        set_(self, "canonical_scale", to_float32(self.canonical_scale))
        set_(self, "level_eps", to_float32(self.level_eps))
        if not (math.isfinite(self.canonical_scale) and self.canonical_scale > 0):
            raise ValueError(f"canonical_scale must be positive and finite, got {self.canonical_scale!r}")
        if not math.isfinite(self.level_eps):
            raise ValueError(f"level_eps must be finite, got {self.level_eps!r}")

    @classmethod
    def mask_rcnn(cls, output_size: int, spatial_scales: Iterable[float] = FPN_P2_P5_SCALES) -> RoIAlignSpec:
        """torchvision Mask R-CNN's pooler: 7 for the box head, 14 for the mask head, sampling_ratio 2."""
        return cls(output_size=(output_size, output_size), spatial_scales=tuple(spatial_scales))

    def onnx_attributes(self) -> dict[str, Any]:
        """The ONNX node attributes (= plugin fields), including the plugin identity TensorRT's parser reads."""
        return {
            **IDENTITY.onnx_attributes(),
            "output_height": self.output_size[0],
            "output_width": self.output_size[1],
            "sampling_ratio": self.sampling_ratio,
            "aligned": int(self.aligned),
            "spatial_scales": list(self.spatial_scales),
            "canonical_level": self.canonical_level,
            "canonical_scale": self.canonical_scale,
            "level_eps": self.level_eps,
        }

    def keywords(self) -> dict[str, Any]:
        """The keyword arguments of ``roi_align.cpu`` / ``roi_align.cuda`` for this spec."""
        return {"output_size": self.output_size, "spatial_scales": self.spatial_scales,
                "sampling_ratio": self.sampling_ratio, "aligned": self.aligned,
                "canonical_level": self.canonical_level, "canonical_scale": self.canonical_scale,
                "level_eps": self.level_eps}

    @classmethod
    def from_onnx_attributes(cls, attributes: dict[str, Any]) -> RoIAlignSpec:
        """Inverse of `onnx_attributes` (missing optional fields take the defaults)."""
        IDENTITY.check_attributes(attributes, cls.FIELDS)
        for name in ("output_height", "output_width", "spatial_scales"):
            if name not in attributes:
                raise ValueError(f"{IDENTITY.name} attribute {name!r} is missing")
        return cls(
            output_size=(int(attributes["output_height"]), int(attributes["output_width"])),
            spatial_scales=tuple(attributes["spatial_scales"]),
            sampling_ratio=int(attributes.get("sampling_ratio", DEFAULT_SAMPLING_RATIO)),
            aligned=bool(attributes.get("aligned", int(DEFAULT_ALIGNED))),
            canonical_level=int(attributes.get("canonical_level", DEFAULT_CANONICAL_LEVEL)),
            canonical_scale=float(attributes.get("canonical_scale", DEFAULT_CANONICAL_SCALE)),
            level_eps=float(attributes.get("level_eps", DEFAULT_LEVEL_EPS)),
        )

    def make_onnx_node(self, rois: str, features: Sequence[str], output: str, name: str | None = None) -> Any:
        """The onnx.NodeProto of this op: inputs rois then one feature map per spatial scale."""
        import onnx.helper

        if len(features) != len(self.spatial_scales):
            raise ValueError(
                f"{len(features)} feature input(s) for {len(self.spatial_scales)} spatial scale(s): need one each"
            )
        return onnx.helper.make_node(
            IDENTITY.name, [rois, *features], [output], name=name, domain=ONNX_DOMAIN, **self.onnx_attributes()
        )
