"""The model.py files `maskrt triton` copies into a Triton model repository (python backend)."""
