"""Where validation accuracy stops improving with rank: one rule, read by the report's rates finding, the
rank recommendation's accuracy cross-check and ``across``.

Each rank of a target set at its learning rate chosen on validation (``stats.validation_table``); the best
rank is the one with the best validation mean; accuracy *stops improving* at the smallest rank whose 95%
interval over seeds holds that best mean. Supported when that rank is below the best one; not supported
when only the best rank reaches it; cannot tell when a rank has fewer than two seeds (no interval). The
test split is never read: where accuracy stops improving is a choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from lora_analysis.derive import stats
from lora_analysis.derive.tuned import validation_metric

SUPPORTED, NOT_SUPPORTED, CANNOT_TELL = "supported", "not supported", "cannot tell"


@dataclass(frozen=True)
class Plateau:
    """The answer for one target set: ``rank`` where validation stops improving (None: cannot tell), the
    ``best`` rank and its mean, the verdict, and the first rank's interval."""

    targets: str
    rank: int | None
    best: int
    best_mean: float
    verdict: str
    ci_low: float = float("nan")
    ci_high: float = float("nan")


def plateaus(validation: pd.DataFrame, higher: bool = True) -> dict[str, Plateau]:
    """Per target set of the validation table (``stats.validation_table``) with at least two ranks that
    learnt: its ``Plateau``. Collapsed ranks (every rate at the majority class) say nothing about it."""
    out = {}
    if validation.empty:
        return out
    for targets, t in validation[~validation["collapsed"].astype(bool)].groupby("targets"):
        t = t.dropna(subset=["mean"]).sort_values("r")
        if len(t) < 2:
            continue
        best = t.loc[t["mean"].idxmax() if higher else t["mean"].idxmin()]
        if t["n"].min() < 2:
            out[str(targets)] = Plateau(str(targets), None, int(best["r"]), float(best["mean"]), CANNOT_TELL)
            continue
        within = t[(t["ci_low"] <= best["mean"]) & (best["mean"] <= t["ci_high"])]
        first = within.iloc[0] if not within.empty else best
        verdict = SUPPORTED if first["r"] < best["r"] else NOT_SUPPORTED
        out[str(targets)] = Plateau(str(targets), int(first["r"]), int(best["r"]), float(best["mean"]), verdict,
                                    float(first["ci_low"]), float(first["ci_high"]))
    return out


def plateau(runs: pd.DataFrame, targets: str) -> Plateau | None:
    """The ``Plateau`` of target set ``targets`` from a sweep table of real runs (no shuffled-label controls);
    None without a validation metric (runs trained before ``data.val_size``) or with fewer than two ranks."""
    return plateaus(stats.validation_table(runs), validation_metric(runs)[1]).get(str(targets))
