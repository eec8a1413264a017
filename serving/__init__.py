"""Serving: a Triton Inference Server model repository (`maskrt triton`) and a real Triton server on this machine
through PyTriton (`maskrt serve`), with the client both are measured and tested with."""
