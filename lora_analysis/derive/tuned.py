"""Each configuration at its own tuned learning rate: chosen on validation, reported on test over seeds.

A *cell* is one configuration of an ablation (a target set and a rank, say: every swept setting but the
learning rate and the seed). For each cell and learning rate, the validation metric is averaged over the
seeds every rate of the cell was run with (seed 0 of the search, when only the chosen rate has more: the
choice stays the search's), and the cell's rate is the best of them: the highest validation accuracy (the
lowest validation loss for a causal LM). The test metric is reported over the seeds run at that rate:
mean, standard deviation, n and a 95% t-interval. The test split never enters the choice.

A chosen rate at the smallest or the largest of the cell's grid is flagged (``at_edge``: the optimum may
lie outside it). A cell whose every rate stays at the majority class on validation is ``collapsed``: it
is shown as such and its mean is left empty, never averaged in.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pandas as pd

from lora_analysis.errors import LoraAnalysisError
from lora_analysis.stopping import HALVED

LR = "optim.lr"
COLLAPSE_TOLERANCE = 0.005  # validation accuracy within this of the majority class: one class predicted
_ONE_SIDED_95 = 1.6448536269514722  # scipy.stats.norm.ppf(0.95)
LEVEL = 0.95


def validation_metric(runs: pd.DataFrame) -> tuple[str, bool]:
    """The column the choice reads and whether higher is better: ``val_accuracy``, else ``val_loss``."""
    for name, higher in (("val_accuracy", True), ("val_loss", False)):
        if name in runs and runs[name].notna().any():
            return name, higher
    return "val_accuracy", True


def interval(values: pd.Series, level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` t-interval of the mean of ``values`` (NaN, NaN for fewer than two)."""
    values = values.dropna()
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    from scipy import stats

    half = stats.t.ppf((1 + level) / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return values.mean() - half, values.mean() + half


def difference_interval(a: pd.DataFrame, b: pd.DataFrame, level: float = LEVEL) -> tuple[float, float, float]:
    """The mean of ``a``'s cell means minus that of ``b``'s, with its ``level`` Welch interval over seeds.

    ``a`` and ``b``: rows of ``tuned_table`` (``mean``, ``std``, ``n`` per cell; one cell each for two cells
    compared). Each cell mean has variance ``std**2 / n``; the degrees of freedom are Welch-Satterthwaite's.
    With two single cells this is ``scipy.stats.ttest_ind(..., equal_var=False)``'s interval. The interval
    is (NaN, NaN) when a cell has fewer than two seeds: one seed has no spread to judge by.
    """
    diff = a["mean"].mean() - b["mean"].mean()
    if a.empty or b.empty or (a["n"] < 2).any() or (b["n"] < 2).any():
        return diff, math.nan, math.nan
    parts = pd.concat([a["std"] ** 2 / a["n"] / len(a) ** 2, b["std"] ** 2 / b["n"] / len(b) ** 2])
    dof = pd.concat([a["n"], b["n"]]) - 1
    var = parts.sum()
    if var == 0:
        return diff, diff, diff
    from scipy import stats

    df = var**2 / (parts**2 / dof).sum()
    half = stats.t.ppf((1 + level) / 2, df) * math.sqrt(var)
    return diff, diff - half, diff + half


CHOICE_COLUMNS = ["lr", "val_mean", "val_n", "chosen", "at_edge", "collapsed", "halved"]


def lr_choices(runs: pd.DataFrame, cell: list[str]) -> pd.DataFrame:
    """One row per (cell, learning rate): the validation metric's mean over its seeds (``val_mean``, ``val_n``),
    ``halved`` (the search dropped the rate at its rung: ``val_mean`` is its validation there), and ``chosen``,
    ``at_edge``, ``collapsed`` for the cell. Raises when rates must be chosen between and a run has no validation
    metric (trained before ``data.val_size``): the test split is never used instead."""
    rows = []
    for key, group in _cells(runs, cell):
        choice = _choose(group, key)
        for rate, row in choice.means.iterrows():
            rows.append({**key, "lr": rate, "val_mean": row["mean"], "val_n": int(row["count"]),
                         "chosen": _same(rate, choice.rate), "at_edge": choice.at_edge, "collapsed": choice.collapsed,
                         "halved": rate in choice.halved})
    return pd.DataFrame(rows, columns=[*cell, *CHOICE_COLUMNS])


def tuned_table(runs: pd.DataFrame, cell: list[str], metric: str) -> pd.DataFrame:
    """Per cell, the test ``metric`` at its chosen rate: ``lr``, ``lrs`` (rates tried), ``n``, ``mean``,
    ``std``, ``ci_low``, ``ci_high`` (95% t-interval), ``at_edge``, ``collapsed`` (mean and interval empty)."""
    columns = [*cell, "lr", "lrs", "n", "mean", "std", "ci_low", "ci_high", "at_edge", "collapsed"]
    if runs.empty or metric not in runs:
        return pd.DataFrame(columns=columns)
    rows = []
    for key, group in _cells(runs, cell):
        choice = _choose(group, key)
        values = group[[_same(rate, choice.rate) for rate in group[LR]]][metric].dropna()
        low, high = (math.nan, math.nan) if choice.collapsed else interval(values)
        rows.append({**key, "lr": choice.rate, "lrs": len(choice.means), "n": len(values),
                     "mean": math.nan if choice.collapsed else values.mean(), "std": values.std(ddof=1),
                     "ci_low": low, "ci_high": high, "at_edge": choice.at_edge, "collapsed": choice.collapsed})
    return pd.DataFrame(rows, columns=columns).astype({"n": int, "lrs": int})


class _Choice(NamedTuple):
    means: pd.DataFrame  # per rate: mean and count of the validation metric
    rate: float  # the chosen one (NaN: the runs record no rate)
    halved: set[float]  # rates successive halving dropped at its rung: never chosen
    at_edge: bool
    collapsed: bool


def _cells(runs: pd.DataFrame, cell: list[str]):
    """(the cell's values by key, its runs) per cell, with the rate as a float column."""
    runs = runs.assign(**{LR: runs[LR].astype(float) if LR in runs else math.nan})
    for key, group in runs.groupby(cell, dropna=False, sort=True):
        yield dict(zip(cell, key if isinstance(key, tuple) else (key,), strict=True)), group


def _choose(group: pd.DataFrame, key: dict) -> _Choice:
    """The rate of the best validation metric among one cell's runs."""
    metric, higher = validation_metric(group)
    rates = sorted(group[LR].dropna().unique())
    known = metric in group and group[metric].notna().all()
    if len(rates) > 1 and not known:
        raise LoraAnalysisError(
            f"choosing a learning rate for {key} needs every run's validation metric ({metric}), and some runs have "
            "none (trained before data.val_size): retrain them, or give each cell one learning rate")
    if metric in group and group[LR].notna().any():
        means = _on_common_seeds(group).groupby(LR)[metric].agg(["mean", "count"])
    else:  # one rate, or none recorded: nothing to choose
        means = pd.DataFrame({"mean": [math.nan], "count": [0]}, index=pd.Index([rates[0] if rates else math.nan]))
    scores = means["mean"]
    halved = _halved_rates(group)
    eligible = scores[[r not in halved for r in scores.index]].dropna()  # a rate dropped at the rung stays out
    eligible = eligible if not eligible.empty else scores.dropna()
    if not eligible.empty:
        rate = eligible.idxmax() if higher else eligible.idxmin()
    else:
        rate = scores.index[0]
    column = majority_column(group)
    majority = group[column].max() if column in group else math.nan
    collapsed = bool(metric == "val_accuracy" and math.isfinite(majority) and scores.notna().any()
                     and (scores.dropna() <= majority + COLLAPSE_TOLERANCE).all())
    return _Choice(means, rate, halved, len(rates) > 1 and rate in (rates[0], rates[-1]), collapsed)


def majority_column(runs: pd.DataFrame) -> str:
    """The column holding the majority-class accuracy a run's validation accuracy is judged against: the
    validation split's own (``val_majority``); for runs saved before it was recorded, the test split's."""
    return "val_majority" if "val_majority" in runs and runs["val_majority"].notna().any() else "majority_accuracy"


def at_majority(runs: pd.DataFrame) -> pd.Series:
    """Per run, whether its validation accuracy is not above the majority class beyond chance: within the larger
    of ``COLLAPSE_TOLERANCE`` and the one-sided 95% binomial margin of the majority rate on ``val_examples``
    texts (1.645 sqrt(m (1 - m) / n): 0.026 on 1,000 texts at m = 0.571, 0.13 on 40). A run that predicts
    one class, or learnt nothing its validation split can show. False where a number is missing, or for a
    metric other than accuracy."""
    column = majority_column(runs)
    if "val_accuracy" not in runs or column not in runs:
        return pd.Series(False, index=runs.index)
    accuracy = pd.to_numeric(runs["val_accuracy"], errors="coerce")
    majority = pd.to_numeric(runs[column], errors="coerce")
    margin = pd.Series(COLLAPSE_TOLERANCE, index=runs.index)
    if "val_examples" in runs:
        n = pd.to_numeric(runs["val_examples"], errors="coerce")
        margin = (_ONE_SIDED_95 * (majority * (1 - majority) / n) ** 0.5).fillna(0.0).clip(lower=COLLAPSE_TOLERANCE)
    return (accuracy <= majority + margin) & accuracy.notna() & majority.notna()


def _halved_rates(group: pd.DataFrame) -> set[float]:
    """The rates of a cell whose runs successive halving stopped at its rung (``stopping.HALVED``)."""
    if "stop_reason" not in group:
        return set()
    return set(group.loc[group["stop_reason"] == HALVED, LR].dropna().astype(float))


def _on_common_seeds(group: pd.DataFrame) -> pd.DataFrame:
    """The runs of the seeds every rate of the cell was trained with (the search's seed 0, when the grid ran on
    one seed and the chosen rate on more): rates are compared on equal footing, and the choice made on the
    search does not move when the seeds at the chosen rate come in (their mean regresses; the others' cannot)."""
    if "seed" not in group or group["seed"].isna().any():
        return group
    seeds = [set(g["seed"]) for _, g in group.groupby(LR)]
    common = set.intersection(*seeds) if seeds else set()
    return group[group["seed"].isin(common)] if common else group


def _same(a: float, b: float) -> bool:
    return a == b or (pd.isna(a) and pd.isna(b))


def joint_rate(choices: pd.DataFrame, higher: bool = True) -> float | None:
    """One learning rate for several cells compared with each other (the ranks of one target set): the rate
    with the best validation metric averaged over the cells, among the rates every cell was trained at.

    ``choices``: ``lr_choices`` rows of those cells (a cell per distinct value of every column but
    ``CHOICE_COLUMNS``). Where the cells chose the same rate, it is that rate; a rate a cell dropped at the
    search's rung (``halved``) is taken only where every rate was dropped by some cell (one rate for the pair
    still beats two). None when fewer than two rates were tried (nothing to choose).
    """
    if choices.empty or choices["lr"].nunique() < 2:
        return None
    keys = [c for c in choices if c not in CHOICE_COLUMNS]
    halved = set(choices.loc[choices["halved"], "lr"]) if "halved" in choices else set()
    table = choices.pivot_table(index="lr", columns=keys, values="val_mean", aggfunc="mean", dropna=False)
    complete = table.dropna(how="any")
    whole = complete.drop(index=[r for r in complete.index if r in halved])  # no cell dropped it at the rung
    complete = whole if not whole.empty else complete  # else one rate still beats a pair across two rates
    if complete.empty:
        return None
    means = complete.mean(axis=1)
    return float(means.idxmax() if higher else means.idxmin())
