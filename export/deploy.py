"""The deploy graph: torchvision Mask R-CNN inference with fixed-size outputs (docs/architecture.md section 6).

`DeployMaskRCNN` wraps a trained torchvision MaskRCNN and reproduces its eager inference -
anchors from the feature-map shapes, RPN per-level top-k, clip, small-box and score filters, per-level NMS,
post-NMS top-N; box head, BoxCoder decode with its weights and clamp, softmax, clip, score threshold, small-box
removal, class-wise NMS, top-D detections; mask head on the final boxes - with every data-dependent filter
turned into masking and fixed-size outputs padded with score 0.

Inputs:  images [B, 3, H, W] float32, normalised and zero-padded (runtime/preprocess.py);
         image_sizes [B, 2] int64, the (h, w) of each resized image inside the batch (boxes are
         clipped to it, as torchvision clips to the resized image).
Outputs: num_detections [B] int32, boxes [B, D, 4] (resized-image pixels), scores [B, D], labels [B, D] int32,
         masks [B, D, M, M] (probabilities of the detected class; M = 28 for the FPN configs, 14 for C4).

H and W are any multiples of 32 (dynamic in the exported graphs unless a static canvas is asked for). Nothing in
the graph depends on them being fixed: the anchors are made from the feature-map shapes exactly as torchvision's
AnchorGenerator makes them (stride = image size // feature size, integer), and each FPN level's top-k keeps a
fixed k = the RPN's pre-NMS top-N by padding the level's scores with -inf (padded entries are masked out, so a
level with fewer anchors than k behaves as torchvision's min(k, anchors)). The RoIAlign level scales are powers of
two fixed by the architecture (1/4 .. 1/32 for P2..P5), as torchvision infers them for any ordinary image size.

fp16 (TensorRT graph only, model.trt.fp16.onnx): the networks - backbone, FPN, RPN head, box and mask heads - and the
feature maps and pooled RoIs are fp16; everything whose rounding decides which boxes survive stays fp32: anchors and
box decoding (exp of deltas, pixel coordinates up to ~1344 where fp16 steps are 0.5-1 px), the RPN top-k and
score sigmoid/softmax, NMS inputs (boxes, scores, IoU), clipping, the RoIAlign coordinate math and FPN level mapping
(the plugin takes fp32 RoIs), and the mask sigmoid. Inputs and outputs are fp32 in both precisions.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN

from maskrt.core.artifacts import MAX_CANVAS_SIDE
from maskrt.core.errors import MaskrtError, check_choice
from maskrt.export.ops import multi_level_roi_align, nms, pool_boxes, with_batch_index
from maskrt.plugins.roi_align.spec import RoIAlignSpec

FLAVORS = ("portable", "trt")
PRECISIONS = ("fp32", "fp16")
#: The side of the zero image the backbone runs once to learn its levels' scales (1/4 .. 1/32): a multiple of 32, so
#: every level's size divides it as it divides any canvas; small, so the probe costs little (r50 at 800x1344: 1.8 s).
SCALE_PROBE = 256


def _pool_spec(pool: nn.Module, scales: tuple[float, ...]) -> RoIAlignSpec:
    """The RoIAlignSpec of a torchvision MultiScaleRoIAlign for the given level scales."""
    size = pool.output_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return RoIAlignSpec(output_size=size, spatial_scales=scales[: len(pool.featmap_names)],
                        sampling_ratio=int(pool.sampling_ratio), aligned=False,
                        canonical_level=int(pool.canonical_level), canonical_scale=float(pool.canonical_scale))


def _clip(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Clip boxes [B, ..., 4] to per-image (h, w) sizes [B, 2] (torchvision's clip_boxes_to_image)."""
    shape = (sizes.shape[0],) + (1,) * (boxes.dim() - 2)
    h = sizes[:, 0].to(boxes.dtype).reshape(shape)
    w = sizes[:, 1].to(boxes.dtype).reshape(shape)
    zero = torch.zeros((), dtype=boxes.dtype)
    x1 = torch.min(torch.max(boxes[..., 0], zero), w)
    y1 = torch.min(torch.max(boxes[..., 1], zero), h)
    x2 = torch.min(torch.max(boxes[..., 2], zero), w)
    y2 = torch.min(torch.max(boxes[..., 3], zero), h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def _gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, N, ...] gathered at idx [B, K] along dim 1."""
    shape = idx.shape + (1,) * (x.dim() - 2)
    return torch.gather(x, 1, idx.reshape(shape).expand(*idx.shape, *x.shape[2:]))


class DeployMaskRCNN(nn.Module):
    """Mask R-CNN inference with fixed-size outputs (see the module docstring).

    `height` x `width` is the size the module is traced at (the static canvas, or an example size of a dynamic
    export); the graph itself works at any multiple of 32."""

    def __init__(self, model: MaskRCNN, *, height: int, width: int, max_detections: int = 100,
                 flavor: str = "portable", precision: str = "fp32") -> None:
        super().__init__()
        check_choice("graph flavor", flavor, FLAVORS)
        check_choice("precision", precision, PRECISIONS)
        if precision == "fp16" and flavor != "trt":
            raise MaskrtError("an fp16 graph exists only for TensorRT (flavor 'trt')")
        self.precision, self.dtype = precision, torch.float16 if precision == "fp16" else torch.float32
        if height % 32 or width % 32 or not (32 <= height <= MAX_CANVAS_SIDE and 32 <= width <= MAX_CANVAS_SIDE):
            raise MaskrtError(f"the canvas height and width must be multiples of 32 in [32, {MAX_CANVAS_SIDE}], got "
                              f"{height}x{width}")
        if max_detections < 1:
            raise MaskrtError(f"max_detections must be at least 1, got {max_detections}")
        model = model.eval()
        with torch.no_grad():  # the level scales, from a small probe (the canvas sides are multiples of 32 too), in
            # fp32: the shapes do not depend on the precision, and fp16 convolutions on a CPU are slow
            feats = list(model.backbone(torch.zeros((1, 3, SCALE_PROBE, SCALE_PROBE))).values())
            # the mask side M: 28 for the FPN heads (14x14 pooled, upsampled x2), 14 for C4 (res5 halves, deconv x2)
            heads = model.roi_heads
            side = heads.mask_roi_pool.output_size
            side = (side, side) if isinstance(side, int) else tuple(side)
            pooled = torch.zeros((1, feats[0].shape[1], *side))
            self.mask_size = int(heads.mask_predictor(heads.mask_head(pooled)).shape[-1])
        if precision == "fp16":  # a half copy of the networks; the caller's model stays fp32
            model = copy.deepcopy(model).half()
        self.flavor = flavor
        self.height, self.width, self.max_detections = height, width, max_detections
        self.backbone, self.rpn_head = model.backbone, model.rpn.head
        rpn, heads = model.rpn, model.roi_heads
        self.rpn_coder, self.box_coder = rpn.box_coder, heads.box_coder
        was_training = rpn.training
        rpn.eval()  # the public pre_nms_top_n() / post_nms_top_n() give the mode's limits: inference's
        self.pre_nms_top_n, self.post_nms_top_n = int(rpn.pre_nms_top_n()), int(rpn.post_nms_top_n())
        rpn.train(was_training)
        self.rpn_nms_thresh, self.rpn_score_thresh = float(rpn.nms_thresh), float(rpn.score_thresh)
        self.rpn_min_size = float(rpn.min_size)
        if max_detections > self.post_nms_top_n:
            raise MaskrtError(f"max_detections {max_detections} exceeds the {self.post_nms_top_n} proposals the "
                              "model keeps after its RPN NMS (at most that many detections can exist)")
        self.box_head, self.box_predictor = heads.box_head, heads.box_predictor
        self.mask_head, self.mask_predictor = heads.mask_head, heads.mask_predictor
        self.score_thresh, self.nms_thresh = float(heads.score_thresh), float(heads.nms_thresh)
        self.num_classes = int(heads.box_predictor.cls_score.out_features)  # incl. background
        # torchvision's AnchorGenerator: per level, the rounded cell anchors shifted over the feature-map grid
        self.cell_anchors = [a.to(torch.float32) for a in rpn.anchor_generator.cell_anchors]
        if len(self.cell_anchors) != len(feats):
            raise MaskrtError(f"the anchor generator has {len(self.cell_anchors)} levels but the backbone returns "
                              f"{len(feats)} feature maps")
        scales = tuple(2.0 ** round(math.log2(f.shape[-2] / SCALE_PROBE)) for f in feats)
        self.box_spec = _pool_spec(heads.box_roi_pool, scales)
        self.mask_spec = _pool_spec(heads.mask_roi_pool, scales)
        self.num_pooled = len(heads.box_roi_pool.featmap_names)

    @staticmethod
    def level_anchors(cell: Tensor, image_hw: tuple, feat_hw: tuple) -> Tensor:
        """The anchors [h*w*A, 4] of one level, ordered (y, x, a) like the RPN head's outputs.

        torchvision's grid_anchors: stride = image size // feature size (integer division), shifts = grid index *
        stride, anchors = shifts + the level's cell anchors. The sizes may be traced values (dynamic H/W)."""
        stride_h, stride_w = image_hw[0] // feat_hw[0], image_hw[1] // feat_hw[1]
        shifts_y = torch.arange(feat_hw[0], dtype=torch.int64) * stride_h
        shifts_x = torch.arange(feat_hw[1], dtype=torch.int64) * stride_w
        grid_y, grid_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        grid_x, grid_y = grid_x.reshape(-1), grid_y.reshape(-1)
        shifts = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=1).to(torch.float32)
        return (shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4)

    # -- stages ----------------------------------------------------------------------------------------
    def proposals(self, feats: list[Tensor], images: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor]:
        """RPN: (proposals [B, P, 4], valid [B, P]) with P = post-NMS top-N."""
        batch = feats[0].shape[0]
        objectness, deltas = self.rpn_head(feats)
        objectness, deltas = [o.float() for o in objectness], [d.float() for d in deltas]  # decoding in fp32
        image_hw = (images.shape[-2], images.shape[-1])
        k = self.pre_nms_top_n
        scores_l, boxes_l, levels_l, present_l = [], [], [], []
        for level, (obj, delta, cell) in enumerate(zip(objectness, deltas, self.cell_anchors, strict=True)):
            a, h, w = obj.shape[1], obj.shape[2], obj.shape[3]
            anchors = self.level_anchors(cell, image_hw, (h, w))
            obj = obj.permute(0, 2, 3, 1).reshape(batch, -1)
            delta = delta.reshape(batch, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(batch, -1, 4)
            count = obj.shape[1]
            # a fixed k for every level and size: pad with k entries that never win against a real anchor
            obj = torch.cat([obj, torch.full_like(obj[:, :1], -math.inf).expand(batch, k)], dim=1)
            delta = torch.cat([delta, torch.zeros_like(delta[:, :1]).expand(batch, k, 4)], dim=1)
            anchors = torch.cat([anchors, torch.zeros_like(anchors[:1]).expand(k, 4)], dim=0)
            top, idx = obj.topk(k, dim=1)
            top_delta = _gather_rows(delta, idx)
            top_anchors = anchors[idx.reshape(-1)]
            boxes = self.rpn_coder.decode_single(top_delta.reshape(-1, 4), top_anchors).reshape(batch, k, 4)
            scores_l.append(top)
            boxes_l.append(boxes)
            levels_l.append(torch.zeros_like(top, dtype=torch.int64) + level)
            present_l.append(idx < count)  # False on padding: the level had fewer than k anchors
        scores = torch.sigmoid(torch.cat(scores_l, dim=1))
        boxes = _clip(torch.cat(boxes_l, dim=1), sizes)
        levels = torch.cat(levels_l, dim=1)
        wh = boxes[..., 2:] - boxes[..., :2]
        valid = (wh[..., 0] >= self.rpn_min_size) & (wh[..., 1] >= self.rpn_min_size)
        valid = valid & (scores >= self.rpn_score_thresh) & torch.cat(present_l, dim=1)
        masked = torch.where(valid, scores, torch.full_like(scores, -1.0))
        keep = nms(boxes, masked, levels, num_groups=len(self.cell_anchors), iou_threshold=self.rpn_nms_thresh,
                   score_threshold=-0.5, max_output_boxes=self.post_nms_top_n, flavor=self.flavor)
        kept = keep >= 0
        props = _gather_rows(boxes, keep.clamp(min=0)) * kept[..., None].to(boxes.dtype)
        return props, kept

    def detections(self, feats: list[Tensor], props: Tensor, props_valid: Tensor,
                   sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Box head: (boxes [B, D, 4], scores [B, D], labels [B, D] int64, valid [B, D])."""
        batch, p = props.shape[0], props.shape[1]
        k = self.num_classes
        pooled = multi_level_roi_align(props, feats[: self.num_pooled], self.box_spec, flavor=self.flavor)
        x = self.box_head(pooled.flatten(0, 1))
        logits, regression = (t.float() for t in self.box_predictor(x))  # softmax and decoding in fp32
        boxes = self.box_coder.decode_single(regression, props.reshape(-1, 4)).reshape(batch, p, k, 4)
        scores = torch.softmax(logits, -1).reshape(batch, p, k)
        boxes = _clip(boxes, sizes)[:, :, 1:].reshape(batch, p * (k - 1), 4)
        scores = scores[:, :, 1:].reshape(batch, p * (k - 1))
        labels = torch.arange(1, k, dtype=torch.int64).repeat(p)[None] + torch.zeros_like(scores, dtype=torch.int64)
        wh = boxes[..., 2:] - boxes[..., :2]
        valid = props_valid[:, :, None].expand(batch, p, k - 1).reshape(batch, -1)
        valid = valid & (scores > self.score_thresh) & (wh[..., 0] >= 1e-2) & (wh[..., 1] >= 1e-2)
        masked = torch.where(valid, scores, torch.full_like(scores, -1.0))
        keep = nms(boxes, masked, labels - 1, num_groups=k - 1, iou_threshold=self.nms_thresh,
                   score_threshold=self.score_thresh, max_output_boxes=self.max_detections, flavor=self.flavor)
        kept = keep >= 0
        idx = keep.clamp(min=0)
        fk = kept.to(boxes.dtype)
        return (_gather_rows(boxes, idx) * fk[..., None], _gather_rows(scores, idx) * fk,
                _gather_rows(labels, idx) * kept.to(torch.int64), kept)

    def masks(self, feats: list[Tensor], boxes: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
        """Mask head on the final boxes: [B, D, M, M] probabilities of each detection's class.

        The portable graph runs the head on the real detections only (ONNX Runtime takes data-dependent shapes); the
        TensorRT graph on all D slots (static shapes), the empty slots masked to 0."""
        batch, d = boxes.shape[0], boxes.shape[1]
        if self.flavor == "portable":
            real = torch.where(valid.reshape(-1))[0]
            pooled = pool_boxes(with_batch_index(boxes)[real], feats[: self.num_pooled], self.mask_spec)
            logits = self.mask_predictor(self.mask_head(pooled)).float()  # [n, K, M, M]
            m = logits.shape[-1]
            chosen = torch.gather(logits, 1, labels.reshape(-1)[real].reshape(-1, 1, 1, 1).expand(-1, 1, m, m))
            probs = torch.sigmoid(chosen)[:, 0]
            out = torch.zeros((batch * d, m, m), dtype=probs.dtype)
            out = out.scatter(0, real.reshape(-1, 1, 1).expand(-1, m, m), probs)
            return out.reshape(batch, d, m, m)
        pooled = multi_level_roi_align(boxes, feats[: self.num_pooled], self.mask_spec, flavor=self.flavor)
        logits = self.mask_predictor(self.mask_head(pooled.flatten(0, 1))).float()  # [B*D, K, M, M]
        m = logits.shape[-1]
        chosen = torch.gather(logits, 1, labels.reshape(-1, 1, 1, 1).expand(batch * d, 1, m, m))
        probs = torch.sigmoid(chosen).reshape(batch, d, m, m)
        return probs * valid[..., None, None].to(probs.dtype)

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        feats = list(self.backbone(images.to(self.dtype)).values())
        props, props_valid = self.proposals(feats, images, image_sizes)
        boxes, scores, labels, valid = self.detections(feats, props, props_valid, image_sizes)
        masks = self.masks(feats, boxes, labels, valid)
        num = valid.sum(dim=1).to(torch.int32)
        return num, boxes, scores, labels.to(torch.int32), masks
