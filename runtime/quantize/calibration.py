"""`maskrt quantize`: INT8 static post-training quantization (QDQ) of an export's portable graph.

It lives in runtime/ because calibration runs the graph on images pre-processed by the runtime.

ONNX Runtime's quantization tools calibrate model.onnx on images pre-processed exactly as the runtime does and insert
QuantizeLinear/DequantizeLinear pairs (the QDQ form TensorRT also consumes for INT8) around the convolutions and
matrix products and the ops between them, inside the networks only: backbone, FPN, RPN head, box and mask heads
(weights int8 per channel, activations uint8 per tensor - the fast form on x86 VNNI). Everything else stays fp32 -
the output layers (box predictor: class scores and box deltas; mask predictor), anchors and box decoding, top-k,
sigmoid/softmax, NMS, RoIAlign and its level mapping, clipping - because only the networks' nodes (by their module
path) are quantized. Before calibration, initializers that torch.onnx shares through Identity nodes are given to each
consumer (`inline_shared_constants`), so that ONNX Runtime fuses every quantized convolution into an int8 kernel.
The result is a new export folder: the input folder's graphs plus model.int8.onnx (graph `portable_int8`), the
TensorRT graph quantized for TensorRT from the same ranges (model.trt.int8.onnx, graph `trt_int8`: symmetric int8,
runtime/quantize/tensorrt_qdq.py) and the calibration record in export.json. Whether they ship is `maskrt parity
--graph portable_int8`'s and `--graph trt_int8`'s call (INT8 gate: |dAP| <= 1.0).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from maskrt.core.artifacts import GRAPHS, ExportInfo, GraphFile
from maskrt.core.defaults import DEFAULT_MAX_EXCLUDED_NODES
from maskrt.core.errors import MaskrtError, check_choice
from maskrt.core.files import sha256
from maskrt.core.images import image_folder, load_rgb
from maskrt.core.outputs import check_apart, check_output_dir, staged_dir
from maskrt.export.onnx_export import check_graph
from maskrt.runtime.backends.ort_internals import flat_histograms
from maskrt.runtime.preprocess import preprocessor_for
from maskrt.training.coco import is_coco_dataset

METHODS = ("minmax", "entropy", "percentile")
#: The ops quantized, inside the networks only: convolutions and matrix products, and the ops between them (residual
#: Add, Relu, max-pooling, FPN upsampling) so that activations stay int8 from one convolution to the next.
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "Add", "Relu", "MaxPool", "Resize")
#: The networks, by the module path the exporter writes into node names; decoding, NMS, RoIAlign, level mapping and
#: the rest of the graph are never quantized. The output layers (box_predictor, mask_predictor) stay fp32: they are
#: small, and their rounding goes straight into the scores and masks.
NETWORKS = ("/backbone/", "/rpn_head/", "/box_head/", "/mask_head/")


def inline_shared_constants(model: onnx.ModelProto) -> int:
    """Give every consumer of a shared initializer its own copy: torch.onnx stores equal tensors once and feeds the
    others through Identity nodes (the zero biases of a freshly initialised FPN, RPN and mask head, for example).
    ONNX Runtime fuses DequantizeLinear -> Conv -> QuantizeLinear into one int8 QLinearConv only when the bias is an
    initializer, so behind an Identity a convolution stays fp32 between a dequantize and a quantize. Returns how many
    Identity nodes were replaced."""
    initializers = {t.name: t for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    keep, added = [], []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            added.append(copy)
        else:
            keep.append(node)
    if added:
        del model.graph.node[:]
        model.graph.node.extend(keep)
        model.graph.initializer.extend(added)
    return len(added)


def network_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the quantizable nodes inside the networks."""
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and n.name.startswith(NETWORKS)]


class _Images:
    """ONNX Runtime's CalibrationDataReader over pre-processed images, one image per batch."""

    def __init__(self, files: list[Path], info: ExportInfo, progress: bool) -> None:
        self.files, self.pre = files, preprocessor_for(info)
        self.batch = info.input.batch
        self.bar = tqdm(total=len(files), desc="calibrate", unit="img", disable=not progress)
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.files):
            self.bar.close()
            return None
        image = load_rgb(self.files[self.index])
        self.index += 1
        self.bar.update(1)
        batch, sizes = self.pre([image] * self.batch)
        return {"images": batch.numpy(), "image_sizes": sizes.numpy()}


def calibration_files(folder: str | Path, count: int) -> list[Path]:
    """The first `count` images of a folder, sorted by name."""
    files = image_folder(folder, "calibration images")
    if count < 1:
        raise MaskrtError(f"the calibration needs at least 1 image, got {count}")
    return files[:count]


def quantize_export(export_dir: str | Path, calibration: str | Path, out: str | Path, *, images: int = 32,
                    method: str = "minmax", progress: bool = True, force: bool = False,
                    max_dap_drop: float | None = None, data: str | Path | None = None,
                    checkpoint: str | Path | None = None, split: str | None = None, limit: int | None = None,
                    max_excluded: int | None = None) -> ExportInfo:
    """Write the folder `out`: `export_dir`'s files plus model.int8.onnx calibrated on `images` images.

    With `max_dap_drop`, the INT8 graph's dAP against plain model(images) of the export's checkpoint (`checkpoint`,
    or the path export.json records) on `data`'s `split` (first `limit` images) must hold it: the worst quantized
    nodes are kept in fp32 until it does or `max_excluded` are (runtime/quantize/accuracy_control.py); the quantization
    record says which, with every step's dAP and speed, and whether the limit was met."""
    from maskrt.runtime.quantize.accuracy_control import (
        AccuracyTarget,
        StagedInt8,
        control_accuracy,
        find_checkpoint,
    )

    check_choice("calibration method", method, METHODS)
    info = ExportInfo.read(export_dir)
    controlled = max_dap_drop is not None
    if controlled and (not np.isfinite(max_dap_drop) or max_dap_drop < 0):
        raise MaskrtError(f"the dAP drop limit must be >= 0 and finite, got {max_dap_drop}")
    if controlled and (data is None or not is_coco_dataset(data)):
        raise MaskrtError(f"--max-dap-drop needs --data: a COCO-format dataset (an annotations/ folder) whose {split} "
                          f"split measures the dAP{'' if data is None else f'; {data} has none'}")
    idle = [name for name, value in (("--data", data), ("--checkpoint", checkpoint), ("--split", split),
                                     ("--limit", limit), ("--max-excluded", max_excluded)) if value is not None]
    if idle and not controlled:
        raise MaskrtError(f"{', '.join(idle)} only serve{'s' if len(idle) == 1 else ''} accuracy control: add "
                          f"--max-dap-drop D (or drop {'it' if len(idle) == 1 else 'them'})")
    split = split or "val"
    inputs = [("export folder", export_dir), ("calibration folder", calibration),
              *((("dataset", data),) if data is not None else ()),
              *((("checkpoint", checkpoint),) if checkpoint is not None else ())]
    check_apart([out], inputs)
    out = check_output_dir(out, force=force)
    source = info.verified_graph(export_dir, "portable")
    ckpt = find_checkpoint(info, checkpoint) if controlled else None
    if controlled:  # the dataset's classes against the export's, before any calibration
        from maskrt.runtime.parity.compare import parity_images

        parity_images(data, split, info, export_dir)
    files = calibration_files(calibration, images)
    record = {"method": method, "images": len(files), "calibration": str(calibration),
              "quantized_ops": list(QUANTIZED_OPS), "networks": list(NETWORKS),
              "format": "QDQ, int8 weights per channel, uint8 activations per tensor"}
    with staged_dir(out) as staging:
        for name, graph in info.graphs.items():  # the export's graphs (engines and other files stay behind)
            if name not in ("portable_int8", "trt_int8"):  # an earlier quantization's, replaced by this one
                shutil.copy2(Path(export_dir) / graph.file, staging / graph.file)
        target = staging / GRAPHS["portable_int8"].file
        prepared = staging / "model.fp32-for-int8.onnx"
        model = onnx.load(str(source))
        inline_shared_constants(model)
        onnx.save(model, str(prepared))
        nodes = network_nodes(model)
        del model

        def requantize(excluded: list[str]) -> None:
            _quantize(prepared, target, files, info, method, [n for n in nodes if n not in set(excluded)], progress)

        def write_info() -> ExportInfo:
            graphs = {**info.graphs, "portable_int8": GraphFile(target.name, sha256(target),
                                                                check_graph(target, "portable"))}
            trt_int8 = staging / GRAPHS["trt_int8"].file
            if "trt_int8" in record:
                graphs["trt_int8"] = GraphFile(trt_int8.name, sha256(trt_int8), check_graph(trt_int8, "trt"))
            else:
                graphs.pop("trt_int8", None)  # an earlier run's, calibrated otherwise: not copied, not recorded
            result = replace(info, graphs=graphs, quantization=dict(record))
            result.write(staging)
            return result

        try:
            requantize([])
            if controlled:
                assert ckpt is not None
                goal = AccuracyTarget(ckpt, data, max_dap_drop, split=split, limit=limit,
                                      max_excluded=max_excluded or DEFAULT_MAX_EXCLUDED_NODES)
                record["accuracy_control"] = control_accuracy(StagedInt8(staging, nodes, requantize, write_info),
                                                              goal, progress=progress)
            if "trt" in info.graphs:  # the TensorRT graph too, with the same ranges and the same nodes kept in fp32
                excluded = record.get("accuracy_control", {}).get("excluded_nodes", [])
                record["trt_int8"] = _quantize_trt(staging, prepared, method, excluded)
        finally:
            prepared.unlink(missing_ok=True)
            _ranges(prepared).unlink(missing_ok=True)
        result = write_info()
    return result


def _ranges(prepared: Path) -> Path:
    """The calibration cache of a run: the tensor ranges measured once, reused by every later quantization."""
    return prepared.with_name(prepared.stem + ".ranges.json")


def _quantize_trt(staging: Path, prepared: Path, method: str, excluded: list[str]) -> dict:
    """model.trt.int8.onnx from model.trt.onnx with the ranges measured on model.onnx (runtime/quantize/
    tensorrt_qdq.py); returns its record."""
    from onnxruntime.quantization import QuantType

    from maskrt.export.int8_graph import check_trt_int8
    from maskrt.runtime.quantize.tensorrt_qdq import TRT_EXTRA_OPTIONS, TRT_QUANTIZED_OPS, trt_network_nodes, trt_ranges

    trt = onnx.load(str(staging / GRAPHS["trt"].file))
    inline_shared_constants(trt)
    trt_prepared = staging / "model.trt.fp32-for-int8.onnx"
    onnx.save(trt, str(trt_prepared))
    ranges = _ranges(trt_prepared)
    target = staging / GRAPHS["trt_int8"].file
    try:
        count = trt_ranges(_ranges(prepared), onnx.load(str(prepared)), trt, ranges)
        nodes = trt_network_nodes(trt, NETWORKS, excluded)
        _quantize_static(trt_prepared, target, None, method, nodes=nodes, op_types=TRT_QUANTIZED_OPS,
                         activations=QuantType.QInt8, cache=ranges, extra_options=TRT_EXTRA_OPTIONS)
    finally:
        trt_prepared.unlink(missing_ok=True)
        ranges.unlink(missing_ok=True)
    checked = check_trt_int8(onnx.load(str(target)), target)
    return {"file": target.name, "format": "QDQ for TensorRT: int8 activations per tensor and int8 weights per "
            "channel, symmetric (zero points 0)", "quantized_ops": list(TRT_QUANTIZED_OPS),
            "ranges_from": "model.onnx's calibration, tensors paired by what computes them", "ranges": count,
            "quantized_nodes": len(nodes), "excluded_nodes": list(excluded), **checked}


def _quantize(prepared: Path, target: Path, files: list[Path], info: ExportInfo, method: str, nodes: list[str],
              progress: bool) -> None:
    """quantize_static of the prepared fp32 graph into model.int8.onnx (`target`), quantizing `nodes` only,
    calibrated on `files` once per run (the ranges cached beside `prepared`); checked."""
    from onnxruntime.quantization import QuantType

    cache = _ranges(prepared)
    reader = None if cache.is_file() else _Images(files, info, progress)
    _quantize_static(prepared, target, reader, method, nodes=nodes, op_types=QUANTIZED_OPS,
                     activations=QuantType.QUInt8, cache=cache)


def _quantize_static(prepared: Path, target: Path, reader: object, method: str, *, nodes: list[str],
                     op_types: tuple[str, ...], activations: object, cache: Path,
                     extra_options: dict | None = None) -> None:
    """ONNX Runtime's quantize_static in the QDQ format (int8 weights per channel), its chatter silenced; the
    ranges come from `reader`'s calibration, saved to `cache`, or from `cache` when `reader` is None; checked."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs every bias copy and a pre-processing hint at INFO/WARNING
    try:
        with flat_histograms(), contextlib.redirect_stdout(io.StringIO()):  # its histogram step prints
            quantize_static(str(prepared), str(target), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(op_types), nodes_to_quantize=nodes, per_channel=True,
                            activation_type=activations, weight_type=QuantType.QInt8,
                            calibrate_method=methods[method], calibration_cache_path=str(cache),
                            extra_options=extra_options)
    except MaskrtError:
        raise
    except Exception as exc:  # onnxruntime's quantizer raises its own exception types
        raise MaskrtError(f"{prepared.name}: quantization failed ({str(exc).splitlines()[0]})") from None
    finally:
        root.setLevel(level)
    onnx.checker.check_model(onnx.load(str(target)), full_check=True)
