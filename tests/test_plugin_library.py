"""The CUDA plugin library build: architectures, exported entry points, no libnvinfer / libcudart dependency,
incremental rebuilds, the loader's error messages, and the ONNX node contracts of MultiLevelRoIAlign and BatchedNMS."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plugins import build as plugin_build
from plugins.nms.spec import NMSSpec
from plugins.roi_align.spec import FPN_P2_P5_SCALES, RoIAlignSpec


@pytest.fixture(scope="module")
def library() -> Path:
    """The full (all architectures) plugin library, built on demand."""
    try:
        plugin_build.find_nvcc()
    except plugin_build.BuildError as error:
        pytest.skip(f"no CUDA compiler, cannot build the plugin library: {error}")
    result = plugin_build.build(verbose=False)
    assert result.plugin_library is not None and result.plugin_library.is_file()
    return result.plugin_library


def _cuobjdump() -> str:
    """cuobjdump from PATH, the CUDA toolkit, or the `nvidia-cuda-cuobjdump` wheel."""
    candidates = [shutil.which("cuobjdump")]
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            candidates.append(str(Path(home) / "bin" / "cuobjdump"))
    for site in sys.path:
        candidates += glob.glob(str(Path(site) / "nvidia" / "cu1*" / "bin" / "cuobjdump"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    message = "cuobjdump not found: install the CUDA toolkit's cuobjdump or `pip install nvidia-cuda-cuobjdump`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def test_library_holds_every_architecture_and_ptx(library: Path) -> None:
    tool = _cuobjdump()
    elf = subprocess.run([tool, "--list-elf", str(library)], capture_output=True, text=True, check=True).stdout
    ptx = subprocess.run([tool, "--list-ptx", str(library)], capture_output=True, text=True, check=True).stdout
    sass_archs = set(re.findall(r"\.(sm_\d+)\.cubin", elf))
    ptx_archs = set(re.findall(r"\.(sm_\d+)\.ptx", ptx))
    assert sass_archs == set(plugin_build.DEFAULT_ARCHS), elf
    newest = max(plugin_build.DEFAULT_ARCHS, key=lambda a: int(a[3:]))
    assert ptx_archs == {newest}, ptx


def test_library_exports_entry_points_and_links_no_tensorrt_or_cudart(library: Path) -> None:
    dynamic = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True)
    exported = {line.split()[-1] for line in dynamic.stdout.splitlines() if line.strip()}
    assert {"getCreators", "setLoggerFinder", "maskrt_roi_align_cuda", "maskrt_nms_cuda",
            "maskrt_nms_workspace_size"} <= exported  # fmt: skip
    assert not [s for s in exported if s.startswith("cuda")], "static CUDA runtime symbols leak from the library"
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(library)], capture_output=True, text=True,
                               check=True).stdout  # fmt: skip
    assert "nvinfer" not in undefined
    needed = subprocess.run(["ldd", str(library)], capture_output=True, text=True, check=True).stdout
    assert "libnvinfer" not in needed and "libcudart" not in needed and "libtensorrt" not in needed, needed


def test_build_is_skipped_when_sources_are_unchanged(library: Path) -> None:
    before = library.stat().st_mtime_ns
    result = plugin_build.build(verbose=False)
    assert result.rebuilt == ()
    assert library.stat().st_mtime_ns == before


def test_build_cli_reports_up_to_date(library: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "plugins.build"], capture_output=True, text=True,
                          cwd=plugin_build.REPO_ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "libmaskrt_plugins.so: up to date" in proc.stdout


def test_build_without_nvcc_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cxx = plugin_build.find_cxx()
    monkeypatch.setenv("CXX", str(cxx))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.delenv("NVCC", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(plugin_build, "CUDA_HOME_FALLBACKS", ())
    with pytest.raises(plugin_build.BuildError, match="nvcc not found"):
        plugin_build.find_nvcc()
    with pytest.raises(plugin_build.BuildError, match="nvcc not found"):
        plugin_build.build(host=False, verbose=False)


def test_gencode_flags() -> None:
    flags = plugin_build.gencode_flags(["sm_80", "sm_120"])
    assert flags == ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_120,code=sm_120",
                     "-gencode", "arch=compute_120,code=compute_120"]  # fmt: skip
    with pytest.raises(plugin_build.BuildError, match="invalid architecture"):
        plugin_build.gencode_flags(["compute_80"])


def test_library_path_names_the_build_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from plugins import library_path, nms, roi_align

    monkeypatch.setenv("MASKRT_PLUGIN_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.raises(FileNotFoundError, match=r"python -m plugins\.build"):
        library_path()
    assert roi_align.library_path is library_path and nms.library_path is library_path


def test_onnx_node_carries_the_plugin_identity_and_fields() -> None:
    onnx = pytest.importorskip("onnx")
    spec = RoIAlignSpec.mask_rcnn(14)
    node = spec.make_onnx_node("rois", ["p2", "p3", "p4", "p5"], "pooled", name="mask_pool")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert (node.op_type, node.domain, list(node.input)) == (
        "MultiLevelRoIAlign",
        "maskrt",
        ["rois", "p2", "p3", "p4", "p5"],
    )
    assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"maskrt"
    assert (attrs["output_height"], attrs["output_width"], attrs["sampling_ratio"], attrs["aligned"]) == (14, 14, 2, 0)
    assert attrs["spatial_scales"] == pytest.approx(list(FPN_P2_P5_SCALES))
    assert (attrs["canonical_level"], attrs["canonical_scale"]) == (4, 224.0)
    assert attrs["level_eps"] == pytest.approx(1e-6)
    assert RoIAlignSpec.from_onnx_attributes(attrs) == spec
    with pytest.raises(ValueError, match="need one each"):
        spec.make_onnx_node("rois", ["p2", "p3"], "pooled")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output_size": (7, 0)}, "positive"),
        ({"spatial_scales": (0.3,)}, "power of two"),
        ({"spatial_scales": (0.25, 0.0625)}, "consecutive"),
        ({"spatial_scales": ()}, "1 to 8"),
        ({"sampling_ratio": 1.5}, "sampling_ratio"),
        ({"aligned": 2}, "aligned"),
        ({"level_eps": float("nan")}, "level_eps"),
    ],
)
def test_spec_rejects_invalid_attributes(kwargs: dict, message: str) -> None:
    args = {"output_size": 7, "spatial_scales": FPN_P2_P5_SCALES, **kwargs}
    with pytest.raises(ValueError, match=message):
        RoIAlignSpec(**args)


def test_nms_onnx_node_carries_the_plugin_identity_and_fields() -> None:
    onnx = pytest.importorskip("onnx")
    spec = NMSSpec(iou_threshold=0.7, score_threshold=-0.5, max_output_boxes=1000)
    node = spec.make_onnx_node("boxes", "scores", "levels", "keep", "count", name="rpn_nms")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert (node.op_type, node.domain, list(node.input), list(node.output)) == (
        "BatchedNMS", "maskrt", ["boxes", "scores", "levels"], ["keep", "count"],
    )  # fmt: skip
    assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"maskrt"
    assert attrs["iou_threshold"] == pytest.approx(0.7) and attrs["score_threshold"] == -0.5
    assert attrs["max_output_boxes"] == 1000
    assert NMSSpec.from_onnx_attributes(attrs) == spec
    assert spec.iou_threshold == float(np.float32(0.7))  # thresholds are float32, as in the op
    with pytest.raises(ValueError, match="missing"):
        NMSSpec.from_onnx_attributes({k: v for k, v in attrs.items() if k != "max_output_boxes"})
    with pytest.raises(ValueError, match="unknown"):
        NMSSpec.from_onnx_attributes({**attrs, "top_k": 3})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"iou_threshold": 1.01}, "iou_threshold"),
        ({"iou_threshold": -1e-9}, "iou_threshold"),
        ({"iou_threshold": "0.5"}, "iou_threshold"),
        ({"score_threshold": float("-inf")}, "score_threshold"),
        ({"score_threshold": 1e39}, "score_threshold"),  # overflows float32
        ({"max_output_boxes": -1}, "max_output_boxes"),
        ({"max_output_boxes": True}, "max_output_boxes"),
        ({"max_output_boxes": 2**31}, "max_output_boxes"),
    ],
)
def test_nms_spec_rejects_invalid_attributes(kwargs: dict, message: str) -> None:
    args = {"iou_threshold": 0.5, "score_threshold": 0.05, "max_output_boxes": 100, **kwargs}
    with pytest.raises(ValueError, match=message):
        NMSSpec(**args)
