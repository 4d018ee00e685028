"""The sweep report: figures (PNG and PDF), one self-contained HTML file and its Markdown twin.

``build_report(sweep)`` reads ``runs.parquet``, each run's ``history.csv`` and ``analysis/``, computes
the findings, draws the figures and writes ``<sweep>/report/{report.html, report.md, figures/}``.
A report is a list of ``Section``s of blocks (paragraphs, lists, tables, figures) rendered twice, so
the two files say the same thing. Section builders are public: the ablation reports reuse them.
What is missing (a table, a run, a rank) is said where it would have been shown, never raised.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd

from lora_analysis.atomic import write_parquet, write_text
from lora_analysis.derive import queries as Q
from lora_analysis.derive import stats as S
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.show import findings as F
from lora_analysis.show import plots
from lora_analysis.show.document import Section, write_report
from lora_analysis.show.labels import SUBJECT_LABELS, fmt

TABLES = ("phi", "spectra", "modules", "dw_vs_w", "w_dw_phi", "intruders")
W_TABLES = ("dw_vs_w", "w_dw_phi", "intruders")

# Hu et al. (2021), GPT-3 175B: Section 7 and Appendix H (see the project's PAPER.md).
# Kept as printed (strings), so 70.0 stays 70.0.
PAPER_TABLE6 = pd.DataFrame(
    [row.split() for row in ("WikiSQL q 68.8 69.6 70.5 70.4 70.0", "WikiSQL q+v 73.4 73.3 73.7 73.8 73.5",
                             "WikiSQL q+k+v+o 74.1 73.7 74.0 74.0 73.9", "MultiNLI q 90.7 90.9 91.1 90.7 90.7",
                             "MultiNLI q+v 91.3 91.4 91.3 91.6 91.4", "MultiNLI q+k+v+o 91.2 91.7 91.7 91.5 91.4")],
    columns=["task", "targets", "r=1", "r=2", "r=4", "r=8", "r=64"],
)
PAPER_TABLE5 = pd.DataFrame(
    [row.split() for row in ("WikiSQL 70.4 70.0 73.0 73.2 71.4 73.7 73.7",
                             "MultiNLI 91.0 90.8 91.0 91.3 91.3 91.3 91.7")],
    columns=["task", "q (r=8)", "k (r=8)", "v (r=8)", "o (r=8)", "q+k (r=4)", "q+v (r=4)", "q+k+v+o (r=2)"],
)


@dataclass
class SweepData:
    """Everything a report reads from a sweep folder; absent tables are empty frames, listed in ``missing``."""

    sweep_dir: Path
    runs: pd.DataFrame
    histories: dict[str, pd.DataFrame]
    tables: dict[str, pd.DataFrame]
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def load_sweep(sweep_dir: str | Path) -> SweepData:
    """Read a sweep folder; only ``runs.parquet`` is required."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "runs.parquet").is_file():
        raise LoraAnalysisError(f"{sweep_dir} is not a sweep folder: no runs.parquet (expected the output of "
                                "lora-analysis train -m or reproduce)")
    runs = pd.read_parquet(sweep_dir / "runs.parquet")
    histories, missing = {}, []
    for run in runs["run"].astype(str):
        path = sweep_dir / run / "history.csv"
        if path.is_file():
            histories[run] = pd.read_csv(path)
        else:
            missing.append(f"{run}/history.csv")
    tables, notes = _load_analysis(sweep_dir / "analysis", missing)
    return SweepData(sweep_dir, runs, histories, tables, notes, missing)


def _load_analysis(folder: Path, missing: list[str]) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The analysis tables through ``AnalysisResult.load``; table by table if some are absent."""
    from lora_analysis.analysis.tables import AnalysisResult

    try:
        result = AnalysisResult.load(folder)
        return {name: getattr(result, name) for name in TABLES}, list(result.notes)
    except LoraAnalysisError:
        pass
    tables = {}
    for name in TABLES:
        path = folder / f"{name}.parquet"
        tables[name] = pd.read_parquet(path) if path.is_file() else pd.DataFrame()
        if not path.is_file():
            missing.append(f"analysis/{name}.parquet")
    meta = folder / "analysis.json"
    notes = json.loads(meta.read_text()).get("notes", []) if meta.is_file() else []
    return tables, notes


@dataclass
class Focus:
    """What the paper-style figures show: one target set, one layer, one rank pair, one seeded rank."""

    targets: str | None
    layer: int | None
    role: str | None  # Table 7 and Figure 8: q, as in the paper, when adapted
    rank_pair: tuple[int, int] | None
    seed_rank: int | None
    notes: list[str] = field(default_factory=list)


def choose_focus(data: SweepData, layer: int | None = None) -> Focus:
    """Prefer the paper's choices (all targets, r = 8 against 64, seeds at 64, the middle layer).

    Without them: the largest rank against the rank nearest 8 (the smaller on a tie), seeds at the largest
    seeded rank, all within the focus target set.
    """
    phi, modules = data.tables["phi"], data.tables["modules"]
    targets = Q.main_targets(modules if not modules.empty else phi)
    if not phi.empty and targets is not None and "targets" in phi:
        phi = phi[phi["targets"].astype(str) == str(targets)]
    notes = []
    ranks = set()
    if not phi.empty:
        rank = phi[phi["comparison"] == "rank"]
        ranks = set(zip(rank["r_a"].astype(int), rank["r_b"].astype(int), strict=True))
    pair = (8, 64) if (8, 64) in ranks else (
        min(ranks, key=lambda p: (-p[1], abs(math.log(p[0] / 8)), p[0])) if ranks else None)
    if ranks and pair != (8, 64):
        notes.append(f"no r=8 vs r=64 pair: the rank figures use r={pair[0]} vs r={pair[1]}")
    seeded = sorted(int(r) for r in phi.loc[phi["comparison"] == "seed", "r_a"].unique()) if not phi.empty else []
    seed_rank = 64 if 64 in seeded else (seeded[-1] if seeded else None)
    if seeded and seed_rank != 64:
        notes.append(f"no seed pair at r=64: the seed figures use r={seed_rank}")
    source = modules if not modules.empty else phi
    middle = Q.middle_layer(source) if not source.empty else None
    layers = sorted(int(x) for x in source["layer"].dropna().unique()) if not source.empty else []
    if layer is not None and layers and layer not in layers:
        raise LoraAnalysisError(f"layer={layer} is not an adapted layer of this sweep: expected one of {layers}")
    roles = Q.shown_roles(source) if not source.empty else []
    return Focus(targets, middle if layer is None else layer, "q" if "q" in roles else (roles[0] if roles else None),
                 pair, seed_rank, notes)


def focus_tables(data: SweepData, focus: Focus) -> dict[str, pd.DataFrame]:
    """The analysis tables restricted to the runs of the focus target set (one set per sweep, mostly)."""
    tables = data.tables
    modules = tables["modules"]
    if focus.targets is None or modules.empty or modules["targets"].nunique() <= 1:
        return tables
    runs = set(modules.loc[modules["targets"] == focus.targets, "run"].astype(str))
    out = {name: t[t["run"].astype(str).isin(runs)] if "run" in t else t for name, t in tables.items()}
    out["phi"] = tables["phi"][tables["phi"]["targets"] == focus.targets]
    return out


def environment_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Python, package versions, platform and CPU count here; device and threads as the runs recorded them."""
    rows = [("python", platform.python_version()), ("platform", platform.platform()),
            ("CPU count", str(os.cpu_count()))]
    for package in ("torch", "transformers", "peft", "numpy", "scipy", "pandas", "pyarrow", "matplotlib",
                    "hydra-core", "lora-analysis"):
        try:
            rows.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            rows.append((package, "not installed"))
    for label, column in (("device (runs)", "device"), ("threads (runs)", "threads")):
        if column in runs:
            rows.append((label, ", ".join(sorted({str(v) for v in runs[column].dropna()})) or "—"))
    return pd.DataFrame(rows, columns=["item", "value"])


# --- sections


def experiment_section(data: SweepData, focus: Focus | None = None) -> Section:
    """What was trained and analysed: model, data, split, runs, steps, targets, init, seeds."""
    runs = data.runs
    section = Section("The experiment")
    lora, full = Q.lora_runs(runs), runs[runs["method"] == "full"] if "method" in runs else runs.iloc[0:0]
    section.text(f"Sweep `{data.sweep_dir.name}`: {len(lora)} LoRA run(s) and {len(full)} full fine-tuning run(s) "
                 f"({', '.join(runs['run'].astype(str))}). The subspace analyses follow Hu et al. (2021), "
                 "Section 7 and Appendix H.")
    section.table(experiment_table(runs), "Settings (one value, or every value used in the sweep)")
    if focus is not None:
        section.text(f"The paper-style figures show target set `{focus.targets}`, layer {focus.layer} (the middle "
                     "adapted layer unless chosen), " + (f"ranks {focus.rank_pair[0]} against {focus.rank_pair[1]}"
                                                        if focus.rank_pair else "no rank pair")
                     + (f" and seeds at r={focus.seed_rank}." if focus.seed_rank else " and no seed pair."))
    gaps = data.missing + data.notes + (focus.notes if focus else [])
    if gaps:
        section.text("Missing or skipped:")
        section.bullets(gaps)
    return section


def experiment_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Setting and value(s): the config columns of ``runs.parquet`` worth stating, when present."""
    settings = [
        ("model", "model.name_or_path"), ("task", "model.task"), ("data", "data.path"),
        ("train examples", "train_examples"), ("test examples", "test_examples"), ("split seed", "data.split_seed"),
        ("max length (tokens)", "data.max_length"), ("method", "method"), ("LoRA targets", "lora.targets"),
        ("rank r", "lora.r"), ("alpha (scale = alpha / r)", "lora.alpha"), ("rsLoRA", "lora.rslora"),
        ("budget", "lora.budget"), ("A init", "lora.init"), ("init stream", "lora.init_stream"),
        ("dropout", "lora.dropout"), ("seeds", "seed"), ("steps", "optim.steps"), ("batch size", "optim.batch_size"),
        ("learning rate", "optim.lr"), ("schedule", "optim.schedule"), ("device", "device"), ("threads", "threads"),
    ]  # fmt: skip
    rows = []
    for label, column in settings:
        if column in runs and runs[column].notna().any():
            values = sorted({v for v in runs[column].dropna()}, key=lambda v: (str(type(v)), v))
            rows.append((label, ", ".join(_plain(v) for v in values)))
    return pd.DataFrame(rows, columns=["setting", "value"])


def _plain(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def paper_section(data: SweepData, focus: Focus, found: dict[str, F.Finding]) -> Section:
    """The paper's numbers beside ours, quantity by quantity, then Tables 5 and 6 beside our accuracies."""
    section = Section("The paper's numbers and ours")
    model = ", ".join(sorted(data.runs.get("model.name_or_path", pd.Series(["?"])).astype(str).unique()))
    section.text(f"Paper: GPT-3 175B, layer 48 of 96, WikiSQL/MultiNLI. Ours: {model}, layer {focus.layer}, this "
                 "sweep's task. Random baselines are the expectation max(i, j)/k for independent random subspaces.")
    section.table(side_by_side(focus, found), "Quantity by quantity")
    section.table(PAPER_TABLE6, "Paper, Table 6: validation accuracy (%) against rank r per target set")
    ours = accuracy_pivot(S.accuracy_table(data.runs))
    if ours.empty:
        section.text("Ours: no LoRA run with a test metric.")
    else:
        section.table(ours, f"Ours: {Q.metric_column(data.runs)} (mean ± std over seeds, n) per target set and rank")
    section.table(PAPER_TABLE5, "Paper, Table 5: validation accuracy (%) at a budget of 18M trainable parameters")
    return section


def side_by_side(focus: Focus, found: dict[str, F.Finding]) -> pd.DataFrame:
    """Rows of (quantity, paper, ours) for Figures 3, 4, 8 and Table 7, from the findings' tables.

    A quantity this sweep cannot measure keeps its row, with the reason in the last column.
    """
    rows = [*_figure3_rows(focus, found["top_direction"]), *_figure4_rows(focus, found["q_vs_v"]),
            *_table7_rows(found["amplification"])]
    fig8, moved = found["w_dw_overlap"], found["a_moved"]
    rows.append(("Figure 8: φ(top 10% of W, top 4 of ΔW)", "barely above 0.2", _missing(fig8) or ", ".join(
        f"r={int(r.r)}: {fmt(r.phi)} (baseline {fmt(r.baseline)})" for r in fig8.table.itertuples())))
    rows.append(("How far A moved from its init", "not reported", _missing(moved) or ", ".join(
        f"r={int(r.r)}: {fmt(100 * r.mean, 0)}%" for r in moved.table.itertuples())))
    return pd.DataFrame(rows, columns=["quantity", "paper (GPT-3, layer 48)", f"ours (layer {focus.layer})"])


def _missing(finding: F.Finding) -> str | None:
    return f"not measured: {finding.sentences[0]}" if finding.table is None else None


def _figure3_rows(focus: Focus, finding: F.Finding) -> list[tuple]:
    lo, hi = focus.rank_pair or (8, 64)
    rows = []
    for role in ("q", "v"):
        quantity = f"Figure 3, {role}: φ(1, {hi}) of the top direction of r={lo}"
        top = finding.table
        at = top[(top["layer"] == focus.layer) & (top["module"] == role)] if top is not None else None
        if at is None or at.empty:
            rows.append((quantity, "> 0.5 (A)", _missing(finding) or f"no {role} at layer {focus.layer}"))
            continue
        ours = "; ".join(f"{SUBJECT_LABELS[s]} {fmt(v)}"
                         for s, v in zip(at["subject"], at["phi_1_rb"], strict=True))
        rows.append((quantity, "> 0.5 (A)", f"{ours} (baseline {fmt(at['baseline'].iloc[0])})"))
    return rows


def _figure4_rows(focus: Focus, finding: F.Finding) -> list[tuple]:
    quantity = f"Figure 4: directions shared by two seeds at r={focus.seed_rank or 64}"
    paper = "q has a higher intrinsic rank than v (A)"
    if finding.table is None:
        return [(quantity, paper, _missing(finding))]
    at = finding.table[finding.table["layer"] == focus.layer].pivot_table(
        index="subject", columns="module", values="shared", observed=True)
    if not {"q", "v"} <= set(at.columns):
        return [(quantity, paper, f"no q and v pair at layer {focus.layer}")]
    return [(quantity, paper, "; ".join(f"{SUBJECT_LABELS[s]}: q {fmt(r.q, 0)}, v {fmt(r.v, 0)}"
                                        for s, r in at.iterrows()))]


def _table7_rows(finding: F.Finding) -> list[tuple]:
    """Table 7 at r = 4 and 64 (ours: those ranks, else our smallest and largest)."""
    if finding.table is None:
        return [("Table 7: ||ΔW||_F, ||UᵀWVᵀ||_F, amplification", "r=4: 6.91, 0.32 / 21.67 / 0.02, 21.5; "
                 "r=64: 3.57, 1.90 / 37.71 / 0.33, about 2", _missing(finding))]
    amp = finding.table
    ranks = sorted(int(r) for r in amp["r"])
    ours_ranks = (4, 64) if {4, 64} <= set(ranks) else (ranks[0], ranks[-1])
    paper = {4: ("6.91", "0.32 / 21.67 / 0.02", "21.5"), 64: ("3.57", "1.90 / 37.71 / 0.33", "about 2")}
    rows = []
    for (r, (dw, proj, factor)), ours_r in zip(paper.items(), ours_ranks, strict=True):
        if r == 64 and ours_r == ours_ranks[0]:
            rows.append((f"Table 7 (paper r={r})", f"{dw}; {proj}; {factor}", f"only r={ours_r} in this sweep"))
            continue
        row = amp[amp["r"] == ours_r].iloc[0]
        label = f"Table 7 (paper r={r}, ours r={ours_r})"
        ours = " / ".join(fmt(row.get(c, float("nan"))) for c in ("proj_dW", "proj_W", "proj_random"))
        rows.append((f"{label}: ||ΔW||_F", dw, fmt(row["dw_norm"])))
        rows.append((f"{label}: ||UᵀWVᵀ||_F, U, V of ΔW / W / random", proj, ours))
        rows.append((f"{label}: amplification ||ΔW||_F / ||UᵀWVᵀ||_F", factor, fmt(row["amplification"], 1)))
    rows.append(("Table 7: ||W||_F", "61.95", fmt(amp["w_norm"].iloc[0])))
    return rows


def accuracy_pivot(table: pd.DataFrame) -> pd.DataFrame:
    """``accuracy_table`` as target sets by ranks, cells ``mean ± std (n)``, for display."""
    if table.empty:
        return pd.DataFrame()
    cells = table.assign(cell=[f"{m:.3f}" + (f" ± {s:.3f}" if n > 1 else "") + f" ({n})"
                               for m, s, n in zip(table["mean"], table["std"], table["n"], strict=True)])
    wide = cells.pivot(index="targets", columns="r", values="cell").fillna("—")
    wide.columns = [f"r={c}" for c in wide.columns]
    return wide.reset_index()


def ablation_section(runs: pd.DataFrame, metric: str | None = None, title: str | None = None,
                     sentences: bool = True) -> Section:
    """Test metric per (target set, rank): table and figure, the budget-matched variant, full fine-tuning.

    ``sentences`` adds the accuracy finding (off when a Findings section already states it).
    """
    metric = metric or Q.metric_column(runs)
    what = "Accuracy" if metric in (None, "test_accuracy") else metric.replace("_", " ").capitalize()
    section = Section(title or f"{what} against rank and target set (Tables 5 and 6)")
    table = S.accuracy_table(runs, metric)
    if table.empty:
        section.text("No finished LoRA run with a test metric in runs.parquet.")
        return section
    section.table(accuracy_pivot(table), f"{metric}: mean ± std over seeds (number of seeds)")
    full = S.full_reference(runs, metric)
    section.text(f"Full fine-tuning reference: {fmt(full['mean'], 3)} (n={full['n']})." if full else
                 "No full fine-tuning run in this sweep: no reference line.")
    lines = (["black: full fine-tuning"] if full else []) + (
        ["dotted: majority class"] if metric == "test_accuracy" and "majority_accuracy" in runs else [])
    section.plot("accuracy_rank", lambda: plots.accuracy_vs_rank(runs, metric=metric),
                 f"{metric} against rank, one line per target set" + "".join(f"; {x}" for x in lines) + ".")
    budgeted = runs[runs["lora.budget"].notna()] if "lora.budget" in runs else runs.iloc[0:0]
    if not budgeted.empty:
        budget = S.accuracy_table(budgeted, metric)
        section.table(budget.rename(columns={"lora_params": "trainable LoRA parameters"}),
                      f"Budget-matched runs ({', '.join(sorted(map(str, budgeted['lora.budget'].unique())))})")
        section.plot("accuracy_budget", lambda: plots.accuracy_by_targets(runs, metric=metric),
                     "Test metric per target set at one parameter budget, with each set's rank and parameter count.")
        section.bullets(F.ffn_under_budget(runs, metric).sentences)
    if sentences:
        section.bullets(F.accuracy(runs, metric).sentences)
    return section


def recommendation_section(data: SweepData) -> Section:
    """``lora-analysis recommend``'s answer for the sweep: the rank per role, and how it was reached."""
    from lora_analysis.derive.recommend import recommend_from

    section = Section("Rank recommendation")
    try:
        result = recommend_from(data.tables["phi"], data.tables["modules"], data.runs)
    except LoraAnalysisError as error:
        section.text(f"No recommendation: {error}.")
        return section
    if not result.layers["rank_pairs"].any():
        section.text(f"No recommendation: target set {result.targets} was trained at one rank only, and a rank "
                     "the task needs is read off directions shared across ranks as well as seeds (a rank sweep).")
        return section
    section.table(result.roles.rename(columns={"layers_min": "fewest (a layer)", "layers_max": "most (a layer)",
                                               "n_layers": "layers", "seed_shared": "seed-shared (median)",
                                               "rank_shared": "rank-shared (median)"}),
                  f"Rank per role from the {result.subject} subspaces of target set {result.targets}")
    section.bullets(result.explain())
    section.text("As a PEFT rank_pattern (lora-analysis recommend <sweep> rank_pattern=ranks.json writes it): "
                 + ", ".join(f"`{key}`: {rank}" for key, rank in result.rank_pattern.items()) + ".")
    return section


def figures_section(tables: dict[str, pd.DataFrame], focus: Focus, found: dict[str, F.Finding]) -> Section:
    """Figures 3, 4, 6, 7 and 8 and the ΔW spectra for our runs; captions carry the headline number."""
    section = Section("Our figures, beside the paper's")
    phi, layer = tables["phi"], focus.layer
    if phi.empty:
        section.text("No phi table (analysis/phi.parquet missing or empty): Figures 3, 4, 6 and 7 not drawn.")
    subjects = [s for s in ("A", "A_delta") if not phi.empty and (phi["subject"] == s).any()]
    lo, hi = focus.rank_pair or (None, None)
    if not phi.empty and not focus.rank_pair:
        section.text("No rank pair (two runs of one seed at different ranks): Figures 3 and 6 not drawn.")
    if not phi.empty and not focus.seed_rank:
        section.text("No seed pair (two runs of one rank with different seeds): Figures 4 and 7 not drawn.")
    for subject in subjects if focus.rank_pair else []:
        section.plot(f"fig3_rank_{subject}", lambda s=subject: plots.fig3_rank_similarity(
            phi, layer=layer, r_small=lo, r_large=hi, subject=s),
            f"Figure 3 for {SUBJECT_LABELS[subject]}: φ between r={lo} and r={hi} at layer {layer}. "
            + _headline(found["top_direction"], subject))
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


def controls_section(tables: dict[str, pd.DataFrame], focus: Focus) -> Section:
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
            phi, layer=layer, comparison="seed", r_a=focus.seed_rank, r_b=focus.seed_rank),
            f"Controls for Figure 4: two seeds at r={focus.seed_rank}, layer {layer}.")
    section.text("The numbers behind these maps (A_init against the baseline, how far A moved, intruder "
                 "dimensions) are in the Findings below.")
    return section


def _headline(finding: F.Finding, subject: str) -> str:
    value = finding.values.get(subject)
    return "" if value is None else f"Mean φ(1, r) over layers and roles: {fmt(value)}."


def findings_section(found: dict[str, F.Finding]) -> Section:
    section = Section("Findings")
    section.text("Every sentence is computed from this sweep's tables; 'shared' directions are those whose "
                 "energy in the other run's subspace reaches (1 + b) / 2, halfway between the random "
                 "expectation b = r / k and 1.")
    for finding in found.values():
        section.text(f"**{finding.title}**")
        section.bullets(finding.sentences)
    return section


RUN_COLUMNS = ["run", "method", "lora.targets", "lora.r", "seed", "optim.steps", "optim.lr", "test_accuracy",
               "test_loss", "test_perplexity", "majority_accuracy", "final_train_loss", "a_moved_mean", "lora_params",
               "trainable_params", "examples_per_s", "tokens_per_s", "train_seconds", "wall_seconds", "device"]


def run_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The sweep table with the lora.* values of full fine-tuning runs blanked: they have no adapter."""
    table = runs.copy()
    if "method" in table:
        lora_columns = [c for c in table if c.startswith("lora.") or c in ("a_moved_mean", "lora_params")]
        table[lora_columns] = table[lora_columns].astype(object).where(table["method"] != "full", None)
    return table


def runs_section(runs: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> Section:
    """The run table (config, metric, throughput, time) and the training curves."""
    section = Section("Runs")
    section.table(run_table(runs[[c for c in RUN_COLUMNS if c in runs]]),
                  "One row per finished run (runs.parquet; every column in runs.csv beside this report)")
    section.plot("loss_curves", lambda: plots.loss_curves(histories), "Training loss per run (history.csv).")
    return section


def environment_section(runs: pd.DataFrame) -> Section:
    section = Section("Environment")
    section.table(environment_table(runs), "Package versions when this report was built; device and threads "
                  "as recorded by the runs")
    return section


# --- the whole report


def compute_findings(data: SweepData, focus: Focus, tables: dict[str, pd.DataFrame]) -> dict[str, F.Finding]:
    phi = tables["phi"] if not tables["phi"].empty else _empty_phi()
    shared = S.shared_directions(phi)
    lo, hi = focus.rank_pair or (8, 64)
    layer, role = focus.layer, focus.role or "q"
    found = [
        F.top_direction(phi, r_small=lo, r_large=hi),
        F.q_vs_v(shared, r=focus.seed_rank or 64),
        F.init_control(phi, shared),
        F.a_moved(tables["modules"]),
        _or_missing(tables["dw_vs_w"], "amplification", "Table 7",
                    lambda t: F.amplification(t, layer=layer, module=role)),
        _or_missing(tables["w_dw_phi"], "w_dw_overlap", "Figure 8",
                    lambda t: F.w_dw_overlap(t, layer=layer, module=role)),
        _or_missing(tables["intruders"], "intruders", "Intruder dimensions", F.intruder_counts),
        F.accuracy(data.runs),
        F.loss_levelled(data.histories),
    ]
    return {f.key: f for f in found}


def _or_missing(table: pd.DataFrame, key: str, what: str, compute) -> F.Finding:
    if table.empty:
        return F.Finding.missing(key, what, f"{what}: no rows in the analysis (the base weights were not found, or "
                                 "the table is missing), so it is not measured.")
    return compute(table)


def _empty_phi() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c in ("r_a", "r_b", "layer", "i", "j") else "float64"
                                      if c in ("phi", "baseline") else "str") for c in [*Q.PAIR_KEYS, "i", "j", "phi",
                                                                                         "baseline"]})


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None, *, layer: int | None = None
                 ) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` with ``figures/`` into ``out_dir``.

    ``out_dir`` defaults to ``<sweep>/report``; ``layer`` to the middle adapted layer. Returns the paths
    of the HTML and the Markdown file.
    """
    data = load_sweep(sweep_dir)
    focus = choose_focus(data, layer)
    tables = focus_tables(data, focus)
    if tables["phi"].empty:
        tables = dict(tables, phi=_empty_phi())
    found = compute_findings(data, focus, tables)
    sections = [
        experiment_section(data, focus),
        paper_section(data, focus, found),
        figures_section(tables, focus, found),
        controls_section(tables, focus),
        findings_section(found),
        ablation_section(data.runs, sentences=False),
        recommendation_section(data),
        runs_section(data.runs, data.histories),
        environment_section(data.runs),
    ]
    out_dir = Path(out_dir) if out_dir is not None else Path(sweep_dir) / "report"
    accuracy = S.accuracy_table(data.runs)
    if not accuracy.empty:  # the Tables 5 and 6 analogue, for other tools to read
        write_parquet(out_dir / "accuracy.parquet", accuracy)
    write_text(out_dir / "runs.csv", run_table(data.runs).to_csv(index=False))
    return write_report(f"LoRA subspace analysis: {Path(sweep_dir).resolve().name}", sections, out_dir)
