"""Has the training loss levelled off? The criterion every run reports in ``metrics.json``.

The logged loss (one row per ``optim.log_every`` steps, each the mean over those steps) is smoothed by a
trailing mean over an eighth of the run's steps. With S the last logged step,
``plateau_change = (smooth(3S/4) - smooth(S)) / smooth(3S/4)`` is the relative fall of the smoothed loss
over the last quarter of the steps, and the run counts as trained to the plateau when it is below
``PLATEAU_CHANGE`` (2%). A loss that rises over the last quarter has levelled off too (change < 0).
"""

from __future__ import annotations

import numpy as np

PLATEAU_CHANGE = 0.02


def smoothed(steps: np.ndarray, loss: np.ndarray, at: float, window: float) -> float:
    """Mean logged loss over the rows with step in ``(at - window, at]`` (the nearest row if none).

    steps, loss: (n,) logged steps (increasing) and their losses.
    """
    inside = (steps > at - window) & (steps <= at)
    if not inside.any():
        return float(loss[np.argmin(np.abs(steps - at))])
    return float(loss[inside].mean())


def plateau_change(steps: np.ndarray, loss: np.ndarray) -> float:
    """Relative fall of the smoothed loss over the last quarter of the steps.

    steps, loss: (n,) logged rows. NaN with fewer than 4 rows or a non-finite loss.
    """
    steps, loss = np.asarray(steps, dtype=float), np.asarray(loss, dtype=float)
    if len(steps) < 4 or not np.isfinite(loss).all():
        return float("nan")
    last = steps[-1]
    window = max(last / 8, 1.0)
    before = smoothed(steps, loss, 0.75 * last, window)
    return (before - smoothed(steps, loss, last, window)) / before


def plateau_metrics(history: list[dict]) -> dict:
    """``plateau_change`` and ``plateau`` (change < 2%) from a run's history rows (``step``, ``loss``)."""
    change = plateau_change([h["step"] for h in history], [h["loss"] for h in history])
    return {"plateau_change": change, "plateau": bool(np.isfinite(change) and change < PLATEAU_CHANGE)}
