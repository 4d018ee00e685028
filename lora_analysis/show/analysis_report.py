"""The report of any analysis: adapters from anywhere (PEFT folders, two tasks, two sweeps), not only a sweep.

``build_analysis_report(folder)`` reads an analysis folder (``analysis.tables.AnalysisResult``) and shows
what adapters alone allow: the pairs that exist (rank, seed or other) as phi maps beside the Gaussian pair,
each pair's top direction layer by layer against its strongest control with a verdict, the spectra, and
dW against W and intruder dimensions where a base was found. What needs an init, a training history or
shuffled-label runs is named once, in the first section, and not rendered as empty sections. A sweep's
report (``show.report``) adds the paper's numbers, the accuracies and the recommendation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lora_analysis.analysis.kinds import Comparison, Subject
from lora_analysis.derive import stats
from lora_analysis.derive.controls import CONTROL_LABELS, TASK_RULE, direction_controls, top_direction_summary, verdict
from lora_analysis.derive.queries import adapted_layers, middle_layer, shown_roles
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.layout import AnalysisDir, RunDir
from lora_analysis.show import pair_plots, plots
from lora_analysis.show.document import Section, code, report_folder, write_report
from lora_analysis.show.labels import fmt, label

INIT_FILE = RunDir.INIT
MAX_PAIR_FIGURES = 6  # pairs drawn; every pair is in the tables
MAX_RUN_FIGURES = 4  # Figure 8 per adapter
PAIR_KEYS = ["comparison", "run_a", "run_b", "r_a", "r_b"]
# A direction two adapters share beyond the strongest control, by how the two differ.
SHARED_WHAT = {Comparison.rank: "a direction both ranks learned", Comparison.seed: "a direction both seeds learned",
               Comparison.other: "a direction both adapters share beyond what their inputs give"}


@dataclass
class AnalysisData:
    """An analysis folder's tables, its adapters (the ``runs`` table) and its notes."""

    folder: Path
    tables: dict[str, pd.DataFrame]
    runs: pd.DataFrame
    notes: list[str]
    dw_side: str = "right"  # the phi table's dW subspace: right singular vectors (A's row space) or left

    @property
    def has_geometry(self) -> bool:
        phi = self.tables["phi"]
        return not phi.empty and bool(phi["geometry_baseline"].notna().any())

    def without_init(self) -> list[str]:
        return sorted(self.runs.loc[~self.runs["has_init"].astype(bool), "run"].astype(str))


def load_analysis(folder: str | Path) -> AnalysisData:
    """Read an analysis folder written by ``lora-analysis analyze`` (missing tables are empty)."""
    from lora_analysis.analysis.tables import AnalysisResult

    where = AnalysisDir(Path(folder))
    if not where.exists():
        raise LoraAnalysisError(f"{where.path} is not an analysis folder: no {AnalysisDir.META} there")
    result = AnalysisResult.load(where.path, partial=True)
    if result.runs.empty:
        raise LoraAnalysisError(f"{where.table('runs')}: the analysis names no adapters; {AnalysisDir.REBUILD}")
    tables = {n: getattr(result, n) for n in ("phi", "spectra", "modules", "dw_vs_w", "w_dw_phi", "intruders")}
    return AnalysisData(where.path, tables, result.runs, list(result.notes), str(result.config.get("dw_side", "right")))


def choose_layer(data: AnalysisData, layer: int | None) -> int | None:
    """``layer`` if adapted, else the middle adapted layer; an unadapted ``layer`` is an error."""
    source = data.tables["modules"] if not data.tables["modules"].empty else data.tables["phi"]
    layers = adapted_layers(source) if not source.empty else []
    if layer is not None and layers and layer not in layers:
        raise LoraAnalysisError(f"layer={layer} is not an adapted layer of these adapters: expected one of {layers}")
    return layer if layer is not None else (middle_layer(source) if not source.empty else None)


def named_pairs(phi: pd.DataFrame) -> pd.DataFrame:
    """One row per compared pair of adapters: ``comparison, run_a, run_b, r_a, r_b, layers, roles``."""
    pairs = phi[phi["comparison"] != Comparison.random] if not phi.empty else phi
    if pairs.empty:
        return pd.DataFrame(columns=[*PAIR_KEYS, "layers", "roles"])
    grouped = pairs.groupby(PAIR_KEYS, observed=True, sort=True)
    out = grouped.agg(layers=("layer", "nunique"), roles=("module", lambda m: "+".join(shown_roles(m.to_frame()))))
    out = out.reset_index()
    out["comparison"] = pd.Categorical(out["comparison"].astype(str), [c.value for c in Comparison], ordered=True)
    return out.sort_values(["comparison", "run_a", "run_b"]).reset_index(drop=True)


# --- sections


def adapters_section(data: AnalysisData) -> Section:
    """Which adapters, and what their analysis cannot show (said once here, not as empty sections)."""
    section = Section("The adapters")
    runs = data.runs
    section.text(f"{len(runs)} adapter(s) analysed by `lora-analysis analyze` into {code(data.folder.name)}. No sweep "
                 "table came with them, so this report shows what adapters alone allow: their pairs, their spectra, "
                 "and ΔW against W where the base model was found.")
    table = runs[["run", "r", "seed", "targets", "modules", "has_init", "base", "folder"]].rename(
        columns={"has_init": "init saved", "base": "base model found"})
    section.table(table, "Adapters (seed: recorded by a lora-analysis run config; — where unknown)")
    section.text("Not measured for these adapters:")
    section.bullets(unavailable(data))
    return section


def unavailable(data: AnalysisData) -> list[str]:
    """One sentence per analysis the data cannot support, with how to get it."""
    out = []
    bare = data.without_init()
    if bare:
        out.append(f"A_init, A − A_init and how far A moved: {', '.join(bare)} have no {INIT_FILE} "
                   "(PEFT saves only the trained factors). Two adapters started from one seed draw the same A, so a "
                   "direction their A (or ΔW's right singular vectors, which lie in A's row space) share may be the "
                   "common init; B starts at zero, so what B shares is not the init.")
    out.append("Test accuracy, the training loss and the rank recommendation: these need a sweep trained by "
               "lora-analysis train -m (its runs.parquet and history.csv).")
    out.append("The shuffled-label control: it needs the same adapters trained on shuffled labels "
               "(data.shuffle_labels=true); the controls these adapters allow are named with the verdicts.")
    if not data.has_geometry:
        out.append("The input-geometry baseline: the analysis fed no texts through the base model (give base=MODEL "
                   "data_path=FILE text_column=COL). Adapters trained on similar inputs share their dominant input "
                   "directions with no task at all, so against the isotropic baseline alone a shared direction "
                   "cannot be called learned.")
    if data.tables["dw_vs_w"].empty and data.tables["intruders"].empty:
        out.append("ΔW against W (Table 7, Figure 8) and intruder dimensions: the base model's weights were not "
                   "found (give base=MODEL).")
    return out


def pairs_section(data: AnalysisData, pairs: pd.DataFrame, controls: pd.DataFrame, layer: int | None) -> Section:
    """Every pair in a table; the first ``MAX_PAIR_FIGURES`` drawn at ``layer`` and layer by layer."""
    section = Section("The pairs")
    if pairs.empty:
        section.text("No two adapters share an adapted module of one base: there is no pair to compare. Each "
                     "adapter's spectrum and its random-baseline rows are below.")
        return section
    section.text("rank: two ranks of one run config (or of plain PEFT folders, which record nothing else); seed: "
                 "the same config and rank, two seeds; other: two "
                 "adapters of one base that differ in something else (a task, data, settings) or in what was not "
                 "recorded (plain PEFT folders of one rank). φ(i, j) = ||U_aᵢᵀ U_bⱼ||²_F / min(i, j), of right "
                 "singular vectors (input space) for A, A − A_init and ΔW, of left ones (output space) for B.")
    section.table(pairs, "Pairs compared (layers and roles they share)")
    for n, p in enumerate(pairs.itertuples(index=False)):
        if n == MAX_PAIR_FIGURES:
            section.text(f"{len(pairs) - n} more pair(s) are in the tables, not drawn.")
            break
        name = f"pair{n + 1}"
        if layer is not None:
            section.plot(f"{name}_phi", lambda p=p: pair_plots.pair_similarity(
                data.tables["phi"], run_a=p.run_a, run_b=p.run_b, layer=layer),
                f"{p.comparison}: {p.run_a} (r={p.r_a}) against {p.run_b} (r={p.r_b}) at layer {layer}.")
        section.plot(f"{name}_layers", lambda p=p: pair_plots.pair_layers(controls, run_a=p.run_a, run_b=p.run_b),
                     f"{p.comparison}: {p.run_a} against {p.run_b}, every layer; dashed: the strongest control.")
    return section


def verdicts_section(data: AnalysisData, controls: pd.DataFrame) -> Section:
    """Per pair and subject: the top direction against the strongest control over (layer, role) cases."""
    section = Section("Shared directions against the strongest control")
    summary = top_direction_summary(controls, keys=[*PAIR_KEYS, "subject"])
    if summary.empty:
        section.text("No pair: nothing to judge against controls.")
        return section
    bare = set(data.without_init())
    sentences = []
    for row in summary.itertuples(index=False):
        row = pd.Series(row._asdict())
        geometry = "input-geometry n/a" if pd.isna(row.geometry) else f"input-geometry {fmt(row.geometry)}"
        init = "" if pd.isna(row.init) else f", their shared init (A_init) {fmt(row.init)}"
        text = (f"{label(row.subject)}, {row.run_a} vs {row.run_b} ({row.comparison}): e₁ = φ(1, r_b) = "
                f"{fmt(row.energy)} against isotropic {fmt(row.isotropic)}, {geometry}{init}; excess over the "
                f"strongest control {row.excess_mean:+.2f} ± {fmt(row.excess_std)} (range {row.excess_min:+.2f} to "
                f"{row.excess_max:+.2f}) over {int(row.cases)} (layer, role) cases, beyond the control in "
                f"{int(row.task_cases)}: {verdict(row, SHARED_WHAT.get(row.comparison, SHARED_WHAT['other']))}.")
        if row.subject == Subject.A_init:
            text = _init_sentence(row)
        elif row.subject in (Subject.A, Subject.dW) and {row.run_a, row.run_b} & bare:
            text += " Without a saved init this may be the shared random init (see above)."
        sentences.append(text)
    section.bullets(sentences)
    available = [c for c, there in (("isotropic", True), ("geometry", data.has_geometry),
                                    ("init", len(bare) < len(data.runs))) if there]
    section.text(f"A direction counts beyond its control when its {TASK_RULE}. Controls available here: "
                 + ", ".join(CONTROL_LABELS[c] for c in available) + "; no shuffled-label pair.")
    counts = controls.groupby([*PAIR_KEYS, "subject"], observed=True).agg(
        directions=("i", "size"), beyond_control=("task", "sum")).reset_index()
    section.table(counts, "Directions tested and shared beyond the strongest control, over all layers and roles")
    return section


def _init_sentence(row: pd.Series) -> str:
    """A_init is a control, not a finding: say whether the pair started from one random draw."""
    shared = row.energy >= (1 + row.isotropic) / 2
    what = ("the two adapters started from one random draw (one seed), so A and ΔW, which stay near it, are "
            "judged against it" if shared else "their inits are unrelated, as independent draws are")
    return (f"A_init (a control), {row.run_a} vs {row.run_b}: e₁ = {fmt(row.energy)} against isotropic "
            f"{fmt(row.isotropic)} over {int(row.cases)} (layer, role) cases: {what}.")


def spectra_section(data: AnalysisData, layer: int | None) -> Section:
    section = Section("Spectra")
    modules = data.tables["modules"]
    if layer is not None:
        section.plot("spectra_dw", lambda: pair_plots.run_spectra(data.tables["spectra"], layer=layer),
                     f"Singular values of ΔW at layer {layer}, one line per adapter.")
    if not modules.empty:
        table = modules.groupby("run", observed=True).agg(
            r=("r", "first"), modules=("path", "size"), norm_dW=("norm_dW", "mean"),
            effective_rank_dW=("effective_rank_dW", "mean"), stable_rank_dW=("stable_rank_dW", "mean"),
            a_moved=("a_moved", "mean")).reset_index()
        section.table(table, "Per adapter, mean over modules: ||ΔW||_F, effective and stable rank of ΔW, and "
                      "||A − A_init||_F / ||A_init||_F (— without a saved init)")
    return section


def weights_section(data: AnalysisData, layer: int | None) -> Section | None:
    """Table 7, Figure 8 and intruder dimensions per adapter; None where no base was found."""
    dw_vs_w, w_dw_phi, intr = data.tables["dw_vs_w"], data.tables["w_dw_phi"], data.tables["intruders"]
    if dw_vs_w.empty and intr.empty:
        return None
    section = Section("ΔW against the base weights W")
    if not dw_vs_w.empty:
        rows = [stats.amplification_table(g).drop(columns="seeds").assign(run=run)
                for run, g in dw_vs_w.groupby("run", observed=True)]
        table = pd.concat(rows, ignore_index=True)
        section.table(table[["run", *table.columns.drop("run")]],
                      "Table 7 per adapter, mean over layers and roles: ||UᵀWVᵀ||_F for U, V the top r directions of "
                      "ΔW, W or a random matrix, and the amplification ||ΔW||_F / ||UᵀWVᵀ||_F (U, V of ΔW)")
    role = "q" if (w_dw_phi["module"] == "q").any() else (shown_roles(w_dw_phi) or [None])[0]
    for n, run in enumerate(sorted(w_dw_phi["run"].astype(str).unique()) if layer is not None and role else []):
        if n == MAX_RUN_FIGURES:
            break
        section.plot(f"fig8_{n + 1}", lambda run=run: plots.fig8_w_dw_similarity(
            w_dw_phi[w_dw_phi["run"].astype(str) == run], layer=layer, module=role),
            f"Figure 8 for {run}: top directions of W against those of ΔW ({role}, layer {layer}).")
    if not intr.empty:
        counts = intr.groupby(["run", "layer", "module"], observed=True)["is_intruder"].sum()
        table = counts.groupby("run", observed=True).agg(per_module="mean", total="sum", modules="size").reset_index()
        section.table(table, f"Intruder dimensions per adapter: top-{int(intr['index'].max())} singular vectors of "
                      f"W + ΔW whose max |cos| to every singular vector of W is below {fmt(intr['threshold'].iloc[0])}")
    return section


def notes_section(data: AnalysisData) -> Section | None:
    """The analysis' notes, but those the first section already says (no saved init)."""
    notes = [n for n in data.notes if f"no {INIT_FILE}" not in n]
    if not notes:
        return None
    section = Section("Notes of the analysis")
    section.bullets(notes)
    return section


# --- the whole report


def build_analysis_report(folder: str | Path, out_dir: str | Path | None = None, *, layer: int | None = None,
                          title: str | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` with ``figures/`` for the analysis in ``folder``.

    ``out_dir`` defaults to ``AnalysisDir(folder).report_path`` (``report/`` beside ``analysis/``).
    """
    data = load_analysis(folder)
    out = report_folder(out_dir if out_dir is not None else AnalysisDir(data.folder).report_path).path
    layer = choose_layer(data, layer)
    phi = data.tables["phi"]
    init_subjects = [Subject.A] + ([Subject.dW] if data.dw_side == "right" else [])
    controls = direction_controls(phi, init_subjects=init_subjects)
    pairs = named_pairs(phi)
    sections = [adapters_section(data), pairs_section(data, pairs, controls, layer),
                verdicts_section(data, controls), spectra_section(data, layer),
                weights_section(data, layer), notes_section(data)]
    names = data.runs["run"].astype(str).tolist()
    title = title or (f"LoRA adapters compared: {names[0]} and {names[1]}" if len(names) == 2
                      else f"LoRA subspace analysis: {len(names)} adapters")
    return write_report(title, [s for s in sections if s is not None], out)
