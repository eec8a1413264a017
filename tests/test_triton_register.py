"""libmaskrt_triton.so: registers libmaskrt_plugins.so's creators where a library is only dlopen()ed (Triton).

Full TensorRT is not installed here, so the test builds a stand-in libnvinfer from the same TensorRT headers the
libraries are built with: its getPluginRegistry returns an IPluginRegistry that records what is registered. Each case
runs in its own Python process (a dlopen()ed constructor runs once per process).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_tensorrt_rtx

FAKE_REGISTRY = r"""
#include <NvInferRuntime.h>
#include <cstring>
#include <string>
#include <vector>
using namespace nvinfer1;

class RecordingRegistry : public IPluginRegistry
{
public:
    std::vector<IPluginCreatorInterface*> creators;
    std::string log;
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override { return false; }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override { *n = 0; return nullptr; }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept
        override { return nullptr; }
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
    bool deregisterCreator(IPluginCreator const&) noexcept override { return false; }
    bool isParentSearchEnabled() const override { return false; }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(AsciiChar const*) noexcept override { return nullptr; }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    bool registerCreator(IPluginCreatorInterface& c, AsciiChar const* const ns) noexcept override
    {
        auto* v3 = static_cast<IPluginCreatorV3One*>(&c);
        log += std::string(ns) + "::" + v3->getPluginName() + "/" + v3->getPluginVersion() + ";";
        creators.push_back(&c);
        return true;
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override
    {
        *n = static_cast<int32_t>(creators.size());
        return creators.data();
    }
    IPluginCreatorInterface* getCreator(AsciiChar const* const name, AsciiChar const* const version,
        AsciiChar const* const ns) noexcept override
    {
        for (auto* c : creators)
        {
            auto* v3 = static_cast<IPluginCreatorV3One*>(c);
            if (!std::strcmp(v3->getPluginName(), name) && !std::strcmp(v3->getPluginVersion(), version)
                && !std::strcmp(v3->getPluginNamespace(), ns))
                return c;
        }
        return nullptr;
    }
    bool deregisterCreator(IPluginCreatorInterface const&) noexcept override { return false; }
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override { return nullptr; }
    int32_t releasePluginResource(AsciiChar const*) noexcept override { return 0; }
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override
    {
        return getAllCreators(n);
    }
};

static RecordingRegistry registry;
extern "C" __attribute__((visibility("default"))) IPluginRegistry* getPluginRegistry() noexcept { return &registry; }
extern "C" __attribute__((visibility("default"))) char const* recorded() { return registry.log.c_str(); }
"""

RUN = """
import ctypes, sys
from maskrt.plugins._abi import TRITON, Library
fake, shims = sys.argv[1], sys.argv[2:]
lib = ctypes.CDLL(fake, ctypes.RTLD_GLOBAL) if fake != "-" else None
for shim in shims:
    s = Library(shim, TRITON, ctypes.RTLD_GLOBAL)
    print("status:", s.maskrt_triton_status().decode())
if lib is not None:
    lib.recorded.restype = ctypes.c_char_p
    print("recorded:", lib.recorded().decode())
"""


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory, plugin_library: Path) -> dict[str, Path]:
    """A recording libnvinfer.so.10, the same code as libother.so, and two folders each holding the shim and the
    plugin library."""
    from maskrt.plugins import build_info, triton_library_path

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("needs nvcc to build the stand-in libnvinfer (its headers include CUDA's)")
    root = tmp_path_factory.mktemp("triton_register")
    (root / "fake.cpp").write_text(FAKE_REGISTRY)
    out: dict[str, Path] = {}
    include = f"-I{build_info()['tensorrt_include_dir']}"
    for name in ("libnvinfer.so.10", "libother.so"):
        subprocess.run([nvcc, "-shared", "-Xcompiler", "-fPIC", "-std=c++17", include, str(root / "fake.cpp"), "-o",
                        str(root / name)], check=True, capture_output=True)
        out[name] = root / name
    for folder in ("a", "b"):
        (root / folder).mkdir()
        shutil.copy(triton_library_path(), root / folder)
        shutil.copy(plugin_library, root / folder)
        out[folder] = root / folder / "libmaskrt_triton.so"
    return out


def run(*args: str | Path) -> str:
    proc = subprocess.run([sys.executable, "-c", RUN, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_registers_both_creators_after_libnvinfer(fakes: dict[str, Path]) -> None:
    out = run(fakes["libnvinfer.so.10"], fakes["a"])
    assert "status: registered maskrt::MultiLevelRoIAlign/1, maskrt::BatchedNMS/1" in out, out
    assert "recorded: maskrt::MultiLevelRoIAlign/1;maskrt::BatchedNMS/1;" in out, out


def test_a_second_copy_registers_nothing_twice(fakes: dict[str, Path]) -> None:
    out = run(fakes["libnvinfer.so.10"], fakes["a"], fakes["b"])
    assert "(already registered)" in out, out
    assert out.count("MultiLevelRoIAlign/1;") == 1, out


def test_does_nothing_without_tensorrt(fakes: dict[str, Path]) -> None:
    out = run("-", fakes["a"])
    assert "status: no TensorRT in this process yet" in out, out


def test_does_nothing_with_another_registry(fakes: dict[str, Path]) -> None:
    """A getPluginRegistry from a library that is not libnvinfer (e.g. TensorRT-RTX, whose registry has another
    vtable) is never called."""
    out = run(fakes["libother.so"], fakes["a"])
    assert "not TensorRT's libnvinfer: nothing registered" in out, out
    assert "recorded: \n" in out or out.rstrip().endswith("recorded:"), out


def test_harmless_beside_tensorrt_rtx(fakes: dict[str, Path]) -> None:
    """TensorRT-RTX loaded (with the plugin library through its loadLibrary), then the shim: the shim registers
    nothing and RTX keeps its own creators (the shim must never call RTX's registry)."""
    require_tensorrt_rtx()
    code = f"""
import ctypes, tensorrt_rtx as trt
from maskrt.plugins._abi import TRITON, Library
logger = trt.Logger(); builder = trt.Builder(logger)
assert trt.get_plugin_registry().load_library({str(fakes["a"].with_name("libmaskrt_plugins.so"))!r})
s = Library({str(fakes["a"])!r}, TRITON, ctypes.RTLD_GLOBAL)
print("status:", s.maskrt_triton_status().decode())
print("rtx:", sorted(c.name for c in trt.get_plugin_registry().all_creators if c.plugin_namespace == "maskrt"))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "status: registered" not in proc.stdout, proc.stdout
    assert "rtx: ['BatchedNMS', 'MultiLevelRoIAlign']" in proc.stdout, proc.stdout
