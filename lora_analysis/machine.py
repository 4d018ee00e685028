"""What this machine offers a run: the cores it may use and the device it trains on."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lora_analysis.errors import LoraAnalysisError

if TYPE_CHECKING:  # imported where a device is resolved: the analysis asks for cores without torch (2 s)
    import torch


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux ``MemAvailable``); None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU; otherwise the named device, which must exist."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise LoraAnalysisError(f"device {name!r} is not a torch device ({error})") from error
    if device.type not in ("cpu", "cuda", "mps"):  # meta, xpu, ...: no training or autocast there
        raise LoraAnalysisError(f"device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoraAnalysisError(f"device {name!r} asked for, but CUDA is not available here")
    return device
