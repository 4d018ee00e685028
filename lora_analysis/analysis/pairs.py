"""Which runs are compared: the rank, seed and other pairs among the runs of an analysis (``pair_kind``)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from lora_analysis.analysis.kinds import Comparison
from lora_analysis.analysis.runs import Run
from lora_analysis.analysis.settings import COMPARISONS


@dataclass(frozen=True)
class Pair:
    comparison: Comparison  # rank | seed | other
    a: int  # index into the run list; run a has the smaller (r, seed)
    b: int


MAX_OTHER_PAIRS = 190  # all "other" pairs of up to 20 adapters; a larger folder gets its neighbours' pairs only


def plan_pairs(runs: list[Run], comparisons: list[str] | tuple[str, ...] = COMPARISONS,
               across_groups: bool = False, notes: list[str] | None = None) -> list[Pair]:
    """The rank, seed and other pairs among ``runs`` (see the module docstring and ``pair_kind``).

    ``other`` pairs grow as the square of the runs (a folder of 300 plain adapters: 44,850): beyond
    ``MAX_OTHER_PAIRS`` only each run's pair with the next one in the list is kept, and ``notes`` says so.
    A pair of runs that record different base models is kept and noted: its input spaces may differ.
    """
    pairs = []
    for (ia, a), (ib, b) in itertools.combinations(enumerate(runs), 2):
        kind = pair_kind(a, b, across_groups)
        if kind is not None and kind in comparisons:
            order = sorted(
                [(ia, a), (ib, b)], key=lambda x: (x[1].r, -1 if x[1].seed is None else x[1].seed, x[1].label)
            )
            pairs.append(Pair(kind, order[0][0], order[1][0]))
    notes = notes if notes is not None else []
    other = [p for p in pairs if p.comparison == Comparison.other]
    if len(other) > MAX_OTHER_PAIRS:
        pairs = [p for p in pairs if p.comparison != Comparison.other or abs(p.a - p.b) == 1]
        kept = sum(p.comparison == Comparison.other for p in pairs)
        notes.append(f"{len(runs)} runs give {len(other):,} 'other' pairs, more than {MAX_OTHER_PAIRS}: only the "
                     f"{kept} pairs of neighbours in name order are compared (name two with lora-analysis compare)")
    for pair in pairs:
        a, b = runs[pair.a], runs[pair.b]
        if a.base and b.base and _model_name(a.base) != _model_name(b.base):
            notes.append(f"{a.label} and {b.label} record different base models ({a.base} and {b.base}): compared "
                         "as adapters of one base, which holds only if the two share their weights")
    return pairs


def _model_name(name_or_path: str) -> str:
    """The last part of a path or hub id, lower case: a model saved by path and by hub id is one model."""
    return str(name_or_path).rstrip("/").rsplit("/", 1)[-1].lower()


def pair_kind(a: Run, b: Run, across_groups: bool = False) -> Comparison | None:
    """How two runs are compared, or None when they are not.

    Within a group (same config apart from r and seed): ``rank`` when only r differs (or r differs and
    the seeds are unknown), ``seed`` when only the known seeds differ, ``other`` for equal r with unknown
    seeds (two plain PEFT adapters: what tells them apart is not recorded). Across groups: ``other`` for
    runs from different folders (two tasks, two sweeps); one sweep's own groups are its ablation axes,
    and a cross-group pair there would compare two settings at once, so it is made only ``across_groups``
    (``compare``: the user named the two runs), which also pairs runs differing in both r and seed.
    """
    known = a.seed is not None and b.seed is not None
    if a.group == b.group:
        if a.r != b.r and (not known or a.seed == b.seed):
            return Comparison.rank
        if a.r == b.r and known and a.seed != b.seed:
            return Comparison.seed
        return Comparison.other if (a.r == b.r and not known) or across_groups else None
    if known and a.folder.parent == b.folder.parent and not across_groups:
        return None
    return Comparison.other
