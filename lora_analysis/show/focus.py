"""What the report shows: one target set, one layer, one role, one rank pair and one seeded rank.

The paper's choices when the sweep has them (``paper.RANK_PAIR``, ``paper.SEED_RANK``, the middle
layer, q), else the nearest the sweep offers, with a note saying what was substituted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from lora_analysis.analysis.kinds import Comparison
from lora_analysis.derive.queries import adapted_layers, main_targets, middle_layer, shown_roles
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.show import paper
from lora_analysis.show.sweep import SweepData


@dataclass
class Focus:
    """What the paper-style figures show: one target set, one layer, one rank pair, one seeded rank."""

    targets: str | None
    layer: int | None
    role: str | None  # Table 7 and Figure 8: q, as in the paper, when adapted
    rank_pair: tuple[int, int] | None
    seed_rank: int | None
    notes: list[str] = field(default_factory=list)


def rank_pair(phi: pd.DataFrame, notes: list[str]) -> tuple[int, int] | None:
    """The paper's rank pair if present, else the largest rank against the rank nearest 8 (smaller on a tie)."""
    ranks = set()
    if not phi.empty:
        rank = phi[phi["comparison"] == Comparison.rank]
        ranks = set(zip(rank["r_a"].astype(int), rank["r_b"].astype(int), strict=True))
    return preferred_pair(ranks, notes)


def preferred_pair(ranks: set[tuple[int, int]], notes: list[str]) -> tuple[int, int] | None:
    """``rank_pair``'s rule on the rank pairs ``ranks`` (smaller rank first) a sweep has or will have."""
    small, large = paper.RANK_PAIR
    pair = paper.RANK_PAIR if paper.RANK_PAIR in ranks else (
        min(ranks, key=lambda p: (-p[1], abs(math.log(p[0] / small)), p[0])) if ranks else None)
    if ranks and pair != paper.RANK_PAIR:
        notes.append(f"no r={small} vs r={large} pair: the rank figures use r={pair[0]} vs r={pair[1]}")
    return pair


def seed_rank(phi: pd.DataFrame, notes: list[str]) -> int | None:
    """The paper's seeded rank if present, else the largest rank trained with two seeds."""
    seeds = phi.loc[phi["comparison"] == Comparison.seed, "r_a"].unique() if not phi.empty else []
    seeded = sorted(int(r) for r in seeds)
    chosen = paper.SEED_RANK if paper.SEED_RANK in seeded else (seeded[-1] if seeded else None)
    if seeded and chosen != paper.SEED_RANK:
        notes.append(f"no seed pair at r={paper.SEED_RANK}: the seed figures use r={chosen}")
    return chosen


def choose_focus(data: SweepData, layer: int | None = None, targets: str | None = None) -> Focus:
    """Prefer the paper's choices (all targets, r = 8 against 64, seeds at 64, the middle layer).

    Without them: the largest rank against the rank nearest 8 (the smaller on a tie), seeds at the largest
    seeded rank, all within the focus target set: ``targets`` where named, else ``all`` when the sweep has it,
    else its set with most rows. A ``layer`` that is not adapted, or a ``targets`` the analysis does not hold,
    is an error.
    """
    phi, modules = data.tables["phi"], data.tables["modules"]
    source = modules if not modules.empty else phi
    if targets is not None:
        held = sorted(source["targets"].astype(str).unique()) if "targets" in source else []
        if str(targets) not in held:
            raise LoraAnalysisError(f"targets={targets} is not a target set of this sweep's analysed runs: expected "
                                    f"one of {held}" if held else f"targets={targets}: this sweep has no analysed run")
    targets = targets if targets is not None else main_targets(source)
    if not phi.empty and targets is not None and "targets" in phi:
        phi = phi[phi["targets"].astype(str) == str(targets)]
    notes = []
    pair, seeded = rank_pair(phi, notes), seed_rank(phi, notes)
    layers = adapted_layers(source) if not source.empty else []
    if layer is not None and layers and layer not in layers:
        raise LoraAnalysisError(f"layer={layer} is not an adapted layer of this sweep: expected one of {layers}")
    roles = shown_roles(source) if not source.empty else []
    middle = middle_layer(source) if not source.empty else None
    return Focus(targets, middle if layer is None else layer, "q" if "q" in roles else (roles[0] if roles else None),
                 pair, seeded, notes)


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
