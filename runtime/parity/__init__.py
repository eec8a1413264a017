"""Verifying a deployed model: parity with the torch reference (compare.py, gates.py, bootstrap.py, report.py,
figures.py, reference.py), the per-layer comparison that says which layer broke it (layers*.py) and the fault catalogue
that proves the gates (faults.py). docs/architecture.md section 7."""
