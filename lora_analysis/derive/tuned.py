"""Each configuration at its own tuned learning rate: chosen on validation, reported on test over seeds.

A *cell* is one configuration of an ablation (a target set and a rank, say: every swept setting but the
learning rate and the seed). For each cell and learning rate, the validation metric is averaged over the
seeds run at that rate, and the cell's rate is the best of them: the highest validation accuracy (the
lowest validation loss for a causal LM). The test metric is reported over the seeds run at that rate:
mean, standard deviation, n and a 95% t-interval. The test split never enters the choice.

A chosen rate at the smallest or the largest of the cell's grid is flagged (``at_edge``: the optimum may
lie outside it). A cell whose every rate stays at the majority class on validation is ``collapsed``: it
is shown as such and its mean is left empty, never averaged in.
"""

from __future__ import annotations

import math

import pandas as pd

from lora_analysis.errors import LoraAnalysisError

LR = "optim.lr"
COLLAPSE_TOLERANCE = 0.005  # validation accuracy within this of the majority class: one class predicted
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


def lr_choices(runs: pd.DataFrame, cell: list[str]) -> pd.DataFrame:
    """One row per (cell, learning rate): the validation metric's mean over its seeds (``val_mean``, ``val_n``),
    and ``chosen``, ``at_edge``, ``collapsed`` for the cell. Raises when rates must be chosen between and a
    run has no validation metric (trained before ``data.val_size``): the test split is never used instead."""
    metric, higher = validation_metric(runs)
    runs = runs.assign(**{LR: runs[LR].astype(float)}) if LR in runs else runs.assign(**{LR: math.nan})
    rows = []
    for key, group in runs.groupby(cell, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rates = sorted(group[LR].dropna().unique())
        if len(rates) > 1 and (metric not in group or group[metric].isna().any()):
            raise LoraAnalysisError(
                f"choosing a learning rate for {dict(zip(cell, key, strict=True))} needs every run's validation "
                f"metric ({metric}), and some runs have none (trained before data.val_size): retrain them, or "
                "give each cell one learning rate")
        means = group.groupby(LR)[metric].agg(["mean", "count"]) if metric in group else None
        if means is None or means.empty:
            means = pd.DataFrame({"mean": [math.nan], "count": [0]}, index=pd.Index(rates[:1] or [math.nan]))
        scores = means["mean"]
        best = scores.idxmax() if higher and scores.notna().any() else (
            scores.idxmin() if scores.notna().any() else scores.index[0])
        majority = group["majority_accuracy"].max() if "majority_accuracy" in group else math.nan
        collapsed = bool(metric == "val_accuracy" and math.isfinite(majority) and scores.notna().any()
                         and (scores.dropna() <= majority + COLLAPSE_TOLERANCE).all())
        for rate, row in means.iterrows():
            rows.append({**dict(zip(cell, key, strict=True)), "lr": rate, "val_mean": row["mean"],
                         "val_n": int(row["count"]), "chosen": rate == best or (pd.isna(rate) and pd.isna(best)),
                         "at_edge": len(rates) > 1 and best in (rates[0], rates[-1]), "collapsed": collapsed})
    return pd.DataFrame(rows, columns=[*cell, "lr", "val_mean", "val_n", "chosen", "at_edge", "collapsed"])


def tuned_table(runs: pd.DataFrame, cell: list[str], metric: str) -> pd.DataFrame:
    """Per cell, the test ``metric`` at its chosen rate: ``lr``, ``lrs`` (rates tried), ``n``, ``mean``,
    ``std``, ``ci_low``, ``ci_high`` (95% t-interval), ``at_edge``, ``collapsed`` (mean left empty)."""
    columns = [*cell, "lr", "lrs", "n", "mean", "std", "ci_low", "ci_high", "at_edge", "collapsed"]
    if runs.empty or metric not in runs:
        return pd.DataFrame(columns=columns)
    choices = lr_choices(runs, cell)
    rows = []
    for _, choice in choices[choices["chosen"]].iterrows():
        here = runs
        for name in cell:
            here = here[here[name].isna()] if pd.isna(choice[name]) else here[here[name] == choice[name]]
        tried = int((choices[cell].astype(str) == choice[cell].astype(str)).all(axis=1).sum())
        at_rate = here[here[LR].astype(float) == choice["lr"]] if math.isfinite(choice["lr"]) else here
        values = at_rate[metric].dropna()
        low, high = interval(values)
        collapsed = bool(choice["collapsed"])
        rows.append({**{name: choice[name] for name in cell}, "lr": choice["lr"], "lrs": tried, "n": len(values),
                     "mean": math.nan if collapsed else values.mean(), "std": values.std(ddof=1),
                     "ci_low": math.nan if collapsed else low, "ci_high": math.nan if collapsed else high,
                     "at_edge": bool(choice["at_edge"]), "collapsed": collapsed})
    return pd.DataFrame(rows, columns=columns).astype({"n": int, "lrs": int})

