"""The plugin libraries' build (plugins/CMakeLists.txt): architectures, exported entry points, no libnvinfer /
libcudart dependency, the CMake project without nvcc, the wheel's layout; the loader's error messages; and the ONNX
node contracts of MultiLevelRoIAlign and BatchedNMS."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import nvcc_available

from maskrt.plugins.nms.spec import NMSSpec
from maskrt.plugins.roi_align.spec import FPN_P2_P5_SCALES, RoIAlignSpec

REPO = Path(__file__).resolve().parents[1]
#: The GPU generations the library carries SASS for (TensorRT 10's range, Turing to Blackwell), plus PTX of the newest.
ARCHS = {"sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_120"}


@pytest.fixture(scope="module")
def library(plugin_library: Path) -> Path:
    return plugin_library


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
    assert set(re.findall(r"\.(sm_\d+)\.cubin", elf)) == ARCHS, elf
    assert set(re.findall(r"\.(sm_\d+)\.ptx", ptx)) == {"sm_120"}, ptx


def test_no_arithmetic_of_ours_is_contracted_into_fma(library: Path) -> None:
    """The CUDA build rounds like the host build (-ffp-contract=off): nvcc must not contract a*b+c into FMA
    (-fmad=false). In the library's PTX, the only fma.rn.f32 left are the CUDA math library's polynomials (log2f of
    the level mapping), whose coefficients are immediates; a contracted product-sum of ours has registers only (22
    of them in the RoIAlign kernels with nvcc's default -fmad=true)."""
    ptx = subprocess.run([_cuobjdump(), "-ptx", str(library)], capture_output=True, text=True, check=True).stdout
    fmas = [line.strip() for line in ptx.splitlines() if line.strip().startswith("fma.rn.f32")]
    assert fmas, "expected log2f's polynomial in the RoIAlign kernels"
    contracted = [line for line in fmas if not re.search(r"\b0f[0-9A-F]{8}\b", line)]
    assert not contracted, contracted[:5]


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


def _cmake(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    build = tmp_path / "build"
    configure = subprocess.run(["cmake", "-S", str(REPO / "plugins"), "-B", str(build), *args], capture_output=True,
                               text=True, env=env, timeout=300)
    assert configure.returncode == 0, configure.stderr
    proc = subprocess.run(["cmake", "--build", str(build), "--parallel", "2"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return configure


@pytest.mark.slow
def test_cmake_without_nvcc_builds_the_host_library_and_says_so(tmp_path: Path) -> None:
    """The CMake project, run by hand on a machine without nvcc: the CPU library only, a warning, and the reason
    recorded for maskrt.plugins.build_info()."""
    env = {**os.environ, "PATH": "/usr/bin:/bin", "CUDA_HOME": str(tmp_path), "CUDACXX": ""}
    configure = _cmake(tmp_path, env=env)
    warning = " ".join(configure.stderr.split())  # CMake wraps its messages
    assert "nvcc was not found" in warning and "building only the CPU host library" in warning
    built = tmp_path / "build"
    assert (built / "libmaskrt_host.so").is_file() and not (built / "libmaskrt_plugins.so").exists()
    info = json.loads((built / "build-info.json").read_text())
    assert info["cuda"] is False and "nvcc was not found" in info["cuda_skipped_because"]
    exported = subprocess.run(["nm", "-D", "--defined-only", str(built / "libmaskrt_host.so")], capture_output=True,
                              text=True, check=True).stdout
    assert "maskrt_roi_align_host" in exported and "maskrt_nms_host" in exported


def _tree_status() -> list[str]:
    """`git status --ignored` of the checkout, less the caches that tests running beside this one (pytest-xdist
    workers) may create meanwhile."""
    status = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    return [line for line in status if not re.search(r"(\.hypothesis|\.pytest_cache|__pycache__)/?$", line)]


@pytest.mark.slow
def test_wheel_holds_one_namespace_and_both_libraries_and_leaves_the_tree_clean(tmp_path: Path) -> None:
    """`pip wheel .` (what a non-editable `pip install .` builds): the stage folders inside maskrt/, the libraries
    in maskrt/plugins/lib, the C++ runtime in maskrt/runtime/cpp, no C++ sources, no generic top-level package, and
    nothing written into the checkout."""
    if not nvcc_available():
        pytest.skip("no nvcc: the wheel would hold only the host library")
    before = _tree_status()
    # One architecture keeps the build short; the full set is checked on the installed library above.
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
                           "-C", "cmake.define.CMAKE_CUDA_ARCHITECTURES=75-real", str(REPO)],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _tree_status() == before, "building the wheel wrote into the source tree"
    (wheel,) = tmp_path.glob("maskrt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"maskrt"}, top
    for module in ("core/artifacts.py", "training/trainer.py", "export/deploy.py", "runtime/predictor.py",
                   "plugins/roi_align/spec.py", "plugins/lib/libmaskrt_plugins.so", "plugins/lib/libmaskrt_host.so",
                   "plugins/lib/build-info.json", "cli/__init__.py", "cli/serve.py",
                   # the C++ runtime (runtime/cpp): the CLI, the library, its one public header, what the build holds
                   "runtime/cpp/bin/maskrt-infer", "runtime/cpp/lib/libmaskrt_runtime.so",
                   "runtime/cpp/include/maskrt/runtime.hpp", "runtime/cpp/build-info.json"):
        assert f"maskrt/{module}" in names, module
    assert not [n for n in names if n.endswith((".cpp", ".cu", ".h", "CMakeLists.txt"))]
    assert [n for n in names if n.endswith(".hpp")] == ["maskrt/runtime/cpp/include/maskrt/runtime.hpp"]


def test_library_path_names_the_build_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from maskrt.plugins import library_path, nms, roi_align

    monkeypatch.setenv("MASKRT_PLUGIN_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.raises(FileNotFoundError, match=r"cmake -S plugins -B build-plugins"):
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
