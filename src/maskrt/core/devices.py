"""Where torch runs: `--device cpu|cuda|auto` resolved once, and which mixed precision that device can run.

`auto` is CUDA when torch sees a GPU, else the CPU. Under torchrun a CUDA process uses its LOCAL_RANK GPU. Mixed
precision (`--amp`): bf16 autocast on a GPU that has it (Ampere and newer), else fp16 with a gradient scaler; bf16
autocast on a CPU with native bf16 (AVX-512 BF16 or AMX), refused on other CPUs, where bf16 is emulated and slower
than fp32.
"""

from __future__ import annotations

import os

import torch

from maskrt.core.errors import MaskrtError, check_choice
from maskrt.core.machine import machine_facts

DEVICES = ("cpu", "cuda", "auto")
#: CPU flags (as /proc/cpuinfo names them) of native bf16 arithmetic
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def resolve_device(name: str) -> torch.device:
    """The torch device of a `--device` value; MaskrtError for an unknown name or cuda without a CUDA GPU."""
    check_choice("device", name, DEVICES)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        built = torch.version.cuda
        why = f"this torch is built for CUDA {built} but sees no CUDA GPU" if built else "this torch has no CUDA"
        raise MaskrtError(f"--device cuda: {why} (use --device cpu, or auto to take a GPU where there is one)")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


#: oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: torch's kernels then emulate bf16
_ONEDNN_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def cpu_has_native_bf16() -> bool:
    """Whether torch computes bf16 natively on this CPU: AVX-512 BF16 or AMX, and oneDNN not capped below them by
    ONEDNN_MAX_CPU_ISA."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ONEDNN_WITHOUT_BF16:
        return False
    return any(flag in machine_facts()["isa"] for flag in CPU_BF16_FLAGS)


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype of `--amp` on `device`: bf16 where the GPU or CPU has it, fp16 on older GPUs; MaskrtError
    on a CPU without native bf16."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if not cpu_has_native_bf16():
        capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
        why = f"ONEDNN_MAX_CPU_ISA={capped} caps oneDNN below them" if capped.upper() in _ONEDNN_WITHOUT_BF16 \
            else "this CPU has neither"
        raise MaskrtError(f"--amp on the CPU needs native bf16 ({' or '.join(CPU_BF16_FLAGS)}); {why} "
                          f"({machine_facts()['cpu']}), and emulated bf16 trains slower than fp32: drop --amp, or "
                          "train on a GPU (--device cuda)")
    return torch.bfloat16
