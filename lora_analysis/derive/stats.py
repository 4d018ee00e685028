"""Statistics over the analysis and sweep tables: per-direction energies, shared directions, accuracy tables.

Pure functions, tables in and tables out; the sentences that quote them are in ``show.findings``.
The per-direction statistic (``direction_energy``, ``shared_directions``) is also what the rank
recommendation counts. ``Derived`` bundles the tables a report derives, computed once and handed to
the findings, the figures and the recommendation.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lora_analysis.analysis.delta import lora_scale
from lora_analysis.analysis.kinds import Comparison, Subject
from lora_analysis.derive.controls import direction_controls, increments, task_directions
from lora_analysis.derive.queries import (
    PAIR_KEYS,
    budgeted_runs,
    empty_phi,
    lora_runs,
    metric_column,
    patterned_runs,
)
from lora_analysis.derive.tuned import CHOICE_COLUMNS, lr_choices, tuned_table, validation_metric


def direction_energies(phi: pd.DataFrame) -> pd.DataFrame:
    """Per-direction energy for every (pair, layer, module, subject) group of ``phi`` at once.

    For run a's i-th direction ``v_i`` and run b's whole subspace ``V_b`` (the largest j present, r_b):
    ``e_i = ||V_b^T v_i||^2 = i * phi(i, r_b) - (i - 1) * phi(i - 1, r_b)``, in [0, 1], since
    ``phi(i, r_b)`` is the mean of the first i energies when ``i <= r_b`` (``controls.increments`` of
    ``phi``). Its expectation for a random subspace is ``r_b / k``, the ``baseline`` column at
    ``j = r_b``. Returns ``PAIR_KEYS`` + ``i``, ``energy``, ``baseline``.
    """
    return increments(phi, ["phi"], keep=["baseline"]).rename(columns={"phi": "energy"})


def direction_energy(phi_rows: pd.DataFrame) -> pd.DataFrame:
    """``i``, ``energy``, ``baseline`` for the rows of ONE (pair, layer, module, subject).

    See ``direction_energies`` for the definition.
    """
    groups = phi_rows[PAIR_KEYS].astype(str).drop_duplicates()
    if len(groups) != 1:
        raise ValueError(f"direction_energy needs the rows of one pair, layer, module and subject; got {len(groups)}")
    return direction_energies(phi_rows)[["i", "energy", "baseline"]]


def shared_threshold(baseline):
    """``(1 + b) / 2``: halfway between the random expectation ``b = r_b / k`` and a direction wholly inside."""
    return (1.0 + baseline) / 2.0


# The rule of ``shared_threshold`` in words, for every sentence that states it ("... whose <rule>").
SHARED_RULE = ("energy in the other run's subspace reaches (1 + b) / 2, halfway between the random "
               "expectation b = r / k and 1")


PAIRS = (Comparison.rank, Comparison.seed)  # the comparisons of two trained runs


def shared_directions(phi: pd.DataFrame, comparisons: tuple[str, ...] = PAIRS) -> pd.DataFrame:
    """How many of run a's directions lie in run b's subspace clearly above chance, per pair and module.

    A direction counts as shared when its energy (``direction_energies``) reaches
    ``shared_threshold(b)`` = ``(1 + b) / 2``. Every direction of run a is tested, not only a leading
    run of them. Returns ``PAIR_KEYS`` + ``directions`` (tested), ``shared``, ``top_energy`` (e_1),
    ``baseline``, ``threshold``; one row per (pair, layer, module, subject).
    """
    energies = direction_energies(phi[phi["comparison"].isin(comparisons)])
    if energies.empty:
        return pd.DataFrame(columns=[*PAIR_KEYS, "directions", "shared", "top_energy", "baseline", "threshold"])
    energies["threshold"] = shared_threshold(energies["baseline"])
    energies["is_shared"] = energies["energy"] >= energies["threshold"]
    grouped = energies.groupby(PAIR_KEYS, observed=True, dropna=False, sort=False)
    out = grouped.agg(
        directions=("i", "size"),
        shared=("is_shared", "sum"),
        top_energy=("energy", "first"),
        baseline=("baseline", "first"),
        threshold=("threshold", "first"),
    )
    return out.reset_index()


def top_direction_table(phi: pd.DataFrame, r_small: int, r_large: int, subjects: tuple[str, ...]) -> pd.DataFrame:
    """Energy of r_small's top direction in r_large's subspace per (subject, layer, module), over pairs.

    Columns ``subject, layer, module, phi_1_rb`` (the mean ``e_1 = phi(1, r_large)``), ``baseline``,
    ``pairs``; empty without such a rank pair.
    """
    rows = phi[(phi["comparison"] == Comparison.rank) & (phi["r_a"] == r_small) & (phi["r_b"] == r_large)]
    energies = direction_energies(rows[rows["subject"].isin(subjects)])
    top = energies[energies["i"] == 1]
    if top.empty:
        return top
    return top.groupby(["subject", "layer", "module"], observed=True).agg(
        phi_1_rb=("energy", "mean"), baseline=("baseline", "mean"), pairs=("energy", "size")).reset_index()


def seed_shared_table(shared: pd.DataFrame, r: int, subjects: tuple[str, ...]) -> pd.DataFrame:
    """Directions shared by two seeds at rank ``r`` per (subject, layer, module), averaged over seed pairs."""
    s = shared[(shared["comparison"] == Comparison.seed) & (shared["r_a"] == r) & (shared["subject"].isin(subjects))]
    if s.empty:
        return s
    return s.groupby(["subject", "layer", "module"], observed=True).agg(
        shared=("shared", "mean"), directions=("directions", "max"), threshold=("threshold", "mean")).reset_index()


def init_control_table(phi: pd.DataFrame, shared: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series] | None:
    """The init control per comparison: ``cases, shared_max, shared_mean, e1, base`` of A_init.

    None without A_init rows of a rank or seed pair.
    """
    energies = direction_energies(phi[phi["comparison"].isin(PAIRS) & (phi["subject"] == Subject.A_init)])
    if energies.empty:
        return None
    s = shared[shared["subject"] == Subject.A_init]
    top = energies[energies["i"] == 1].groupby("comparison").agg(e1=("energy", "mean"), base=("baseline", "mean"))
    return s.groupby("comparison").agg(cases=("shared", "size"), shared_max=("shared", "max"),
                                       shared_mean=("shared", "mean")).join(top).reset_index()


def a_moved_table(modules: pd.DataFrame) -> pd.DataFrame:
    """``||A - A_init||_F / ||A_init||_F`` per rank over modules: ``r, mean, min, max, modules``."""
    m = modules.dropna(subset=["a_moved"]) if "a_moved" in modules else modules.iloc[0:0]
    if m.empty:
        return pd.DataFrame(columns=["r", "mean", "min", "max", "modules"])
    return m.groupby("r").agg(mean=("a_moved", "mean"), min=("a_moved", "min"), max=("a_moved", "max"),
                              modules=("a_moved", "size")).reset_index()


def amplification_table(dw_vs_w: pd.DataFrame) -> pd.DataFrame:
    """Table 7 per rank from the ``dw_vs_w`` rows of one (layer, module): ``r, seeds, dw_norm, w_norm``,
    ``proj_<source>`` (mean ``||U^T W V^T||_F`` for U, V of dW, W, random) and ``amplification``."""
    proj = dw_vs_w.pivot_table(index="r", columns="source", values="projection_norm", aggfunc="mean",
                               observed=True)
    table = dw_vs_w.groupby("r").agg(seeds=("seed", "nunique"), dw_norm=("dw_norm", "mean"),
                                     w_norm=("w_norm", "mean"))
    table = table.join(proj.add_prefix("proj_"))
    table["amplification"] = mean_amplification(dw_vs_w)
    return table.reset_index()


def mean_amplification(dw_vs_w: pd.DataFrame) -> pd.Series:
    """``||dW||_F / ||U^T W V^T||_F`` (U, V of dW) per rank, averaged over the rows given."""
    return dw_vs_w[dw_vs_w["source"] == "dW"].groupby("r")["amplification"].mean()


def w_dw_cells(w_dw_phi: pd.DataFrame) -> pd.DataFrame:
    """Figure 8's headline cell per rank: phi between W's top 10% directions (``i``) and dW's top ``j <= 4``.

    ``w_dw_phi``: the rows of one (layer, module, side). Columns ``r, j, phi, baseline, i``.
    """
    i10 = max(1, round(0.1 * int(w_dw_phi["i"].max())))
    parts = []
    for r, g in w_dw_phi.groupby("r"):
        j = min(4, int(g["j"].max()))
        cell = g[(g["i"] == i10) & (g["j"] == j)]
        parts.append((int(r), j, cell["phi"].mean(), cell["baseline"].mean()))
    return pd.DataFrame(parts, columns=["r", "j", "phi", "baseline"]).assign(i=i10)


def intruder_table(intruders: pd.DataFrame) -> pd.DataFrame:
    """Intruder dimensions per module, by rank: ``r, per_module`` (mean), ``total``, ``modules``."""
    per_module = intruders.groupby(["r", "run", "layer", "module"], observed=True)["is_intruder"].sum()
    return per_module.groupby("r").agg(per_module="mean", total="sum", modules="size").reset_index()


# --- the sweep table


ACCURACY_COLUMNS = ["targets", "r", "lr", "lrs", "n", "mean", "std", "ci_low", "ci_high", "at_edge", "collapsed",
                    "lora_params"]


def accuracy_table(runs: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """Tables 5/6 analogue, the one accuracy table every table, figure and sentence of a report reads: per
    (target set, rank), the test metric at the learning rate chosen on validation (``derive.tuned``), over the
    seeds run at it: ``targets, r, lr, lrs, n, mean, std, ci_low, ci_high, at_edge, collapsed, lora_params``."""
    metric = metric or metric_column(runs)
    lora = _rank_cells(runs)
    if metric is None or lora is None:
        return pd.DataFrame(columns=ACCURACY_COLUMNS)
    table = tuned_table(lora, ["targets", "r"], metric)
    params = lora.groupby(["targets", "r"], as_index=False)["lora_params"].mean()
    return table.merge(params, on=["targets", "r"], how="left")[ACCURACY_COLUMNS]


def validation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """``accuracy_table`` of the validation metric: each cell at its chosen rate, over its seeds. What the
    choices made after the search read (the best cell, where accuracy stops improving), never the test split."""
    metric, _ = validation_metric(runs)
    return accuracy_table(runs, metric) if metric in runs else pd.DataFrame(columns=ACCURACY_COLUMNS)


def rate_choices(runs: pd.DataFrame) -> pd.DataFrame:
    """``tuned.lr_choices`` of the LoRA runs per (target set, rank): what ``accuracy_table`` chose from."""
    lora = _rank_cells(runs)
    if lora is None:
        return pd.DataFrame(columns=["targets", "r", *CHOICE_COLUMNS])
    return lr_choices(lora, ["targets", "r"])


def full_choices(runs: pd.DataFrame) -> pd.DataFrame:
    """``tuned.lr_choices`` of the full fine-tuning runs, one cell: what ``full_reference`` chose from."""
    full = runs[runs["method"] == "full"] if "method" in runs else runs.iloc[0:0]
    if full.empty or "optim.lr" not in full:
        return pd.DataFrame(columns=["method", *CHOICE_COLUMNS])
    return lr_choices(full, ["method"])


PATTERN_COLUMNS = ["targets", "pattern", "lr", "lrs", "n", "mean", "std", "ci_low", "ci_high", "at_edge",
                   "collapsed", "lora_params"]


def pattern_table(runs: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """``accuracy_table`` of the runs with a ``lora.rank_pattern`` (a recommendation under test), a cell per
    (target set, pattern): each at its own rate chosen on validation, over its seeds. ``pattern`` is the
    pattern's ranks by role (``pattern_label``)."""
    metric = metric or metric_column(runs)
    lora = _pattern_cells(runs)
    if metric is None or lora.empty:
        return pd.DataFrame(columns=PATTERN_COLUMNS)
    table = tuned_table(lora, ["targets", "pattern"], metric)
    params = lora.groupby(["targets", "pattern"], as_index=False)["lora_params"].mean()
    return table.merge(params, on=["targets", "pattern"], how="left")[PATTERN_COLUMNS]


def pattern_choices(runs: pd.DataFrame) -> pd.DataFrame:
    """``tuned.lr_choices`` of the rank-pattern runs per (target set, pattern): what ``pattern_table`` chose from."""
    lora = _pattern_cells(runs)
    if lora.empty or "optim.lr" not in lora:
        return pd.DataFrame(columns=["targets", "pattern", *CHOICE_COLUMNS])
    return lr_choices(lora, ["targets", "pattern"])


def _pattern_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """The LoRA runs with a ``lora.rank_pattern``, as cells: ``targets``, ``pattern`` (``pattern_label``) and
    ``lora_params`` columns (``_rank_cells``' twin)."""
    lora = patterned_runs(lora_runs(runs))
    if lora.empty:
        return lora
    return lora.assign(targets=lora.get("lora.targets", "n/a"), pattern=lora["lora.rank_pattern"].map(pattern_label),
                       lora_params=lora.get("lora_params", np.nan))


def pattern_label(rank_pattern: str) -> str:
    """A rank_pattern's JSON (``{"encoder\\.layer\\.\\d+\\.attention\\.self\\.query": 1, ...}``) as ranks
    by role, ``q1 k1 v1 o2 ffn_in2 ffn_out1``; a key for one layer gets its index (``q@3``), a key whose role
    is unknown its last name."""
    from lora_analysis.targets import FAMILIES, ROLES, parse_module_path

    parts = []
    for key, rank in json.loads(rank_pattern).items():
        path = key.replace("\\d+", "0").replace("\\.", ".")
        found = parse_module_path(path)
        role = found.role
        if role not in ROLES:  # a bare suffix ("query"): the role whose module path it ends, if only one
            roles = {r for family in FAMILIES for r, sub in family.roles.items() if f".{sub}".endswith(f".{path}")}
            role = roles.pop() if len(roles) == 1 else role
        where = "" if "\\d+" in key or found.layer is None else f"@{found.layer}"
        parts.append(f"{role}{rank}" if where == "" else f"{role}{where}:{rank}")
    return " ".join(parts)


def _rank_cells(runs: pd.DataFrame) -> pd.DataFrame | None:
    """The LoRA runs with one rank (no ``lora.rank_pattern``), as cells: ``targets``, ``r`` (int) and
    ``lora_params`` columns; None if none."""
    lora = lora_runs(runs)
    lora = lora.drop(patterned_runs(lora).index)
    if lora.empty or "lora.r" not in lora:
        return None
    lora = lora.dropna(subset=["lora.r"])
    return lora.assign(targets=lora.get("lora.targets", "n/a"), r=lora["lora.r"].astype(int),
                       lora_params=lora.get("lora_params", np.nan))


def full_reference(runs: pd.DataFrame, metric: str | None = None) -> dict | None:
    """Full fine-tuning as one more cell at its tuned rate (``tuned.tuned_table``: the rate best on validation,
    the test metric over the seeds run at it): ``mean``, ``std``, ``n``, ``ci_low``, ``ci_high``, ``lr``,
    ``lrs`` (rates tried), ``at_edge``, ``collapsed``; None without a full fine-tuning run with a test metric.
    Its grid's other rates never enter the mean."""
    metric = metric or metric_column(runs)
    full = runs[runs["method"] == "full"] if "method" in runs else runs.iloc[0:0]
    if metric is None or full.empty or full[metric].isna().all():
        return None
    table = tuned_table(full.dropna(subset=[metric]), ["method"], metric)
    return None if table.empty else table.iloc[0].to_dict()


def stuck_runs(runs: pd.DataFrame, tolerance: float = 0.005) -> pd.DataFrame:
    """The LoRA runs whose test accuracy is the majority class's (within ``tolerance``): they predict one class."""
    lora = lora_runs(runs)
    if lora.empty or "majority_accuracy" not in lora or "test_accuracy" not in lora:
        return lora.iloc[0:0]
    return lora[(lora["test_accuracy"] - lora["majority_accuracy"]).abs() < tolerance]


def uses_rslora(runs: pd.DataFrame) -> bool:
    """Whether any run of the sweep table scales by ``alpha / sqrt(r)`` (rsLoRA)."""
    return "lora.rslora" in runs and bool(runs["lora.rslora"].fillna(False).astype(bool).any())


def lora_scales(runs: pd.DataFrame) -> pd.Series:
    """Each run's LoRA scale from its ``lora.alpha``, ``lora.r`` and ``lora.rslora`` (``delta.lora_scale``)."""
    rslora = runs["lora.rslora"].fillna(False).astype(bool) if "lora.rslora" in runs else pd.Series(False, runs.index)
    return pd.Series([lora_scale(float(a), int(r), bool(s)) for a, r, s in
                      zip(runs["lora.alpha"], runs["lora.r"], rslora, strict=True)], index=runs.index, dtype=float)


# --- computed once per report


@dataclass
class Derived:
    """The derived tables of one report, computed once: findings, figures and the recommendation read them.

    ``shared``: ``shared_directions`` of the focus phi table; ``accuracy``: ``accuracy_table`` of every
    run (each cell at its learning rate chosen on validation); ``validation``: ``validation_table``, the
    same cells' validation metric (what the best cell and the rank plateau are chosen by); ``lr_choices``:
    the validation metric of every (target set, rank, learning rate), what the choice read;
    ``budget_accuracy``: of the budget-matched runs;
    ``full_choices``: the same for full fine-tuning (one cell, its own grid); ``full``: ``full_reference``, the
    full fine-tuning cell at its rate (the reference line, the accuracy and rates findings read it);
    ``patterns``: ``pattern_table`` (rank patterns under test), ``pattern_choices`` what it chose from;
    ``a_moved``: ``a_moved_table``; ``controls``:
    ``controls.direction_controls`` (every direction of every real pair against the strongest control;
    the shuffled-label pairs are its controls), ``task``: ``controls.task_directions`` of it.
    """

    targets: str | None
    metric: str | None
    shared: pd.DataFrame
    accuracy: pd.DataFrame
    validation: pd.DataFrame
    lr_choices: pd.DataFrame
    full_choices: pd.DataFrame
    full: dict | None
    budget_accuracy: pd.DataFrame
    patterns: pd.DataFrame
    pattern_choices: pd.DataFrame
    a_moved: pd.DataFrame
    controls: pd.DataFrame
    task: pd.DataFrame

    @classmethod
    def compute(cls, phi: pd.DataFrame, modules: pd.DataFrame, runs: pd.DataFrame, targets: str | None = None,
                metric: str | None = None, control_phi: pd.DataFrame | None = None,
                shuffled: Collection[str] = ()) -> Derived:
        """The tables of the focus ``phi`` and ``modules`` (of target set ``targets``) and the sweep table.

        ``control_phi``: the phi rows with the shuffled-label pairs too (``phi`` holds the real runs only).
        """
        metric = metric or metric_column(runs)
        per_direction = direction_controls(phi if control_phi is None else control_phi, shuffled)
        return cls(targets, metric, shared_directions(phi), accuracy_table(runs, metric),
                   validation_table(runs), rate_choices(runs), full_choices(runs), full_reference(runs, metric),
                   accuracy_table(budgeted_runs(runs), metric), pattern_table(runs, metric), pattern_choices(runs),
                   a_moved_table(modules),
                   per_direction, task_directions(per_direction))

    @classmethod
    def of_runs(cls, runs: pd.DataFrame, metric: str | None = None) -> Derived:
        """Only the sweep table's tables (no analysis): for a report on accuracies alone."""
        return cls.compute(empty_phi(), pd.DataFrame(), runs, metric=metric)
