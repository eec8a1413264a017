"""INT8: calibration and ONNX Runtime static quantization (calibration.py) and its accuracy control
(accuracy_control.py)."""
