"""Which adapters the subspace analyses read in a sweep that tried several learning rates (an ablation's
search): one rate per target set, so that a rank pair never differs in rank and rate at once; and, at that
rate, none that predicts the majority class (``collapsed_runs``): an adapter that learnt nothing of the task
has no task subspace to compare.

The report (``show.report.study``), the shuffled-label controls of ``lora-analysis ablate`` and the rank
recommendation (``derive.recommend``) all read the rate from here, so they cannot disagree. A rank pattern
under test (``queries.patterned_runs``) has no one rank to pair by: it is left out of the pairs too.
"""

from __future__ import annotations

import pandas as pd

from lora_analysis.derive.controls import shuffled_run_labels
from lora_analysis.derive.queries import patterned_runs
from lora_analysis.derive.stats import rate_choices
from lora_analysis.derive.tuned import at_majority, joint_rate, validation_metric


def analysed_rate(runs: pd.DataFrame, targets: str | None) -> tuple[float | None, str | None]:
    """The one learning rate whose adapters the subspace analyses read, in a sweep that tried several (an
    ablation's search), and a note saying so; (None, None) when the runs of ``targets`` have one rate.

    The rank pairs compare adapters at one rate (a pair differing in rank and rate would confound the two):
    the rate best on validation averaged over the target set's ranks (``tuned.joint_rate``), which is
    every rank's own choice where they agree. The test split is not read.
    """
    choices = rate_choices(runs)  # per rate, the seeds every rate has (tuned._on_common_seeds): the search's
    if targets is not None and "targets" in choices:
        choices = choices[choices["targets"].astype(str) == str(targets)]
    rate = joint_rate(choices, validation_metric(runs)[1])
    if rate is None:
        return None, None
    own = choices[choices["chosen"] & (choices["lr"] != rate)]
    differ = ", ".join(f"r={int(r.r)} ({r.lr:g})" for r in own.itertuples())
    halved = choices[(choices["lr"] == rate) & choices["halved"].astype(bool)] if "halved" in choices else own[:0]
    stopped = ", ".join(f"r={int(r.r)}" for r in halved.itertuples())
    return rate, (f"the subspace analyses read the adapters at lr={rate:g}, the rate best on validation over the "
                  f"ranks of {targets} together" + (f"; these ranks chose another rate on their own: {differ}"
                                                    if differ else ", and each rank's own choice")
                  + (f"; at this rate the search stopped {stopped} at its rung (successive halving): those "
                     "adapters are their best state by then, not trained to their optimum" if stopped else ""))


def runs_off_rate(runs: pd.DataFrame, rate: float) -> set[str]:
    """The LoRA runs (real or shuffled) trained at a recorded learning rate other than ``rate``."""
    if "optim.lr" not in runs or "run" not in runs:
        return set()
    lr = pd.to_numeric(runs["optim.lr"], errors="coerce")
    lora = runs["method"] == "lora" if "method" in runs else pd.Series(True, index=runs.index)
    return set(runs.loc[lora & lr.notna() & (lr != rate), "run"].astype(str))


_TWIN_KEYS = ("method", "lora.targets", "lora.r", "lora.rank_pattern", "optim.lr", "seed")


def collapsed_runs(runs: pd.DataFrame) -> tuple[set[str], str | None]:
    """The real LoRA runs of ``runs`` whose validation accuracy sits at the majority class (``tuned.at_majority``)
    with their shuffled-label twins (same target set, rank, rate and seed), and a note naming the real ones;
    (set(), None) when there are none. Such an adapter learnt nothing of the task, so what it shares with
    another says nothing about what the task needs: the subspace analyses leave it out. The shuffled-label
    controls themselves predict the majority class by design and are kept (their real twins decide).

    ``runs``: the runs one analysis reads (a target set at its analysed rate). Where every real one is at the
    majority class nothing is left out (there would be nothing to analyse) and the note says that every
    verdict then compares adapters that learnt nothing."""
    if runs.empty or "run" not in runs:
        return set(), None
    twins = runs["run"].astype(str).isin(shuffled_run_labels(runs))
    lora = runs["method"] == "lora" if "method" in runs else pd.Series(True, index=runs.index)
    real = runs[~twins & lora]
    stuck = real[at_majority(real)]
    if stuck.empty:
        return set(), None
    if len(stuck) == len(real):
        return set(), (f"every adapter analysed ({len(real)}) predicts the majority class on validation: the "
                       "subspace verdicts below compare adapters that learnt nothing of the task")
    keys = [k for k in _TWIN_KEYS if k in runs]
    ident = pd.Series(["|".join(map(str, row)) for row in runs[keys].itertuples(index=False)], index=runs.index)
    out = set(stuck["run"].astype(str)) | set(runs.loc[twins & ident.isin(set(ident[stuck.index])), "run"].astype(str))
    named = ", ".join(sorted(stuck["run"].astype(str)))
    return out, (f"left out of the subspace analyses: {named} (validation accuracy at the majority class: an "
                 "adapter that predicts one class learnt nothing of the task to compare)")


def collapsed_at_rate(runs: pd.DataFrame, targets: str | None, rate: float | None) -> tuple[set[str], str | None]:
    """``collapsed_runs`` of the runs one analysis reads: those of ``targets`` (every set where None) at the
    analysed ``rate`` (every rate where None). The report, the recommendation and ``ablate``'s controls call it."""
    if runs.empty or "run" not in runs:
        return set(), None
    analysed = runs[~runs["run"].astype(str).isin(runs_off_rate(runs, rate))] if rate is not None else runs
    if targets is not None and "lora.targets" in analysed:
        analysed = analysed[analysed["lora.targets"].astype(str) == str(targets)]
    return collapsed_runs(analysed)


def runs_not_analysed(runs: pd.DataFrame, targets: str | None) -> set[str]:
    """The runs (real or shuffled) the subspace analyses of ``targets`` leave out: those off its analysed rate
    (chosen on the real runs), the collapsed ones at that rate with their twins (``collapsed_runs``), and the
    rank patterns."""
    rate, _ = analysed_rate(runs[~runs["run"].astype(str).isin(shuffled_run_labels(runs))], targets)
    off = runs_off_rate(runs, rate) if rate is not None else set()
    stuck, _ = collapsed_at_rate(runs, targets, rate)
    return off | stuck | set(patterned_runs(runs).get("run", pd.Series(dtype=str)).astype(str))
