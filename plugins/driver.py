"""Drive a plugin through TensorRT's IPluginV3 lifecycle without TensorRT (libmaskrt_driver.so).

    steps = driver.drive(RoIAlignSpec(...), inputs=[rois, *features], outputs=[out])

Tensors are torch tensors; on the CPU (or for `execute=False`) only their shapes and dtypes are used and the driver
stops before enqueue; with CUDA tensors it enqueues on the current stream and the outputs hold the plugin's result.
The returned steps name each lifecycle call that succeeded (plugins/driver/plugin_driver.cpp); a failing call
raises RuntimeError naming it.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from maskrt.plugins._abi import DRIVER
from maskrt.plugins._library import _find, library_path, open_library
from maskrt.plugins.nms.spec import NMSSpec
from maskrt.plugins.roi_align.spec import RoIAlignSpec

DRIVER_LIBRARY = "libmaskrt_driver.so"
#: nvinfer1::DataType values
_TYPES = {torch.float32: 0, torch.float16: 1, torch.int32: 3}
_TEXT_LEN = 1024


def driver_path() -> Path:
    """The driver library, built beside the plugin library where nvcc exists (MASKRT_DRIVER_LIBRARY overrides)."""
    return _find(DRIVER_LIBRARY, "MASKRT_DRIVER_LIBRARY")


def field_text(spec: RoIAlignSpec | NMSSpec) -> str:
    """The spec's plugin fields (its ONNX attributes without the identity) as the driver's 'name=kind:values' text."""
    items = []
    for name, value in spec.onnx_attributes().items():
        if name in ("plugin_version", "plugin_namespace"):
            continue
        if isinstance(value, list):
            items.append(f"{name}=f:{','.join(repr(float(v)) for v in value)}")
        elif isinstance(value, float):
            items.append(f"{name}=f:{value!r}")
        elif isinstance(value, int):
            items.append(f"{name}=i:{value}")
        else:
            items.append(f"{name}=s:{value}")
    return ";".join(items)


def drive(spec: RoIAlignSpec | NMSSpec, inputs: list[torch.Tensor], outputs: list[torch.Tensor], *,
          execute: bool | None = None, fields: str | None = None) -> list[str]:
    """Run the op of `spec` through the IPluginV3 lifecycle; returns the steps done. `execute` defaults to whether
    the tensors are on a CUDA device; `fields` overrides the spec's field text (to test rejections)."""
    tensors = [*inputs, *outputs]
    on_gpu = all(t.is_cuda for t in tensors)
    execute = on_gpu if execute is None else execute
    if execute and not on_gpu:
        raise ValueError("enqueue needs every tensor on a CUDA device")
    fn = open_library(driver_path(), DRIVER).maskrt_drive_plugin
    ranks = (ctypes.c_int32 * len(tensors))(*[t.dim() for t in tensors])
    flat = [int(d) for t in tensors for d in t.shape]
    dims = (ctypes.c_int64 * max(1, len(flat)))(*flat)
    types = (ctypes.c_int32 * len(tensors))(*[_TYPES[t.dtype] for t in tensors])
    ptr = lambda t: ctypes.c_void_p(t.data_ptr() if execute else 0)  # noqa: E731
    in_ptrs = (ctypes.c_void_p * len(inputs))(*[ptr(t) for t in inputs])
    out_ptrs = (ctypes.c_void_p * len(outputs))(*[ptr(t) for t in outputs])
    size = ctypes.c_int64(0)
    steps, err = ctypes.create_string_buffer(_TEXT_LEN), ctypes.create_string_buffer(_TEXT_LEN)
    text = (fields if fields is not None else field_text(spec)).encode()
    name = spec.IDENTITY.name.encode()

    def call(workspace: int, run: bool, stream: int) -> int:
        return fn(library=str(library_path()).encode(), name=name, fieldText=text, nbInputs=len(inputs),
                  nbOutputs=len(outputs), ranks=ranks, dims=dims, types=types, inputs=in_ptrs, outputs=out_ptrs,
                  workspace=workspace, workspaceSize=ctypes.byref(size), execute=int(run), stream=stream, steps=steps,
                  stepsLen=_TEXT_LEN, err=err, errLen=_TEXT_LEN)  # fmt: skip

    if call(0, False, 0) != 0:
        raise RuntimeError(f"{spec.IDENTITY.name}: {err.value.decode()} (after {steps.value.decode() or 'nothing'})")
    if execute:
        workspace = torch.empty(max(1, size.value), dtype=torch.uint8, device=tensors[0].device)
        stream = torch.cuda.current_stream(tensors[0].device).cuda_stream
        if call(workspace.data_ptr(), True, stream) != 0:
            raise RuntimeError(f"{spec.IDENTITY.name}: {err.value.decode()} (after {steps.value.decode()})")
    return steps.value.decode().split(";")
