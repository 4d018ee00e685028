"""The report's opening lines: each verdict with its number and interval, as an abstract states them.

Every line is read off a finding (``show.report.Findings``: its table, its values or one of its sentences),
never recomputed, so the summary cannot disagree with the Findings section below it, which gives the detail
and the rule behind every word. A finding that measured nothing gets no line here (it says why below).
"""

from __future__ import annotations

import pandas as pd

from lora_analysis.analysis.kinds import Comparison, Subject
from lora_analysis.derive.controls import CONTROL_LABELS, verdict_kind
from lora_analysis.show.labels import fmt, label

SUMMARY_SUBJECTS = (Subject.A_delta, Subject.dW)  # what training wrote into A, and the update itself


def in_short(found, rank_pair: tuple[int, int] | None, seed_rank: int | None, targets: str | None = None
             ) -> list[str]:
    """The summary lines of ``found`` (a ``show.report.Findings``), the subspace ones for the report's rank pair
    and seeded rank, each naming ``targets`` (the set they read) where given: a sweep of several sets."""
    lines = _accuracy(found.accuracy)
    lines += [s for s in found.rates.sentences if "stops improving" in s]
    for sets in (found.sets, found.budget):  # each pair of sets (a label may hold a colon: "Table 5: q ...")
        lines += [s.split(". By rank: ")[0] + "." if ". By rank: " in s else s for s in sets.sentences
                  if any(s.startswith(f"{pair}: ") for pair in sets.values)]
    lines += [s for s in found.patterns.sentences if s.startswith("rank_pattern ") and "Difference" not in s]
    lines += _subspaces(found.controls.table, rank_pair, seed_rank, targets)
    lines += [s for s in found.loss.sentences if " runs converged" in s]
    return lines or ["Nothing was measured: see the Findings below for what is missing."]


def _accuracy(finding) -> list[str]:
    table = finding.table
    if table is None or "best" not in finding.values:
        return []
    live = table[~table["collapsed"].astype(bool)].dropna(subset=["mean"])
    best = live.loc[(live["mean"] - finding.values["best"]).abs().idxmin()]
    spread = f" [{fmt(best['ci_low'], 3)}, {fmt(best['ci_high'], 3)}]" if best["n"] > 1 else ""
    rate = f" at lr {best['lr']:.0e}" if pd.notna(best["lr"]) else ""
    full = finding.values.get("full")
    how = "chosen on validation" if finding.values.get("chosen_on_validation") else "on test: no validation metric"
    return [f"Best LoRA cell ({how}): {best['targets']} at r={int(best['r'])}, test {fmt(best['mean'], 3)}{spread} "
            f"(n={int(best['n'])}{rate})" + (f"; full fine-tuning {fmt(full, 3)}" if full is not None else "")
            + f"; {int(table['collapsed'].astype(bool).sum())} of {len(table)} cells collapsed at every rate."]


def _subspaces(summary: pd.DataFrame | None, rank_pair: tuple[int, int] | None, seed_rank: int | None,
               targets: str | None = None) -> list[str]:
    """One line per (pair, subject) of ``SUMMARY_SUBJECTS`` for the report's rank pair and seed pair."""
    if summary is None or summary.empty:
        return []
    wanted = ([(Comparison.rank.value, *rank_pair)] if rank_pair else []) + (
        [(Comparison.seed.value, seed_rank, seed_rank)] if seed_rank else [])
    lines = []
    for comparison, r_a, r_b in wanted:
        for subject in SUMMARY_SUBJECTS:
            rows = summary[(summary["comparison"].astype(str) == comparison) & (summary["r_a"] == r_a)
                           & (summary["r_b"] == r_b) & (summary["subject"].astype(str) == subject)]
            if rows.empty:
                continue
            row = rows.iloc[0]
            pair = f"r={r_a} vs r={r_b}" if comparison == Comparison.rank.value else f"two seeds at r={r_a}"
            pair += f" ({targets})" if targets else ""
            lines.append(f"{label(subject)}, {pair}: φ(1, r_b) {fmt(row['energy'])} against the strongest control "
                         f"{fmt(row['control'])} ({CONTROL_LABELS[row['control_name']]}), excess "
                         f"{row['excess_mean']:+.2f} ± {fmt(row['excess_std'])} over {int(row['cases'])} cases: "
                         f"{_WORDS[verdict_kind(row)]} (task-specific in {int(row['task_cases'])}).")
    return lines


_WORDS = {"shared": "shared beyond the control", "weak": "weak evidence", "not above": "not above the control"}
