"""What this machine offers a run: the cores it may use and the device it trains on."""

from __future__ import annotations

import os

import torch

from lora_analysis.errors import LoraAnalysisError


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU; otherwise the named device, which must exist."""
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
