"""Several sweeps side by side (model x task): each one's findings, read from the same ``report.study`` its
own report states, as one table with a row per quantity and a column per sweep, then the verdicts that
differ between sweeps. A verdict that holds on one model and task and not on another is the finding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lora_analysis.analysis.kinds import Comparison, Subject
from lora_analysis.atomic import write_text
from lora_analysis.derive import controls
from lora_analysis.derive.plateau import SUPPORTED, plateau
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.show.labels import fmt
from lora_analysis.show.report import Study, study

MARK = "<!-- written by lora-analysis across -->"
SUBJECTS = (("A", Subject.A), ("A - A_init", Subject.A_delta), ("ΔW", Subject.dW), ("B", Subject.B))


def short_verdict(row: pd.Series) -> str:
    """``controls.verdict`` in three words: beyond the control, weak, or not above it."""
    text = controls.verdict(row)
    return "beyond control" if text.startswith("shared beyond") else "weak" if text.startswith("above") else (
        "not above control")


def column(studied: Study) -> dict[str, str]:
    """One sweep's cells, quantity -> text (every number from the study its report states)."""
    focus, derived, found, runs = studied.focus, studied.derived, studied.found, studied.data.runs
    cells: dict[str, str] = {}
    model = ", ".join(sorted(runs["model.name_or_path"].astype(str).unique())) if "model.name_or_path" in runs else "?"
    data = ", ".join(sorted(runs["data.path"].astype(str).unique())) if "data.path" in runs else "?"
    cells["model"], cells["task"] = model, data
    cells["runs (real + shuffled-label controls)"] = f"{len(runs)} + {len(studied.shuffled)}"
    accuracy = derived.accuracy
    cells["test accuracy, mean [95% interval] (n seeds)"] = "; ".join(
        f"r={int(r.r)}: {fmt(r.mean, 3)}" + ("" if r.n < 2 else f" [{fmt(r.ci_low, 3)}, {fmt(r.ci_high, 3)}]")
        + f" ({int(r.n)})" for r in accuracy.itertuples() if not r.collapsed) or "no LoRA run with a test metric"
    found_plateau = plateau(runs, focus.targets) if focus.targets else None
    one_rate = not accuracy.empty and int(accuracy["lrs"].max()) == 1
    cells["validation accuracy stops improving at"] = (
        "not measured (fewer than two ranks with a validation metric)" if found_plateau is None else
        f"cannot tell (best mean at r={found_plateau.best}; {found_plateau.why_not})"
        if found_plateau.rank is None else
        (f"r={found_plateau.rank} (within {found_plateau.margin:g} of the best, r={found_plateau.best}, at 95%; "
         if found_plateau.verdict == SUPPORTED else f"not below r={found_plateau.best}: every smaller rank is "
         "below it at 95% (") + ("one learning rate for every rank)" if one_rate else "each at its tuned rate)"))
    summary = controls.top_direction_summary(derived.controls)
    lo, hi = focus.rank_pair or (None, None)
    pair = summary[(summary["comparison"] == Comparison.rank) & (summary["r_a"] == lo) & (summary["r_b"] == hi)]
    for label, subject in SUBJECTS:
        key = f"{label}: top direction of r={lo} in r={hi}, φ against the strongest control"
        rows = pair[pair["subject"] == subject]
        if rows.empty:
            cells[key] = "not measured (no rank pair)"
            continue
        row = rows.iloc[0]
        init = "" if pd.isna(row.get("init", np.nan)) else f"; A_init {fmt(row['init'])}"
        cells[key] = (f"{fmt(row['energy'])} vs {controls.CONTROL_LABELS[row['control_name']]} {fmt(row['control'])}"
                      f"{init}; excess {row['excess_mean']:+.2f} ± {fmt(row['excess_std'])}, task-specific in "
                      f"{int(row['task_cases'])}/{int(row['cases'])}: **{short_verdict(row)}**")
    qv = found.q_vs_v
    cells["q vs v: directions of A - A_init two seeds share, per layer"] = (
        f"q {fmt(qv.values['A_delta.q'])}, v {fmt(qv.values['A_delta.v'])} (r={focus.seed_rank})"
        if qv.measured and {"A_delta.q", "A_delta.v"} <= set(qv.values) else "not measured (no seed pair)")
    amp = found.amplification
    cells["Table 7 amplification ||ΔW|| / ||UᵀWVᵀ||, at the focus layer and role"] = (
        f"layer {focus.layer}, {focus.role or 'q'}: "
        + "; ".join(f"r={int(r.r)}: {fmt(r.amplification, 2)}" for r in amp.table.itertuples())
        if amp.measured and amp.table is not None else "not measured")
    return cells


def across_table(sweeps: list[str | Path], layer: int | None = None) -> pd.DataFrame:
    """Rows: quantities; columns: one per sweep (its folder name)."""
    if len(sweeps) < 2:
        raise LoraAnalysisError(f"across needs at least two sweeps, got {len(sweeps)}")
    names = [Path(s).resolve().name for s in sweeps]
    if len(set(names)) < len(names):
        raise LoraAnalysisError(f"two sweeps named alike ({', '.join(names)}): their columns would collide")
    columns = {name: column(study(s, layer)) for name, s in zip(names, sweeps, strict=True)}
    frame = pd.DataFrame(columns)
    frame.index.name = "quantity"
    return frame.reset_index()


def differing(table: pd.DataFrame) -> list[str]:
    """A sentence per subject whose verdict is not the same in every sweep."""
    out = []
    for label, _ in SUBJECTS:
        row = table[table["quantity"].str.startswith(f"{label}: ")]
        if row.empty:
            continue
        verdicts = {name: _bold(str(row[name].iloc[0])) for name in table.columns[1:]}
        if len(set(verdicts.values())) > 1:
            out.append(f"{label}: " + ", ".join(f"{v} on {name}" for name, v in verdicts.items()) + ".")
    return out


def _bold(text: str) -> str:
    return text.split("**")[1] if text.count("**") >= 2 else text


def write_across(table: pd.DataFrame, out: Path) -> Path:
    """``out`` (Markdown) and its CSV twin; a file there that this command did not write is never replaced."""
    for path in (out, out.with_suffix(".csv")):
        if path.exists() and not (path.is_file() and _ours(path)):
            raise LoraAnalysisError(f"{path} exists and was not written by lora-analysis across: not replaced "
                                    "(choose another out=)")
    write_text(out.with_suffix(".csv"), f"# {MARK}\n" + table.to_csv(index=False))
    return write_text(out, f"{MARK}\n\n{markdown(table)}")


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown, then the verdicts that differ between sweeps."""
    differ = differing(table)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
              for row in table.itertuples(index=False)]
    lines += ["", "Verdicts that differ between sweeps: " + (" ".join(differ) if differ else "none."), ""]
    return "\n".join(lines)


def _ours(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return MARK in handle.readline()
