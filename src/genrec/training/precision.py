"""Which precision a run trains in. ``train.precision: auto`` picks bf16 only where it is fast:
on CUDA devices with native bf16 and on CPUs with AMX matrix units (Intel Sapphire Rapids and
later). On other CPUs bf16 autocast mostly adds casts around fp32-speed kernels and is slower than
fp32 (measured on this project's AMD EPYC machines: benchmarks/RESULTS.md), so auto stays fp32 there.
Decided once per process (cached); the choice and its reason go into metrics.json's protocol.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch


@functools.lru_cache(maxsize=None)
def resolve_precision(name: str, device: torch.device) -> tuple[str, str]:
    """(``fp32`` or ``bf16``, why) for ``train.precision=name`` on ``device``."""
    if name != "auto":
        return name, "train.precision"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", "auto: CUDA device with native bf16"
        return "fp32", "auto: this CUDA device has no native bf16"
    if cpu_has_amx():
        return "bf16", "auto: CPU with AMX"
    return "fp32", "auto: no AMX on this CPU"


def describe(name: str, device: torch.device) -> str:
    """The protocol line: ``fp32`` as configured, or ``fp32 (auto: no AMX on this CPU)``."""
    precision, reason = resolve_precision(name, device)
    return precision if name != "auto" else f"{precision} ({reason})"


@functools.lru_cache(maxsize=None)
def cpu_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU has AMX tiles with bf16 (Linux: the kernel's flags; False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {"amx_bf16", "amx_tile"} <= set(flags)
