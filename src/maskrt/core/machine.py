"""The machine a number was measured on: CPU model and the instruction sets that change numerical results.

Training is bit-reproducible on one machine but not across instruction sets (an AVX-512 kernel sums in another order
than an AMX one), and OpenVINO's bf16 and ONNX Runtime's INT8 kernels differ between them too, so every report that
compares numbers (parity's report.json, benchmarks, the test log) records these facts beside them.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path
from typing import Any

#: The CPU flags (as /proc/cpuinfo names them) that select different float, bf16 or INT8 kernels.
NUMERIC_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                     "amx_int8", "avx512_fp16")


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


@cache
def machine_facts() -> dict[str, Any]:
    """{"cpu": model name, "isa": the NUMERIC_ISA_FLAGS this CPU has, "cpus": logical CPUs, "machine": arch}."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return {"cpu": cpu_name(), "isa": [f for f in NUMERIC_ISA_FLAGS if f in flags], "cpus": os.cpu_count(),
            "machine": platform.machine()}


def machine_line() -> str:
    """machine_facts() in one line, e.g. `AMD EPYC (2 CPUs; avx2 fma avx512f avx512_vnni avx512_bf16)`."""
    facts = machine_facts()
    return f"{facts['cpu']} ({facts['cpus']} CPUs; {' '.join(facts['isa']) or 'no AVX2/AVX-512/AMX'})"
