"""Report sections that need only the sweep table (and the recommendation): the experiment, the accuracy
ablation, the rank recommendation, the runs and the environment. Public: the ablation reports reuse them.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

import pandas as pd

from lora_analysis.derive.queries import budgeted_runs, full_runs, lora_runs, main_targets
from lora_analysis.derive.stats import Derived
from lora_analysis.embedded import describe
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.layout import RunDir, SweepDir
from lora_analysis.show import run_findings as R
from lora_analysis.show import run_plots
from lora_analysis.show import target_sets as T
from lora_analysis.show.document import Section, code
from lora_analysis.show.focus import Focus
from lora_analysis.show.sweep import SweepData

SETTINGS = [
    ("model", "model.name_or_path"), ("task", "model.task"), ("data", "data.path"),
    ("train examples", "train_examples"), ("test examples", "test_examples"), ("split seed", "data.split_seed"),
    ("max length (tokens)", "data.max_length"), ("method", "method"), ("LoRA targets", "lora.targets"),
    ("rank r", "lora.r"), ("alpha (scale = alpha / r)", "lora.alpha"), ("rsLoRA", "lora.rslora"),
    ("budget", "lora.budget"), ("A init", "lora.init"), ("init stream", "lora.init_stream"),
    ("dropout", "lora.dropout"), ("seeds", "seed"), ("step ceiling", "optim.steps"),
    ("validation every (steps)", "optim.eval_every"), ("patience (evaluations)", "optim.patience"),
    ("validation rows", "data.val_size"), ("batch size", "optim.batch_size"),
    ("learning rate", "optim.lr"), ("schedule", "optim.schedule"), ("device", "device"), ("threads", "threads"),
    ("precision (auto's choice)", "precision"), ("CPU / GPU", "provenance.device_name"),
    ("torch", "provenance.torch"), ("transformers", "provenance.transformers"), ("peft", "provenance.peft"),
    ("lora-analysis", "provenance.lora-analysis"), ("python", "provenance.python"),
    ("data sha256 (first 12)", "provenance.data_sha256"),
]  # fmt: skip
RUN_COLUMNS = ["run", "method", "lora.targets", "lora.r", "seed", "optim.steps", "optim.lr", "test_accuracy",
               "test_loss", "test_perplexity", "majority_accuracy", "val_accuracy", "best_step", "steps",
               "stop_reason", "final_train_loss", "a_moved_mean", "lora_params",
               "trainable_params", "examples_per_s", "tokens_per_s", "train_seconds", "wall_seconds", "device"]
PACKAGES = ("torch", "transformers", "peft", "numpy", "scipy", "pandas", "pyarrow", "matplotlib", "hydra-core",
            "lora-analysis")


def experiment_section(data: SweepData, focus: Focus | None = None) -> Section:
    """What was trained and analysed: model, data, split, runs, steps, targets, init, seeds."""
    runs = data.runs
    section = Section("The experiment")
    lora, full = lora_runs(runs), full_runs(runs)
    section.text(f"Sweep {code(data.sweep_dir.name)}: {len(lora)} LoRA run(s) and {len(full)} full fine-tuning run(s) "
                 f"({', '.join(runs['run'].astype(str))}). The subspace analyses follow Hu et al. (2021), "
                 "Section 7 and Appendix H.")
    section.table(experiment_table(runs), "Settings (one value, or every value used in the sweep)")
    if focus is not None:
        section.text(f"The paper-style figures show target set {code(focus.targets)}, layer {focus.layer} (the middle "
                     "adapted layer unless chosen), " + (f"ranks {focus.rank_pair[0]} against {focus.rank_pair[1]}"
                                                        if focus.rank_pair else "no rank pair")
                     + (f" and seeds at r={focus.seed_rank}." if focus.seed_rank else " and no seed pair."))
    pending = unfinished_note(data)
    gaps = data.missing + data.notes + (focus.notes if focus else []) + (
        [f"{pending} ({', '.join(data.unfinished['run'].astype(str))})"] if pending else [])
    if gaps:
        section.text("Missing or skipped:")
        section.bullets(gaps)
    return section


def unfinished_note(data: SweepData) -> str | None:
    """What the runs started and not finished (``data.unfinished``) leave open, by the cell each will join;
    None when every run finished."""
    cells = data.unfinished
    if cells.empty:
        return None
    counts = cells["label"].value_counts(sort=False)
    return (f"{len(cells)} run(s) unfinished when this report was built (a sweep still running, or stopped): in no "
            "table, figure or verdict here; the cells they will join may change (their rate, mean, interval): "
            + ", ".join(f"{label} ({n})" for label, n in counts.items()))


def experiment_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Setting and value(s): the config columns of the sweep table worth stating, when present (a full
    fine-tuning run's lora.* values, which it never used, left out)."""
    runs = run_table(runs)
    rows = []
    for label, column in SETTINGS:
        if column in runs and runs[column].notna().any():
            values = sorted({v for v in runs[column].dropna()}, key=lambda v: (str(type(v)), v))
            if column in ("model.name_or_path", "data.path"):
                values = [describe(str(v)) for v in values]
            rows.append((label, ", ".join(_plain(v) for v in values)))
    return pd.DataFrame(rows, columns=["setting", "value"])


def _plain(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def accuracy_pivot(table: pd.DataFrame, unfinished: pd.DataFrame | None = None) -> pd.DataFrame:
    """``accuracy_table`` as target sets by ranks, cells ``mean [95% interval] (n, lr)``, for display; a
    collapsed cell says so, a rate at the edge of its grid is marked ``edge``. ``unfinished``
    (``queries.unfinished_cells``): a cell with runs still to finish says how many (its rate and mean may
    change), a cell with no finished run yet is shown with that count alone."""
    pending = (unfinished[unfinished["kind"] == "rank"].groupby(["targets", "r"]).size()
               if unfinished is not None and not unfinished.empty else pd.Series(dtype=int))
    if table.empty and pending.empty:
        return pd.DataFrame()
    cells = table.assign(cell=[_cell(row) for row in table.itertuples()])[["targets", "r", "cell"]].astype({"r": int})
    for (targets, r), count in pending.items():
        mark = f"{count} unfinished"
        here = (cells["targets"] == targets) & (cells["r"] == r)
        if here.any():
            cells.loc[here, "cell"] = cells.loc[here, "cell"] + f", {mark}"
        else:
            cells = pd.concat([cells, pd.DataFrame([{"targets": targets, "r": int(r), "cell": f"— ({mark})"}])])
    wide = cells.pivot(index="targets", columns="r", values="cell").fillna("—")
    wide.columns = [f"r={c}" for c in wide.columns]
    return wide.reset_index()


def _cell(row) -> str:
    rate = f", lr {row.lr:.2g}" + (" edge" if row.at_edge else "") if row.lrs > 1 else ""
    if row.collapsed:
        return f"collapsed ({row.n}{rate})"
    spread = f" [{row.ci_low:.3f}, {row.ci_high:.3f}]" if row.n > 1 else ""
    return f"{row.mean:.3f}{spread} ({row.n}{rate})"


def ablation_section(runs: pd.DataFrame, metric: str | None = None, title: str | None = None,
                     sentences: bool = True, derived: Derived | None = None,
                     unfinished: pd.DataFrame | None = None) -> Section:
    """Test metric per (target set, rank): table and figure, the budget-matched variant, full fine-tuning.

    ``sentences`` adds the accuracy finding (off when a Findings section already states it);
    ``derived``: the report's tables when already computed (for this ``metric``); ``unfinished``: the
    sweep's runs not finished (``SweepData.unfinished``: their cells), counted in the cells they will join.
    """
    derived = derived if derived is not None else Derived.of_runs(runs, metric)
    metric = derived.metric
    what = "Accuracy" if metric in (None, "test_accuracy") else metric.replace("_", " ").capitalize()
    section = Section(title or f"{what} against rank and target set (Tables 5 and 6)")
    table = derived.accuracy
    if table.empty:
        section.text(f"No finished LoRA run with a test metric in {SweepDir.TABLE}.")
        return section
    caption = (f"{metric} at each cell's learning rate chosen on validation: mean [95% t-interval] over seeds "
               "(number of seeds, the rate where several were tried; edge: the rate is at an end of the grid; "
               "collapsed: every rate predicted the majority class on validation"
               + ("; unfinished: runs of the cell still to finish)" if unfinished is not None and not unfinished.empty
                  else ")"))
    section.table(accuracy_pivot(table, unfinished), caption)
    full = derived.full
    section.text(f"Full fine-tuning reference, at its own rate: {R.full_text(full)}." if full else
                 "No full fine-tuning run in this sweep: no reference line.")
    lines = (["black: full fine-tuning"] if full else []) + (
        ["dotted: majority class"] if run_plots.draws_majority(runs, metric) else [])
    if derived.lr_choices.groupby(["targets", "r"])["lr"].nunique().max() > 1:
        section.plot("lr_curves", lambda: run_plots.lr_curves(derived.lr_choices, derived.full_choices,
                                                              derived.pattern_choices),
                     "Validation metric against learning rate for every cell: each cell's rate is the best on "
                     "validation; the test split is scored only at it"
                     + ("; black, dashed: full fine-tuning on its own grid." if derived.full_choices["lr"].nunique() > 1
                        else "."))
    section.plot("accuracy_rank", lambda: run_plots.accuracy_vs_rank(runs, table, full=full, metric=metric),
                 f"{metric} against rank, one line per target set" + "".join(f"; {x}" for x in lines) + ".")
    if not derived.patterns.empty:
        section.table(derived.patterns.rename(columns={"lora_params": "trainable LoRA parameters"}),
                      "Rank patterns under test (lora.rank_pattern), each at its learning rate chosen on validation")
        section.plot("accuracy_params", lambda: run_plots.accuracy_vs_params(runs, table, derived.patterns,
                                                                             full=full, metric=metric),
                     f"{metric} against trainable LoRA parameters: uniform ranks and rank patterns.")
        if sentences:
            section.bullets(R.rank_patterns(table, derived.patterns, metric).sentences)
    budgeted = budgeted_runs(runs)
    if not budgeted.empty:
        budget = derived.budget_accuracy
        section.table(budget.rename(columns={"lora_params": "trainable LoRA parameters"}),
                      f"Budget-matched runs ({', '.join(sorted(map(str, budgeted['lora.budget'].unique())))})")
        section.plot("accuracy_budget", lambda: run_plots.accuracy_by_targets(runs, budget, full=full, metric=metric),
                     "Test metric per target set at one parameter budget, with each set's rank and parameter count.")
    if sentences:
        section.bullets(R.accuracy(runs, table, derived.validation, full, metric).sentences)
        by_rank = T.by_rank(table, metric, derived.budget_accuracy)
        if by_rank.measured:
            section.bullets(by_rank.sentences)
        if not budgeted.empty:
            section.bullets(T.ffn_under_budget(runs, derived.budget_accuracy, metric).sentences)
    return section


def recommendation_section(data: SweepData, derived: Derived | None = None) -> Section:
    """``lora-analysis recommend``'s answer for the sweep: the rank per role, and how it was reached. It reads
    the report's target set (``derived.targets``, what ``report targets=`` names), as ``recommend targets=``
    does; without one, ``all`` where present (``queries.main_targets``)."""
    from lora_analysis.derive.recommend import recommend_from

    section = Section("Rank recommendation")
    phi = data.tables["phi"]
    targets = derived.targets if derived is not None and derived.targets else main_targets(phi)
    shared = derived.task if derived is not None and derived.targets else None  # the task directions of that set
    try:
        result = recommend_from(phi, data.tables["modules"], data.runs, targets=targets, shared=shared)
    except LoraAnalysisError as error:
        section.text(f"No recommendation: {error}.")
        return section
    if result.nothing:
        section.bullets(result.explain())
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
                 + ", ".join(f"{code(key)}: {rank}" for key, rank in result.rank_pattern.items()) + ".")
    return section


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
                  f"One row per finished run ({SweepDir.TABLE}; every column in runs.csv beside this report)")
    section.plot("loss_curves", lambda: run_plots.loss_curves(histories), f"Training loss per run ({RunDir.HISTORY}).")
    return section


def environment_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Python, package versions, platform and CPU count here; device and threads as the runs recorded them."""
    rows = [("python", platform.python_version()), ("platform", platform.platform()),
            ("CPU count", str(os.cpu_count()))]
    for package in PACKAGES:
        try:
            rows.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            rows.append((package, "not installed"))
    for label, column in (("device (runs)", "device"), ("threads (runs)", "threads")):
        if column in runs:
            rows.append((label, ", ".join(sorted({str(v) for v in runs[column].dropna()})) or "—"))
    return pd.DataFrame(rows, columns=["item", "value"])


def environment_section(runs: pd.DataFrame) -> Section:
    section = Section("Environment")
    section.table(environment_table(runs), "Package versions when this report was built; device and threads "
                  "as recorded by the runs")
    return section
