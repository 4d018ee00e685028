"""Target sets against each other, each at its learning rate tuned on validation: at one parameter budget (a
budget experiment's cells) and rank by rank (a rank ablation's), each difference with its 95% Welch interval over
seeds (``derive.tuned.difference_interval``) and a verdict against the anchor where one exists: supported, not
supported, or cannot tell (the interval holds 0, or a set has one seed).

Both read the report's one accuracy table (``derive.stats.accuracy_table``, or its budget-matched twin), never
the raw runs: every number here is a number of that table.
"""

from __future__ import annotations

import math

import pandas as pd

from lora_analysis.derive.queries import LOWER_IS_BETTER, budgeted_runs, lora_runs, metric_column
from lora_analysis.derive.tuned import difference_interval
from lora_analysis.show.findings import Finding
from lora_analysis.show.labels import fmt

# (a, b, label, the anchor's sign of a - b or None, the set the anchor puts below): LoRA Without Regret (2025)
# finds attention-only LoRA below MLP-only at matched parameters; Hu et al. (2021, Table 5, GPT-3 at 18M
# parameters) the budget in Wq alone below Wv alone (WikiSQL 70.4 against 73.0) and below Wq with Wv (73.7)
_BUDGET_PAIRS = (("ffn", "attn", "ffn against attn (the two halves of a block)", 1.0, "attention-only"),
                 ("all", "attn", "all against attn", None, None), ("all", "ffn", "all against ffn", None, None),
                 ("v", "q", "v against q (Hu et al. 2021, Table 5: q alone below v alone)", 1.0, "q alone"),
                 ("q+v", "q", "q+v against q (Hu et al. 2021, Table 5: q alone below q with v)", 1.0, "q alone"))
# every set of FFN matrices only against every set of attention matrices only (each set's mean counts once)
FFN_ONLY = "FFN-only sets against attention-only sets (LoRA Without Regret: attention-only below)"


def ffn_under_budget(runs: pd.DataFrame, table: pd.DataFrame, metric: str | None = None) -> Finding:
    """Which matrices at one parameter budget? Each target set at its tuned rate over its seeds (``table``: the
    budget-matched runs' ``stats.accuracy_table``, the report's ``Derived.budget_accuracy``); ffn against attn,
    all against each, and the sets of FFN matrices only against those of attention matrices only (``all``, both
    kinds, is neither), each difference with its 95% Welch interval over seeds (``tuned.difference_interval``); v
    and q+v against q where the sweep has them. A difference is stated where the interval excludes 0 and "cannot
    tell" where it holds 0 or a set has one seed; ffn against attn and the FFN-only against the attention-only sets
    are judged against LoRA Without Regret (2025: attention-only below MLP-only at matched parameters), v and
    q+v against q against Hu et al. (2021, Table 5: the budget in Wq alone below Wv alone and below Wq with Wv).
    Collapsed sets (every rate at the majority class) are named and left out of the differences."""
    from lora_analysis.targets import PRESETS, expand_roles

    metric = metric or metric_column(runs)
    key, title = "ffn_budget", "Target sets at one parameter budget (Table 5 analogue), against the anchor"
    budgeted = budgeted_runs(lora_runs(runs))
    if table.empty:
        return Finding.missing(key, title, "No budget-matched runs (lora.budget) in this sweep.")
    higher = metric not in LOWER_IS_BETTER
    table = table.copy()
    roles = [set(expand_roles(str(t))) for t in table["targets"]]
    table["ffn"] = [bool(set(PRESETS["ffn"]) & r) for r in roles]
    table["ffn_only"] = [r <= set(PRESETS["ffn"]) for r in roles]
    live = table[~table["collapsed"].astype(bool)].dropna(subset=["mean"])
    cells = ", ".join(
        f"{row.targets} (r={int(row.r)}, {int(row.lora_params):,} parameters, rate {row.lr:.0e}) "
        + ("collapsed" if row.collapsed else fmt(row.mean, 3)
           + (f" [{fmt(row.ci_low, 3)}, {fmt(row.ci_high, 3)}]" if row.n > 1 else "")) + f" (n={row.n})"
        for row in table.sort_values("mean", ascending=not higher).itertuples())
    budgets = ", ".join(sorted(map(str, budgeted["lora.budget"].unique()))) if not budgeted.empty else "?"
    sentences = [f"Budget {budgets}, each set at its rate chosen on validation, {metric} mean [95% interval over "
                 f"seeds]: {cells}."]
    pairs = [(live[live["targets"] == a], live[live["targets"] == b], label, anchor, below)
             for a, b, label, anchor, below in _BUDGET_PAIRS]
    ffn_only, attn_only = live[live["ffn_only"]], live[~live["ffn"]]  # a set of both kinds (all) is neither
    if not ffn_only.empty and not attn_only.empty and len(ffn_only) + len(attn_only) > 2:
        pairs.append((ffn_only, attn_only, FFN_ONLY, 1.0, "attention-only"))
    values = {}
    for a, b, label, anchor, below in pairs:
        if a.empty or b.empty:
            continue
        diff, low, high = difference_interval(a, b)
        values[label] = float(diff)
        sentences.append(f"{label}: {_compared(a, b, diff, low, high, anchor if higher else None, below)}.")
    return Finding(key, title, sentences, table.drop(columns=["ffn", "ffn_only"]), values)


def _compared(a: pd.DataFrame, b: pd.DataFrame, diff: float, low: float, high: float, anchor: float | None,
              below: str | None) -> str:
    """"0.812 against 0.788, difference +0.024 [+0.006, +0.042]: <verdict>" for cells ``a`` against ``b``."""
    return (f"{fmt(a['mean'].mean(), 3)} against {fmt(b['mean'].mean(), 3)}, difference {diff:+.3f}"
            + ("" if math.isnan(low) else f" [{low:+.3f}, {high:+.3f}]") + ": "
            + _budget_verdict(diff, low, high, anchor, below))


def _budget_verdict(diff: float, low: float, high: float, anchor: float | None, below: str | None = None) -> str:
    """Supported / not supported / cannot tell for an anchor's pair (``below``: the set the anchor puts below);
    above / below / cannot tell otherwise."""
    if math.isnan(low):
        return "cannot tell (a set has one seed: no interval over seeds)"
    if low <= 0 <= high:
        return "cannot tell (the interval holds 0)"
    if anchor is None:
        return "the first is above" if diff > 0 else "the first is below"
    return (f"{below} is below: the anchor is supported" if anchor * diff > 0 else
            f"{below} is above: the anchor is not supported")


def by_rank(table: pd.DataFrame, metric: str, budget: pd.DataFrame | None = None) -> Finding:
    """The pairs of target sets of a rank ablation (ffn against attn, all against each, v and q+v against q),
    rank by rank: at each rank both sets learnt at (neither collapsed), the difference with its Welch interval,
    and over those ranks together (each rank's cell once: the mean over ranks of each set, its interval from
    every cell's spread). ``table``: the report's ``stats.accuracy_table``. At one rank the sets differ in
    parameters (ffn holds 1.25x attn's on a BERT block), and the sentence gives the ratio: the matched
    comparison the anchor makes is a budget experiment's (``ffn_under_budget``): the cells of ``budget`` (the
    report's ``Derived.budget_accuracy``, runs trained at a ``lora.budget``) are that finding's, left out here."""
    key, title = "sets_by_rank", "Target sets compared rank by rank, each at its tuned rate, against the anchors"
    higher = metric not in LOWER_IS_BETTER
    live = table[~table["collapsed"].astype(bool)].dropna(subset=["mean"]) if not table.empty else table
    if budget is not None and not budget.empty and not live.empty:
        cells = set(zip(budget["targets"].astype(str), budget["r"].astype(int), strict=True))
        live = live[[(str(t), int(r)) not in cells for t, r in zip(live["targets"], live["r"], strict=True)]]
    sentences, values, rows = [], {}, []
    for a_name, b_name, label, anchor, below in _BUDGET_PAIRS:
        a, b = (live[live["targets"] == name].set_index("r") for name in (a_name, b_name))
        ranks = sorted(set(a.index) & set(b.index))
        if not ranks:
            continue
        a, b = a.loc[ranks], b.loc[ranks]
        diff, low, high = difference_interval(a, b)
        values[label] = float(diff)
        ratio = (a["lora_params"] / b["lora_params"]).median() if "lora_params" in a else math.nan
        params = "" if not math.isfinite(ratio) else (
            f"; {a_name} holds {ratio:.3g}x {b_name}'s LoRA parameters at each rank"
            + (" (not matched: the budget experiment matches them)" if abs(ratio - 1) > 0.1 else ""))
        each = []
        for r in ranks:
            d, lo, hi = difference_interval(a.loc[[r]], b.loc[[r]])
            each.append(f"r={int(r)} {d:+.3f}" + ("" if math.isnan(lo) else f" [{lo:+.3f}, {hi:+.3f}]"))
            rows.append({"pair": label, "r": int(r), "difference": d, "ci_low": lo, "ci_high": hi,
                         "n_a": int(a.loc[r, "n"]), "n_b": int(b.loc[r, "n"])})
        rows.append({"pair": label, "r": None, "difference": diff, "ci_low": low, "ci_high": high,
                     "n_a": int(a["n"].sum()), "n_b": int(b["n"].sum())})
        sentences.append(f"{label}: over r={', '.join(str(int(r)) for r in ranks)} (each rank once{params}), "
                         f"{_compared(a, b, diff, low, high, anchor if higher else None, below)}. By rank: "
                         f"{', '.join(each)}.")
    if not sentences:
        return Finding.missing(key, title, "No two target sets of a compared pair (ffn and attn, all and either, q "
                               "and v or q+v) learnt at a common rank outside a parameter budget (cells at one "
                               "budget are compared as such): nothing to compare rank by rank.")
    return Finding(key, title, sentences, pd.DataFrame(rows), values)
