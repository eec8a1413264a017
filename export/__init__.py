"""Export stage: the fixed-shape deploy graph, ONNX export in two flavors, engine building."""
