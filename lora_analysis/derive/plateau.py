"""Where validation accuracy stops improving with rank: one rule, read by the report's rates finding, the
rank recommendation's accuracy cross-check and ``across``.

Each rank of a target set at its learning rate chosen on validation (``stats.validation_table``); the best
rank has the best validation mean. Each smaller rank's *shortfall* (the best mean minus its mean; for a
loss, its mean minus the best) gets its 95% Welch interval over seeds (``tuned.difference_interval``).
Accuracy *stops improving* at the smallest rank whose shortfall is at most ``MARGIN`` at 95% (the upper
end of its interval): supported when that rank is below the best one. Where no smaller rank is within
the margin: not supported (accuracy still improves up to the best rank) when every smaller rank's
interval lies above 0, and cannot tell when some smaller rank can neither be told from the best nor
shown within the margin (an interval wide enough to hold both), or has fewer than two seeds (no
interval). A rank whose interval merely holds the best mean is not evidence that it is as good: with
three seeds such intervals span several points. The test split is never read: this is a choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from lora_analysis.derive import stats
from lora_analysis.derive.tuned import difference_interval, validation_metric

SUPPORTED, NOT_SUPPORTED, CANNOT_TELL = "supported", "not supported", "cannot tell"
MARGIN = 0.01  # one point of validation accuracy: about the binomial standard error on 1,000-2,000 texts


@dataclass(frozen=True)
class Shortfall:
    """How far rank ``r`` falls short of the best rank: ``value`` with its 95% interval (NaN: one seed)."""

    r: int
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Plateau:
    """The answer for one target set: ``rank`` where validation stops improving (None: cannot tell), the
    ``best`` rank and its mean, the verdict, and each smaller rank's shortfall from the best."""

    targets: str
    rank: int | None
    best: int
    best_mean: float
    verdict: str
    shortfalls: tuple[Shortfall, ...] = ()
    margin: float = MARGIN
    one_seed: bool = False  # a rank has one seed: no interval

    @property
    def why_not(self) -> str:
        """Why a ``CANNOT_TELL`` is one, in words."""
        return ("a rank has one seed, so no interval" if self.one_seed else
                f"no smaller rank is shown within {self.margin:g} of the best at 95%, nor is every one shown below it")


def plateaus(validation: pd.DataFrame, higher: bool = True, margin: float = MARGIN) -> dict[str, Plateau]:
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
        below = [row for _, row in t.iterrows() if row["r"] < best["r"]]
        shortfalls = tuple(_shortfall(best, row, higher) for row in below)
        within = [s.r for s in shortfalls if s.high <= margin]  # NaN compares False: one seed is never within
        if within:
            rank, verdict = within[0], SUPPORTED
        elif shortfalls and all(s.low > 0 for s in shortfalls):
            rank, verdict = int(best["r"]), NOT_SUPPORTED
        elif not shortfalls and t["n"].min() >= 2:  # the smallest rank is the best
            rank, verdict = int(best["r"]), SUPPORTED
        else:
            rank, verdict = None, CANNOT_TELL
        out[str(targets)] = Plateau(str(targets), rank, int(best["r"]), float(best["mean"]), verdict, shortfalls,
                                    margin, bool(t["n"].min() < 2))
    return out


def _shortfall(best: pd.Series, row: pd.Series, higher: bool) -> Shortfall:
    a, b = (best, row) if higher else (row, best)
    value, low, high = difference_interval(pd.DataFrame([a]), pd.DataFrame([b]))
    return Shortfall(int(row["r"]), float(value), float(low), float(high))


def plateau(runs: pd.DataFrame, targets: str) -> Plateau | None:
    """The ``Plateau`` of target set ``targets`` from a sweep table of real runs (no shuffled-label controls);
    None without a validation metric (runs trained before ``data.val_size``) or with fewer than two ranks."""
    return plateaus(stats.validation_table(runs), validation_metric(runs)[1]).get(str(targets))
