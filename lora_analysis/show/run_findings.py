"""Findings on the runs: accuracy at each cell's tuned rate, runs stuck at the majority class, rank patterns
against uniform ranks, the rates chosen, and whether each run was trained to its validation optimum (target
sets against each other: ``show.target_sets``).

As ``show.findings``: sentences quoting the numbers of ``derive.stats``, a table holding them, and a
sentence instead of an exception where data is missing.
"""

from __future__ import annotations

import math

import pandas as pd

from lora_analysis.derive import stats
from lora_analysis.derive.plateau import CANNOT_TELL, NOT_SUPPORTED, Plateau, plateaus
from lora_analysis.derive.queries import LOWER_IS_BETTER, has_majority, lora_runs, metric_column
from lora_analysis.derive.tuned import difference_interval, validation_metric
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.layout import SweepDir
from lora_analysis.show.findings import Finding
from lora_analysis.show.labels import fmt
from lora_analysis.stopping import FIXED, HALVED, VERDICTS
from lora_analysis.targets import expand_roles


def accuracy(runs: pd.DataFrame, table: pd.DataFrame, validation: pd.DataFrame, full: dict | None,
             metric: str | None = None) -> Finding:
    """Test metric against rank and target set, beside full fine-tuning and the majority class, from the
    report's one accuracy table (``table``: ``stats.accuracy_table``, each cell at its tuned rate); the best
    cell is the best of ``validation`` (``stats.validation_table``); ``full``: the full fine-tuning cell
    (``stats.full_reference``), or None."""
    metric = metric or metric_column(runs)
    key, title = "accuracy", "Test metric against rank and target set (Tables 5 and 6)"
    if table.empty or table["mean"].isna().all():
        return Finding.missing(key, title, f"No finished LoRA run with a test metric in {SweepDir.TABLE}.")
    best, chosen_on = _best_cell(runs, table, validation, metric)
    sentences = []
    for targets, t in table.groupby("targets"):
        sentences.append(f"{metric} with targets {targets}: " + ", ".join(
            f"r={int(row.r)} " + ("collapsed (every learning rate predicted the majority class)" if row.collapsed
                                  else fmt(row.mean, 3) + (f" [{fmt(row.ci_low, 3)}, {fmt(row.ci_high, 3)}]"
                                                           if row.n > 1 else "")) + f" (n={row.n})"
            for row in t.itertuples()) + ".")
    tail = f"Best LoRA cell ({chosen_on}): targets {best['targets']} at r={int(best['r'])}, {fmt(best['mean'], 3)}"
    if full and not full["collapsed"]:
        gap, low, high = difference_interval(pd.DataFrame([best]), pd.DataFrame([full]))
        spread = "" if math.isnan(low) else f" [{low:+.3f}, {high:+.3f}]"
        tail += f"; full fine-tuning {full_text(full)}, difference {gap:+.3f}{spread}"
    elif full:
        tail += f"; full fine-tuning {full_text(full)}"
    else:
        tail += "; no full fine-tuning run in the sweep to compare with"
    if has_majority(runs) and metric == "test_accuracy":
        tail += f"; majority class {fmt(runs['majority_accuracy'].dropna().iloc[0], 3)}"
    sentences.append(tail + ".")
    sentences += stuck_at_majority(runs) if metric == "test_accuracy" else []
    values = {"best": float(best["mean"]), "chosen_on_validation": float(chosen_on == ON_VALIDATION)} | (
        {"full": float(full["mean"])} if full and not full["collapsed"] else {})
    return Finding(key, title, sentences, table, values)


def full_text(full: dict) -> str:
    """Full fine-tuning's cell (``stats.full_reference``) as the report states a cell: mean [95% interval] (n at
    its rate, chosen on validation when several were tried; edge: the rate is at an end of the grid)."""
    where = f"n={int(full['n'])}" + (f" at lr {full['lr']:.0e}" if pd.notna(full["lr"]) else "")
    where += f", chosen on validation from {int(full['lrs'])} rates" if full["lrs"] > 1 else ""
    where += ", at an end of the grid" if full["at_edge"] else ""
    if full["collapsed"]:
        return f"collapsed (every learning rate predicted the majority class; {where})"
    spread = f" [{fmt(full['ci_low'], 3)}, {fmt(full['ci_high'], 3)}]" if full["n"] > 1 else ""
    return f"{fmt(full['mean'], 3)}{spread} ({where})"


ON_VALIDATION = "chosen on validation"


def _best_cell(runs: pd.DataFrame, table: pd.DataFrame, val: pd.DataFrame, metric: str) -> tuple[pd.Series, str]:
    """The row of ``table`` (test, each cell at its rate) of the cell best on ``val`` (the validation table),
    and "on validation"; a sweep without a validation metric (trained before ``data.val_size``): the best on
    test, and says so."""
    val = val[~val["collapsed"].astype(bool)].dropna(subset=["mean"]) if not val.empty else val
    if not val.empty:
        pick = val.loc[val["mean"].idxmax() if validation_metric(runs)[1] else val["mean"].idxmin()]
        match = table[(table["targets"] == pick["targets"]) & (table["r"] == pick["r"])].dropna(subset=["mean"])
        if not match.empty:
            return match.iloc[0], ON_VALIDATION
    best = table.loc[table["mean"].idxmin() if metric in LOWER_IS_BETTER else table["mean"].idxmax()]
    return best, "the best on test: no validation metric to choose by"


def stuck_at_majority(runs: pd.DataFrame) -> list[str]:
    """A sentence naming the LoRA runs whose test accuracy is the majority class's (within 0.5 point).

    Such a run predicts one class: its rank tells nothing about the task. Their LoRA scale is given,
    since with alpha held fixed the smallest ranks get the largest ``alpha / r`` (``stats.lora_scales``).
    """
    lora, stuck = lora_runs(runs), stats.stuck_runs(runs)
    if stuck.empty:
        return []
    names = ", ".join(sorted(stuck["run"].astype(str))) if "run" in stuck else f"{len(stuck)} runs"
    detail = ""
    if {"lora.alpha", "lora.r"} <= set(stuck.columns):
        scales = sorted(set(stats.lora_scales(stuck)))
        largest = stats.lora_scales(lora).max()
        rule = "alpha/sqrt(r)" if stats.uses_rslora(lora) else "alpha/r"
        detail += f" LoRA scale {rule} {', '.join(f'{x:.3g}' for x in scales)}"
        detail += " (the largest in the sweep);" if min(scales) >= largest else ";"
    if "final_train_loss" in stuck:
        detail += f" final training loss {fmt(stuck['final_train_loss'].mean(), 3)} on average"
    return [f"{len(stuck)} of {len(lora)} LoRA runs predict the majority class ({names}):{detail}. Their test "
            "accuracy says the optimisation failed, not how much rank the task needs."]


def rank_patterns(table: pd.DataFrame, patterns: pd.DataFrame, metric: str | None = None) -> Finding:
    """Is a recommended ``rank_pattern`` as good as uniform ranks? Each pattern cell (``stats.pattern_table``: at
    its own rate chosen on validation, over its seeds) against every uniform-rank cell (``table``:
    ``stats.accuracy_table``) of its target set and of each target set holding all its roles (a recommendation
    that drops q and k from attn trains on v+o, and is judged against attn's uniform ranks, the set it was
    read from), each difference with its 95% Welch interval over seeds. The pattern is validated when no
    uniform rank with at least its parameter count is above it (intervals holding 0 count as not above), not
    validated when one is; cannot tell with one seed or no uniform rank that large."""
    key, title = "patterns", "A recommended rank pattern against uniform ranks (accuracy against parameters)"
    if patterns.empty:
        return Finding.missing(key, title, "No run with a lora.rank_pattern in this sweep: the recommendation is not "
                               "validated here (lora-analysis ablate ... patterns=[ranks.json] trains it beside "
                               "uniform ranks).")
    metric = metric or "test_accuracy"
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    sentences, rows, values = [], [], {}
    for pattern in patterns.itertuples():
        head = (f"rank_pattern {pattern.pattern} on {pattern.targets} ({int(pattern.lora_params):,} parameters, rate "
                f"{pattern.lr:.0e}{', edge' if pattern.at_edge else ''}): "
                + ("collapsed" if pattern.collapsed else fmt(pattern.mean, 3) + (
                    f" [{fmt(pattern.ci_low, 3)}, {fmt(pattern.ci_high, 3)}]" if pattern.n > 1 else "")) +
                f" (n={pattern.n})")
        covering = pd.Series([_covers(str(t), str(pattern.targets)) for t in table["targets"]], table.index,
                             dtype=bool)
        uniform = table[covering & ~table["collapsed"].astype(bool)].dropna(subset=["mean"])
        if uniform.empty or pattern.collapsed:
            sentences.append(head + ": no uniform-rank cell of this target set, or of one holding its roles, to "
                             "compare with.")
            continue
        one = pd.DataFrame([pattern._asdict()])
        parts, above_it, larger = [], 0, 0
        own = uniform["targets"].astype(str) == str(pattern.targets)
        uniform = pd.concat([uniform[own].sort_values("lora_params"),
                             uniform[~own].sort_values(["targets", "lora_params"])])
        for cell in uniform.itertuples():
            diff, low, high = difference_interval(one, pd.DataFrame([cell._asdict()]))
            ratio = cell.lora_params / pattern.lora_params
            state = ("cannot tell" if math.isnan(low) or low <= 0 <= high else
                     "pattern above" if sign * diff > 0 else "pattern below")
            where = "" if str(cell.targets) == str(pattern.targets) else f"{cell.targets} "
            parts.append(f"{where}r={int(cell.r)} ({ratio:.2g}x its parameters) {diff:+.3f}"
                         + ("" if math.isnan(low) else f" [{low:+.3f}, {high:+.3f}]") + f" {state}")
            rows.append({"targets": pattern.targets, "pattern": pattern.pattern, "uniform_targets": cell.targets,
                         "r": int(cell.r), "params_ratio": ratio, "difference": diff, "ci_low": low,
                         "ci_high": high, "state": state})
            if ratio >= 1:
                larger += 1
                above_it += state == "pattern below"
        # a one-seed cell with at least the pattern's parameters has no interval: "validated" needs each to have one
        unknown = pattern.n < 2 or (uniform.loc[uniform["lora_params"] >= pattern.lora_params, "n"] < 2).any()
        verdict = ("cannot tell (no uniform rank with as many parameters in the sweep)" if not larger else
                   f"not validated: {above_it} uniform rank(s) with at least its parameters are above it" if above_it
                   else "cannot tell (one seed: no interval over seeds)" if unknown else
                   f"validated: none of the {larger} uniform rank(s) with at least its parameters is above it")
        sentences.append(f"{head}. Difference against each uniform rank, pattern minus uniform [95% Welch "
                         f"interval]: {'; '.join(parts)}.")
        sentences.append(f"rank_pattern {pattern.pattern} on {pattern.targets}: {verdict}.")
        values[pattern.pattern] = float(pattern.mean)
    return Finding(key, title, sentences, pd.DataFrame(rows), values)


def _covers(uniform: str, pattern: str) -> bool:
    """Does target set ``uniform`` hold every role of target set ``pattern`` (``attn`` holds ``v+o``)? Sets
    named otherwise (``lora.target_regex``) are compared only with themselves."""
    if uniform == pattern:
        return True
    try:
        return set(expand_roles(pattern)) <= set(expand_roles(uniform))
    except LoraAnalysisError:
        return False


def trained_enough(runs: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> Finding:
    """Was each run trained to its validation optimum? Its ``stop_reason`` (``lora_analysis.stopping``):
    ``converged`` when the validation loss did not improve for ``optim.patience`` evaluations after its best,
    ``ceiling`` when the run reached ``optim.steps`` still improving. Runs saved before the validation split
    (no ``stop_reason``) are counted as not measured."""
    key, title = "loss", "Trained to the validation optimum?"
    said = runs["stop_reason"].fillna(VERDICTS[2]) if "stop_reason" in runs else pd.Series(VERDICTS[2], runs.index)
    if runs.empty or (said == VERDICTS[2]).all():
        return Finding.missing(key, title, "No run has a validation split (data.val_size): whether training went "
                               "far enough is not measured.")
    columns = [c for c in ("run", "best_step", "steps", "ceiling", "val_loss", "val_accuracy", "stop_reason")
               if c in runs]
    table = runs.assign(stop_reason=said)[columns].sort_values("run").reset_index(drop=True)
    counts = said.value_counts()
    per_run = "; ".join(f"{row.run} best at step {int(row.best_step):,} of {int(row.steps):,} ({row.stop_reason})"
                        for row in table.itertuples() if row.stop_reason not in (VERDICTS[2], FIXED))
    fixed = table[table["stop_reason"] == FIXED]
    sentences = [
        f"Each run scores its validation split every optim.eval_every steps and stops after optim.patience "
        f"evaluations without a lower validation loss; the adapter kept, and every test number, is the state at "
        f"the best one. {per_run}.",
        f"{int(counts.get('converged', 0))} of {len(table) - len(fixed)} runs converged, "
        f"{int(counts.get('ceiling', 0))} reached the step ceiling still improving"
        + (f", {int(counts.get(HALVED, 0))} stopped at the search's rung by successive halving (their rate dropped)"
           if counts.get(HALVED, 0) else "")
        + (f", {int(counts.get(VERDICTS[2], 0))} not measured" if counts.get(VERDICTS[2], 0) else "") + ".",
    ]
    if not fixed.empty:
        sentences.append("Trained for a fixed number of steps, their last state kept (controls matched to the runs "
                         "they control, optim.keep=last): " + ", ".join(
                             f"{row.run} {int(row.steps):,} steps" for row in fixed.itertuples()) + ".")
    values = {v: float(counts.get(v, 0)) for v in (*VERDICTS, HALVED)}
    values["runs"] = float(len(table))
    return Finding(key, title, sentences, table, values)


def tuned_rates(choices: pd.DataFrame, val: pd.DataFrame, runs: pd.DataFrame, full: dict | None) -> Finding:
    """The learning rates chosen on validation, against the anchors (LoRA Without Regret, 2025: the optimal
    rate roughly independent of rank under alpha/r, LoRA's about 10x full fine-tuning's), and from which
    rank validation accuracy stops improving (``derive.plateau``, each rank at its own rate).

    ``choices``: ``stats.rate_choices``; ``val``: ``stats.validation_table``; ``full``: ``stats.full_reference``,
    the rate the accuracy finding's full fine-tuning cell was chosen at (all three: the report's ``Derived``)."""
    key, title = "rates", "Learning rates tuned on validation, against the anchors"
    tuned = choices.groupby(["targets", "r"])["lr"].nunique() if not choices.empty else pd.Series(dtype=int)
    if tuned.empty or tuned.max() < 2:
        return Finding.missing(key, title, "Every cell was trained at one learning rate: whether the best rate "
                               "depends on rank is not measured here (lora-analysis ablate tunes one per cell).")
    chosen = choices[choices["chosen"]]
    lora = lora_runs(runs)
    rslora = stats.uses_rslora(lora)
    anchor = ("rsLoRA, Kalajdzievski 2023: alpha/sqrt(r) keeps the update's size stable across ranks" if rslora
              else "about one rate for every rank under alpha/r")
    sentences = []
    for targets, t in chosen.groupby("targets"):
        rates = ", ".join(f"r={int(row.r)} " + ("collapsed at every rate" if row.collapsed else
                                                 f"{row.lr:.0e}" + (" (edge)" if row.at_edge else ""))
                          for row in t.sort_values("r").itertuples())
        live = t[~t["collapsed"].astype(bool)]
        same = live["lr"].nunique() <= 1
        if len(t) == 1:  # one rank (a budget experiment's cell): nothing to say about rates across ranks
            sentences.append(f"{targets}: {rates}.")
            continue
        sentences.append(f"{targets}: {rates}; " + ("the same rate at every rank that learnt" if same else
                         f"{live['lr'].nunique()} different rates over {len(live)} ranks that learnt (anchor: "
                         f"{anchor})") + _step_sizes(live, lora, targets, rslora) + ".")
    edge = int((chosen["at_edge"] & ~chosen["collapsed"].astype(bool)).sum())
    if edge:
        sentences.append(f"{edge} of {len(chosen)} cells chose a rate at an end of the grid: their optimum may lie "
                         "outside it, so their accuracy is a lower bound (extend lrs there).")
    halved = choices[choices["halved"].astype(bool)] if "halved" in choices else choices.iloc[0:0]
    if not halved.empty:
        at = runs.loc[runs["stop_reason"] == HALVED, "steps"] if {"stop_reason", "steps"} <= set(runs) else []
        rung = f" at step {int(min(at)):,}" if len(at) else ""
        sentences.append(f"Successive halving stopped {len(halved)} of {len(choices)} (cell, rate) searches{rung} (the "
                         "worse half of each cell's rates on validation there): their points are their validation "
                         "at that step, and none of them could be chosen.")
    higher = validation_metric(runs)[1]
    if full and full["lrs"] > 1 and not full["collapsed"]:
        scores = val["mean"] if higher else -val["mean"]
        best = val.loc[scores.idxmax()] if scores.notna().any() else None  # the best cell on validation
        if best is not None:
            edges = [name for name, edge in ((f"{best['targets']} r={int(best['r'])}", best["at_edge"]),
                                             ("full fine-tuning", full["at_edge"])) if edge]
            sentences.append(
                f"LoRA's best cell ({best['targets']}, r={int(best['r'])}) chose {best['lr']:.0e}, full fine-tuning "
                f"{full['lr']:.0e} (of {int(full['lrs'])} rates): a ratio of {best['lr'] / full['lr']:.2g}x (anchor: "
                "about 10x). Each is a point of its grid, so the ratio is only as fine as the grids' steps"
                + (f"; {' and '.join(edges)} chose a rate at an end of its grid, so the ratio may be further off."
                   if edges else "."))
    sentences += [plateau_sentence(p) for p in plateaus(val, higher).values()]
    return Finding(key, title, sentences, chosen.reset_index(drop=True), {"cells": float(len(chosen)),
                                                                        "at_edge": float(edge)})


def _step_sizes(live: pd.DataFrame, lora: pd.DataFrame, targets: str, rslora: bool) -> str:
    """The chosen rate times the LoRA scale at each rank that learnt (``live``: chosen rows of one target set;
    ``lora``: the sweep's LoRA runs; ``rslora``: they scale by alpha/sqrt(r)): under Adam a step moves B's
    entries by about the rate, so dW = scale B A by about rate x scale. Whichever of the two spans less over
    the ranks is what the optimum holds fixed. Empty without two such ranks or the runs' ``lora.alpha``."""
    if len(live) < 2 or "lora.alpha" not in lora or "lora.r" not in lora:
        return ""
    lora = lora[lora.get("lora.targets", pd.Series("n/a", index=lora.index)).astype(str) == str(targets)]
    lora = lora.dropna(subset=["lora.alpha", "lora.r"])
    if lora.empty:
        return ""
    scale = stats.lora_scales(lora).groupby(lora["lora.r"].astype(int)).median()
    steps = {int(row.r): row.lr * scale[int(row.r)] for row in live.itertuples() if int(row.r) in scale.index}
    if len(steps) < 2:
        return ""
    rule = "alpha/sqrt(r)" if rslora else "alpha/r"
    rates = live.loc[live["r"].astype(int).isin(list(steps)), "lr"]
    edge = " (a rate at an end of its grid may be further off)" if live["at_edge"].astype(bool).any() else ""
    return (f"; the rate times the scale {rule} (how far a step moves dW under Adam): "
            + ", ".join(f"r={r} {v:.1e}" for r, v in sorted(steps.items()))
            + f", a span of {max(steps.values()) / min(steps.values()):.2g}x over these ranks against "
            f"{rates.max() / rates.min():.2g}x for the rate alone{edge}")


def plateau_sentence(p: Plateau) -> str:
    """``derive.plateau``'s answer for one target set, as the report states it, with each smaller rank's
    shortfall from the best and its 95% interval over seeds."""
    head = f"{p.targets}: the best rank on validation is r={p.best} ({fmt(p.best_mean, 3)})"
    gaps = "; shortfall from it: " + ", ".join(
        f"r={s.r} {s.value:+.3f}" + (" (one seed, no interval)" if math.isnan(s.low) else
                                     f" [{s.low:+.3f}, {s.high:+.3f}]") for s in p.shortfalls) if p.shortfalls else ""
    margin = f"{p.margin:g}"
    if p.verdict == CANNOT_TELL:
        return f"{head}{gaps}. Where validation accuracy stops improving: cannot tell ({p.why_not})."
    if p.verdict == NOT_SUPPORTED:
        return (f"{head}{gaps}. Every smaller rank is below it: validation accuracy still improves up to "
                f"r={p.best}, so that it stops improving at a smaller rank is not supported.")
    if p.rank == p.best:
        return f"{head}, the smallest rank tried: validation accuracy stops improving at r={p.rank}: supported."
    return (f"{head}{gaps}. Validation accuracy stops improving at r={p.rank}, the smallest rank within {margin} "
            "of the best at 95%: supported.")
