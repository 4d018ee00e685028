"""Has the training loss levelled off? The criterion every run reports in ``metrics.json``.

The loss of one fixed set of training examples (the *probe*: ``optim.plateau_probe`` of them, the same
for every run of a split, scored in eval mode with the run's precision) is measured at step
``round(3S/4)`` and at the last step S. ``plateau_change`` is its relative fall between the two,

    plateau_change = (L(3S/4) - L(S)) / L(3S/4),     plateau_change_se = sd(l_i(3S/4) - l_i(S)) / sqrt(n) / L(3S/4)

with ``l_i`` the loss of probe example i and L their mean. The same examples at both steps: the
difference is paired, so what the batches happened to hold does not enter it. The logged per-batch loss
mixes it in: its change over a quarter of a short run is as much the batches' noise as the model's.

Verdict (``plateau_verdict``), criterion ``PLATEAU_CHANGE`` (2%), judged at twice the standard error:
``levelled off`` when ``change + 2 se < 2%`` (a loss that rises has levelled off too), ``still falling``
when ``change - 2 se >= 2%``, ``cannot tell`` between; ``plateau`` is true for ``levelled off`` only.
"""

from __future__ import annotations

import math

import numpy as np

PLATEAU_CHANGE = 0.02
PROBE_AT = 0.75  # the earlier of the two probe steps, as a fraction of the run's steps
VERDICTS = ("levelled off", "still falling", "cannot tell", "not measured")


def probe_rows(n_train: int, size: int, split_seed: int) -> np.ndarray:
    """The probe: ``min(size, n_train)`` training rows, sorted; fixed by the split, not by the run's seed."""
    rows = np.random.default_rng([split_seed, 2]).permutation(n_train)[: min(size, n_train)]
    return np.sort(rows)


def probe_step(steps: int) -> int | None:
    """The step of the earlier probe, ``round(3/4 * steps)``; None for runs too short to have two."""
    return round(PROBE_AT * steps) if steps >= 4 else None


def verdict(change: float, se: float) -> str:
    """``VERDICTS`` for a relative fall ``change`` with standard error ``se`` (NaN: not measured)."""
    if not (math.isfinite(change) and math.isfinite(se)):
        return "not measured"
    if change + 2 * se < PLATEAU_CHANGE:
        return "levelled off"
    if change - 2 * se >= PLATEAU_CHANGE:
        return "still falling"
    return "cannot tell"


def plateau_metrics(before: np.ndarray | None, after: np.ndarray | None, step_before: int | None = None,
                    size: int = 0) -> dict:
    """The ``plateau_*`` metrics from the probe's per-example losses at ``step_before`` and at the end.

    before, after: (n,) losses of the same examples; None when the run had no probe (all NaN then).
    """
    if before is None or after is None or len(before) < 2:
        change = se = loss_before = loss_after = math.nan
    else:
        before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
        loss_before, loss_after = float(before.mean()), float(after.mean())
        scale = loss_before if loss_before > 0 else math.nan
        change = (loss_before - loss_after) / scale
        se = float(np.std(before - after, ddof=1) / math.sqrt(len(before)) / scale)
    said = verdict(change, se)
    return {
        "plateau_change": change,
        "plateau_change_se": se,
        "plateau_verdict": said,
        "plateau": said == "levelled off",
        "plateau_loss_before": loss_before,
        "plateau_loss_after": loss_after,
        "plateau_from_step": step_before,
        "plateau_probe": size,
    }
