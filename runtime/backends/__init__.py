"""Backends: each turns a pre-processed batch into per-image RawOutput (fixed D slots), following the `Backend`
protocol (base.py): ``run(canvas, sizes)`` with canvas [B, 3, H, W] (normalised, resized, zero-padded) and sizes
[B, 2] (each image's resized h, w), and ``close()``.

- eager_torch.py: torchvision's eager modules built from the checkpoint (`--backend torch`);
- ort_session.py: ONNX Runtime on model.onnx, model.trt.onnx (its plugin ops on the CPU through the plugins' host
  build, trt_graph_ort.py) and the INT8 / fp16 graphs;
- openvino_runtime.py: OpenVINO on the CPU (f32, bf16, INT8);
- tensorrt_engine.py: a TensorRT engine built by `maskrt build`;
- ort_internals.py: the one module that touches other libraries' private APIs (ONNX Runtime, onnxruntime-extensions).

Backends import neither export nor training, nor the parity, quantize or bench rooms that use them.
"""
