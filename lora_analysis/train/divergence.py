"""A diverged run is not a success: a non-finite loss or gradient stops it, and the run folder says why.

The trainer calls ``check_step`` once per step, after ``backward`` and before the optimizer moves the
weights, so no NaN ever reaches a saved adapter. ``record_failure`` writes ``FAILED.json`` (and no
``DONE``); analysis and the sweep table skip such a run and name it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
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


def check_step(loss: torch.Tensor, params: Iterable[torch.Tensor], step: int) -> None:
    """Raise ``DivergedError`` when ``loss`` (a scalar) or any gradient of ``params`` is NaN or infinite.

    ``step`` is the 1-based number of the step that produced them (the one that would be taken next).
    """
    value = float(loss.detach())
    if not math.isfinite(value):
        raise _diverged(f"loss is {value} at step {step}", step, "loss", value)
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        bad = [g for g in grads if not bool(torch.isfinite(g).all())]
        if bad:
            count = int(sum(int((~torch.isfinite(g)).sum()) for g in bad))
            raise _diverged(f"{count} non-finite gradient values at step {step}", step, "gradient", value)


def _diverged(what: str, step: int, kind: str, loss: float) -> DivergedError:
    message = f"training diverged: {what} (try a lower optim.lr or optim.max_grad_norm > 0)"
    record = {"reason": message, "kind": kind, "step": step, "loss": loss if math.isfinite(loss) else str(loss)}
    return DivergedError(message, record)


def record_failure(run_dir: Path, error: DivergedError) -> Path:
    """Write ``FAILED.json`` and drop the checkpoint, so a relaunch starts the run afresh (no ``DONE``)."""
    run = RunDir(run_dir)
    run.checkpoint_path.unlink(missing_ok=True)
    return write_json(run.failed_path, {**error.record, "failed": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

