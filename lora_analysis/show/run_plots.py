"""Figures of the runs themselves: test accuracy against rank and target set, training loss curves.

Same look as ``show.plots`` (tables in, a ``Figure`` out, ``LoraAnalysisError`` when there is nothing
to draw); these read the sweep table and the runs' histories, not the analysis tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from lora_analysis.derive.queries import has_majority, lora_runs, metric_column
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.layout import RunDir, SweepDir
from lora_analysis.show.plots import new_figure, styled


def _reference_lines(ax, runs: pd.DataFrame, metric: str, full: dict | None) -> None:
    """Full fine-tuning's cell (``stats.full_reference``: at its own rate chosen on validation, like every cell)
    with its 95% interval, and the majority class."""
    if full and not full["collapsed"]:
        rate = f" at {full['lr']:.0e}" if pd.notna(full["lr"]) else ""
        ax.axhline(full["mean"], color="black", lw=1.2,
                   label=f"full fine-tuning{rate} ({full['mean']:.3f}, n={int(full['n'])})")
        if full["n"] > 1:  # its 95% interval over seeds, as the cells' error bars
            ax.axhspan(full["ci_low"], full["ci_high"], color="black", alpha=0.08, lw=0)
    if draws_majority(runs, metric):
        majority = float(runs["majority_accuracy"].dropna().iloc[0])
        ax.axhline(majority, color="grey", ls=":", lw=1.2, label=f"majority class ({majority:.3f})")


def draws_majority(runs: pd.DataFrame, metric: str | None) -> bool:
    """Whether the accuracy figures draw the majority-class line (their captions ask this too)."""
    return metric == "test_accuracy" and has_majority(runs)


@styled
def accuracy_vs_rank(runs: pd.DataFrame, table: pd.DataFrame, *, full: dict | None, metric: str | None = None
                     ) -> Figure:
    """Tables 5/6 analogue: test metric against rank (log2), one line per target set, each cell at its tuned
    learning rate with its 95% interval over seeds (``table``: ``stats.accuracy_table``); a collapsed cell
    (every rate at the majority class) is a cross at the majority class, not a point of the line. ``full``: the
    full fine-tuning cell (``stats.full_reference``, the report's ``Derived.full``), a black line, or None."""
    metric = metric or metric_column(runs)
    if table.empty:
        raise LoraAnalysisError("no finished LoRA run with a test metric")
    fig = new_figure(6.4, 4.0)
    ax = fig.subplots()
    for index, (targets, t) in enumerate(table.groupby("targets")):
        ax.errorbar(t["r"], t["mean"], yerr=_half_interval(t), marker="o", capsize=3, lw=1.4, label=targets,
                    color=f"C{index}")
        collapsed = t[t["collapsed"].astype(bool)]
        if not collapsed.empty and "majority_accuracy" in runs:
            ax.scatter(collapsed["r"], [runs["majority_accuracy"].max()] * len(collapsed), marker="x", s=40,
                       color=f"C{index}", zorder=3)
    _reference_lines(ax, runs, metric, full)
    ranks = sorted(int(r) for r in table["r"].unique())
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ranks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(r) for r in ranks])
    ax.set(xlabel="LoRA rank r", ylabel=metric)
    ax.legend(title="target set", frameon=False, fontsize=7.5)
    seeds = int(table["n"].max())
    fig.suptitle(f"{metric} against rank and target set, each at its tuned learning rate\n(mean, 95% interval, "
                 f"up to {seeds} seeds; x: collapsed)", fontsize=10)  # two lines: one is wider than the figure
    return fig


def _half_interval(table: pd.DataFrame) -> np.ndarray:
    """Error bars from the 95% interval (none where it is undefined: one seed, or a collapsed cell)."""
    return np.nan_to_num(np.vstack([table["mean"] - table["ci_low"], table["ci_high"] - table["mean"]]), nan=0.0)


@styled
def accuracy_by_targets(runs: pd.DataFrame, table: pd.DataFrame, *, full: dict | None, metric: str | None = None
                        ) -> Figure:
    """Table 5 analogue: test metric per target set at one trainable-parameter budget (``lora.budget``), each at
    its tuned learning rate with its 95% interval (``table``: ``stats.accuracy_table`` of the budget-matched runs;
    ``full``: as ``accuracy_vs_rank``'s).
    """
    metric = metric or metric_column(runs)
    lora = lora_runs(runs)
    if "lora.budget" not in lora or lora["lora.budget"].isna().all():
        raise LoraAnalysisError(f"no budget-matched runs (lora.budget is not set in {SweepDir.TABLE})")
    lora = lora[lora["lora.budget"].notna()]
    table = table.sort_values("mean")
    fig = new_figure(max(6.8, 0.75 * len(table) + 2.5), 4.2)
    ax = fig.subplots()
    x = np.arange(len(table))
    ax.errorbar(x, table["mean"], yerr=_half_interval(table), fmt="o", capsize=3, color="C0")
    _reference_lines(ax, runs, metric, full)
    ax.set_xticks(x, [f"{t}\nr={int(r)}\n{p / 1e3:.0f}k" for t, r, p in
                      zip(table["targets"], table["r"], table["lora_params"], strict=True)])
    ax.set(xlabel="target set, rank, trainable LoRA parameters", ylabel=metric)
    ax.legend(frameon=False, fontsize=7.5)
    budgets = ", ".join(sorted({str(b) for b in lora["lora.budget"]}))
    ax.margins(x=0.08)
    fig.suptitle(f"{metric} per target set at budget {budgets}, each at its tuned learning rate (mean, 95% interval)")
    return fig


@styled
def accuracy_vs_params(runs: pd.DataFrame, table: pd.DataFrame, patterns: pd.DataFrame, *, full: dict | None,
                       metric: str | None = None) -> Figure:
    """Test metric against trainable LoRA parameters (log): uniform ranks as one line per target set (each point
    labelled with its r), rank patterns (``stats.pattern_table``) as stars, every cell at its tuned learning rate
    with its 95% interval over seeds. Whether a recommended pattern buys accuracy per parameter, at a glance."""
    metric = metric or metric_column(runs)
    table = table[~table["collapsed"].astype(bool)].dropna(subset=["mean", "lora_params"])
    if patterns.empty and table.empty:
        raise LoraAnalysisError("no uniform-rank or rank-pattern cell with a test metric and a parameter count")
    fig = new_figure(6.6, 4.2)
    ax = fig.subplots()
    sets = sorted(set(table["targets"].astype(str)) | set(patterns["targets"].astype(str)))
    for targets in sets:
        color = f"C{sets.index(targets)}"
        t = table[table["targets"].astype(str) == targets].sort_values("lora_params")
        if not t.empty:
            ax.errorbar(t["lora_params"], t["mean"], yerr=_half_interval(t), marker="o", capsize=3, lw=1.2,
                        color=color, label=f"{targets}, uniform r")
            for row in t.itertuples():
                ax.annotate(f"r={int(row.r)}", (row.lora_params, row.mean), textcoords="offset points", xytext=(4, -10),
                            fontsize=7, color=color)
        p = patterns[(patterns["targets"].astype(str) == targets) & ~patterns["collapsed"].astype(bool)]
        if not p.empty:
            ax.errorbar(p["lora_params"], p["mean"], yerr=_half_interval(p), fmt="*", markersize=12, capsize=3,
                        color=color, markeredgecolor="black", label=f"{targets}, rank pattern")
    _reference_lines(ax, runs, metric, full)
    ax.set_xscale("log")
    ax.set(xlabel="trainable LoRA parameters", ylabel=metric)
    ax.legend(frameon=False, fontsize=7.5)
    fig.suptitle(f"{metric} against trainable LoRA parameters, each cell at its tuned learning rate\n"
                 "(mean, 95% interval over seeds; stars: rank patterns)", fontsize=9)
    return fig


@styled
def lr_curves(choices: pd.DataFrame, full: pd.DataFrame | None = None, patterns: pd.DataFrame | None = None
              ) -> Figure:
    """Validation metric against learning rate (log), one line per rank, one panel per target set: the U-curves
    each cell's rate was chosen from (``stats.rate_choices``); the chosen rate ringed. ``full``
    (``stats.full_choices``): full fine-tuning's own curve, in black in every panel, where it tried several rates:
    how far LoRA's best rates sit from full fine-tuning's, at a glance. ``patterns`` (``stats.pattern_choices``):
    each rank pattern's curve, starred, in the panel of its target set (a panel of its own where that set has
    no uniform rank). A rank has one colour in every panel, named once in the figure's legend."""
    if choices.empty or choices.groupby(["targets", "r"])["lr"].nunique().max() < 2:
        raise LoraAnalysisError("no cell was trained at more than one learning rate")
    patterns = patterns if patterns is not None and not patterns.empty else None
    pattern_sets = set(patterns["targets"].astype(str)) if patterns is not None else set()
    sets = sorted(set(choices["targets"].astype(str)) | pattern_sets)
    with_full = full is not None and full["lr"].nunique() > 1
    several = choices.groupby("targets")["r"].nunique().max() > 1 or with_full  # else each title names its rank
    colour = {r: f"C{index}" for index, r in enumerate(sorted(choices["r"].dropna().unique()))}  # one per rank
    pattern_colour = {p: f"C{9 - index % 3}" for index, p in  # cyan, olive, grey: apart from the first ranks'
                      enumerate(sorted(patterns["pattern"].astype(str).unique()) if patterns is not None else [])}
    fig = new_figure(min(max(3.2 * len(sets), 5.2), 13.0), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(sets), sharey=True, squeeze=False)[0])
    for ax, targets in zip(axes, sets, strict=True):
        cell = choices[choices["targets"].astype(str) == targets]
        for pattern, t in (patterns[patterns["targets"].astype(str) == targets].groupby("pattern")
                           if targets in pattern_sets else []):
            t, c = t.sort_values("lr"), pattern_colour[str(pattern)]
            ax.plot(t["lr"], t["val_mean"], marker="*", markersize=10, lw=1.2, color=c, label=f"rank pattern {pattern}")
            ax.scatter(t.loc[t["chosen"], "lr"], t.loc[t["chosen"], "val_mean"], s=140, facecolors="none",
                       edgecolors=c, zorder=3)
            cut = t[t["halved"].astype(bool)]
            ax.scatter(cut["lr"], cut["val_mean"], s=60, marker="x", color=c, zorder=3)
        for r, t in cell.groupby("r"):
            t, c = t.sort_values("lr"), colour[r]
            ax.plot(t["lr"], t["val_mean"], marker="o", lw=1.2, color=c, label=f"r={int(r)}")
            best = t[t["chosen"]]
            ax.scatter(best["lr"], best["val_mean"], s=90, facecolors="none", edgecolors=c, zorder=3)
            dropped = t[t["halved"].astype(bool)] if "halved" in t else t.iloc[:0]
            ax.scatter(dropped["lr"], dropped["val_mean"], s=60, marker="x", color=c, zorder=3)
        if with_full:
            f = full.sort_values("lr")
            ax.plot(f["lr"], f["val_mean"], marker="s", lw=1.2, ls="--", color="black", label="full fine-tuning")
            ax.scatter(f.loc[f["chosen"], "lr"], f.loc[f["chosen"], "val_mean"], s=90, facecolors="none",
                       edgecolors="black", zorder=3)
            cut = f[f["halved"].astype(bool)]
            ax.scatter(cut["lr"], cut["val_mean"], s=60, marker="x", color="black", zorder=3)
        ax.set_xscale("log")
        ranks = cell["r"].unique()  # one rank per set (a budget sweep): named in its panel's title
        ax.set(title=f"{targets}, r={int(ranks[0])}" if len(ranks) == 1 else targets, xlabel="learning rate")
    axes[0].set_ylabel("validation metric\n(mean over the seeds every rate has)")
    named = {}  # each rank, pattern and full fine-tuning once, whichever panels draw it
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            named.setdefault(label, handle)
    if several or pattern_sets:
        ranks = [f"r={int(r)}" for r in colour if f"r={int(r)}" in named]  # by rank, then the others
        ordered = ranks + sorted(set(named) - set(ranks))
        fig.legend([named[label] for label in ordered], ordered, loc="outside right upper", frameon=False, fontsize=7)
    halved = "halved" in choices and choices["halved"].astype(bool).any()
    fig.suptitle("Validation metric against learning rate per cell\nringed: the rate chosen"
                 + ("\ncrossed: stopped at the search's rung (successive halving), its validation there" if halved
                    else ""), fontsize=9)
    return fig


@styled
def loss_curves(histories: dict[str, pd.DataFrame]) -> Figure:
    """Training loss against step, one line per run (``history.csv``), to see that it has levelled off."""
    histories = {run: h for run, h in histories.items() if not h.empty}
    if not histories:
        raise LoraAnalysisError(f"no {RunDir.HISTORY} with rows")
    fig = new_figure(6.8, 4.0)
    ax = fig.subplots()
    for run, h in sorted(histories.items()):
        ax.plot(h["step"], h["loss"], lw=1.1, label=run)
    ax.set(xlabel="step", ylabel="training loss (mean over the logging interval)")
    if len(histories) <= 12:
        ax.legend(frameon=False, ncols=2)
    fig.suptitle(f"Training loss per run ({len(histories)} runs, {RunDir.HISTORY})")
    return fig
