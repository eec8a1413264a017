"""Measuring: one backend end to end and per stage (run.py), and every candidate side by side (compare.py)."""
