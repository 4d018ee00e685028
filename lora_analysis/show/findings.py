"""Findings: short sentences that quote the numbers of the analysis and sweep tables.

Sentences only: the rows come from ``derive.queries`` and the numbers from ``derive.stats`` (a report
computes the shared tables once, ``stats.Derived``, and passes them in). A finding's sentences quote
the numbers they rest on and its table holds them all. Missing data gives a finding whose sentence
says what is missing, never an exception, so the report of a partial sweep still builds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from lora_analysis.analysis.kinds import Comparison, Side, Subject
from lora_analysis.derive import controls, stats
from lora_analysis.layout import RunDir
from lora_analysis.show import paper
from lora_analysis.show.labels import fmt
from lora_analysis.show.labels import label as subject_label
from lora_analysis.stopping import VERDICTS


@dataclass
class Finding:
    """One finding: ``sentences`` for the reader, ``table`` with every number, ``values`` the headline ones."""

    key: str
    title: str
    sentences: list[str]
    table: pd.DataFrame | None = None
    values: dict[str, float] = field(default_factory=dict)

    @classmethod
    def missing(cls, key: str, title: str, why: str) -> Finding:
        return cls(key, title, [why])

    @property
    def measured(self) -> bool:
        return self.table is not None


LEARNED = (Subject.A, Subject.A_delta, Subject.dW)  # the subjects whose sharing the findings report


def _by_rank(table: pd.DataFrame, column: str) -> dict[str, float]:
    return {f"r{int(r)}": float(v) for r, v in zip(table["r"], table[column], strict=True)}


# --- findings on the subspaces


def top_direction(phi: pd.DataFrame, *, r_small: int = paper.RANK_PAIR[0], r_large: int = paper.RANK_PAIR[1],
                  subjects: tuple[str, ...] = LEARNED) -> Finding:
    """Figure 3's claim per layer: does r_small's top direction lie in r_large's subspace above chance?"""
    key, title = "top_direction", f"Top direction of r={r_small} in the r={r_large} subspace (Figure 3)"
    table = stats.top_direction_table(phi, r_small, r_large, subjects)
    if table.empty:
        return Finding.missing(key, title, f"No rank pair r={r_small} vs r={r_large} in the analysis: not measured.")
    sentences, values = [], {}
    for subject in [s for s in subjects if s in set(table["subject"])]:
        t = table[table["subject"] == subject]
        by_layer = t.groupby("layer")["phi_1_rb"].mean()
        by_role = t.groupby("module", observed=True).agg(phi=("phi_1_rb", "mean"), base=("baseline", "mean"))
        mean, base = t["phi_1_rb"].mean(), t["baseline"].mean()
        values[subject] = float(mean)
        sentences.append(
            f"{subject_label(subject)}: φ(1, {r_large}) between r={r_small} and r={r_large} is "
            f"{fmt(mean)} on average over layers and roles (range {fmt(t['phi_1_rb'].min())}–"
            f"{fmt(t['phi_1_rb'].max())}) against a random baseline of {fmt(base)}; by layer "
            + ", ".join(f"{int(layer)}: {fmt(v)}" for layer, v in by_layer.items())
            + "; by role " + ", ".join(f"{m} {fmt(r.phi)} (baseline {fmt(r.base)})" for m, r in by_role.iterrows())
            + "."
        )
    return Finding(key, title, sentences, table, values)


def q_vs_v(shared: pd.DataFrame, *, r: int = paper.SEED_RANK,
           subjects: tuple[str, ...] = LEARNED) -> Finding:
    """Figure 4's claim: does q keep more directions than v across seeds (a higher intrinsic rank)?"""
    key, title = "q_vs_v", f"Directions shared across seeds at r={r}: q against v (Figure 4)"
    table = stats.seed_shared_table(shared, r, subjects)
    if table.empty:
        return Finding.missing(key, title, f"No seed pair at r={r} in the analysis: intrinsic rank across seeds "
                               "not measured.")
    sentences, values = [], {}
    for subject in [x for x in subjects if x in set(table["subject"])]:
        t = table[table["subject"] == subject].pivot_table(index="layer", columns="module", values="shared",
                                                           observed=True)
        role_means = t.mean()
        values.update({f"{subject}.{m}": float(v) for m, v in role_means.items()})
        name = subject_label(subject)
        others = ", ".join(f"{m} {fmt(v, 1)}" for m, v in role_means.items() if m not in ("q", "v"))
        if {"q", "v"} <= set(t.columns):
            higher = int((t["q"] > t["v"]).sum())
            verdict = "shows" if role_means["q"] > role_means["v"] and higher > len(t) / 2 else "does not show"
            sentences.append(
                f"{name} at r={r}: q shares {fmt(role_means['q'], 1)} directions across seeds on average, "
                f"v {fmt(role_means['v'], 1)} (by layer q/v: "
                + ", ".join(f"{int(layer)}: {fmt(row.q, 0)}/{fmt(row.v, 0)}" for layer, row in t.iterrows())
                + f"); q exceeds v in {higher} of {len(t)} layers, so q {verdict} a higher intrinsic rank than v"
                + (f". Other roles: {others}." if others else ".")
            )
        else:
            every = ", ".join(f"{m} {fmt(v, 1)}" for m, v in role_means.items())
            sentences.append(f"{name} at r={r}: no q and v pair to compare; shared directions by role: {every}.")
    sentences.append(f"A direction is shared when its {stats.SHARED_RULE}.")
    return Finding(key, title, sentences, table, values)


def init_control(phi: pd.DataFrame, shared: pd.DataFrame) -> Finding:
    """The control the paper lacks: the random inits A_init of two runs should share nothing."""
    key, title = "init_control", "Control: A_init against the random baseline"
    if not phi["comparison"].isin([Comparison.rank, Comparison.seed]).any():
        return Finding.missing(key, title, "No rank or seed pair in the analysis (it needs two runs that differ "
                               "only in rank or only in seed): the init control is not available.")
    table = stats.init_control_table(phi, shared)
    if table is None:
        return Finding.missing(key, title, f"No A_init rows in the analysis (runs without {RunDir.INIT}, "
                               "or A_init not among the subjects): the init control is not available.")
    parts = [f"{c} pairs: φ(1, r_b) = {fmt(row.e1)} against the baseline {fmt(row.base)}, shared directions "
             f"{fmt(row.shared_mean, 1)} on average (at most {int(row.shared_max)}) over {int(row.cases)} "
             "(pair, layer, role) cases" for c, row in table.set_index("comparison").iterrows()]
    clean = int(table["shared_max"].max()) == 0
    verdict = ("the inits are independent, so what A − A_init or ΔW share is not inherited from the init; "
               "whether it is task signal is judged against the strongest control (next finding)" if clean else
               "the inits overlap (shared init stream?), so directions shared by A may be an init artefact; read "
               "A − A_init instead")
    values = {f"{c}.e1": float(v) for c, v in table.set_index("comparison")["e1"].dropna().items()}
    values["shared_max"] = float(table["shared_max"].max())
    return Finding(key, title, ["A_init (the random init of A): " + "; ".join(parts) + f" — {verdict}."],
                   table, values)


def against_controls(per_direction: pd.DataFrame, runs: pd.DataFrame, shuffled: set[str]) -> Finding:
    """Is the shared top direction task signal? Each pair's e_1 against the strongest of its controls.

    Per (comparison, r_a, r_b, subject): the mean top-direction energy over (pair, layer, role) cases
    beside the isotropic baseline, the input-geometry baseline and the shuffled-label pair, the excess
    over the strongest with its spread, and the verdict of ``controls.verdict``.
    """
    key, title = "controls", "Against the strongest control: task signal or input geometry? (the paper lacks it)"
    summary = controls.top_direction_summary(per_direction)
    summary = summary[summary["subject"].isin([*LEARNED, Subject.B])]
    if summary.empty:
        return Finding.missing(key, title, "No rank or seed pair of trained runs: nothing to judge against controls.")
    sentences, values = [], {}
    for row in summary.itertuples(index=False):
        row = pd.Series(row._asdict())
        pair = (f"r={int(row.r_a)} vs r={int(row.r_b)}" if row.comparison == Comparison.rank
                else f"two seeds at r={int(row.r_a)}")
        shuffled_text = ("no shuffled-label pair" if pd.isna(row.shuffled)
                         else f"shuffled-label pair {fmt(row.shuffled)}")
        geometry_text = "input geometry n/a" if pd.isna(row.geometry) else f"input-geometry {fmt(row.geometry)}"
        init_text = "" if pd.isna(row.init) else f", shared init (A_init) {fmt(row.init)}"
        sentences.append(
            f"{subject_label(row.subject)}, {pair}: φ(1, r_b) = {fmt(row.energy)} against isotropic "
            f"{fmt(row.isotropic)}, {geometry_text}, {shuffled_text}{init_text}; excess over the strongest control "
            f"{row.excess_mean:+.2f} ± {fmt(row.excess_std)} (range {row.excess_min:+.2f} to {row.excess_max:+.2f}) "
            f"over {int(row.cases)} (pair, layer, role) cases, task-specific in {int(row.task_cases)}: "
            f"{controls.verdict(row)}.")
        values[f"{row.comparison}.{row.r_a}.{row.r_b}.{row.subject}"] = float(row.excess_mean)
    if shuffled:
        ran = runs[runs["run"].astype(str).isin(shuffled)] if "run" in runs else runs.iloc[0:0]
        if "test_accuracy" in ran and ran["test_accuracy"].notna().any():
            majority = ran["majority_accuracy"].dropna()
            sentences.append(
                "The shuffled-label runs (" + ", ".join(sorted(shuffled)) + ") reach test accuracy "
                + ", ".join(fmt(v, 3) for v in ran["test_accuracy"])
                + (f" against the majority class {fmt(majority.iloc[0], 3)}" if len(majority) else "")
                + ": they learned no task, so what their pair shares is what inputs and optimiser give alone.")
    else:
        sentences.append("This sweep has no shuffled-label runs (data.shuffle_labels=true): the strongest control "
                         "available is the larger of the isotropic and the input-geometry baseline.")
    caveat = _still_learning(runs, shuffled)
    if caveat:
        sentences.append(caveat)
    sentences.append(f"A direction is task-specific when its {controls.TASK_RULE}.")
    return Finding(key, title, sentences, summary, values)


def _still_learning(runs: pd.DataFrame, shuffled: set[str]) -> str | None:
    """A sentence when real LoRA runs judged here stopped at the ceiling still improving (``stop_reason``)."""
    if "stop_reason" not in runs or "run" not in runs:
        return None
    real = runs[~runs["run"].astype(str).isin(shuffled)]
    if "method" in real:
        real = real[real["method"] == "lora"]
    said = real["stop_reason"][real["stop_reason"].isin(VERDICTS[:2])]
    if said.empty or (said == "converged").all():
        return None
    return (f"{int((said == 'ceiling').sum())} of {len(said)} real LoRA runs reached the step ceiling still improving "
            "on validation (see 'Trained to the validation optimum?'): these verdicts are for adapters that more "
            "steps might still change.")


def a_moved(modules: pd.DataFrame, table: pd.DataFrame | None = None) -> Finding:
    """How far A moved from its init, and what that means for reading A alone.

    ``table``: ``stats.a_moved_table(modules)`` when already computed.
    """
    key, title = "a_moved", "How far A moved from its init"
    table = stats.a_moved_table(modules) if table is None else table
    if table.empty:
        return Finding.missing(key, title, "a_moved is not available (no saved A_init): how far A moved from its "
                               "init is unknown, so raw A cannot be told apart from its random init.")
    by_r = ", ".join(f"{fmt(100 * row['mean'], 0)}% at r={int(row['r'])} (range {fmt(100 * row['min'], 0)}–"
                     f"{fmt(100 * row['max'], 0)}%)" for _, row in table.iterrows())
    near = [int(r) for r, v in zip(table["r"], table["mean"], strict=True) if v < 0.5]
    far = [int(r) for r in table["r"] if int(r) not in near]
    parts = []
    if near:
        parts.append(f"at r={', '.join(map(str, near))} A is still mostly its random init, so the subspace of A "
                     "alone mostly shows the init: read A − A_init and ΔW for what training learned")
    if far:
        parts.append(f"at r={', '.join(map(str, far))} A moved by half its init's norm or more, so A itself "
                     "reflects training")
    sentence = f"A moved ||A − A_init||_F / ||A_init||_F = {by_r} on average over modules; {'; '.join(parts)}."
    return Finding(key, title, [sentence], table, _by_rank(table, "mean"))


def amplification(dw_vs_w: pd.DataFrame, *, layer: int, module: str = "q", ranks: tuple[int, int] = paper.TABLE7_RANKS
                  ) -> Finding:
    """Table 7: ||dW||_F over ||U^T W V^T||_F with U, V the top directions of dW, W and a random matrix."""
    key, title = "amplification", f"Does ΔW amplify directions of W? (Table 7, layer {layer}, {module})"
    d = dw_vs_w[(dw_vs_w["layer"] == layer) & (dw_vs_w["module"] == module)]
    if d.empty:
        return Finding.missing(key, title, f"No dw_vs_w rows for {module} at layer {layer} (base weights not found "
                               "by the analysis): Table 7 not measured.")
    table = stats.amplification_table(d)
    present = sorted(int(r) for r in table["r"])
    lo, hi = (ranks if all(r in present for r in ranks) else (present[0], present[-1]))
    rows = table.set_index("r")
    def describe(r: int) -> str:
        row = rows.loc[r]
        return (f"r={r}: ||ΔW||_F = {fmt(row.dw_norm)}, ||UᵀWVᵀ||_F = {fmt(row.get('proj_dW', math.nan))} / "
                f"{fmt(row.get('proj_W', math.nan))} / {fmt(row.get('proj_random', math.nan))} for ΔW / W / random")
    sentences = [f"At layer {layer} ({module}), the amplification factor ||ΔW||_F / ||UᵀWVᵀ||_F is "
                 f"{fmt(rows.loc[lo, 'amplification'], 1)} at r={lo} against {fmt(rows.loc[hi, 'amplification'], 1)} "
                 f"at r={hi}; {describe(lo)}; {describe(hi)}; ||W||_F = {fmt(rows['w_norm'].iloc[0])}."]
    everywhere = stats.mean_amplification(dw_vs_w)
    sentences.append("Over all layers and roles the amplification averages "
                     + ", ".join(f"{fmt(v, 1)} at r={int(r)}" for r, v in everywhere.items()) + ".")
    values = {f"r{r}": float(rows.loc[r, "amplification"]) for r in present}
    return Finding(key, title, sentences, table, values)


def w_dw_overlap(w_dw_phi: pd.DataFrame, *, layer: int, module: str = "q", side: str = Side.left) -> Finding:
    """Figure 8's claim: the top directions of dW are not the top directions of W."""
    key, title = "w_dw_overlap", f"Top directions of W against those of ΔW (Figure 8, layer {layer}, {module})"
    d = w_dw_phi[(w_dw_phi["layer"] == layer) & (w_dw_phi["module"] == module) & (w_dw_phi["side"] == side)]
    if d.empty:
        return Finding.missing(key, title, f"No w_dw_phi rows for {module} at layer {layer}: Figure 8 not measured.")
    table = stats.w_dw_cells(d)
    i10 = int(table["i"].iloc[0])
    parts = list(zip(table["r"].astype(int), table["j"].astype(int), table["phi"], table["baseline"], strict=True))
    sentence = (f"φ between the top {i10} directions of W (10% of the {int(d['i'].max())} computed) and the top j "
                f"of ΔW ({side} singular vectors): " + ", ".join(f"{fmt(p)} at r={r} (j={j}, baseline {fmt(b)})"
                                                                  for r, j, p, b in parts) + ".")
    return Finding(key, title, [sentence], table, {f"r{r}": float(p) for r, _, p, _ in parts})


def intruder_counts(intruders: pd.DataFrame) -> Finding:
    """Intruder dimensions (Shuttleworth et al. 2024) per rank."""
    key, title = "intruders", "Intruder dimensions"
    if intruders.empty:
        return Finding.missing(key, title, "No intruder rows (base weights not found by the analysis): intruder "
                               "dimensions not measured.")
    table = stats.intruder_table(intruders)
    top_k, threshold = int(intruders["index"].max()), float(intruders["threshold"].iloc[0])
    sentence = (f"Intruder dimensions (top-{top_k} singular vectors of W + ΔW whose max |cos| to every singular "
                f"vector of W is below {fmt(threshold)}): " + ", ".join(
                    f"{fmt(row.per_module)} per module at r={int(row.r)} ({int(row.total)} in {int(row.modules)} "
                    "modules)" for row in table.itertuples()) + ".")
    return Finding(key, title, [sentence], table, _by_rank(table, "per_module"))
