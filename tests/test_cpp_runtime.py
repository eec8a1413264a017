"""The C++ runtime (runtime/cpp: maskrt-infer) held to the Python runtime (issue 36).

`maskrt parity --runtime cpp` runs both runtimes with OpenVINO on the same export and images and pairs their
detections (runtime/parity/runtimes.py): on the real-accuracy fixture's validation images (model.onnx f32 and bf16,
model.int8.onnx) and on photographs at odd sizes and modes (scikit-image's, plus gray, 16-bit, palette, RGBA and
every EXIF orientation made here), which exercise the resize, the colour conversions and the orientation. A build of
maskrt-infer with an injected pre-processing fault (channels in BGR order) must fail it. Bad input: one line, exit 2,
nothing written.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import random_checkpoint
from PIL import Image

from maskrt.core.machine import machine_line
from maskrt.runtime.native import build_info, infer_binary

CLI = [sys.executable, "-m", "maskrt.cli"]
VAL_IMAGES = 48  # the fixture's validation images each parity run compares
MIN_PAIRS = 100  # detection pairs a run on the fixture must compare (it finds about 5 per image)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, check=False)


def _infer(*args: str, binary: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary or infer_binary()), *args], capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def export(accurate_model, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    """The real-accuracy model exported (model.onnx) and quantized (model.int8.onnx, 16 calibration images)."""
    from maskrt.export.onnx_export import export_checkpoint
    from maskrt.runtime.quantize.calibration import quantize_export

    root = tmp_path_factory.mktemp("cpp_export")
    export_checkpoint(accurate_model.checkpoint, root / "fp")
    quantize_export(root / "fp", accurate_model.data / "train", root / "export", images=16, progress=False)
    return root / "export"


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random slim model's export (model.onnx, model.trt.onnx): what the bad-input checks run on."""
    from maskrt.export.onnx_export import export_checkpoint

    root = tmp_path_factory.mktemp("cpp_small")
    export_checkpoint(random_checkpoint(root / "slim.pt"), root / "export")
    return root / "export"


@pytest.fixture(scope="module")
def val_images(accurate_model, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    """The first VAL_IMAGES validation images of the fixture, in a folder."""
    folder = tmp_path_factory.mktemp("cpp_val")
    for path in sorted((accurate_model.data / "val").glob("*.png"))[:VAL_IMAGES]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def photos(accurate_model, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    """Photographs at odd sizes and in every mode the runtimes read, with the fixture's shapes pasted in (so that the
    model finds objects in them): RGB PNG and JPEG, gray PNG and JPEG, 16-bit gray, palette, RGBA, EXIF 1..8."""
    data = importlib.resources.files("skimage") / "data"
    folder = tmp_path_factory.mktemp("cpp_photos")
    shapes = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((accurate_model.data / "val").glob("*.png"))[:8]]

    def scene(name: str, crop: tuple[int, int], k: int) -> np.ndarray:
        with Image.open(data / name) as im:  # type: ignore[arg-type]
            photo = np.array(im.convert("RGB"))[: crop[0], : crop[1]]
        tile = shapes[k % len(shapes)]
        h, w = min(tile.shape[0], photo.shape[0]), min(tile.shape[1], photo.shape[1])
        photo[:h, :w] = tile[:h, :w]
        return photo

    Image.fromarray(scene("chelsea.png", (300, 451), 0)).save(folder / "odd.png")
    Image.fromarray(scene("coffee.png", (400, 333), 1)).save(folder / "rgb.jpg", quality=90)
    gray = scene("camera.png", (203, 377), 2).mean(axis=2).astype(np.uint8)
    Image.fromarray(gray).save(folder / "gray.png")
    Image.fromarray(gray).save(folder / "gray.jpg", quality=95)
    Image.fromarray(gray.astype(np.uint16) * 200).save(folder / "gray16.png")
    Image.fromarray(scene("astronaut.png", (150, 170), 3)).convert("P").save(folder / "palette.png")
    rgb = scene("rocket.jpg", (250, 199), 4)
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 90, np.uint8)])).save(folder / "rgba.png")
    for orientation in range(1, 9):
        im = Image.fromarray(scene("coffee.png", (211, 157), orientation))
        exif = im.getexif()
        exif[0x0112] = orientation
        im.save(folder / f"exif{orientation}.jpg", exif=exif.tobytes(), quality=92)
    im = Image.fromarray(scene("astronaut.png", (131, 97), 5))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(folder / "exif6.png", exif=exif.tobytes())
    return folder


def _parity(export: Path, images: Path, out: Path, *extra: str, binary: Path | None = None) -> dict:
    env = {**os.environ, **({"MASKRT_INFER": str(binary)} if binary else {})}
    done = subprocess.run([*CLI, "parity", "--runtime", "cpp", "--model", str(export), "--data", str(images),
                           "--out", str(out), "--threads", "2", "-q", *extra],
                          capture_output=True, text=True, timeout=900, check=False, env=env)
    assert (out / "report.json").is_file(), done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    print(machine_line(), done.stdout.strip())
    assert done.returncode == report["exit_code"]
    return report


def test_the_build_holds_the_runtime_and_its_tensorrt_backend() -> None:
    info = build_info()
    assert info.get("built") is True, info
    assert info["fault"] == ""  # the installed build has no injected fault
    # The TensorRT backend is compiled wherever the plugins' TensorRT headers and the CUDA toolkit are (CI: always).
    if shutil.which("nvcc"):
        assert info["tensorrt"] is True, info
    assert _infer("--help").returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("graph,precision", [("portable", "f32"), ("portable_int8", "f32"), ("portable", "bf16")])
def test_cpp_equals_python_on_the_fixture(export: Path, val_images: Path, tmp_path: Path, graph: str,
                                          precision: str) -> None:
    if precision == "bf16":
        from maskrt.runtime.backends.openvino_runtime import cpu_supports_bf16

        if not cpu_supports_bf16():
            pytest.skip(f"this CPU has no native bfloat16 ({machine_line()})")
    report = _parity(export, val_images, tmp_path / "p", "--graph", graph, "--precision", precision)
    assert report["verdict"] == "passed", report["reasons"]
    assert report["images"] == VAL_IMAGES
    assert report["pairs"] >= MIN_PAIRS and report["unpaired_count"] == 0
    assert report["python_detections"] == report["cpp_detections"] == report["pairs"] + report["unpaired_at_threshold"]
    assert report["worst"]["score_diff"] <= 1e-4 and report["worst"]["box_diff"] <= 0.01
    assert report["worst"]["mask_iou"] >= 0.99
    assert report["empty_mask_pairs"] < report["pairs"] / 10  # the IoUs compare real masks


@pytest.mark.slow
def test_cpp_equals_python_on_photographs(export: Path, photos: Path, tmp_path: Path) -> None:
    report = _parity(export, photos, tmp_path / "p", "--min-detections", "20")
    assert report["verdict"] == "passed", report["reasons"]
    assert report["images"] == len(list(photos.iterdir())) == 16
    assert report["pairs"] >= 20
    files = {p["file_name"] for p in report["worst_pairs"]}
    assert files  # the pairs are listed with their files


@pytest.fixture(scope="module")
def faulty_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """maskrt-infer built with the test fault MASKRT_CPP_FAULT=bgr (channels swapped in pre-processing)."""
    import nlohmann_json
    import openvino

    root = tmp_path_factory.mktemp("cpp_fault")
    source = Path(__file__).resolve().parents[1] / "runtime" / "cpp"
    configure = ["cmake", "-S", str(source), "-B", str(root), "-DMASKRT_CPP_FAULT=bgr", "-DMASKRT_CPP_TENSORRT=OFF",
                 f"-DOpenVINO_DIR={Path(openvino.__file__).parent / 'cmake'}",
                 f"-DMASKRT_JSON_INCLUDE_DIR={Path(nlohmann_json.__file__).parent / 'include'}",
                 f"-DCMAKE_BUILD_RPATH={Path(openvino.__file__).parent / 'libs'}"]
    for command in (configure, ["cmake", "--build", str(root), "-j", "2"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root / "maskrt-infer"


@pytest.mark.slow
def test_a_preprocessing_fault_fails_runtime_parity(export: Path, val_images: Path, faulty_binary: Path,
                                                    tmp_path: Path) -> None:
    report = _parity(export, val_images, tmp_path / "p", binary=faulty_binary)
    assert report["verdict"] == "failed" and report["exit_code"] == 1
    assert report["images"] == VAL_IMAGES and report["python_detections"] >= MIN_PAIRS
    assert report["unpaired_count"] > 0 or report["worst"]["score_diff"] > 1e-4


def _assert_refused(done: subprocess.CompletedProcess, out: Path, words: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert words in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]  # no staging left behind


def test_bad_input_is_one_line_exit_2_nothing_written(small_export: Path, tmp_path: Path) -> None:
    export = small_export
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    tampered = tmp_path / "tampered"
    shutil.copytree(export, tampered)
    with (tampered / "model.onnx").open("ab") as f:
        f.write(b"\0")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    truncated_png = tmp_path / "truncated.png"
    truncated_png.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    jpeg = tmp_path / "whole.jpg"
    Image.open(image).convert("RGB").save(jpeg, quality=90)
    truncated_jpg = tmp_path / "truncated.jpg"
    truncated_jpg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    folder_image = tmp_path / "folder.png"
    folder_image.mkdir()
    model = ["--model", str(export)]
    before = sorted(p.name for p in export.iterdir())
    cases = {
        "missing export": (["--model", str(tmp_path / "nowhere"), "--out", str(out), str(image)], "not found"),
        "tampered export": (["--model", str(tampered), "--out", str(out), str(image)], "sha256"),
        "unreadable image": ([*model, "--out", str(out), str(garbage)], "cannot read image"),
        "truncated png": ([*model, "--out", str(out), str(truncated_png)], "cannot read image"),
        "truncated jpeg": ([*model, "--out", str(out), str(image), str(truncated_jpg)], "truncated"),
        "folder named as an image": ([*model, "--out", str(out), str(folder_image)], "is a folder"),
        "unknown backend": ([*model, "--backend", "cuda", "--out", str(out), str(image)], "unknown backend"),
        "unknown precision": ([*model, "--precision", "fp8", "--out", str(out), str(image)], "unknown precision"),
        "output inside the export": ([*model, "--out", str(export / "results"), str(image)], "inside the model"),
        "missing image": ([*model, "--out", str(out), str(tmp_path / "none.png")], "not found"),
        "a plugin graph on openvino": (["--model", str(tampered), "--graph", "trt", "--out", str(out), str(image)],
                               "plugin ops"),
        "engine without ENGINE.json": (["--backend", "tensorrt", "--model", str(image), "--out", str(out),
                                        str(image)], "ENGINE.json"),
    }
    for name, (args, words) in cases.items():
        target = export / "results" if name == "output inside the export" else out
        _assert_refused(_infer(*args), target, words)
        print(f"{name}: refused")
    assert sorted(p.name for p in export.iterdir()) == before


def test_a_tampered_engine_is_refused_before_tensorrt_loads(small_export: Path, tmp_path: Path) -> None:
    """The TensorRT backend's checks that run without a GPU: ENGINE.json's sha256 of the engine file."""
    if not build_info().get("tensorrt"):
        pytest.skip(f"this build has no TensorRT backend: {build_info().get('tensorrt_skipped_because')}")
    from maskrt.core.artifacts import ExportInfo

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    meta = {"format_version": 3, "engine_sha256": "0" * 64, "builder": "tensorrt", "builder_version": "10.14.1",
            "export": ExportInfo.read(small_export).to_json()}
    (tmp_path / "model.engine.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    image = tmp_path / "x.png"
    Image.new("RGB", (64, 48)).save(image)
    _assert_refused(_infer("--backend", "tensorrt", "--model", str(engine), "--out", str(out), str(image)), out,
                    "is not the engine its ENGINE.json describes")


def _det(image_id: int, box: list[float], score: float, mask: tuple[int, int, int, int], category: int = 1) -> dict:
    """A COCO result on a 40x40 image whose mask is the rectangle rows mask[0]:mask[1], columns mask[2]:mask[3]."""
    from pycocotools import mask as mask_utils

    m = np.zeros((40, 40, 1), np.uint8, order="F")
    m[mask[0]:mask[1], mask[2]:mask[3]] = 1
    rle = mask_utils.encode(m)[0]
    return {"image_id": image_id, "category_id": category, "bbox": box, "score": score,
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}


def test_the_runtime_gate_on_hand_made_detections() -> None:
    """runtime/parity/runtimes.py's pairing and gates: equal detections pass with their pair count; a score, a box or
    a mask beyond its tolerance fails; a detection on one side only fails unless its score sits at the threshold; too
    few pairs is INCONCLUSIVE."""
    from maskrt.runtime.parity.runtimes import pair_detections, verdict_of

    python = [_det(i, [5.0, 5.0, 10.0, 10.0], 0.9, (5, 15, 5, 15)) for i in range(1, 6)]
    same = pair_detections(python, [dict(d) for d in python], 0.05)
    assert len(same["pairs"]) == 5 and not same["unpaired"]
    assert verdict_of(same, 5)["verdict"] == "passed" and verdict_of(same, 6)["exit_code"] == 3
    for changed, gate in (({"score": 0.9002}, "score"), ({"bbox": [5.0, 5.0, 10.02, 10.0]}, "box"),
                          ({"segmentation": _det(1, [], 0, (5, 15, 5, 14))["segmentation"]}, "mask")):
        cpp = [dict(d) for d in python]
        cpp[2] = {**cpp[2], **changed}
        result = verdict_of(pair_detections(python, cpp, 0.05), 5)
        assert result["verdict"] == "failed" and "1 of 5 pairs beyond" in result["reasons"][0], gate
    extra = _det(3, [20.0, 20.0, 5.0, 5.0], 0.3, (20, 25, 20, 25), category=2)
    one_sided = pair_detections(python, [*python, extra], 0.05)
    assert len(one_sided["unpaired"]) == 1 and one_sided["unpaired"][0]["only_in"] == "cpp"
    assert verdict_of(one_sided, 5)["verdict"] == "failed"
    at_threshold = pair_detections(python, [*python, {**extra, "score": 0.05005}], 0.05)
    assert not at_threshold["unpaired"] and at_threshold["unpaired_at_threshold"] == 1
    assert verdict_of(at_threshold, 5)["verdict"] == "passed"
