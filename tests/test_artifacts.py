"""The artifact schemas of maskrt.core: export.json and ENGINE.json written and read back by one dataclass each, and
every bad field named in a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maskrt.core.artifacts import EngineInfo, ExportInfo, GraphFile, InputSpec, Profile, TensorSpec
from maskrt.core.errors import MaskrtError


def _export_info() -> ExportInfo:
    return ExportInfo(
        model_config={"name": "slim", "num_classes": 2}, classes=[{"id": 1, "name": "a"}, {"id": 7, "name": "b"}],
        input=InputSpec(height=128, width=160, batch=2, dynamic_batch=True, dynamic_size=True,
                        height_range=(32, 192), width_range=(64, 192)), mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.2, 0.2), min_size=128, max_size=160, limits={"max_detections": 50},
        roi_align={"box": {"output_height": 7}}, opset=17,
        graphs={"portable": GraphFile("model.onnx", "ab" * 32, {"Conv": 3}), "trt": GraphFile("model.trt.onnx", "cd")},
        checkpoint={"file": "last.pt", "sha256": "ef"}, versions={"maskrt": "0.1.0"},
    )  # fmt: skip


def test_export_info_round_trips(tmp_path: Path) -> None:
    info = _export_info()
    path = info.write(tmp_path)
    assert path == tmp_path / "export.json"
    written = json.loads(path.read_text())["input"]  # the documented layout
    assert (written["height"], written["height_range"], written["width_range"]) == (128, [32, 192], [64, 192])
    assert ExportInfo.read(tmp_path) == info
    assert info.graph_path(tmp_path, "trt") == tmp_path / "model.trt.onnx"
    with pytest.raises(MaskrtError, match="no 'int8' graph"):
        info.graph_path(tmp_path, "int8")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("classes"), "export.json: classes is missing"),
        (lambda d: d.update(classes=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]), "category id 1 twice"),
        (lambda d: d["input"].update(width=100), "multiples of 32"),
        (lambda d: d["input"].update(batch=0), r"input.batch must be an integer in \[1, 64\]"),
        (lambda d: d["input"].update(dynamic_batch="yes"), "input.dynamic_batch must be true or false"),
        (lambda d: d["normalization"].update(std=[0.2, 0.0, 0.2]), "normalization.std must be positive"),
        (lambda d: d["normalization"].update(mean=[0.5]), "normalization.mean must be a list of 3 numbers"),
        (lambda d: d.update(model_config=[1, 2]), "model_config must be a JSON object"),
        (lambda d: d["graphs"]["trt"].update(file="/etc/passwd"), "graphs.trt.file must be a file name"),
        (lambda d: d["graphs"].update(onnx16={"file": "x.onnx", "sha256": "0"}), "graphs.onnx16 is not a graph"),
        (lambda d: d.update(graphs={}), "graphs names no graph"),
        (lambda d: d["limits"].pop("max_detections"), "limits.max_detections is missing"),
        (lambda d: d.update(format_version=1), "format_version 1 is not supported"),
        (lambda d: d["input"].update(height_range=[32]), r"input.height_range must be \[min, max\]"),
        (lambda d: d["input"].update(width_range=[96, 64]), r"input.width_range must be \[min, max\]"),
        (lambda d: d["input"].update(width_range=[64, 100]), "width_range must be"),
        (lambda d: d["input"].update(height=256), "lies outside its ranges"),
        (lambda d: d["input"].pop("dynamic_size"), "input.dynamic_size is missing"),
        (lambda d: d["input"].update(dynamic_size=False), "a static input .* must have ranges equal to its size"),
        # the limits the CLI enforces (issue 22): an export.json cannot ask for more than `maskrt export` makes
        (lambda d: d["input"].update(height_range=[32, 100000]), r"height_range must be .*in \[32, 4096\]"),
        (lambda d: d["input"].update(batch=65), r"input.batch must be an integer in \[1, 64\]"),
        (lambda d: d["limits"].update(max_detections=10**6), r"max_detections must be an integer in \[1, 1000\]"),
        (lambda d: d.update(opset=99), r"opset must be an integer in \[17, 20\]"),
        (lambda d: d["resize"].update(max_size=100000), r"resize.max_size must be an integer in \[1, 4096\]"),
        (lambda d: d["resize"].update(min_size=192), "min_size 192 exceeds resize.max_size 160"),
        (lambda d: d["normalization"].update(mean=[0.5, float("nan"), 0.3]), "mean finite"),
        (lambda d: d["limits"].update(box_nms_thresh=1.5), r"limits.box_nms_thresh must be a number in \[0, 1\]"),
        (lambda d: d["limits"].update(rpn_post_nms_top_n=20), "max_detections 50 exceeds limits.rpn_post_nms_top_n"),
        (lambda d: d["model_config"].update(num_classes=5), "2 classes but model_config.num_classes is 5"),
    ],
)
def test_export_info_names_the_bad_field(tmp_path: Path, change, message: str) -> None:  # noqa: ANN001
    document = _export_info().to_json()
    change(document)
    (tmp_path / "export.json").write_text(json.dumps(document))
    with pytest.raises(MaskrtError, match=message) as error:
        ExportInfo.read(tmp_path)
    assert "\n" not in str(error.value) and str(tmp_path / "export.json") in str(error.value)


def test_export_info_file_errors(tmp_path: Path) -> None:
    with pytest.raises(MaskrtError, match="export folder not found"):
        ExportInfo.read(tmp_path / "nowhere")
    with pytest.raises(MaskrtError, match="export.json: missing"):
        ExportInfo.read(tmp_path)
    (tmp_path / "export.json").write_text("[1, 2")
    with pytest.raises(MaskrtError, match="export.json: corrupt"):
        ExportInfo.read(tmp_path)


def _engine_info() -> EngineInfo:
    return EngineInfo(
        engine="model.fp16.engine", engine_sha256="00", builder="tensorrt-rtx", builder_version="1.7.1",
        precision="fp16", profiles={"images": Profile((1, 3, 32, 64), (1, 3, 128, 160), (4, 3, 192, 192))},
        inputs=(TensorSpec("images", (-1, 3, -1, -1), "FLOAT"), TensorSpec("image_sizes", (-1, 2), "INT64")),
        outputs=(TensorSpec("num_detections", (-1,), "INT32"),), onnx_sha256="01", plugin_library_sha256="02",
        compute_capabilities=("8.6", "8.9"), build_seconds=4.5, export=_export_info(), versions={"maskrt": "0.1"},
    )  # fmt: skip


def test_engine_info_round_trips(tmp_path: Path) -> None:
    info = _engine_info()
    path = info.write(tmp_path / "model.fp16.engine")
    assert path.name == "model.fp16.engine.json"
    assert EngineInfo.read(tmp_path / "model.fp16.engine") == info


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(builder="onnxruntime"), "builder must be one of tensorrt, tensorrt-rtx"),
        (lambda d: d.update(precision="int4"), "precision must be one of fp32, fp16, int8"),
        (lambda d: d.update(precision="int8"), "an int8 engine carries its graph's quantization record"),
        (lambda d: d.update(int8={"method": "minmax"}), "an int8 engine carries its graph's quantization record"),
        (lambda d: d.update(tf32=True), "tf32 is an fp32 engine's option, not fp16's"),
        (lambda d: d.pop("strongly_typed"), "strongly_typed is missing"),
        (lambda d: d["profiles"]["images"].update(opt=[1, 3, 2000, 800]), "min <= opt <= max"),
        (lambda d: d.update(engine="../model.engine"), "engine must be a file name"),
        (lambda d: d.pop("plugin_library_sha256"), "plugin_library_sha256 is missing"),
        (lambda d: d.update(format_version=1), "format_version 1 is not supported; build the engine again"),
        (lambda d: d.update(inputs=[{"name": "images", "shape": "?", "dtype": "FLOAT"}]), "inputs must be a list"),
        (lambda d: d.update(build_seconds=-1), "build_seconds must be a number >= 0"),
        (lambda d: d["export"].pop("classes"), "export: classes is missing"),
        (lambda d: d["profiles"]["images"].update(max=[4, 3, 100000, 192]), "lies outside the export's input"),
        (lambda d: d["profiles"]["images"].update(max=[65, 3, 192, 192]), r"batch must be in \[1, 64\]"),
        (lambda d: d.update(profiles={}), "no entry for the input 'images'"),
        (lambda d: d.update(compute_capabilities=["sm_86"]), "compute_capabilities must be a list of strings"),
        (lambda d: d["outputs"][0].update(shape=[-1, 10**9]), "outputs must be a list"),
    ],
)
def test_engine_info_names_the_bad_field(tmp_path: Path, change, message: str) -> None:  # noqa: ANN001
    document = _engine_info().to_json()
    change(document)
    EngineInfo.path_for(tmp_path / "e.engine").write_text(json.dumps(document))
    with pytest.raises(MaskrtError, match=message):
        EngineInfo.read(tmp_path / "e.engine")
