"""BatchedNMS: torchvision's batched_nms with a score filter and fixed-size outputs, as one TensorRT plugin op.

    from maskrt.plugins import nms
    keep, count = nms.cpu(boxes, scores, groups, iou_threshold=0.5, score_threshold=0.05, max_output_boxes=100)
    nms.load_into(tensorrt)   # register the CUDA plugin library with TensorRT / TensorRT-RTX

``keep`` [B, max_output_boxes] int32 holds indices into N (descending score, ties by lower index, -1 padded),
``count`` [B] int32 the number kept. ``cpu`` runs the host build of the kernel core (the test oracle bridge);
``cuda`` launches the plugin library's kernels on torch CUDA tensors (GPU tests, benchmarks). Semantics:
docs/plugins.md.
"""

from __future__ import annotations

import ctypes

import torch

from maskrt.plugins._abi import pointer
from maskrt.plugins._library import call, cuda_library, library_path, load_into, threads_argument
from maskrt.plugins.nms.spec import IDENTITY, MAX_CANDIDATES, NMSSpec

__all__ = ["IDENTITY", "MAX_CANDIDATES", "NMSSpec", "cpu", "cuda", "library_path", "load_into"]

_SCORE_TYPES = {torch.float32: 0, torch.float16: 1}


def _check(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validates the tensors against each other; returns contiguous copies on success."""
    for name, t in (("boxes", boxes), ("scores", scores), ("groups", groups)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if boxes.dim() != 3 or boxes.shape[2] != 4 or boxes.dtype != torch.float32:
        raise ValueError(f"boxes must be a [B, N, 4] float32 tensor, got {tuple(boxes.shape)} {boxes.dtype}")
    if scores.shape != boxes.shape[:2] or scores.dtype not in _SCORE_TYPES:
        raise ValueError(
            f"scores must be a [B, N] = {tuple(boxes.shape[:2])} float32 or float16 tensor, got "
            f"{tuple(scores.shape)} {scores.dtype}"
        )
    if groups.shape != boxes.shape[:2] or groups.dtype != torch.int32:
        raise ValueError(
            f"groups must be a [B, N] = {tuple(boxes.shape[:2])} int32 tensor, got {tuple(groups.shape)} {groups.dtype}"
        )
    for name, t in (("boxes", boxes), ("scores", scores), ("groups", groups)):
        if t.device.type != device:
            raise ValueError(f"{name} is on {t.device}, expected a {device} tensor")
    return boxes.contiguous(), scores.contiguous(), groups.contiguous()


def _run(
    device: str, spec: NMSSpec, boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchedNMS of `spec` with the host build (device 'cpu') or the plugin library's kernels ('cuda')."""
    boxes, scores, groups = _check(boxes, scores, groups, device)
    batch, num_boxes = boxes.shape[:2]
    keep = torch.empty((batch, spec.max_output_boxes), dtype=torch.int32, device=boxes.device)
    count = torch.empty((batch,), dtype=torch.int32, device=boxes.device)
    arguments = dict(
        boxes=pointer(boxes.data_ptr(), ctypes.c_float), scores=scores.data_ptr(),
        scoreType=_SCORE_TYPES[scores.dtype], groups=pointer(groups.data_ptr(), ctypes.c_int32), batch=batch,
        numBoxes=num_boxes, iouThreshold=spec.iou_threshold, scoreThreshold=spec.score_threshold,
        maxOutputBoxes=spec.max_output_boxes, keep=pointer(keep.data_ptr(), ctypes.c_int32),
        count=pointer(count.data_ptr(), ctypes.c_int32),
    )  # fmt: skip
    if device == "cuda":
        size = cuda_library().maskrt_nms_workspace_size(batch=batch, numBoxes=num_boxes)
        workspace = torch.empty((max(size, 1),), dtype=torch.uint8, device=boxes.device)
        arguments.update(workspace=workspace.data_ptr(), workspaceBytes=size)
    else:
        arguments.update(threads=threads_argument(threads))
    call(f"maskrt_nms_{'cuda' if device == 'cuda' else 'host'}", device=device, stream_device=boxes.device,
         **arguments)  # fmt: skip
    return keep, count


def cpu(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    *,
    iou_threshold: float,
    score_threshold: float,
    max_output_boxes: int,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchedNMS on CPU tensors with the host build of the kernel core.

    boxes: [B, N, 4] float32 (x1, y1, x2, y2); scores: [B, N] float32 or float16; groups: [B, N] int32 (boxes of
    different groups never suppress each other). Returns (keep [B, max_output_boxes] int32, count [B] int32). `threads`:
    how many this call may use (None: every CPU the process may run on; the result does not depend on it).
    """
    spec = NMSSpec(iou_threshold, score_threshold, max_output_boxes)
    return _run("cpu", spec, boxes, scores, groups, threads)


def cuda(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    *,
    iou_threshold: float,
    score_threshold: float,
    max_output_boxes: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same as `cpu`, on CUDA tensors, launching the plugin library's kernels on the current torch stream."""
    spec = NMSSpec(iou_threshold, score_threshold, max_output_boxes)
    return _run("cuda", spec, boxes, scores, groups)
