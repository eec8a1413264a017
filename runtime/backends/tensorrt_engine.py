"""The TensorRT backend: a serialized engine (`maskrt build`) run on a CUDA GPU with TensorRT or TensorRT-RTX.

Before anything is loaded, the engine is checked against its ENGINE.json and this machine, each mismatch a one-line
error saying what to rebuild: the engine file's sha256 (corrupt or replaced file), the installed builder module
and version (an engine only loads into the TensorRT it was built with), the plugin library's sha256, a CUDA GPU and
its compute capability. Then the plugin library is loaded, the engine deserialized, inputs and outputs bound as torch
CUDA tensors, and `execute_async_v3` runs on a CUDA stream. Each batch runs at its own padded size inside the
engine's optimization profile; batches above the profile's largest are split.

Written against the documented TensorRT 10 Python API (tensorrt and tensorrt_rtx share it). No machine of this
project can execute an engine (TensorRT-RTX engines need an RTX-class GPU, the GPU machines have no TensorRT): every
step before execution is tested on the CPU, execution by the GPU suite where TensorRT exists.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from maskrt.core.artifacts import EngineInfo
from maskrt.core.builders import import_builder
from maskrt.core.errors import MaskrtError
from maskrt.core.files import sha256
from maskrt.runtime.postprocess import RawOutput

_TORCH_TYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT32": torch.int32, "INT64": torch.int64,
                "BOOL": torch.bool, "INT8": torch.int8, "UINT8": torch.uint8}


def check_engine(engine: str | Path, info: EngineInfo) -> bytes:
    """The engine's bytes, once it and this machine match its ENGINE.json (MaskrtError saying what to rebuild)."""
    from maskrt.plugins import library_path

    engine = Path(engine)
    if not engine.is_file():
        raise MaskrtError(f"{engine}: engine file not found (build one with `maskrt build`)")
    data = engine.read_bytes()
    if hashlib.sha256(data).hexdigest() != info.engine_sha256:
        raise MaskrtError(f"{engine}: is not the engine its ENGINE.json describes (corrupt or replaced); build it "
                          "again with `maskrt build`")
    trt = import_builder(info.builder)
    if trt.__version__ != info.builder_version:
        raise MaskrtError(f"{engine}: built with {info.builder} {info.builder_version} but {trt.__version__} is "
                          "installed; an engine loads only into the TensorRT that built it: rebuild it with "
                          "`maskrt build`")
    try:
        plugin = library_path()
    except FileNotFoundError as exc:
        raise MaskrtError(f"the tensorrt backend needs the CUDA plugin library: {exc}") from None
    if sha256(plugin) != info.plugin_library_sha256:
        raise MaskrtError(f"{engine}: built with another plugin library than {plugin}; rebuild the engine with "
                          "`maskrt build` (or point MASKRT_PLUGIN_LIBRARY at the library it was built with)")
    if not torch.cuda.is_available():
        raise MaskrtError("the tensorrt backend runs engines on a CUDA GPU and none is visible (use --backend "
                          "onnxruntime --graph trt to run the same graph on the CPU)")
    major, minor = torch.cuda.get_device_capability()
    capability = f"{major}.{minor}"
    if capability not in info.compute_capabilities:
        raise MaskrtError(f"{engine}: built for compute capability {', '.join(info.compute_capabilities)}; this GPU "
                          f"({torch.cuda.get_device_name()}) is {capability}: rebuild it for this GPU")
    return data


class TensorRTBackend:
    """A serialized engine on the current CUDA device; `run` follows the Backend protocol."""

    name = "tensorrt"
    device = "cuda"  # the Predictor pastes this backend's masks on the GPU

    def __init__(self, engine: str | Path, info: EngineInfo | None = None) -> None:
        from maskrt.plugins._library import load_into, loaded_logger

        info = info or EngineInfo.read(engine)
        data = check_engine(engine, info)
        trt = import_builder(info.builder)
        load_into(trt)
        self.runtime = trt.Runtime(loaded_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise MaskrtError(f"{engine}: {info.builder} could not deserialize it (see its messages above)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.info = info
        self.profile = info.profiles["images"]

    def _check_size(self, height: int, width: int) -> None:
        lo, hi = self.profile.min, self.profile.max
        if not (lo[2] <= height <= hi[2] and lo[3] <= width <= hi[3]):
            raise MaskrtError(f"a batch padded to {height}x{width} is outside the engine's profile "
                              f"{lo[2]}x{lo[3]} .. {hi[2]}x{hi[3]}; build it with a wider --size")

    def _execute(self, images: torch.Tensor, sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        ctx = self.context
        inputs = {"images": images.to("cuda", torch.float32).contiguous(),
                  "image_sizes": sizes.to("cuda", torch.int64).contiguous()}
        for name, tensor in inputs.items():
            ctx.set_input_shape(name, tuple(tensor.shape))
            ctx.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for spec in self.info.outputs:
            shape = tuple(ctx.get_tensor_shape(spec.name))
            outputs[spec.name] = torch.empty(shape, dtype=_TORCH_TYPES[spec.dtype], device="cuda")
            ctx.set_tensor_address(spec.name, outputs[spec.name].data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise MaskrtError("TensorRT could not run the engine (see its messages above)")
        self.stream.synchronize()
        return outputs

    def run(self, canvas: torch.Tensor, sizes: torch.Tensor) -> list[RawOutput]:
        self._check_size(int(canvas.shape[-2]), int(canvas.shape[-1]))
        lo, hi = self.profile.min[0], self.profile.max[0]
        outs: list[RawOutput] = []
        for start in range(0, canvas.shape[0], hi):
            images, sz = canvas[start:start + hi], sizes[start:start + hi]
            real = images.shape[0]
            if real < lo:  # a static batch: pad with empty images, drop their outputs
                images = torch.cat([images, images.new_zeros((lo - real, *images.shape[1:]))])
                sz = torch.cat([sz, sz[:1].expand(lo - real, 2)])
            o = {k: v.cpu() for k, v in self._execute(images, sz).items()}
            for i in range(real):
                outs.append(RawOutput(num=int(o["num_detections"][i]), boxes=o["boxes"][i].float().numpy(),
                                      scores=o["scores"][i].float().numpy(),
                                      labels=o["labels"][i].numpy().astype(np.int64),
                                      masks=o["masks"][i].float().numpy()))
        return outs

    def close(self) -> None:
        self.context = self.engine = self.runtime = None  # type: ignore[assignment]
