"""Runtime stage. At the top, running a model: the Predictor (predictor.py) with pre-processing, post-processing, the
mask paste and overlays. Its rooms: backends/ (each backend), parity/ (verifying a model against the torch reference),
quantize/ (INT8 and its accuracy control) and bench/ (measuring); docs/architecture.md section 2."""
