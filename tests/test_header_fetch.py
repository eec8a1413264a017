"""Where the plugin build's TensorRT headers come from (plugins/cmake/TensorRTHeaders.cmake), run in CMake script
mode (`cmake -P`, no compiler, no GPU, seconds): the pinned kernel-lens wheel passes its sha256 and version checks;
a wheel with other bytes, a wheel with other headers, tampered build-tree leftovers and a TensorRT_ROOT of another
major are refused (or warned about) with messages that name what was expected and what was found."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "plugins" / "cmake" / "TensorRTHeaders.cmake"
CMAKE = shutil.which("cmake")
pytestmark = pytest.mark.skipif(CMAKE is None, reason="cmake is not on PATH")

#: Runs the module's functions: FETCH_DIR set -> maskrt_fetch_tensorrt_headers, CHECK_FILE set ->
#: maskrt_check_sha256, PRINT_PIN set -> prints the pin, else maskrt_find_tensorrt_headers.
SCRIPT = """cmake_minimum_required(VERSION 3.24)
include("${MODULE}")
if(PRINT_PIN)
  message("${MASKRT_TENSORRT_HEADERS_WHEEL}|${MASKRT_TENSORRT_HEADERS_SHA256}|${MASKRT_TENSORRT_HEADERS_VERSION}")
elseif(CHECK_FILE)
  maskrt_check_sha256("${CHECK_FILE}" "${MASKRT_TENSORRT_HEADERS_SHA256}")
elseif(FETCH_DIR)
  maskrt_fetch_tensorrt_headers("${FETCH_DIR}" _include)
  message(STATUS "include=${_include}")
else()
  maskrt_find_tensorrt_headers(_include)
  message(STATUS "include=${_include}")
endif()
"""


def _run(tmp_path: Path, **defines: str | Path) -> subprocess.CompletedProcess:
    script = tmp_path / "run.cmake"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("TensorRT_ROOT", "TENSORRT_ROOT")}
    defines = {"MODULE": MODULE, "Python3_EXECUTABLE": sys.executable, **defines}
    args = [f"-D{name}={value}" for name, value in defines.items()]
    proc = subprocess.run([CMAKE, *args, "-P", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    proc.log = proc.stdout + proc.stderr  # type: ignore[attr-defined]
    proc.text = " ".join(proc.log.split())  # type: ignore[attr-defined]  # CMake wraps its messages
    return proc


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The one definition of the pinned wheel, its sha256 and its TensorRT version, read from the module."""
    proc = _run(tmp_path_factory.mktemp("pin"), PRINT_PIN="1")
    assert proc.returncode == 0, proc.log
    wheel, sha256, version = proc.stderr.strip().split("|")
    assert len(sha256) == 64 and version.startswith("10."), proc.stderr
    return {"wheel": wheel, "sha256": sha256, "version": version}


@pytest.fixture(scope="module")
def pinned_wheel(pin: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned wheel file: from an earlier build's cache (build/*/_deps) or else `pip download` (an index)."""
    for cached in sorted(REPO.glob("build/*/_deps/tensorrt-headers/wheel/*.whl")):
        if _sha256(cached) == pin["sha256"]:
            return cached
    dest = tmp_path_factory.mktemp("pinned-wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                           "--disable-pip-version-check", "--quiet", pin["wheel"], "-d", str(dest)],
                          capture_output=True, text=True, timeout=240)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        pytest.skip(f"the pinned {pin['wheel']} is in no build tree and `pip download` failed: {proc.stderr[-500:]}")
    return wheels[0]


def _version_header(major: int, minor: int, patch: int, *, through: str | None = "ENTERPRISE") -> str:
    """An NvInferVersion.h as TensorRT 10.x writes it (NV_TENSORRT_* through TRT_*_<through>) or as older ones do."""
    lines = ["#ifndef NV_INFER_VERSION_H", "#define NV_INFER_VERSION_H"]
    for part, value in (("MAJOR", major), ("MINOR", minor), ("PATCH", patch)):
        if through:
            lines += [f"#define TRT_{part}_{through} {value}",
                      f"#define NV_TENSORRT_{part} TRT_{part}_{through} //!< TensorRT {part.lower()} version."]
        else:
            lines.append(f"#define NV_TENSORRT_{part} {value} //!< TensorRT {part.lower()} version.")
    return "\n".join([*lines, "#define NV_TENSORRT_LWS_MAJOR 0", "#endif", ""])


def _fake_wheel(folder: Path, version: tuple[int, int, int]) -> Path:
    """A valid wheel named like the pinned one, holding kernel_lens/include/tensorrt headers of `version`."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "kernel_lens-2.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("kernel_lens/include/tensorrt/NvInfer.h", "// not NVIDIA's\n")
        zf.writestr("kernel_lens/include/tensorrt/NvInferVersion.h", _version_header(*version))
        zf.writestr("kernel_lens-2.0.1.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: kernel-lens\nVersion: 2.0.1\n")
        zf.writestr("kernel_lens-2.0.1.dist-info/WHEEL",
                    "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("kernel_lens-2.0.1.dist-info/RECORD", "")
    return wheel


def test_the_pinned_wheel_passes_and_is_reused_after_rechecking(tmp_path: Path, pin: dict[str, str],
                                                                 pinned_wheel: Path) -> None:
    deps = tmp_path / "deps"
    first = _run(tmp_path, FETCH_DIR=deps, MASKRT_TENSORRT_HEADERS_WHEEL=pinned_wheel)
    assert first.returncode == 0, first.log
    include = deps / "kernel_lens" / "include" / "tensorrt"
    assert f"include={include}" in first.log
    assert (include / "NvInfer.h").is_file()
    assert f"TensorRT {pin['version']} headers" in first.log and f"sha256 {pin['sha256']} verified" in first.log
    assert pin["sha256"] in (deps / "verified.txt").read_text()
    # The next configure re-hashes the kept wheel and re-reads the version, without fetching again.
    again = _run(tmp_path, FETCH_DIR=deps, MASKRT_TENSORRT_HEADERS_WHEEL=pinned_wheel)
    assert again.returncode == 0, again.log
    assert "fetching" not in again.log and f"sha256 {pin['sha256']} verified" in again.log


def test_build_tree_leftovers_are_checked_again(tmp_path: Path, pin: dict[str, str], pinned_wheel: Path) -> None:
    deps = tmp_path / "deps"
    fetch = {"FETCH_DIR": deps, "MASKRT_TENSORRT_HEADERS_WHEEL": pinned_wheel}
    assert _run(tmp_path, **fetch).returncode == 0
    include = deps / "kernel_lens" / "include" / "tensorrt"
    # Headers changed after they were verified: the version check refuses them and drops the stamp ...
    (include / "NvInferVersion.h").write_text(_version_header(9, 3, 0))
    proc = _run(tmp_path, **fetch)
    assert proc.returncode != 0
    assert f"declare TensorRT 9.3.0 (NvInferVersion.h), not the pinned {pin['version']}" in proc.text
    assert not (deps / "verified.txt").exists()
    # ... so the next configure extracts them again from the kept wheel, whose hash it checks first.
    proc = _run(tmp_path, **fetch)
    assert proc.returncode == 0, proc.log
    assert "extracting them again from its wheel" in proc.text and "fetching" not in proc.text
    assert f"TensorRT {pin['version']} headers" in proc.text
    # Another wheel where the verified one was (the stamp still names the pin): fetched again.
    kept = next((deps / "wheel").glob("*.whl"))
    kept.write_bytes(_fake_wheel(tmp_path / "fake", (9, 3, 0)).read_bytes())
    proc = _run(tmp_path, **fetch)
    assert proc.returncode == 0, proc.log
    assert "does not hold the verified pinned wheel" in proc.text and "fetching it again" in proc.text
    assert f"TensorRT {pin['version']} headers" in proc.text
    assert _sha256(next((deps / "wheel").glob("*.whl"))) == pin["sha256"]


def test_a_wheel_with_other_bytes_is_refused_naming_both_hashes(tmp_path: Path, pin: dict[str, str]) -> None:
    fake = _fake_wheel(tmp_path / "fake", (10, 14, 1))
    actual = _sha256(fake)
    # pip (--require-hashes) refuses it before saving it ...
    deps = tmp_path / "deps"
    proc = _run(tmp_path, FETCH_DIR=deps, MASKRT_TENSORRT_HEADERS_WHEEL=fake)
    assert proc.returncode != 0
    assert f"`pip download {fake}` (sha256 {pin['sha256']}) failed" in proc.text
    assert f"Expected sha256 {pin['sha256']} Got {actual}" in proc.text
    assert not (deps / "kernel_lens").exists() and not (deps / "verified.txt").exists()
    # ... and CMake's own check of the file (whatever pip did) names the expected and the actual hash.
    proc = _run(tmp_path, CHECK_FILE=fake)
    assert proc.returncode != 0
    assert f"sha256 mismatch for {fake} expected {pin['sha256']} (MASKRT_TENSORRT_HEADERS_SHA256) actual {actual}" \
        in proc.text


def test_a_wheel_whose_headers_are_another_version_is_refused(tmp_path: Path, pin: dict[str, str]) -> None:
    fake = _fake_wheel(tmp_path / "fake", (9, 3, 0))
    deps = tmp_path / "deps"
    # Its hash is accepted (as a wheel override would be): the version check alone refuses it.
    proc = _run(tmp_path, FETCH_DIR=deps, MASKRT_TENSORRT_HEADERS_WHEEL=fake,
                MASKRT_TENSORRT_HEADERS_SHA256=_sha256(fake))
    assert proc.returncode != 0
    assert f"declare TensorRT 9.3.0 (NvInferVersion.h), not the pinned {pin['version']}" in proc.text
    assert not (deps / "verified.txt").exists()


def _root(tmp_path: Path, version_h: str | None) -> Path:
    root = tmp_path / "TensorRT"
    (root / "include").mkdir(parents=True)
    (root / "include" / "NvInfer.h").write_text("// fake\n")
    if version_h is not None:
        (root / "include" / "NvInferVersion.h").write_text(version_h)
    return root


@pytest.mark.parametrize(("version_h", "ok", "expected"), [
    (_version_header(10, 3, 0, through=None), True, "-- maskrt: TensorRT 10.3.0 headers in"),
    (_version_header(10, 14, 1), True, "-- maskrt: TensorRT 10.14.1 headers in"),
    (_version_header(11, 1, 0), True, "-- maskrt: TensorRT 11.1.0 headers in"),
    (_version_header(12, 0, 2), True, "are TensorRT 12.0.2; maskrt is compiled against TensorRT 10 and 11"),
    (_version_header(9, 3, 0), False, "are TensorRT 9.3.0; the plugins need TensorRT 10 headers"),
    (_version_header(8, 6, 1, through=None), False, "are TensorRT 8.6.1; the plugins need TensorRT 10 headers"),
    (_version_header(1, 3, 0, through="RTX"), False, "are TensorRT-RTX 1.3.0 (not TensorRT)"),
    (None, False, "holds NvInfer.h but no NvInferVersion.h"),
], ids=["10-literal", "10.14", "11.1", "12-warns", "9", "8", "rtx", "no-version-header"])
def test_tensorrt_root_headers_must_be_tensorrt_10_or_11(tmp_path: Path, version_h: str | None, ok: bool,
                                                   expected: str) -> None:
    root = _root(tmp_path, version_h)
    proc = _run(tmp_path, TensorRT_ROOT=root)
    assert (proc.returncode == 0) == ok, proc.log
    assert expected in proc.text, proc.log
    if ok:
        assert f"include={root / 'include'}" in proc.text


def test_a_tensorrt_root_without_headers_stops(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run(tmp_path, TensorRT_ROOT=empty)
    assert proc.returncode != 0 and f"TensorRT_ROOT={empty} holds no include/NvInfer.h" in proc.text
