"""Rank recommendation: the rank each module role needs, read off a sweep's subspaces and accuracies.

For each role and layer, two counts of task-specific directions: directions of run a whose energy in
run b's subspace reaches halfway from the strongest control to 1 (``controls.direction_controls``:
the largest of the isotropic baseline ``r_b / k``, the input-geometry baseline, and the same pair
trained on shuffled labels where the sweep has one). Counting against the isotropic baseline alone
would count the inputs' dominant directions, which any two adapters trained on the same inputs share:

- across seeds: the largest rank trained with two or more seeds, seed against seed;
- across ranks: the largest smaller rank against the largest rank, same seed.

A direction found by both is one the task needs, so a layer needs ``min(seed count, rank count)``
(the one available when the sweep has only one kind of pair), possibly 0. A role's rank is the median
over its layers; a layer that needs more than twice or less than half of that gets its own entry.
When no role needs a direction (a sweep of shuffled-label runs only, or shared directions no larger
than the controls) nothing is recommended and no rank_pattern is written, and the reason is given.
The accuracy curve is the cross-check: where validation accuracy stops improving (``derive.plateau``, the
rule the report's rates finding states: the smallest rank whose shortfall from the best rank is within one
point at 95%, each rank at its tuned rate; cannot tell where the intervals are too wide to say).

The default subject is ``A_delta`` (A - A_init, what training wrote into A). With B = 0 at init and few
steps, A stays close to its random init, and the input directions of dW = s B A inherit that init, which
differs from seed to seed: counted on dW they sit near chance (1 per layer on the embedded default), so
dW undercounts what was learned. ``subject=dW`` remains available, as do ``A`` and ``B``.

The result can be written as a PEFT ``rank_pattern`` (regex keys anchored to the block index, so a
role never catches another module: ``encoder\\.layer\\.\\d+\\.output\\.dense`` is ffn_out, not o).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lora_analysis.analysis.kinds import Comparison, Subject
from lora_analysis.derive import controls, queries
from lora_analysis.derive.plateau import SUPPORTED, Plateau
from lora_analysis.derive.plateau import plateau as find_plateau
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.layout import SweepDir
from lora_analysis.targets import FAMILIES, ROLES


@dataclass
class Recommendation:
    """Per-layer evidence (``layers``), per-role ranks (``roles``) and the accuracy cross-check."""

    layers: pd.DataFrame  # role, layer, seed_shared, rank_shared, needed, pairs used
    roles: pd.DataFrame  # role, rank, layers_min, layers_max, n_layers, seed_shared, rank_shared (medians)
    subject: str
    targets: str
    plateau: Plateau | None  # where validation accuracy stops improving (``derive.plateau``), None: not measured
    rank_pattern: dict[str, int]
    nothing: str | None = None  # why nothing is recommended (no task-specific direction anywhere), else None

    @property
    def accuracy_plateau(self) -> int | None:
        """The rank where validation accuracy stops improving; None where not measured or cannot tell."""
        return None if self.plateau is None else self.plateau.rank

    @property
    def controls_used(self) -> str:
        """Which control was strongest, over the (role, layer) cases: ``geometry in 30 of 36``."""
        counts = self.layers["control"].value_counts() if "control" in self.layers else pd.Series(dtype=int)
        return ", ".join(f"{controls.CONTROL_LABELS.get(k, k)} in {v} of {len(self.layers)}" for k, v in counts.items())

    def explain(self) -> list[str]:
        """Sentences saying how each number was reached."""
        if self.nothing:
            return [f"No rank recommended for subject {self.subject} of target set {self.targets}: {self.nothing}."]
        lines = [
            f"Subject {self.subject} of target set {self.targets}: a direction counts when it is task-specific, "
            f"its {controls.TASK_RULE} (strongest control: {self.controls_used} (role, layer) cases).",
        ]
        for row in self.roles.itertuples():
            lines.append(
                f"{row.role}: rank {row.rank}, the median over {row.n_layers} layers of min(seed-shared, rank-shared) "
                f"(medians {_count(row.seed_shared)} and {_count(row.rank_shared)}; layers need {row.layers_min} to "
                f"{row.layers_max})."
            )
        zero = [str(role) for role, rank in zip(self.roles["role"], self.roles["rank"], strict=True) if rank < 1]
        if zero:
            kept = "+".join(str(r) for r in self.roles.loc[self.roles["rank"] >= 1, "role"])
            lines.append(f"{', '.join(zero)}: no task-specific direction (rank 0). PEFT needs r >= 1, so the "
                         "rank_pattern gives them no key and they would train at LoraConfig's r; to train the "
                         f"recommendation as stated, leave them out of the targets (lora.targets={kept}).")
        if self.plateau is None:
            lines.append("Accuracy cross-check: the sweep has no validation metric for two or more ranks of this "
                         "target set (runs trained before data.val_size are not read for it).")
            return lines
        if self.plateau.rank is None:
            lines.append(f"Accuracy cross-check: where validation accuracy stops improving cannot tell "
                         f"({self.plateau.why_not}); the best validation mean is at r={self.plateau.best}.")
            return lines
        top = int(self.roles["rank"].max()) if not self.roles.empty else 0
        plateau = self.plateau.rank
        if top > 2 * plateau:
            verdict = f"above it: accuracy is already flat at r={plateau}, the smaller rank is the cheaper choice"
        elif 2 * top < plateau:
            verdict = (f"below it: fewer directions recur across seeds and ranks than the rank at which accuracy "
                       f"stops improving, so the ranks above {top} also buy something the subspaces do not show "
                       "(room for the optimiser, or directions that differ from seed to seed); train at "
                       f"r={plateau} where accuracy matters most")
        else:
            verdict = "in agreement with it (within a factor of 2)"
        how = (f"the smallest rank within {self.plateau.margin:g} of the best, r={self.plateau.best}, at 95%"
               if self.plateau.verdict == SUPPORTED else "every smaller rank is below it at 95%")
        lines.append(f"Validation accuracy stops improving at r={plateau} ({how}); the largest recommended rank "
                     f"({top}) is {verdict}.")
        return lines


def _count(value: float) -> str:
    return "none (no such pair)" if math.isnan(value) else f"{value:g}"


def layer_evidence(phi: pd.DataFrame, subject: str, targets: str, shared: pd.DataFrame | None = None,
                   shuffled: Collection[str] = ()) -> pd.DataFrame:
    """Seed- and rank-shared counts of task-specific directions per (role, layer), one subject and target set.

    A direction counts when it beats the strongest control (``controls.direction_controls``);
    ``shared``: ``controls.task_directions`` of (at least) these phi rows, when already computed;
    ``shuffled``: the shuffled-label runs, whose pairs are the controls.
    """
    if shared is None:
        rows = phi[(phi["subject"] == subject) & (phi["targets"].astype(str) == targets)]
        shared = controls.task_directions(controls.direction_controls(rows, shuffled))
    else:
        shared = shared[(shared["subject"] == subject) & (shared["targets"].astype(str) == targets)]
    if shared.empty:
        raise LoraAnalysisError(f"no seed or rank pairs for subject {subject} and targets {targets} in the analysis")
    shared = shared.assign(shared=shared["task"])
    evidence = []
    for (module, layer), group in shared.groupby(["module", "layer"], observed=True):
        seeds = group[group["comparison"] == Comparison.seed]
        seeds = seeds[seeds["r_a"] == seeds["r_a"].max()]
        ranks = group[group["comparison"] == Comparison.rank]
        ranks = ranks[ranks["r_b"] == ranks["r_b"].max()]
        ranks = ranks[ranks["r_a"] == ranks["r_a"].max()]
        seed_k = float(seeds["shared"].median()) if len(seeds) else math.nan
        rank_k = float(ranks["shared"].median()) if len(ranks) else math.nan
        needed = np.nanmin([seed_k, rank_k])
        used = pd.concat([seeds, ranks])["top_control_name"]  # the control that bites: at the top direction
        evidence.append({
            "role": str(module), "layer": int(layer), "seed_shared": seed_k, "rank_shared": rank_k,
            "control": used.value_counts().index[0] if len(used) else None,
            "seed_pairs": len(seeds), "rank_pairs": len(ranks),
            "seed_r": int(seeds["r_a"].max()) if len(seeds) else None,
            "rank_r": f"{int(ranks['r_a'].max())} vs {int(ranks['r_b'].max())}" if len(ranks) else None,
            "needed": int(math.ceil(needed)),  # 0: no direction above the strongest control
        })
    order = {role: i for i, role in enumerate(ROLES)}
    return pd.DataFrame(evidence).sort_values(["role", "layer"], key=lambda s: s.map(order) if s.name == "role" else s)


def role_ranks(layers: pd.DataFrame) -> pd.DataFrame:
    """A rank per role (median over layers, rounded up), the spread over layers and the median counts."""
    grouped = layers.groupby("role", sort=False)
    out = grouped["needed"].agg(
        rank=lambda s: int(math.ceil(s.median())), layers_min="min", layers_max="max", n_layers="size"
    )
    out["seed_shared"] = grouped["seed_shared"].median()
    out["rank_shared"] = grouped["rank_shared"].median()
    return out.reset_index()


def rank_pattern(roles: pd.DataFrame, layers: pd.DataFrame, modules: pd.DataFrame) -> dict[str, int]:
    """PEFT ``rank_pattern``: per-layer exceptions first (PEFT takes the first key that matches).

    ``modules`` is the analysis' modules table (``module``, ``layer``, ``path``), where the keys come from.
    """
    if not {"module", "layer", "path"} <= set(modules.columns):
        raise LoraAnalysisError("the analysis has no modules table to write rank_pattern keys from")
    roles = roles[roles["rank"] >= 1]  # a role with no task-specific direction gets no key (PEFT needs r >= 1)
    keys_of = {role: _role_key(role, modules) for role in roles["role"]}
    pattern: dict[str, int] = {}
    for row in roles.itertuples():
        for layer in layers[layers["role"] == row.role].itertuples():
            if layer.needed >= 1 and (layer.needed > 2 * row.rank or 2 * layer.needed < row.rank):
                pattern[keys_of[row.role].replace(r"\d+", str(layer.layer), 1)] = int(layer.needed)
    for row in roles.itertuples():
        pattern[keys_of[row.role]] = int(row.rank)
    return pattern


def _role_key(role: str, modules: pd.DataFrame) -> str:
    """A regex for every layer's module of this role: the family's path, else the path seen with ``\\d+``."""
    rows = modules[modules["module"].astype(str) == role]
    for path in rows["path"].astype(str):
        for family in FAMILIES:
            if role in family.roles and family.pattern(role).match(path):
                return rf"{family.blocks}\.\d+\.{re.escape(family.roles[role])}"
    for path, layer in zip(rows["path"].astype(str), rows["layer"], strict=True):
        parts = path.split(".")
        if str(layer) in parts[1:-1]:  # an architecture we have no table for: generalise its layer index
            i = parts.index(str(layer), 1)
            return rf"{re.escape(parts[i - 1])}\.\d+\.{re.escape('.'.join(parts[i + 1:]))}"
    raise LoraAnalysisError(f"no module path of role {role} with a layer index to write a rank_pattern key for")


def recommend(sweep: str | Path, subject: str = Subject.A_delta, targets: str | None = None) -> Recommendation:
    """Recommend a rank per role from a sweep folder with its ``analysis/`` (run ``analyze`` first)."""
    from lora_analysis.analysis.tables import AnalysisResult
    from lora_analysis.derive.rates import runs_not_analysed

    sweep = SweepDir(Path(sweep))
    analysis = AnalysisResult.load(sweep.analysis.path)
    runs = sweep.read_table() if sweep.is_sweep() else pd.DataFrame()
    phi, modules = analysis.phi, analysis.modules
    out = runs_not_analysed(runs, targets or queries.main_targets(phi)) if "run" in runs else set()
    if out:  # an ablation's search: the adapters at the one rate the report analyses, no rank pattern
        phi = phi[~phi["run_a"].astype(str).isin(out) & ~phi["run_b"].astype(str).isin(out)]
        modules = modules[~modules["run"].astype(str).isin(out)] if "run" in modules else modules
    return recommend_from(phi, modules, runs, subject, targets, source=str(sweep.analysis.path))


def recommend_from(phi: pd.DataFrame, modules: pd.DataFrame, runs: pd.DataFrame, subject: str = Subject.A_delta,
                   targets: str | None = None, source: str = "the analysis", shared: pd.DataFrame | None = None
                   ) -> Recommendation:
    """The recommendation from tables already loaded: the analysis' ``phi`` and ``modules``, the sweep table.

    ``shared``: ``controls.task_directions`` of the phi rows of the target set recommended for, when the
    caller has it already (the report); computed here otherwise. Shuffled-label runs (the sweep table's
    ``data.shuffle_labels``) are the controls, never the evidence.
    """
    targets = targets or queries.main_targets(phi)
    if targets is None:
        raise LoraAnalysisError(f"{source} has no phi rows: nothing to recommend from")
    shuffled = controls.shuffled_run_labels(runs)
    plateau = find_plateau(runs[~runs["run"].astype(str).isin(shuffled)], targets) if not runs.empty else None
    trained = set(phi.loc[phi["targets"].astype(str) == targets, "run_a"].astype(str))
    if trained and trained <= shuffled:
        return _nothing(subject, targets, plateau, "every run of this target set was trained on shuffled labels, so "
                        "there is no task whose directions could be counted")
    layers = layer_evidence(phi, subject, targets, shared, shuffled)
    roles = role_ranks(layers)
    if int(roles["rank"].max()) < 1:
        return _nothing(subject, targets, plateau, "no direction of any role and layer exceeds the strongest control "
                        f"({', '.join(sorted({controls.CONTROL_LABELS[c] for c in layers['control'].dropna()}))}) "
                        "halfway to 1: the shared directions are what the inputs or label-free training give",
                        layers, roles)
    return Recommendation(layers, roles, subject, targets, plateau, rank_pattern(roles, layers, modules))


def _nothing(subject, targets, plateau, why, layers=None, roles=None) -> Recommendation:
    empty = pd.DataFrame(columns=["role", "rank", "layers_min", "layers_max", "n_layers", "seed_shared", "rank_shared"])
    return Recommendation(pd.DataFrame() if layers is None else layers, empty if roles is None else roles, subject,
                          targets, plateau, {}, nothing=why)
