"""The sweep report: figures (PNG and PDF), one self-contained HTML file and its Markdown twin.

``build_report(sweep)`` loads the sweep (``show.sweep``), chooses what to show (``show.focus``),
derives the shared tables once (``derive.stats.Derived``), states the findings (``show.findings``)
and assembles the sections that ``show.document`` writes to ``<sweep>/report/``. The paper's own
numbers come from ``show.paper``. What is missing (a table, a run, a rank) is said where it would
have been shown, never raised.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from lora_analysis.analysis.kinds import Comparison, Subject
from lora_analysis.atomic import write_parquet, write_text
from lora_analysis.derive.controls import shuffled_run_labels
from lora_analysis.derive.queries import empty_phi, patterned_runs
from lora_analysis.derive.rates import analysed_rate, collapsed_at_rate, runs_off_rate
from lora_analysis.derive.stats import SHARED_RULE, Derived
from lora_analysis.embedded import describe
from lora_analysis.layout import AnalysisDir, SweepDir
from lora_analysis.show import findings as F
from lora_analysis.show import paper, plots
from lora_analysis.show import run_findings as R
from lora_analysis.show import target_sets as T
from lora_analysis.show.document import Section, report_folder, write_report
from lora_analysis.show.focus import Focus, choose_focus, focus_tables
from lora_analysis.show.labels import SUBJECT_LABELS, fmt
from lora_analysis.show.sections import (
    ablation_section,
    accuracy_pivot,
    environment_section,
    experiment_section,
    recommendation_section,
    run_table,
    runs_section,
    unfinished_note,
)
from lora_analysis.show.summary import in_short
from lora_analysis.show.sweep import SweepData, load_sweep, without_runs


@dataclass
class Findings:
    """The report's findings, in the order its Findings section states them."""

    top_direction: F.Finding
    q_vs_v: F.Finding
    init_control: F.Finding
    controls: F.Finding
    a_moved: F.Finding
    amplification: F.Finding
    w_dw_overlap: F.Finding
    intruders: F.Finding
    accuracy: F.Finding
    sets: F.Finding
    budget: F.Finding
    patterns: F.Finding
    rates: F.Finding
    loss: F.Finding

    def __iter__(self):
        return (getattr(self, f.name) for f in fields(self))


def compute_findings(data: SweepData, focus: Focus, tables: dict[str, pd.DataFrame], derived: Derived,
                     shuffled: set[str] = frozenset(), all_runs: pd.DataFrame | None = None) -> Findings:
    """Every finding of the report, from the focus tables and the tables derived once.

    ``data`` and ``tables`` hold the real runs only; ``all_runs`` the sweep table with the controls.
    """
    phi = tables["phi"]
    lo, hi = focus.rank_pair or paper.RANK_PAIR
    layer, role = focus.layer, focus.role or "q"
    return Findings(
        top_direction=F.top_direction(phi, r_small=lo, r_large=hi),
        q_vs_v=F.q_vs_v(derived.shared, r=focus.seed_rank or paper.SEED_RANK),
        init_control=F.init_control(phi, derived.shared),
        controls=F.against_controls(derived.controls, data.runs if all_runs is None else all_runs, shuffled),
        a_moved=F.a_moved(tables["modules"], table=derived.a_moved),
        amplification=_or_missing(tables["dw_vs_w"], "amplification", "Table 7",
                                  lambda t: F.amplification(t, layer=layer, module=role)),
        w_dw_overlap=_or_missing(tables["w_dw_phi"], "w_dw_overlap", "Figure 8",
                                 lambda t: F.w_dw_overlap(t, layer=layer, module=role)),
        intruders=_or_missing(tables["intruders"], "intruders", "Intruder dimensions", F.intruder_counts),
        accuracy=R.accuracy(data.runs, derived.accuracy, derived.validation, derived.full, derived.metric),
        sets=T.by_rank(derived.accuracy, derived.metric, derived.budget_accuracy),
        budget=T.ffn_under_budget(data.runs, derived.budget_accuracy, derived.metric),
        patterns=R.rank_patterns(derived.accuracy, derived.patterns, derived.metric),
        rates=R.tuned_rates(derived.lr_choices, derived.validation, data.runs, derived.full),
        loss=R.trained_enough(data.runs if all_runs is None else all_runs, data.histories),
    )


def _or_missing(table: pd.DataFrame, key: str, what: str, compute) -> F.Finding:
    if table.empty:
        return F.Finding.missing(key, what, f"{what}: no rows in the analysis (the base weights were not found, or "
                                 "the table is missing), so it is not measured.")
    return compute(table)


# --- the paper's numbers beside ours


def paper_section(data: SweepData, focus: Focus, found: Findings, derived: Derived) -> Section:
    """The paper's numbers beside ours, quantity by quantity, then Tables 5 and 6 beside our accuracies."""
    section = Section("The paper's numbers and ours")
    names = data.runs.get("model.name_or_path", pd.Series(["?"])).astype(str).unique()
    model = ", ".join(describe(name) for name in sorted(names))
    section.text(f"{paper.CONTEXT} Ours: {model}, layer {focus.layer}, this sweep's task. Random baselines are "
                 "the expectation max(i, j)/k for independent random subspaces.")
    section.table(side_by_side(focus, found), "Quantity by quantity")
    section.table(paper.TABLE6, paper.TABLE6_CAPTION)
    ours = accuracy_pivot(derived.accuracy)
    if ours.empty:
        section.text("Ours: no LoRA run with a test metric.")
    else:
        section.table(ours, f"Ours: {derived.metric} (mean ± std over seeds, n) per target set and rank")
    section.table(paper.TABLE5, paper.TABLE5_CAPTION)
    return section


def side_by_side(focus: Focus, found: Findings) -> pd.DataFrame:
    """Rows of (quantity, paper, ours) for Figures 3, 4, 8 and Table 7, from the findings' tables.

    A quantity this sweep cannot measure keeps its row, with the reason in the last column.
    """
    rows = [*_figure3_rows(focus, found.top_direction), *_figure4_rows(focus, found.q_vs_v),
            *_table7_rows(found.amplification)]
    fig8, moved = found.w_dw_overlap, found.a_moved
    rows.append(("Figure 8: φ(top 10% of W, top 4 of ΔW)", paper.FIGURE8, _missing(fig8) or ", ".join(
        f"r={int(r.r)}: {fmt(r.phi)} (baseline {fmt(r.baseline)})" for r in fig8.table.itertuples())))
    rows.append(("How far A moved from its init", paper.A_MOVED, _missing(moved) or ", ".join(
        f"r={int(r.r)}: {fmt(100 * r.mean, 0)}%" for r in moved.table.itertuples())))
    return pd.DataFrame(rows, columns=["quantity", paper.COLUMN, f"ours (layer {focus.layer})"])


def _missing(finding: F.Finding) -> str | None:
    return None if finding.measured else f"not measured: {finding.sentences[0]}"


def _figure3_rows(focus: Focus, finding: F.Finding) -> list[tuple]:
    lo, hi = focus.rank_pair or paper.RANK_PAIR
    rows = []
    for role in ("q", "v"):
        quantity = f"Figure 3, {role}: φ(1, {hi}) of the top direction of r={lo}"
        top = finding.table
        at = top[(top["layer"] == focus.layer) & (top["module"] == role)] if top is not None else None
        if at is None or at.empty:
            rows.append((quantity, paper.FIGURE3, _missing(finding) or f"no {role} at layer {focus.layer}"))
            continue
        ours = "; ".join(f"{SUBJECT_LABELS[s]} {fmt(v)}" for s, v in zip(at["subject"], at["phi_1_rb"], strict=True))
        rows.append((quantity, paper.FIGURE3, f"{ours} (baseline {fmt(at['baseline'].iloc[0])})"))
    return rows


def _figure4_rows(focus: Focus, finding: F.Finding) -> list[tuple]:
    quantity = f"Figure 4: directions shared by two seeds at r={focus.seed_rank or paper.SEED_RANK}"
    if not finding.measured:
        return [(quantity, paper.FIGURE4, _missing(finding))]
    at = finding.table[finding.table["layer"] == focus.layer].pivot_table(
        index="subject", columns="module", values="shared", observed=True)
    if not {"q", "v"} <= set(at.columns):
        return [(quantity, paper.FIGURE4, f"no q and v pair at layer {focus.layer}")]
    return [(quantity, paper.FIGURE4, "; ".join(f"{SUBJECT_LABELS[s]}: q {fmt(r.q, 0)}, v {fmt(r.v, 0)}"
                                                for s, r in at.iterrows()))]


def _table7_rows(finding: F.Finding) -> list[tuple]:
    """Table 7 at the paper's two ranks (ours: those ranks, else our smallest and largest)."""
    if not finding.measured:
        paper_row = "; ".join(f"r={r}: {dw}, {proj}, {factor}" for r, (dw, proj, factor) in paper.TABLE7.items())
        return [("Table 7: ||ΔW||_F, ||UᵀWVᵀ||_F, amplification", paper_row, _missing(finding))]
    amp = finding.table
    ranks = sorted(int(r) for r in amp["r"])
    ours_ranks = paper.TABLE7_RANKS if set(paper.TABLE7_RANKS) <= set(ranks) else (ranks[0], ranks[-1])
    rows = []
    for (r, (dw, proj, factor)), ours_r in zip(paper.TABLE7.items(), ours_ranks, strict=True):
        if r == paper.TABLE7_RANKS[1] and ours_r == ours_ranks[0]:
            rows.append((f"Table 7 (paper r={r})", f"{dw}; {proj}; {factor}", f"only r={ours_r} in this sweep"))
            continue
        row = amp[amp["r"] == ours_r].iloc[0]
        label = f"Table 7 (paper r={r}, ours r={ours_r})"
        ours = " / ".join(fmt(row.get(c, float("nan"))) for c in ("proj_dW", "proj_W", "proj_random"))
        rows.append((f"{label}: ||ΔW||_F", dw, fmt(row["dw_norm"])))
        rows.append((f"{label}: ||UᵀWVᵀ||_F, U, V of ΔW / W / random", proj, ours))
        rows.append((f"{label}: amplification ||ΔW||_F / ||UᵀWVᵀ||_F", factor, fmt(row["amplification"], 1)))
    rows.append(("Table 7: ||W||_F", paper.TABLE7_W_NORM, fmt(amp["w_norm"].iloc[0])))
    return rows


# --- our figures, the controls, the findings


def figures_section(tables: dict[str, pd.DataFrame], focus: Focus, found: Findings) -> Section:
    """Figures 3, 4, 6, 7 and 8 and the ΔW spectra for our runs; captions carry the headline number."""
    section = Section("Our figures, beside the paper's")
    phi, layer = tables["phi"], focus.layer
    if phi.empty:
        section.text(f"No phi table ({_analysis_file('phi')} missing or empty): Figures 3, 4, 6 and 7 not drawn.")
    subjects = [s for s in (Subject.A, Subject.A_delta) if not phi.empty and (phi["subject"] == s).any()]
    lo, hi = focus.rank_pair or (None, None)
    if not phi.empty and not focus.rank_pair:
        section.text("No rank pair (two runs of one seed at different ranks): Figures 3 and 6 not drawn.")
    if not phi.empty and not focus.seed_rank:
        section.text("No seed pair (two runs of one rank with different seeds): Figures 4 and 7 not drawn.")
    for subject in subjects if focus.rank_pair else []:
        section.plot(f"fig3_rank_{subject}", lambda s=subject: plots.fig3_rank_similarity(
            phi, layer=layer, r_small=lo, r_large=hi, subject=s),
            f"Figure 3 for {SUBJECT_LABELS[subject]}: φ between r={lo} and r={hi} at layer {layer}. "
            + _headline(found.top_direction, subject))
    for subject in subjects if focus.seed_rank else []:
        section.plot(f"fig4_seed_{subject}", lambda s=subject: plots.fig4_seed_similarity(
            phi, layer=layer, r=focus.seed_rank, subject=s),
            f"Figure 4 for {SUBJECT_LABELS[subject]}: two seeds at r={focus.seed_rank}, and two random matrices.")
    for subject in subjects:
        if focus.rank_pair:
            section.plot(f"fig6_rank_layers_{subject}", lambda s=subject: plots.fig6_rank_similarity_layers(
                phi, r_small=lo, r_large=hi, subject=s),
                f"Figure 6 for {SUBJECT_LABELS[subject]}: Figure 3 at every layer.")
        if focus.seed_rank:
            section.plot(f"fig7_seed_layers_{subject}", lambda s=subject: plots.fig7_seed_similarity_layers(
                phi, r=focus.seed_rank, subject=s),
                f"Figure 7 for {SUBJECT_LABELS[subject]}: Figure 4 at every layer.")
    section.plot("fig8_w_dw", lambda: plots.fig8_w_dw_similarity(tables["w_dw_phi"], layer=layer, module=focus.role),
                 f"Figure 8: top singular directions of W against those of ΔW ({focus.role}, layer {layer}).")
    section.plot("spectra_dw", lambda: plots.dw_spectra(tables["spectra"], layer=layer),
                 f"Singular values of ΔW per rank at layer {layer}.")
    return section


def _analysis_file(table: str) -> str:
    return AnalysisDir(SweepDir.ANALYSIS).table(table).as_posix()


def _headline(finding: F.Finding, subject: str) -> str:
    value = finding.values.get(subject)
    return "" if value is None else f"Mean φ(1, r) over layers and roles: {fmt(value)}."


def controls_section(tables: dict[str, pd.DataFrame], focus: Focus, control_phi: pd.DataFrame | None = None,
                     shuffled: set[str] = frozenset()) -> Section:
    """A_init, A - A_init and dW beside A for the same rank and seed pairs (their numbers are in Findings)."""
    section = Section("Controls the paper lacks")
    section.text("With B = 0 at init, A learns slowly and can stay close to its random init. The same pairs are "
                 "therefore shown for A_init (should sit at the random baseline), A − A_init (what training "
                 "learned in A) and ΔW (free of the B A = (B R⁻¹)(R A) ambiguity).")
    phi, layer = tables["phi"], focus.layer
    if not (focus.rank_pair or focus.seed_rank):
        section.text("No rank or seed pair in this sweep: the control maps are not drawn.")
    if focus.rank_pair:
        section.plot("controls_rank", lambda: plots.controls_similarity(
            phi, layer=layer, r_a=focus.rank_pair[0], r_b=focus.rank_pair[1]),
            f"Controls for Figure 3: r={focus.rank_pair[0]} vs r={focus.rank_pair[1]}, layer {layer}.")
    if focus.seed_rank:
        section.plot("controls_seed", lambda: plots.controls_similarity(
            phi, layer=layer, comparison=Comparison.seed, r_a=focus.seed_rank, r_b=focus.seed_rank),
            f"Controls for Figure 4: two seeds at r={focus.seed_rank}, layer {layer}.")
    if focus.rank_pair and control_phi is not None and not control_phi.empty:
        lo, hi = focus.rank_pair
        section.plot("controls_strongest", lambda: plots.against_controls(
            control_phi, shuffled, layer=layer, r_a=lo, r_b=hi),
            f"Figure 3's pair against its controls (A − A_init, layer {layer}): the real map, the same pair trained "
            "on shuffled labels (where the sweep has it), the input-geometry expectation, and the real map minus "
            "the strongest control cell by cell (red: above the control).")
    section.text("The numbers behind these maps (A_init against the baseline, the excess over the strongest "
                 "control, how far A moved, intruder dimensions) are in the Findings at the top.")
    return section


def summary_section(found: Findings, focus: Focus, pending: str | None = None) -> Section:
    """The report's opening lines: each verdict with its number (``show.summary``), the detail below; the
    subspace lines name their target set where the accuracy lines read several. ``pending``
    (``sections.unfinished_note``): the sweep's unfinished runs, said first."""
    section = Section("In short")
    cells = found.accuracy.table
    several = cells is not None and "targets" in cells and cells["targets"].nunique() > 1
    section.bullets(([pending] if pending else [])
                    + in_short(found, focus.rank_pair, focus.seed_rank, focus.targets if several else None))
    return section


def findings_section(found: Findings) -> Section:
    section = Section("Findings")
    section.text(f"Every sentence is computed from this sweep's tables (the sections below show them); 'shared' "
                 f"directions are those whose {SHARED_RULE}.")
    for finding in found:
        section.text(f"**{finding.title}**")
        section.bullets(finding.sentences)
    return section


# --- the whole report


@dataclass
class Study:
    """A sweep read and judged once: what the report (and ``across``, several sweeps side by side) states."""

    loaded: SweepData  # every run, the controls included
    data: SweepData  # the real runs only
    shuffled: set[str]  # the shuffled-label controls' run names
    focus: Focus
    tables: dict[str, pd.DataFrame]
    control_phi: pd.DataFrame
    derived: Derived
    found: Findings


def study(sweep_dir: str | Path, layer: int | None = None, targets: str | None = None) -> Study:
    """Load a sweep, choose its focus, derive its numbers and findings (``layer``: None, the middle one;
    ``targets``: the set whose subspaces are judged, None: ``show.focus.choose_focus``'s choice)."""
    loaded = load_sweep(sweep_dir)
    shuffled = shuffled_run_labels(loaded.runs)
    data = without_runs(loaded, shuffled)  # the controls are shown as controls, never as results
    patterned = set(patterned_runs(loaded.runs).get("run", pd.Series(dtype=str)).astype(str))
    if patterned:  # a rank pattern has no one rank to pair by: its accuracy is compared, not its subspaces
        loaded = without_runs(loaded, patterned, tables_only=True)
        data = without_runs(data, patterned, tables_only=True)
    focus = choose_focus(data, layer, targets)
    rate, note = analysed_rate(data.runs, focus.targets)
    notes = []
    if rate is not None:  # an ablation's search: the pairs at one rate; the other rates feed the U-curves only
        off = runs_off_rate(loaded.runs, rate)
        loaded, data = without_runs(loaded, off, tables_only=True), without_runs(data, off, tables_only=True)
        notes.append(note)
    # at that rate, an adapter of the focus set at the majority class has no task subspace to compare
    unpatterned = loaded.runs[~loaded.runs["run"].astype(str).isin(patterned)] if "run" in loaded.runs else loaded.runs
    stuck, why = collapsed_at_rate(unpatterned, focus.targets, rate)
    if stuck:
        loaded, data = without_runs(loaded, stuck, tables_only=True), without_runs(data, stuck, tables_only=True)
    if why:
        notes.append(why)
    if notes:
        focus = choose_focus(data, layer, targets)
        focus.notes.extend(notes)
    control_phi = focus_tables(loaded, focus)["phi"]
    tables = focus_tables(data, focus)
    if tables["phi"].empty:
        tables = dict(tables, phi=empty_phi())
    derived = Derived.compute(tables["phi"], tables["modules"], data.runs, focus.targets,
                              control_phi=control_phi if not control_phi.empty else empty_phi(), shuffled=shuffled)
    found = compute_findings(data, focus, tables, derived, shuffled, loaded.runs)
    return Study(loaded, data, shuffled, focus, tables, control_phi, derived, found)


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None, *, layer: int | None = None,
                 targets: str | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` with ``figures/`` into ``out_dir``.

    ``out_dir`` defaults to ``<sweep>/report``; ``layer`` to the middle adapted layer; ``targets`` (the set
    whose subspaces the figures and findings read; the accuracy findings read every set) to ``all`` when
    present, else the set with most analysed rows. Returns the paths of the HTML and the Markdown file.
    """
    out = report_folder(Path(out_dir) if out_dir is not None else SweepDir(Path(sweep_dir)).report_path)
    studied = study(sweep_dir, layer, targets)
    loaded, data, focus, tables, derived, found = (studied.loaded, studied.data, studied.focus, studied.tables,
                                                   studied.derived, studied.found)
    control_phi, shuffled = studied.control_phi, studied.shuffled
    sections = [  # the verdicts first, as an abstract, then the findings; then the settings and the detail
        summary_section(found, focus, unfinished_note(loaded)),
        findings_section(found),
        experiment_section(data, focus),
        paper_section(data, focus, found, derived),
        figures_section(tables, focus, found),
        controls_section(tables, focus, control_phi, shuffled),
        ablation_section(data.runs, sentences=False, derived=derived, unfinished=loaded.unfinished),
        recommendation_section(data, derived),
        runs_section(loaded.runs, loaded.histories),
        environment_section(loaded.runs),
    ]
    if not derived.accuracy.empty:  # the Tables 5 and 6 analogue, for other tools to read
        write_parquet(out.accuracy_path, derived.accuracy)
    write_text(out.runs_csv_path, run_table(data.runs).to_csv(index=False))
    return write_report(f"LoRA subspace analysis: {Path(sweep_dir).resolve().name}", sections, out.path)
