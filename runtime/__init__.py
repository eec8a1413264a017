"""Runtime stage: pre/post-processing, the Predictor and its backends, parity checks."""
