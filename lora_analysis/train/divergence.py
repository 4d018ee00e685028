"""A diverged run is not a success: a non-finite loss or gradient stops it, and the run folder says why.

The trainer calls ``check_step`` once per step, after ``backward`` and before the optimizer moves the
weights, so no NaN ever reaches a saved adapter. ``record_failure`` writes ``FAILED.json`` (and no
``DONE``); analysis and the sweep table skip such a run and name it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from lora_analysis.atomic import write_json
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.layout import RunDir


class DivergedError(LoraAnalysisError):
    """Training produced a non-finite loss or gradient; ``record`` is what ``FAILED.json`` holds."""

    def __init__(self, message: str, record: dict) -> None:
        super().__init__(message)
        self.record = record


def check_step(loss: torch.Tensor, grads: list[torch.Tensor], norm: torch.Tensor | None, step: int) -> None:
    """Raise ``DivergedError`` when ``loss`` (a scalar) or any of ``grads`` is NaN or infinite.

    ``norm``: the total 2-norm of ``grads`` (``grad_norm``), which the clipping needs anyway: it is
    finite exactly when every gradient is, unless the squares overflow, so the gradients are looked at
    one by one only when it is not. ``step`` is the 1-based number of the step that produced them.
    """
    value = float(loss.detach())
    if not math.isfinite(value):
        raise _diverged(f"loss is {value} at step {step}", step, "loss", value)
    if norm is not None and math.isfinite(float(norm)):
        return
    count = int(sum(int((~torch.isfinite(g)).sum()) for g in grads))
    if count:
        raise _diverged(f"{count} non-finite gradient values at step {step}", step, "gradient", value)


def grad_norm(grads: list[torch.Tensor]) -> torch.Tensor | None:
    """The total 2-norm of ``grads``, as ``clip_grad_norm_`` computes it (None without gradients)."""
    if not grads:
        return None
    total = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if total is not None:
        return total(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def clip(params: list[torch.Tensor], max_norm: float, norm: torch.Tensor | None) -> None:
    """``clip_grad_norm_(params, max_norm)`` with the norm already computed (torch >= 2.6; else recomputed)."""
    if norm is None:
        return
    with_norm = getattr(torch.nn.utils, "clip_grads_with_norm_", None)
    if with_norm is not None:
        with_norm(params, max_norm, norm)
    else:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def _diverged(what: str, step: int, kind: str, loss: float) -> DivergedError:
    message = f"training diverged: {what} (try a lower optim.lr or optim.max_grad_norm > 0)"
    record = {"reason": message, "kind": kind, "step": step, "loss": loss if math.isfinite(loss) else str(loss)}
    return DivergedError(message, record)


def record_failure(run_dir: Path, error: DivergedError) -> Path:
    """Write ``FAILED.json`` and drop the checkpoint, so a relaunch starts the run afresh (no ``DONE``)."""
    run = RunDir(run_dir)
    run.checkpoint_path.unlink(missing_ok=True)
    return write_json(run.failed_path, {**error.record, "failed": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

