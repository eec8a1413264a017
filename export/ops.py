"""The two data-dependent ops of the deploy graph, in the flavors the exporter emits.

- `portable` (model.onnx): standard ONNX only. RoIAlign pools each RoI once, at the level the FPN level mapping
  chooses (NonZero per level, ONNX RoiAlign-16, one Concat and one Gather back to box order); NMS is ONNX
  NonMaxSuppression (per-group classes when there are few groups, torchvision's coordinate-offset trick otherwise),
  its output (merged by score across classes when there are several) scattered into a fixed [B, K] index table.
- `trt` (model.trt.onnx): one `maskrt::MultiLevelRoIAlign` and one `maskrt::BatchedNMS` node per site,
  the plugin ops of plugins/ (docs/architecture.md section 5, docs/plugins.md).

In eager mode (and while tracing) both flavors compute the same values with torchvision's ops, so the
deploy module is itself a reference that can be compared with torchvision's own inference.
The plugin nodes' attributes come from the ops' specs (maskrt.plugins: RoIAlignSpec, NMSSpec), the single source
of truth for their names, identity and validation.
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import Tensor

from maskrt.plugins import NMSSpec, RoIAlignSpec
from maskrt.plugins.spec import ONNX_DOMAIN


def _plugin_node(g, spec: RoIAlignSpec | NMSSpec, inputs: list, outputs: int = 1):  # type: ignore[no-untyped-def]
    """One plugin node in the graph being traced, its attributes typed for torch.onnx (name_s / _i / _f)."""
    kwargs = {}
    for name, value in spec.onnx_attributes().items():
        kind = {str: "s", int: "i", float: "f", list: "f"}[type(value)]
        kwargs[f"{name}_{kind}"] = value
    return g.op(f"{ONNX_DOMAIN}::{spec.IDENTITY.name}", *inputs, outputs=outputs, **kwargs)


def fpn_levels(rois: Tensor, spec: RoIAlignSpec) -> Tensor:
    """Index (0 = finest) of the pyramid level of each RoI [..., 4]: torchvision's LevelMapper."""
    area = (rois[..., 2] - rois[..., 0]) * (rois[..., 3] - rois[..., 1])
    k = torch.floor(spec.canonical_level + torch.log2(torch.sqrt(area) / spec.canonical_scale) + spec.level_eps)
    k_min, k_max = spec.levels[0], spec.levels[-1]
    return (torch.clamp(k, min=k_min, max=k_max) - k_min).to(torch.int64)


def pool_boxes(boxes: Tensor, features: list[Tensor], spec: RoIAlignSpec) -> Tensor:
    """Multi-level RoIAlign of boxes [K, 5] (batch index, x1, y1, x2, y2) -> [K, C, oh, ow], torchvision's
    MultiScaleRoIAlign: each box pooled once, at its own level. Traces to NonZero + RoiAlign-16 per level, one Concat
    of the pooled rows in level order and one Gather that puts them back in box order (its index: a ScatterElements
    of K integers). torchvision's own ONNX export scatters every pooled element instead (an index as large as the
    output: 200 ms of 1.7 s for r50-fpn at 800x800 on 2 cores). A box with no level (NaN area) gets zeros, as in
    torchvision. Coordinates in fp32 also for fp16 features; the result in the features' dtype."""
    levels = fpn_levels(boxes[:, 1:], spec)
    channels, (oh, ow) = features[0].shape[1], spec.output_size
    if len(features) == 1:
        return torchvision.ops.roi_align(features[0].float(), boxes, spec.output_size,
                                         spatial_scale=spec.spatial_scales[0], sampling_ratio=spec.sampling_ratio,
                                         aligned=spec.aligned).to(features[0].dtype)
    chosen, pooled = [], []
    for idx, (feat, scale) in enumerate(zip(features, spec.spatial_scales, strict=True)):
        boxes_at_level = torch.where(levels == idx)[0]
        chosen.append(boxes_at_level)
        pooled.append(torchvision.ops.roi_align(feat.float(), boxes[boxes_at_level], spec.output_size,
                                                spatial_scale=scale, sampling_ratio=spec.sampling_ratio,
                                                aligned=spec.aligned).to(feat.dtype))
    order = torch.cat(chosen)  # the box of each pooled row
    zero_row = torch.zeros((1, channels, oh, ow), dtype=features[0].dtype, device=boxes.device)
    rows = torch.cat([*pooled, zero_row])
    # row of each box: its place in `order`, or the zero row when no level took it
    position = torch.zeros_like(levels) + order.shape[0]
    position = position.scatter(0, order, torch.arange(order.shape[0], dtype=torch.int64, device=boxes.device))
    return rows[position]


def with_batch_index(rois: Tensor) -> Tensor:
    """[B, R, 4] -> [B*R, 5] boxes with their batch index first (torchvision's roi_align layout)."""
    b, r = rois.shape[0], rois.shape[1]
    batch_idx = torch.arange(b, dtype=rois.dtype, device=rois.device).repeat_interleave(r)[:, None]
    return torch.cat([batch_idx, rois.reshape(-1, 4)], dim=1)


def roi_align_reference(rois: Tensor, features: list[Tensor], spec: RoIAlignSpec) -> Tensor:
    """Multi-level RoIAlign [B, R, C, oh, ow] with torchvision's roi_align: equals torchvision's MultiScaleRoIAlign."""
    out = pool_boxes(with_batch_index(rois), features, spec)
    return out.reshape(rois.shape[0], rois.shape[1], *out.shape[1:])


class _MultiLevelRoIAlign(torch.autograd.Function):
    """Eager: torchvision. ONNX: one maskrt::MultiLevelRoIAlign node."""

    @staticmethod
    def forward(ctx, spec: RoIAlignSpec, rois: Tensor, *features: Tensor) -> Tensor:  # type: ignore[override]
        return roi_align_reference(rois, list(features), spec)

    @staticmethod
    def symbolic(g, spec: RoIAlignSpec, rois, *features):  # type: ignore[no-untyped-def]
        out = _plugin_node(g, spec, [rois, *features])
        b, r = rois.type().varyingSizes()[:2]
        c = features[0].type().varyingSizes()[1]
        out.setType(features[0].type().with_sizes([b, r, c, *spec.output_size]))
        return out


def batched_nms_reference(boxes: Tensor, scores: Tensor, groups: Tensor, spec: NMSSpec) -> tuple[Tensor, Tensor]:
    """BatchedNMS semantics (docs/plugins.md) with torchvision: keep [B, K] int32 (-1 padded), count [B]."""
    b = boxes.shape[0]
    keep = torch.full((b, spec.max_output_boxes), -1, dtype=torch.int32)
    count = torch.zeros((b,), dtype=torch.int32)
    for i in range(b):
        cand = torch.nonzero(scores[i].float() > spec.score_threshold).flatten()
        s = scores[i, cand].float()
        kept_mask = torch.zeros_like(cand, dtype=torch.bool)
        for g in torch.unique(groups[i, cand]):  # per group, as torchvision's vanilla batched_nms
            members = torch.nonzero(groups[i, cand] == g).flatten()
            kept = torchvision.ops.nms(boxes[i, cand[members]].float(), s[members], spec.iou_threshold)
            kept_mask[members[kept]] = True
        kept = torch.nonzero(kept_mask).flatten()
        kept = cand[kept[torch.sort(s[kept], descending=True, stable=True).indices]][: spec.max_output_boxes]
        keep[i, : kept.numel()] = kept.to(torch.int32)
        count[i] = kept.numel()
    return keep, count


class _BatchedNMS(torch.autograd.Function):
    """Eager: torchvision batched_nms per image. ONNX: one maskrt::BatchedNMS node."""

    @staticmethod
    def forward(ctx, spec: NMSSpec, boxes: Tensor, scores: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return batched_nms_reference(boxes, scores, groups, spec)

    @staticmethod
    def symbolic(g, spec: NMSSpec, boxes, scores, groups):  # type: ignore[no-untyped-def]
        keep, count = _plugin_node(g, spec, [boxes, scores, groups], outputs=2)
        b = groups.type().varyingSizes()[0]
        keep.setType(groups.type().with_sizes([b, spec.max_output_boxes]))
        count.setType(groups.type().with_sizes([b]))
        return keep, count


class _OnnxNMS(torch.autograd.Function):
    """ONNX NonMaxSuppression: boxes [B, N, 4], scores [B, G, N] -> selected [n, 3] (batch, group, index).

    Eager emulation of ONNX Runtime's kernel: per (batch, group), candidates with score > threshold,
    greedy by descending score, at most `max_per_group` kept, output grouped by batch then group.
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_group: int, iou_threshold: float,  # type: ignore[override]
                score_threshold: float) -> Tensor:
        rows = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                cand = torch.nonzero(scores[b, c] > score_threshold).flatten()
                kept = cand[torchvision.ops.nms(boxes[b, cand], scores[b, c, cand], iou_threshold)][:max_per_group]
                rows.append(torch.stack([torch.full_like(kept, b), torch.full_like(kept, c), kept], dim=1))
        return torch.cat(rows) if rows else torch.zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_group, iou_threshold, score_threshold):  # type: ignore[no-untyped-def]
        const = lambda v, dtype: g.op("Constant", value_t=torch.tensor([v], dtype=dtype))  # noqa: E731
        return g.op("NonMaxSuppression", boxes, scores, const(max_per_group, torch.int64),
                    const(iou_threshold, torch.float32), const(score_threshold, torch.float32))


def _table_from_selected(selected: Tensor, scores: Tensor, width: int, one_class: bool) -> Tensor:
    """ONNX NMS output [n, 3] -> [B, width] int64 indices sorted by descending score, -1 padded.

    With one class the output is already in that order (per batch, the kept boxes by descending score, as ONNX
    Runtime and TensorRT's NMS layer emit them); with several classes it is grouped by class and merged here."""
    b_idx, box_idx = selected[:, 0], selected[:, 2]
    if not one_class:
        s = scores[b_idx, box_idx]
        # sort by (batch ascending, score descending); scores of kept boxes are > threshold >= -1
        key = b_idx.to(s.dtype) * 4.0 - s.clamp(min=-1.0, max=2.0)
        order = torch.topk(-key, key.shape[0]).indices  # ascending key; ties keep ONNX NMS's order
        b_idx, box_idx = b_idx[order], box_idx[order]
    rows = torch.arange(scores.shape[0], dtype=torch.int64)  # traced from the shape: dynamic batch works
    per_batch = (b_idx[None, :] == rows[:, None]).sum(1)
    starts = torch.cumsum(per_batch, 0) - per_batch
    pos = torch.arange(b_idx.shape[0], dtype=torch.int64) - starts[b_idx]
    fits = pos < width
    table = torch.zeros_like(scores[:, :1], dtype=torch.int64).repeat(1, width) - 1
    table[b_idx[fits], pos[fits]] = box_idx[fits]
    return table


def nms(boxes: Tensor, scores: Tensor, groups: Tensor, *, num_groups: int, iou_threshold: float,
        score_threshold: float, max_output_boxes: int, flavor: str) -> Tensor:
    """Group-wise NMS over boxes [B, N, 4], scores [B, N], groups [B, N] in 0..num_groups-1.

    Candidates need score > score_threshold. Returns [B, max_output_boxes] int64 indices into N in
    descending score order, -1 padded (torchvision.ops.batched_nms semantics, truncated).
    """
    if flavor == "trt":
        spec = NMSSpec(iou_threshold, score_threshold, max_output_boxes)
        keep, _ = _BatchedNMS.apply(spec, boxes, scores, groups.to(torch.int32))
        return keep.to(torch.int64)
    if num_groups <= 8:  # one ONNX class per group: exact group separation
        onehot = torch.nn.functional.one_hot(groups, num_groups).permute(0, 2, 1).to(torch.bool)
        grouped = torch.where(onehot, scores[:, None, :], torch.full_like(scores[:, None, :], -math.inf))
        selected = _OnnxNMS.apply(boxes, grouped, max_output_boxes, iou_threshold, score_threshold)
        return _table_from_selected(selected, scores, max_output_boxes, one_class=num_groups == 1)
    else:  # torchvision's coordinate trick: offset each group so that groups never overlap
        valid = scores > score_threshold
        max_coord = torch.where(valid[..., None], boxes, torch.zeros_like(boxes)).amax(dim=(1, 2), keepdim=True)
        offsets = groups.to(boxes.dtype)[..., None] * (max_coord + 1)
        selected = _OnnxNMS.apply(boxes + offsets, scores[:, None, :], max_output_boxes, iou_threshold,
                                  score_threshold)
    return _table_from_selected(selected, scores, max_output_boxes, one_class=True)


def multi_level_roi_align(rois: Tensor, features: list[Tensor], spec: RoIAlignSpec, *, flavor: str) -> Tensor:
    """[B, R, 4] RoIs (input pixels) over P2.. feature maps -> [B, R, C, oh, ow]."""
    if flavor == "trt":
        return _MultiLevelRoIAlign.apply(spec, rois, *features)
    return roi_align_reference(rois, features, spec)
