"""`maskrt export`: a checkpoint -> export dir with model.onnx, model.trt.onnx and export.json.

The graphs take a dynamic height and width by default (docs/architecture.md section 6); `--height/--width` give a
static canvas for targets that need one.

Both graphs are traced from the same DeployMaskRCNN (export/deploy.py) with the legacy TorchScript
exporter; they differ only in how RoIAlign and NMS are emitted (export/ops.py). Each is checked with
onnx.checker (full shape inference) and verified to hold only the ops its flavor allows.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from maskrt.core.artifacts import (
    GRAPHS,
    INPUT_NAMES,
    MAX_EXPORT_BATCH,
    MAX_OPSET,
    MIN_OPSET,
    OUTPUT_NAMES,
    ExportInfo,
    GraphFile,
    InputSpec,
)
from maskrt.core.errors import MaskrtError
from maskrt.core.files import sha256
from maskrt.core.outputs import check_apart, check_output_dir, staged_dir
from maskrt.core.versions import versions
from maskrt.export.deploy import DeployMaskRCNN
from maskrt.training.checkpoint import load_checkpoint, model_from_checkpoint
from maskrt.training.models import default_canvas, size_range

FORBIDDEN_IN_TRT = {"NonZero", "Loop", "NonMaxSuppression", "RoiAlign", "If", "Scan"}
#: The largest side an fp16 graph is traced at. Tracing runs the network, and fp16 convolutions on a CPU without fp16
#: arithmetic take about 60 times the fp32 time (r50-fpn at a static 800x800: 288 s for the fp16 graph alone, against
#: 5 s for an fp32 one). So the fp16 graph is traced small, with a dynamic height and width (its shapes computed in the
#: graph, as in every dynamic-size export), and a static canvas is written into its input and output shapes after.
FP16_TRACE_SIDE = 128


def _example_inputs(deploy: DeployMaskRCNN, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn((batch, 3, deploy.height, deploy.width), generator=gen)
    sizes = torch.tensor([[deploy.height, deploy.width]] * batch, dtype=torch.int64)
    return images, sizes


def _dynamic_axes(dynamic_batch: bool, dynamic_size: bool) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in (*INPUT_NAMES, *OUTPUT_NAMES)} if dynamic_batch else {}
    if dynamic_size:
        axes["images"] = {**axes.get("images", {}), 2: "height", 3: "width"}
    return axes


def _export_one(deploy: DeployMaskRCNN, path: Path, *, batch: int, dynamic_batch: bool, dynamic_size: bool,
                opset: int) -> None:
    custom = {"maskrt": 1} if deploy.flavor == "trt" else None
    args = _example_inputs(deploy, batch)
    axes = _dynamic_axes(dynamic_batch, dynamic_size) or None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(deploy, args, str(path), dynamo=False, opset_version=opset, input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), dynamic_axes=axes, custom_opsets=custom,
                          do_constant_folding=True)


def _pin_io_shapes(path: Path, deploy: DeployMaskRCNN, batch: int, dynamic_batch: bool,
                   size: tuple[int, int] | None) -> onnx.ModelProto:
    """Write the known shapes of every graph input and output (the exporter leaves symbolic names where custom
    ops or data-dependent code sit upstream): fixed sizes (`size` (h, w): a static canvas), and the names batch /
    height / width where dynamic. Returns the model as saved."""
    model = onnx.load(str(path))
    b: int | str = "batch" if dynamic_batch else batch
    h: int | str = "height" if size is None else size[0]
    w: int | str = "width" if size is None else size[1]
    d, m = deploy.max_detections, deploy.mask_size
    shapes = {"images": [b, 3, h, w], "image_sizes": [b, 2], "num_detections": [b],
              "boxes": [b, d, 4], "scores": [b, d], "labels": [b, d], "masks": [b, d, m, m]}
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, shapes[value.name], strict=True):
            dim.Clear()
            if isinstance(size, int):
                dim.dim_value = size
            else:
                dim.dim_param = size
    onnx.save(model, str(path))
    return model


def check_graph(path: Path, flavor: str, model: onnx.ModelProto | None = None) -> dict[str, int]:
    """onnx.checker with full shape inference + the op rules of the flavor; returns op counts.

    The checker reads the file itself (no copy of the model through Python); `model`, the file's content when the
    caller holds it already, spares loading it again for the op rules."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise MaskrtError(f"{path}: fails onnx.checker ({str(exc).splitlines()[0]})") from None
    if model is None:
        model = onnx.load(str(path))
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        counts[key] = counts.get(key, 0) + 1
    if flavor == "trt":
        bad = sorted(set(counts) & FORBIDDEN_IN_TRT)
        if bad:
            raise MaskrtError(f"{path}: the TensorRT graph still holds {', '.join(bad)}")
    else:
        custom = sorted(k for k in counts if "::" in k)
        if custom:
            raise MaskrtError(f"{path}: the portable graph holds non-standard ops {', '.join(custom)}")
    return counts


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, height: int | None = None,
                      width: int | None = None, batch: int = 1, dynamic_batch: bool = False,
                      max_detections: int = 100, opset: int = 17, fp16: bool = False, force: bool = False
                      ) -> ExportInfo:
    """Export both graphs of a checkpoint as the folder `out` (and, with `fp16`, model.trt.fp16.onnx: the TensorRT
    graph with fp16 networks, see export/deploy.py); returns what export.json holds.

    By default the graphs take a dynamic height and width: any multiple of 32 from 32 to the model's max_size
    rounded up to 32, so each batch runs at the size torchvision pads it to. `height` and/or `width` ask for a
    static canvas instead (the other side defaults to the config's). A non-empty `out` is refused unless `force`;
    the folder is written under a temporary name and renamed when complete, so an interrupted export leaves the
    previous folder (or none) intact."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise MaskrtError(f"opset must be in [{MIN_OPSET}, {MAX_OPSET}], got {opset}")
    if not 1 <= batch <= MAX_EXPORT_BATCH:
        raise MaskrtError(f"batch must be in [1, {MAX_EXPORT_BATCH}], got {batch}")
    check_apart([out], [("checkpoint", checkpoint)])
    out = check_output_dir(out, force=force)
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, source=checkpoint)
    cfg = ckpt["model_config"]
    default_h, default_w = default_canvas(cfg)
    dynamic_size = height is None and width is None
    height, width = height or default_h, width or default_w
    if dynamic_size:
        lo, hi = size_range(cfg)
        height, width = min(height, hi), min(width, hi)  # the traced example size lies inside the range
        inp = InputSpec(height, width, batch, dynamic_batch, True, (lo, hi), (lo, hi))
    else:
        inp = InputSpec(height, width, batch, dynamic_batch)
    names = [g for g in GRAPHS if GRAPHS[g].precision == "fp32" or (fp16 and GRAPHS[g].precision == "fp16")]
    small = {g: GRAPHS[g].precision == "fp16" for g in names}  # traced small with a dynamic size (FP16_TRACE_SIDE)
    deploys = {g: DeployMaskRCNN(model, height=min(height, FP16_TRACE_SIDE) if small[g] else height,
                                 width=min(width, FP16_TRACE_SIDE) if small[g] else width,
                                 max_detections=max_detections, flavor=GRAPHS[g].flavor,
                                 precision=GRAPHS[g].precision) for g in names}
    graphs: dict[str, GraphFile] = {}
    with staged_dir(out) as staging:
        for graph in names:
            path = staging / GRAPHS[graph].file
            _export_one(deploys[graph], path, batch=batch, dynamic_batch=dynamic_batch,
                        dynamic_size=dynamic_size or small[graph], opset=opset)
            saved = _pin_io_shapes(path, deploys[graph], batch, dynamic_batch,
                                   None if dynamic_size else (height, width))
            graphs[graph] = GraphFile(file=GRAPHS[graph].file, sha256=sha256(path),
                                      ops=check_graph(path, GRAPHS[graph].flavor, saved))
        info = _export_info(ckpt, model, deploys["trt"], checkpoint, graphs, inp, max_detections=max_detections,
                            opset=opset)
        info.write(staging)
    return info


def _export_info(ckpt: dict, model: torch.nn.Module, deploy: DeployMaskRCNN, checkpoint: str | Path,
                 graphs: dict[str, GraphFile], inp: InputSpec, *, max_detections: int, opset: int) -> ExportInfo:
    cfg = ckpt["model_config"]
    return ExportInfo(
        model_config=cfg,
        classes=ckpt["classes"],
        input=inp,
        mean=tuple(model.transform.image_mean),
        std=tuple(model.transform.image_std),
        min_size=int(cfg["min_size"]),
        max_size=int(cfg["max_size"]),
        limits={"rpn_pre_nms_top_n": deploy.pre_nms_top_n, "rpn_post_nms_top_n": deploy.post_nms_top_n,
                "rpn_nms_thresh": deploy.rpn_nms_thresh, "box_score_thresh": deploy.score_thresh,
                "box_nms_thresh": deploy.nms_thresh, "max_detections": max_detections},
        roi_align={"box": deploy.box_spec.onnx_attributes(), "mask": deploy.mask_spec.onnx_attributes()},
        opset=opset,
        graphs=graphs,
        checkpoint={"file": Path(checkpoint).name, "path": str(Path(checkpoint).resolve()),
                    "sha256": sha256(checkpoint)},
        versions={**versions(), "onnx": onnx.__version__},
    )
