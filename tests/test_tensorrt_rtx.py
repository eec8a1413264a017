"""The plugin library in TensorRT-RTX on a machine without a GPU: registration, ONNX parsing of MultiLevelRoIAlign
and BatchedNMS nodes with dynamic shapes, fp32 and fp16 engines built and serialized with an optimization profile,
one graph holding both ops (RoIAlign of the boxes NMS keeps), and the creators' rejection of bad fields.

What RTX can report without a GPU: the network's output shape and type after parsing (computed by TensorRT from the
plugin's getOutputShapes / getOutputDataTypes through IExprBuilder) and the serialized plan. Deserializing the plan
needs a CUDA driver, so the engine's own shapes are checked only where a GPU is present (tests/test_roi_align_gpu.py
runs the kernel itself). Creator rejections run in a subprocess, so that a crash fails the test instead of killing
pytest, and so that the messages can be captured whatever logger an earlier test registered with TensorRT.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import require_tensorrt_rtx

from maskrt.plugins.nms.spec import NMSSpec
from maskrt.plugins.roi_align.spec import FPN_P2_P5_SCALES, RoIAlignSpec

trt = require_tensorrt_rtx()

LEVELS = (2, 3, 4, 5)
CHANNELS = 256


@pytest.fixture(scope="module")
def loaded(plugin_library: Path) -> Path:
    from maskrt.plugins import roi_align

    return roi_align.load_into(trt)


def _model(spec: RoIAlignSpec, fp16: bool, static: tuple[int, int, int, int] | None = None):
    """A one-node ONNX model: rois [B, R, 4] + P2..P5 -> MultiLevelRoIAlign. Dynamic B/R/H/W unless `static`
    gives (B, R, H_img, W_img)."""
    import onnx
    from onnx import helper

    ftype = onnx.TensorProto.FLOAT16 if fp16 else onnx.TensorProto.FLOAT
    if static:
        b, r, h, w = static
        rois_shape = [b, r, 4]
        feat_shapes = [[b, CHANNELS, h >> lvl, w >> lvl] for lvl in LEVELS]
    else:
        rois_shape = ["B", "R", 4]
        feat_shapes = [["B", CHANNELS, f"H{lvl}", f"W{lvl}"] for lvl in LEVELS]
    inputs = [helper.make_tensor_value_info("rois", onnx.TensorProto.FLOAT, rois_shape)]
    inputs += [helper.make_tensor_value_info(f"p{lvl}", ftype, s) for lvl, s in zip(LEVELS, feat_shapes, strict=True)]
    output = helper.make_tensor_value_info("pooled", ftype, None)
    node = spec.make_onnx_node("rois", [f"p{lvl}" for lvl in LEVELS], "pooled", name="roi_align")
    graph = helper.make_graph([node], "roi_align_only", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("maskrt", 1)])
    return model.SerializeToString()


def _parse(model: bytes):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(model)
    errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
    return builder, network, parser, ok, errors


def test_load_into_registers_the_creator_idempotently(loaded: Path) -> None:
    from maskrt.plugins import SPECS, load_into, roi_align

    registry = trt.get_plugin_registry()
    creator = registry.get_creator("MultiLevelRoIAlign", "1", "maskrt")
    assert creator is not None
    assert (creator.name, creator.plugin_version, creator.plugin_namespace) == ("MultiLevelRoIAlign", "1", "maskrt")
    assert {f.name for f in creator.field_names} == {
        "output_height", "output_width", "sampling_ratio", "aligned", "spatial_scales", "canonical_level",
        "canonical_scale", "level_eps",
    }  # fmt: skip
    nms_creator = registry.get_creator("BatchedNMS", "1", "maskrt")
    assert nms_creator is not None
    assert {f.name for f in nms_creator.field_names} == {"iou_threshold", "score_threshold", "max_output_boxes"}
    for spec in SPECS.values():  # the C++ creators and the Python specs name the same ops and fields
        creator = registry.get_creator(spec.IDENTITY.name, spec.IDENTITY.version, spec.IDENTITY.namespace)
        assert creator is not None and {f.name for f in creator.field_names} == set(spec.FIELDS), spec.IDENTITY
    count = len(registry.all_creators)
    assert load_into(trt) == loaded == roi_align.library_path()
    assert len(registry.all_creators) == count
    libs = Path(next(iter(__import__("tensorrt_rtx_libs").__path__)))
    assert (libs / "libtensorrt_rtx.so").exists()  # the symlink the ONNX parser needs


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("output_size", [7, 14])
def test_onnx_plugin_node_builds_a_serialized_engine(loaded: Path, fp16: bool, output_size: int) -> None:
    spec = RoIAlignSpec.mask_rcnn(output_size)
    builder, network, _parser, ok, errors = _parse(_model(spec, fp16))
    assert ok, errors
    assert network.num_layers == 1
    layer = network.get_layer(0)
    assert layer.type == trt.LayerType.PLUGIN_V3
    out = network.get_output(0)
    assert tuple(out.shape) == (-1, -1, CHANNELS, output_size, output_size)
    assert out.dtype == (trt.DataType.HALF if fp16 else trt.DataType.FLOAT)
    assert network.get_input(0).dtype == trt.DataType.FLOAT  # rois stay fp32

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("rois", (1, 1, 4), (1, 1000, 4), (2, 1000, 4))
    for lvl in LEVELS:
        s = 2**lvl
        profile.set_shape(f"p{lvl}", (1, CHANNELS, 64 // s, 64 // s), (1, CHANNELS, 800 // s, 1216 // s),
                          (2, CHANNELS, 1344 // s, 1344 // s))  # fmt: skip
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None, "TensorRT-RTX could not build the engine"
    blob = bytes(plan)
    assert blob.count(b"MultiLevelRoIAlign") >= 1 and b"maskrt" in blob  # the plugin layer is in the plan
    for field in (b"output_height", b"output_width", b"sampling_ratio", b"aligned", b"spatial_scales",
                  b"canonical_level", b"canonical_scale", b"level_eps"):  # fmt: skip
        assert field in blob, f"field {field!r} not serialized"


def test_static_shapes_give_the_concrete_output_shape(loaded: Path) -> None:
    spec = RoIAlignSpec.mask_rcnn(7)
    _builder, network, _parser, ok, errors = _parse(_model(spec, fp16=False, static=(2, 300, 800, 1216)))
    assert ok, errors
    assert tuple(network.get_output(0).shape) == (2, 300, CHANNELS, 7, 7)


def test_spatial_scale_count_must_match_feature_inputs(loaded: Path, capfd: pytest.CaptureFixture) -> None:
    """A node with 3 spatial scales but 4 feature inputs fails cleanly (logged error, no engine, no crash)."""
    import onnx

    model = onnx.load_from_string(_model(RoIAlignSpec.mask_rcnn(7), fp16=False))
    for attribute in model.graph.node[0].attribute:
        if attribute.name == "spatial_scales":
            del attribute.floats[-1]
    builder, network, _parser, ok, errors = _parse(model.SerializeToString())
    if ok:  # the parser accepted the node: building must fail
        assert builder.build_serialized_network(network, builder.create_builder_config()) is None
    else:
        assert errors
    captured = capfd.readouterr()
    assert "one per spatial_scales value" in captured.out + captured.err


REJECTION_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorrt_rtx as trt

    class Recorder(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages = []
        def log(self, severity, msg):
            self.messages.append(msg)

    recorder = Recorder()
    builder = trt.Builder(recorder)
    from maskrt.plugins import roi_align
    roi_align.load_into(trt)
    registry = trt.get_plugin_registry()

    def field(name, value, kind):
        if kind == "f":
            return trt.PluginField(name, np.asarray(value, np.float32).reshape(-1), trt.PluginFieldType.FLOAT32)
        return trt.PluginField(name, np.asarray(value, np.int32).reshape(-1), trt.PluginFieldType.INT32)

    results = {}
    for case in json.loads(sys.argv[1]):
        fields = [field(*f) for f in case["fields"]]
        creator = registry.get_creator(case.get("plugin", "MultiLevelRoIAlign"), "1", "maskrt")
        plugin = creator.create_plugin(case["name"], trt.PluginFieldCollection(fields), trt.TensorRTPhase.BUILD)
        results[case["name"]] = plugin is not None
    sys.stderr.flush()
    print(json.dumps({"results": results, "messages": recorder.messages}))
    """
)

GOOD_FIELDS = [
    ["output_height", 7, "i"], ["output_width", 7, "i"], ["sampling_ratio", 2, "i"], ["aligned", 0, "i"],
    ["canonical_level", 4, "i"], ["spatial_scales", list(FPN_P2_P5_SCALES), "f"], ["canonical_scale", 224.0, "f"],
    ["level_eps", 1e-6, "f"],
]  # fmt: skip


def _with(name: str, value, kind: str | None = None) -> list:
    return [[n, value, kind or k] if n == name else [n, v, k] for n, v, k in GOOD_FIELDS]


REJECTIONS = {
    "missing_output_width": ([f for f in GOOD_FIELDS if f[0] != "output_width"], "missing field(s): output_width"),
    "missing_spatial_scales": ([f for f in GOOD_FIELDS if f[0] != "spatial_scales"], "spatial_scales"),
    "unknown_field": (GOOD_FIELDS + [["pooled_size", 7, "i"]], "unknown field 'pooled_size'"),
    "zero_output_height": (_with("output_height", 0), "must be positive"),
    "negative_output_width": (_with("output_width", -7), "must be positive"),
    "non_power_of_two_scale": (_with("spatial_scales", [0.25, 0.125, 0.07, 0.03125]), "not a power of two"),
    "non_consecutive_scales": (_with("spatial_scales", [0.25, 0.0625]), "consecutive"),
    "too_many_scales": (_with("spatial_scales", [2.0**-i for i in range(9)]), "1 to 8"),
    "scales_as_ints": (_with("spatial_scales", [1, 2], "i"), "list of floats"),
    "output_size_as_float": (_with("output_height", 7.0, "f"), "32-bit integer"),
    "output_size_list": (_with("output_height", [7, 7]), "32-bit integer"),
    "aligned_2": (_with("aligned", 2), "aligned must be 0 or 1"),
    "zero_canonical_scale": (_with("canonical_scale", 0.0), "canonical_scale"),
    "duplicate_field": (GOOD_FIELDS + [["aligned", 1, "i"]], "given twice"),
}


def _run_rejections(cases: list[dict]) -> tuple[dict, str]:
    """Runs REJECTION_SCRIPT on `cases`; returns (plugin created per case name, everything logged)."""
    proc = subprocess.run([sys.executable, "-c", REJECTION_SCRIPT, json.dumps(cases)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"creator crashed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report["results"], proc.stderr + "\n".join(report["messages"])  # RTX 1.7 yields no logger: stderr


def _assert_rejected(results: dict, logged: str, rejections: dict) -> None:
    assert results["valid"] is True
    for name, (_fields, message) in rejections.items():
        assert results[name] is False, f"{name}: creator returned a plugin"
        assert f"layer '{name}': " in logged and message in logged.split(f"layer '{name}': ", 1)[1].split("\n")[0], (
            f"{name}: no logged error containing {message!r}"
        )


def test_creator_rejects_bad_fields_without_crashing(loaded: Path) -> None:
    cases = [{"name": "valid", "fields": GOOD_FIELDS}]
    cases += [{"name": name, "fields": fields} for name, (fields, _) in REJECTIONS.items()]
    _assert_rejected(*_run_rejections(cases), REJECTIONS)


# ---------------------------------------------------------------------------------------------------------------
# BatchedNMS

NMS_GOOD_FIELDS = [["iou_threshold", 0.5, "f"], ["score_threshold", -0.5, "f"], ["max_output_boxes", 100, "i"]]


def _nms_with(name: str, value, kind: str | None = None) -> list:
    return [[n, value, kind or k] if n == name else [n, v, k] for n, v, k in NMS_GOOD_FIELDS]


NMS_REJECTIONS = {
    "nms_negative_max_output": (_nms_with("max_output_boxes", -1), "max_output_boxes must be >= 0"),
    "nms_iou_above_one": (_nms_with("iou_threshold", 1.5), "iou_threshold must be in [0, 1]"),
    "nms_iou_negative": (_nms_with("iou_threshold", -0.1), "iou_threshold must be in [0, 1]"),
    "nms_iou_nan": (_nms_with("iou_threshold", float("nan")), "iou_threshold must be in [0, 1]"),
    "nms_score_inf": (_nms_with("score_threshold", float("inf")), "score_threshold must be finite"),
    "nms_score_nan": (_nms_with("score_threshold", float("nan")), "score_threshold must be finite"),
    "nms_missing_iou": (NMS_GOOD_FIELDS[1:], "missing field(s): iou_threshold"),
    "nms_unknown_field": (NMS_GOOD_FIELDS + [["top_k", 5, "i"]], "unknown field 'top_k'"),
    "nms_duplicate_field": (NMS_GOOD_FIELDS + [["iou_threshold", 0.3, "f"]], "given twice"),
    "nms_max_output_as_float": (_nms_with("max_output_boxes", 100.0, "f"), "32-bit integer"),
    "nms_threshold_as_int": (_nms_with("iou_threshold", 1, "i"), "must be one float"),
    "nms_threshold_list": (_nms_with("iou_threshold", [0.5, 0.6]), "must be one float"),
}


def test_nms_creator_rejects_bad_fields_without_crashing(loaded: Path) -> None:
    cases = [{"name": "valid", "plugin": "BatchedNMS", "fields": NMS_GOOD_FIELDS}]
    cases += [{"name": name, "plugin": "BatchedNMS", "fields": fields} for name, (fields, _) in NMS_REJECTIONS.items()]
    _assert_rejected(*_run_rejections(cases), NMS_REJECTIONS)


def _nms_model(spec: NMSSpec, fp16: bool):
    """A one-node ONNX model: boxes [B, N, 4], scores [B, N], groups [B, N] -> BatchedNMS -> keep, count."""
    import onnx
    from onnx import helper

    stype = onnx.TensorProto.FLOAT16 if fp16 else onnx.TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("boxes", onnx.TensorProto.FLOAT, ["B", "N", 4]),
        helper.make_tensor_value_info("scores", stype, ["B", "N"]),
        helper.make_tensor_value_info("groups", onnx.TensorProto.INT32, ["B", "N"]),
    ]
    outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.INT32, None) for n in ("keep", "count")]
    node = spec.make_onnx_node("boxes", "scores", "groups", "keep", "count", name="nms")
    graph = helper.make_graph([node], "nms_only", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("maskrt", 1)])
    return model.SerializeToString()


def _nms_profile(builder, max_boxes: int):
    profile = builder.create_optimization_profile()
    profile.set_shape("boxes", (1, 0, 4), (2, max_boxes // 2, 4), (4, max_boxes, 4))
    for name in ("scores", "groups"):
        profile.set_shape(name, (1, 0), (2, max_boxes // 2), (4, max_boxes))
    return profile


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize(("max_output", "max_boxes"), [(1000, 5000), (100, 90_000)], ids=["rpn", "box_head"])
def test_nms_onnx_node_builds_a_serialized_engine(loaded: Path, fp16: bool, max_output: int, max_boxes: int) -> None:
    spec = NMSSpec(iou_threshold=0.7, score_threshold=-0.5, max_output_boxes=max_output)
    builder, network, _parser, ok, errors = _parse(_nms_model(spec, fp16))
    assert ok, errors
    assert network.num_layers == 1 and network.get_layer(0).type == trt.LayerType.PLUGIN_V3
    keep, count = network.get_output(0), network.get_output(1)
    assert (keep.name, tuple(keep.shape), keep.dtype) == ("keep", (-1, max_output), trt.DataType.INT32)
    assert (count.name, tuple(count.shape), count.dtype) == ("count", (-1,), trt.DataType.INT32)
    assert network.get_input(1).dtype == (trt.DataType.HALF if fp16 else trt.DataType.FLOAT)

    config = builder.create_builder_config()
    config.add_optimization_profile(_nms_profile(builder, max_boxes))
    plan = builder.build_serialized_network(network, config)
    assert plan is not None, "TensorRT-RTX could not build the engine"
    blob = bytes(plan)
    assert b"BatchedNMS" in blob and b"maskrt" in blob
    for field in (b"iou_threshold", b"score_threshold", b"max_output_boxes"):
        assert field in blob, f"field {field!r} not serialized"


def test_nms_static_shapes_give_the_concrete_output_shapes(loaded: Path) -> None:
    import onnx

    model = onnx.load_from_string(_nms_model(NMSSpec(0.5, 0.05, 0), fp16=False))
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_value = {"B": 3, "N": 0}[dim.dim_param]
    _builder, network, _parser, ok, errors = _parse(model.SerializeToString())
    assert ok, errors
    assert tuple(network.get_output(0).shape) == (3, 0) and tuple(network.get_output(1).shape) == (3,)


def test_graph_with_both_plugin_ops_builds(loaded: Path) -> None:
    """RoIAlign of the boxes that BatchedNMS keeps (GatherElements on the keep indices, -1 padding clamped to 0):
    one engine holding both plugin ops."""
    import onnx
    from onnx import helper

    k = 100
    nms_spec = NMSSpec(iou_threshold=0.5, score_threshold=0.05, max_output_boxes=k)
    pool = RoIAlignSpec.mask_rcnn(14)
    names = [f"p{lvl}" for lvl in LEVELS]
    inputs = [
        helper.make_tensor_value_info("boxes", onnx.TensorProto.FLOAT, ["B", "N", 4]),
        helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["B", "N"]),
        helper.make_tensor_value_info("groups", onnx.TensorProto.INT32, ["B", "N"]),
    ]
    inputs += [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["B", CHANNELS, f"H{n}", f"W{n}"])
               for n in names]  # fmt: skip
    constants = [
        helper.make_tensor("zero", onnx.TensorProto.INT32, [], [0]),
        helper.make_tensor("minus_one", onnx.TensorProto.INT64, [1], [-1]),
        helper.make_tensor("four", onnx.TensorProto.INT64, [1], [4]),
    ]
    nodes = [
        nms_spec.make_onnx_node("boxes", "scores", "groups", "keep", "count", name="nms"),
        helper.make_node("Max", ["keep", "zero"], ["keep_valid"]),
        helper.make_node("Unsqueeze", ["keep_valid", "minus_one"], ["keep_1"]),
        helper.make_node("Shape", ["keep"], ["keep_shape"]),
        helper.make_node("Concat", ["keep_shape", "four"], ["index_shape"], axis=0),
        helper.make_node("Expand", ["keep_1", "index_shape"], ["index"]),
        helper.make_node("Cast", ["index"], ["index64"], to=onnx.TensorProto.INT64),
        helper.make_node("GatherElements", ["boxes", "index64"], ["rois"], axis=1),
        pool.make_onnx_node("rois", names, "masks_pooled", name="mask_pool"),
    ]
    outputs = [helper.make_tensor_value_info("masks_pooled", onnx.TensorProto.FLOAT, None),
               helper.make_tensor_value_info("count", onnx.TensorProto.INT32, None)]  # fmt: skip
    graph = helper.make_graph(nodes, "nms_then_roi_align", inputs, outputs, initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("maskrt", 1)])
    builder, network, _parser, ok, errors = _parse(model.SerializeToString())
    assert ok, errors
    plugin_layers = [network.get_layer(i) for i in range(network.num_layers)]
    assert sum(layer.type == trt.LayerType.PLUGIN_V3 for layer in plugin_layers) == 2
    assert tuple(network.get_output(0).shape) == (-1, k, CHANNELS, 14, 14)
    assert tuple(network.get_output(1).shape) == (-1,)

    config = builder.create_builder_config()
    profile = _nms_profile(builder, 4000)
    for lvl, n in zip(LEVELS, names, strict=True):
        s = 2**lvl
        profile.set_shape(n, (1, CHANNELS, 64 // s, 64 // s), (2, CHANNELS, 800 // s, 1216 // s),
                          (4, CHANNELS, 1344 // s, 1344 // s))  # fmt: skip
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None, "TensorRT-RTX could not build the engine with both plugin ops"
    blob = bytes(plan)
    assert b"BatchedNMS" in blob and b"MultiLevelRoIAlign" in blob
