"""MultiLevelRoIAlign: torchvision's (multi-scale) RoIAlign as one TensorRT plugin op.

    from maskrt.plugins import roi_align
    out = roi_align.cpu(features, rois, output_size=7, spatial_scales=(1/4, 1/8, 1/16, 1/32))  # [B, R, C, 7, 7]
    roi_align.load_into(tensorrt)   # register the CUDA plugin library with TensorRT / TensorRT-RTX

``cpu`` runs the host build of the kernel core (the test oracle bridge); ``cuda`` launches the CUDA kernel of the
plugin library directly on torch CUDA tensors (GPU tests, benchmarks). Semantics: docs/architecture.md section 4.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch

from maskrt.plugins._abi import pointer
from maskrt.plugins._library import call, library_path, load_into, threads_argument
from maskrt.plugins.roi_align.spec import (
    DEFAULT_ALIGNED,
    DEFAULT_CANONICAL_LEVEL,
    DEFAULT_CANONICAL_SCALE,
    DEFAULT_LEVEL_EPS,
    DEFAULT_SAMPLING_RATIO,
    FPN_P2_P5_SCALES,
    IDENTITY,
    RoIAlignSpec,
)

__all__ = ["FPN_P2_P5_SCALES", "IDENTITY", "RoIAlignSpec", "cpu", "cuda", "library_path", "load_into"]

_DTYPES = {torch.float32: 0, torch.float16: 1}


def _check(
    features: Sequence[torch.Tensor], rois: torch.Tensor, spec: RoIAlignSpec, device: str
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Validates the tensors against each other and the spec; returns contiguous copies on success."""
    if isinstance(features, torch.Tensor) or not isinstance(features, Sequence) or not features:
        raise ValueError("features must be a non-empty list of [B, C, H, W] tensors (one per level)")
    if len(features) != len(spec.spatial_scales):
        raise ValueError(
            f"{len(features)} feature map(s) but {len(spec.spatial_scales)} spatial scale(s): need one scale per map"
        )
    if not isinstance(rois, torch.Tensor) or rois.dim() != 3 or rois.shape[2] != 4:
        shape = tuple(rois.shape) if isinstance(rois, torch.Tensor) else type(rois).__name__
        raise ValueError(f"rois must be a [B, R, 4] tensor, got {shape}")
    if rois.dtype != torch.float32:
        raise ValueError(f"rois must be float32, got {rois.dtype}")
    first = features[0]
    for i, f in enumerate(features):
        if not isinstance(f, torch.Tensor) or f.dim() != 4:
            raise ValueError(f"features[{i}] must be a [B, C, H, W] tensor")
        if f.dtype not in _DTYPES:
            raise ValueError(f"features[{i}] must be float32 or float16, got {f.dtype}")
        if f.dtype != first.dtype:
            raise ValueError(f"all feature maps must have one dtype: features[{i}] is {f.dtype}, not {first.dtype}")
        if f.shape[0] != rois.shape[0] or f.shape[1] != first.shape[1]:
            raise ValueError(
                f"features[{i}] {tuple(f.shape)} must have batch {rois.shape[0]} (of rois) and the channels "
                f"{first.shape[1]} of features[0]"
            )
    for name, t in [("rois", rois), *((f"features[{i}]", f) for i, f in enumerate(features))]:
        if t.device.type != device:
            raise ValueError(f"{name} is on {t.device}, expected a {device} tensor")
    return [f.contiguous() for f in features], rois.contiguous()


def _run(device: str, spec: RoIAlignSpec, features: Sequence[torch.Tensor], rois: torch.Tensor,
         threads: int | None = None) -> torch.Tensor:
    """MultiLevelRoIAlign of `spec` with the host build (device 'cpu') or the plugin library's kernel ('cuda')."""
    features, rois = _check(features, rois, spec, device)
    batch, num_rois = rois.shape[:2]
    channels = features[0].shape[1]
    out = torch.empty((batch, num_rois, channels, *spec.output_size), dtype=features[0].dtype, device=rois.device)
    n = len(features)
    pointers = (ctypes.c_void_p * n)(*(f.data_ptr() for f in features))
    heights = (ctypes.c_int64 * n)(*(f.shape[2] for f in features))
    widths = (ctypes.c_int64 * n)(*(f.shape[3] for f in features))
    scales = (ctypes.c_float * n)(*spec.spatial_scales)
    call(
        f"maskrt_roi_align_{'cuda' if device == 'cuda' else 'host'}", device=device, stream_device=rois.device,
        rois=pointer(rois.data_ptr(), ctypes.c_float), features=pointers, heights=heights, widths=widths, numLevels=n,
        scales=scales, batch=batch, numRois=num_rois, channels=channels, outHeight=spec.output_size[0],
        outWidth=spec.output_size[1], samplingRatio=spec.sampling_ratio, aligned=int(spec.aligned),
        canonicalLevel=spec.canonical_level, canonicalScale=spec.canonical_scale, levelEps=spec.level_eps,
        dtype=_DTYPES[features[0].dtype], out=out.data_ptr(),
        **({} if device == "cuda" else {"threads": threads_argument(threads)}),
    )  # fmt: skip
    return out


def cpu(
    features: Sequence[torch.Tensor],
    rois: torch.Tensor,
    *,
    output_size: int | tuple[int, int],
    spatial_scales: Sequence[float] | float,
    sampling_ratio: int = DEFAULT_SAMPLING_RATIO,
    aligned: bool = DEFAULT_ALIGNED,
    canonical_level: int = DEFAULT_CANONICAL_LEVEL,
    canonical_scale: float = DEFAULT_CANONICAL_SCALE,
    level_eps: float = DEFAULT_LEVEL_EPS,
    threads: int | None = None,
) -> torch.Tensor:
    """MultiLevelRoIAlign on CPU tensors with the host build of the kernel core.

    features: one [B, C, H_l, W_l] float32 or float16 tensor per level (finest first); rois: [B, R, 4] float32
    (x1, y1, x2, y2 in input pixels). Returns [B, R, C, out_h, out_w] of the features' dtype (fp32 math). `threads`:
    how many this call may use (None: every CPU the process may run on; the result does not depend on it).
    """
    spec = RoIAlignSpec(
        output_size, spatial_scales, sampling_ratio, aligned, canonical_level, canonical_scale, level_eps
    )
    return _run("cpu", spec, features, rois, threads)


def cuda(
    features: Sequence[torch.Tensor],
    rois: torch.Tensor,
    *,
    output_size: int | tuple[int, int],
    spatial_scales: Sequence[float] | float,
    sampling_ratio: int = DEFAULT_SAMPLING_RATIO,
    aligned: bool = DEFAULT_ALIGNED,
    canonical_level: int = DEFAULT_CANONICAL_LEVEL,
    canonical_scale: float = DEFAULT_CANONICAL_SCALE,
    level_eps: float = DEFAULT_LEVEL_EPS,
) -> torch.Tensor:
    """Same as `cpu`, on CUDA tensors, launching the plugin library's kernel on the current torch stream."""
    spec = RoIAlignSpec(
        output_size, spatial_scales, sampling_ratio, aligned, canonical_level, canonical_scale, level_eps
    )
    return _run("cuda", spec, features, rois)
