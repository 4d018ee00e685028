"""usage: lora-analysis ablate [experiment=rank_ablation|target_ablation] [lrs=[...]] [seeds=3] [patterns=[ranks.json]]
                            [halving=0.2] [extend=2] [train overrides ...]

An ablation as a reviewer accepts it, end to end:
1) every cell of the experiment (target set x rank; a budget experiment: target set; and a cell per target set
   for each rank pattern of ``patterns``, a recommendation under test; ``ranks=[]``: the patterns alone) on
   seed 0 at every learning rate of ``lrs`` (full fine-tuning at ``full_lrs``), each run stopped at its
   validation optimum; with ``halving`` (the default, 0.2), successive halving: every rate to that fraction
   of the step ceiling, then only the better half of each cell's rates on validation goes on (``train.halving``);
2) per cell, the rate with the best validation metric (``derive.tuned``: the test split is not read); where it
   sits at an end of the cell's grid, the next rate past that end on seed 0, and the choice made again, up to
   ``extend`` (2) times: the optimum may lie outside the grid (a cell at the majority class at every rate: toward
   its lowest validation loss, where that shows learning);
3) seeds 1 .. seeds-1 of every cell at its rate (none for a cell at the majority class at every rate: its
   grid needs extending, which a rerun with more ``lrs`` does, the finished runs kept);
4) with ``controls`` (the default), the shuffled-label twins of each target set's rank pair (seed 0) and seed
   pair (seeds 0 and 1) at the rate the report's subspace analyses read (``derive.rates.analysed_rate``), as
   many steps as their twins kept;
5) the analysis and the report: each cell at its rate, mean and 95% interval over the seeds, the U-curves.
Interrupted and restarted, it skips the runs that finished. Other key=value pairs are training
overrides for every run (model=..., data=..., device=...).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lora_analysis.cli.reproduce import default_workers, publish, train_all
from lora_analysis.cli.schemas import AblateConfig
from lora_analysis.hydra_compose import compose, help_text, to_settings
from lora_analysis.layout import ReportDir, SweepDir, is_done
from lora_analysis.owned import check_ours
from lora_analysis.train.sweep import collect_runs, planned_config, run_name

if TYPE_CHECKING:
    import pandas as pd

_OWN_KEYS = ("targets", "ranks", "lrs", "full_lrs", "patterns", "halving", "extend", "seeds", "controls", "out_dir",
             "name", "figures", "workers")


def main(argv: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(__doc__, "ablate"))
        return 0
    cfg, train_overrides = parse(argv)
    print(f"report: {ablate(cfg, train_overrides)}")
    return 0


def parse(argv: Sequence[str]) -> tuple[AblateConfig, list[str]]:
    """The command line's ablation settings (checked) and its training overrides for every run."""
    own = [a for a in argv if a.partition("=")[0].lstrip("+~") in _OWN_KEYS]
    # experiment= is also train's config group: Hydra would read it as that group here, so it is taken by hand
    named = [a.partition("=")[2] for a in argv if a.startswith("experiment=")]
    cfg: AblateConfig = to_settings(compose("ablate", own))
    cfg.experiment = named[-1] if named else cfg.experiment
    return cfg, [a for a in argv if a not in own and not a.startswith("experiment=")]


def cells(cfg: AblateConfig) -> list[list[str]]:
    """The experiment's cells as override lists: its swept target sets and ranks, or the ones given; and a
    cell per target set for each rank pattern of ``patterns`` (alone with ``ranks=[]``)."""
    params = compose("train", [f"experiment={cfg.experiment}"], hydra=True).hydra.sweeper.params or {}
    targets = cfg.targets or str(params.get("lora.targets", "all")).split(",")
    ranks = cfg.ranks if cfg.ranks is not None else [int(r) for r in str(params.get("lora.r", "")).split(",") if r]
    alone = cfg.ranks == [] and cfg.patterns
    uniform = [] if alone else [[f"lora.targets={t}", *([f"lora.r={r}"] if r else [])]
                                for t in targets for r in (ranks or [None])]
    return uniform + [[f"lora.targets={t}", f"lora.rank_pattern={p}"] for t in targets for p in cfg.patterns]


def ablate(cfg: AblateConfig, train_overrides: Sequence[str] = ()) -> Path:
    """Search, seeds, analysis and report; returns the path of the HTML report."""
    from lora_analysis.analysis.sweep import analyse_sweep
    from lora_analysis.show.report import build_report

    started = time.perf_counter()
    if cfg.figures:
        check_ours(cfg.figures, "figures", ReportDir.owns, "choose another figures=")
    common = [f"experiment={cfg.experiment}", *train_overrides]
    sweep = Path(cfg.out_dir) / (cfg.name or str(compose("train", common).name))
    grid = {tuple(cell): cfg.lrs for cell in cells(cfg)} | ({("method=full",): cfg.full_lrs} if cfg.full_lrs else {})
    search = {cell: _plan(common, [[*cell, f"optim.lr={lr}"] for lr in rates], [0]) for cell, rates in grid.items()}
    print(f"1) search: {sum(map(len, search.values()))} runs on seed 0, {len(cfg.lrs)} learning rates per cell",
          file=sys.stderr)
    clock = _Clock()
    _search(cfg, search, sweep, common, train_overrides, clock)
    _extend(cfg, search, sweep, common, train_overrides, clock)
    searched = collect_runs(sweep)  # once for every cell
    chosen = {cell: chosen_rate(searched, [name for name, _ in plan]) for cell, plan in search.items()}
    picked = [[*cell, f"optim.lr={rate}"] for cell, (rate, collapsed) in chosen.items() if not collapsed]
    seeds = _plan(common, picked, range(1, cfg.seeds))
    stuck = [" ".join(cell) for cell, (_, collapsed) in chosen.items() if collapsed]
    print(f"2) seeds: {len(seeds)} runs, each cell at its rate chosen on validation"
          + (f"; none for {len(stuck)} cell(s) at the majority class at every rate (extend lrs): {'; '.join(stuck)}"
             if stuck else ""), file=sys.stderr)
    _train(cfg, seeds, sweep, train_overrides)
    clock.lap("seeds")
    twins = controls(cfg, sweep, common) if cfg.controls else []
    print(f"3) controls: {len(twins)} shuffled-label runs", file=sys.stderr)
    _train(cfg, twins, sweep, train_overrides)
    clock.lap("controls")
    print(f"4) analysing {sweep} ...", file=sys.stderr)
    analyse_sweep(sweep, "lora-analysis ablate")
    html, _ = build_report(sweep)
    if cfg.figures:
        publish(html.parent, Path(cfg.figures))
    clock.lap("analysis and report")
    names = [n for n, _ in [*(run for plan in search.values() for run in plan), *seeds, *twins]]
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min; {clock}; {where_the_time_went(sweep, names)}",
          file=sys.stderr)
    return html


def _search(cfg: AblateConfig, search: dict[tuple, list[tuple[str, list[str]]]], sweep: Path, common: list[str],
            train_overrides, clock: _Clock) -> None:
    """Every search run to its validation optimum; with ``halving``, every run to the rung first, then the
    better half of each cell's rates on to its optimum and the rest finished at the rung (``train.halving``)."""
    from lora_analysis.train import halving

    runs = [run for plan in search.values() for run in plan]
    optim = compose("train", common).optim
    rung = halving.rung_step(optim.steps, optim.eval_every, cfg.halving)
    if not rung or max(map(len, search.values())) < 2:
        _train(cfg, runs, sweep, train_overrides)
        clock.lap("search")
        return
    print(f"1a) search to the rung, step {rung} of {optim.steps} (successive halving)", file=sys.stderr)
    _train(cfg, [(name, [*o, f"pause_at={rung}"]) for name, o in runs
                 if not halving.reached(sweep / name, rung, _planned(name, o, sweep, cfg.out_dir))],
           sweep, train_overrides)
    clock.lap("search to the rung")
    go_on, stop = [], []
    for plan in search.values():
        kept = halving.decide([sweep / name for name, _ in plan], rung)
        for name, overrides in plan:
            if not is_done(sweep / name):
                (go_on if name in kept else stop).append((name, overrides))
    print(f"1b) {len(go_on)} runs go on to their optimum; {len(stop)} stop at the rung", file=sys.stderr)
    _train(cfg, [(name, [*o, f"pause_at={rung}", halving.HALT]) for name, o in stop], sweep, train_overrides)
    _train(cfg, go_on, sweep, train_overrides)
    clock.lap("search past the rung")


def _extend(cfg: AblateConfig, search: dict[tuple, list[tuple[str, list[str]]]], sweep: Path, common: list[str],
            train_overrides, clock: _Clock) -> None:
    """Up to ``cfg.extend`` times: every cell whose rate chosen on validation sits at an end of its grid gets the
    next rate past it (``beyond``) on seed 0, trained to its optimum, added to its grid in ``search``. A collapsed
    cell (the majority class at every rate) goes the way its validation loss points (``_collapsed_lead``), and
    nowhere where no rate's loss is below what predicting the class prior gives; a cell with a single rate
    nowhere. Rerun, the same extensions are found finished and none is trained again."""
    for _ in range(cfg.extend):
        searched = collect_runs(sweep)
        more: dict[tuple, list[tuple[str, list[str]]]] = {}
        for cell, plan in search.items():
            rates = sorted(_rate(o) for _, o in plan)
            names = [name for name, _ in plan]
            rate, collapsed = chosen_rate(searched, names)
            lead = _collapsed_lead(searched, names) if collapsed else rate
            new = None if lead is None else beyond(rates, lead)
            if new is not None:
                more[cell] = _plan(common, [[*cell, f"optim.lr={new}"]], [0])
        if not more:
            return
        print(f"1c) {len(more)} cell(s) chose a rate at an end of the grid (or, at the majority class at every rate, "
              "lost least at one): one step past it on seed 0: "
              + "; ".join(f"{' '.join(cell)} {_rate(plan[0][1]):g}" for cell, plan in more.items()), file=sys.stderr)
        _train(cfg, [run for plan in more.values() for run in plan], sweep, train_overrides)
        for cell, plan in more.items():
            search[cell] = [*search[cell], *plan]
        clock.lap("grid extension")


PRIOR_MARGIN = 0.01  # nats below the class prior's cross-entropy: a rate whose validation loss shows learning


def _collapsed_lead(runs: pd.DataFrame, names: list[str]) -> float | None:
    """For a cell at the majority class at every rate: the rate of the lowest validation loss, where that loss is
    below the class prior's cross-entropy (``- m log m - (1 - m) log(1 - m)``, m the majority rate: what
    predicting the prior scores) by ``PRIOR_MARGIN``: learning under way that accuracy does not show yet (too low a
    rate, too few steps). None where no rate gets there: a rate too high sits at the prior, as does one too low to
    move, so the loss cannot say which way to go."""
    from lora_analysis.derive.tuned import LR, majority_column

    runs = runs[runs["run"].isin(names)] if "run" in runs else runs.iloc[0:0]
    column = majority_column(runs)
    if runs.empty or "val_loss" not in runs or column not in runs or runs["val_loss"].isna().all():
        return None
    m = float(runs[column].max())
    if not 0 < m < 1:
        return None
    prior = -(m * math.log(m) + (1 - m) * math.log(1 - m))
    best = runs.loc[runs["val_loss"].idxmin()]
    return float(best[LR]) if best["val_loss"] < prior - PRIOR_MARGIN else None


def beyond(rates: Sequence[float], rate: float) -> float | None:
    """The learning rate one grid step past the end of ``rates`` (sorted) at which ``rate`` sits; None where it
    sits inside (or the grid has one rate). On a 1-3 grid (every rate 1 or 3 times a power of ten) the next 1-3
    value (3e-5 below 1e-4, 1e-2 above 3e-3); else the ratio of the two rates at that end, to 3 digits."""
    if len(rates) < 2 or not any(math.isclose(rate, end, rel_tol=1e-9) for end in (rates[0], rates[-1])):
        return None
    down = math.isclose(rate, rates[0], rel_tol=1e-9)
    if all(_on_one_three(r) for r in rates):
        exponent = math.floor(math.log10(rate) + 1e-9)
        mantissa = round(rate / 10**exponent)
        nxt = (3 * 10 ** (exponent - 1) if mantissa == 1 else 10**exponent) if down else \
            (3 * 10**exponent if mantissa == 1 else 10 ** (exponent + 1))
    else:
        nxt = rates[0] ** 2 / rates[1] if down else rates[-1] ** 2 / rates[-2]
    return float(f"{nxt:.3g}")


def _on_one_three(rate: float) -> bool:
    mantissa = rate / 10 ** math.floor(math.log10(rate) + 1e-9)
    return any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 3))


def _rate(overrides: list[str]) -> float:
    return float(next(o for o in reversed(overrides) if o.startswith("optim.lr=")).partition("=")[2])


class _Clock:
    """Wall minutes per step of the ablation, for its closing line."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name], self._last = now - self._last, now

    def __str__(self) -> str:
        return "wall time " + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in self.laps.items())


def where_the_time_went(sweep: Path, names: list[str]) -> str:
    """The runs ``names`` of ``sweep`` summed over their own metrics (whenever they were trained, resumed runs
    from their resume): minutes of training steps, of validation passes and of the final test pass."""
    runs = collect_runs(sweep)
    runs = runs[runs["run"].astype(str).isin(names)]
    parts = {"training steps": "train_seconds", "validation passes": "val_seconds", "the test pass": "eval_seconds"}
    summed = ", ".join(f"{what} {runs[column].sum() / 60:.0f} min" for what, column in parts.items() if column in runs)
    return f"its {len(runs)} runs summed: {summed or 'no timings recorded'}"


def chosen_rate(runs: pd.DataFrame, names: list[str]) -> tuple[float, bool]:
    """The learning rate of the best validation metric among the finished search runs ``names`` of one cell
    (``runs``: the sweep table), and whether the cell is collapsed (at the majority class at every rate: more
    seeds there would tell nothing, the grid needs extending)."""
    from lora_analysis.derive.tuned import lr_choices

    runs = runs[runs["run"].isin(names)].assign(cell="one")
    choices = lr_choices(runs, ["cell"])
    row = choices.loc[choices["chosen"]].iloc[0]
    return float(row["lr"]), bool(row["collapsed"])


def controls(cfg: AblateConfig, sweep: Path, common: list[str]) -> list[tuple[str, list[str]]]:
    """The shuffled-label twins the subspace verdicts are judged against, per target set at its analysed rate
    (``rates.analysed_rate``), each trained for as many steps as its real twin kept (``best_step``):

    - the rank pair's (``focus.preferred_pair`` of the set's ranks: this command's and those the sweep holds, as
      the report picks it), seed 0;
    - the seed pair's, seeds 0 and 1 at the seed rank: the paper's (``paper.SEED_RANK``) where it was seeded at
      that rate, else the largest rank that was; for a budget experiment, the set's one cell.

    Only for ``all`` where the cells hold it: the report's subspace analyses read one target set, ``all`` where
    present (``queries.main_targets``), so twins of the other sets would control nothing it says. A pair with no
    real twin at that rate (no seeds), or whose twin predicts the majority class (``rates.collapsed_runs``: the
    report leaves it out of the pairs; ``rates.collapsed_at_rate``), gets none."""
    from lora_analysis.cli.reproduce import MATCHED
    from lora_analysis.derive.controls import shuffled_run_labels
    from lora_analysis.derive.rates import analysed_rate, collapsed_at_rate
    from lora_analysis.show.focus import preferred_pair
    from lora_analysis.show.paper import SEED_RANK
    runs = collect_runs(sweep)
    runs = runs[~runs["run"].astype(str).isin(shuffled_run_labels(runs))]  # twins are controls, not cells
    finished = set(runs["run"].astype(str)) if "run" in runs else set()
    by_targets: dict[str, list[int | None]] = {}
    for cell in cells(cfg):
        values = dict(o.split("=", 1) for o in cell)
        if "lora.rank_pattern" not in values:  # a pattern is compared by accuracy, never paired
            by_targets.setdefault(values["lora.targets"], []).append(int(values["lora.r"]) if "lora.r" in values
                                                                     else None)
    if "all" in by_targets:  # the report analyses one target set, all where it is there (queries.main_targets)
        by_targets = {"all": by_targets["all"]}
    plan: dict[str, list[str]] = {}
    for targets, ranks in by_targets.items():
        ranks = _with_sweep_ranks(ranks, runs, targets)
        rate = analysed_rate(runs, targets)[0]  # the rate the report's subspace analyses will read
        rate = rate if rate is not None else cfg.lrs[0]
        lr = next((x for x in cfg.lrs if math.isclose(x, rate, rel_tol=1e-9)), rate)  # as the search spelt it
        finished = finished - collapsed_at_rate(runs, targets, rate)[0]  # the report leaves these out of its pairs

        def real(r: int | None, seed: int, targets=targets, lr=lr) -> list[str]:
            return [f"lora.targets={targets}", *([f"lora.r={r}"] if r is not None else []), f"optim.lr={lr}",
                    f"seed={seed}"]

        known = [r for r in ranks if r is not None]
        pair = preferred_pair({(a, b) for a in known for b in known if a < b}, [])
        seeded = [r for r in ranks if all(run_name(real(r, seed)) in finished for seed in (0, 1))]
        seed_rank = (SEED_RANK if SEED_RANK in seeded else max(seeded, key=lambda r: r or 0)) if seeded else None
        wanted = [(r, 0) for r in pair or ()] + ([(seed_rank, 0), (seed_rank, 1)] if seeded else [])
        for r, seed in wanted:
            cell = real(r, seed)
            if run_name(cell) not in finished:
                continue
            twin = [*cell, "data.shuffle_labels=true"]
            plan[run_name(twin)] = [*common, *twin, f"{MATCHED}{run_name(cell)}"]
    return list(plan.items())


def _with_sweep_ranks(ranks: list[int | None], runs: pd.DataFrame, targets: str) -> list[int | None]:
    """``ranks`` of this command's cells and every rank the sweep already holds for ``targets`` (uniform, real
    runs): an ablation extended with a few ranks is analysed, so controlled, on all of them. A budget
    experiment's cell (no rank of its own) stays as it is."""
    if None in ranks or "lora.r" not in runs or "lora.targets" not in runs:
        return ranks
    from lora_analysis.derive.queries import patterned_runs

    held = runs[(runs["lora.targets"].astype(str) == targets) & ~runs.index.isin(patterned_runs(runs).index)]
    if "method" in held:
        held = held[held["method"] == "lora"]
    return sorted({*ranks, *(int(r) for r in held["lora.r"].dropna())})


def _plan(common: list[str], cells: list[list[str]] | list[tuple[str, ...]], seeds) -> list[tuple[str, list[str]]]:
    """(run name, overrides) of every cell at every seed; the name from the cell, its rate and its seed."""
    return [(run_name([*cell, f"seed={seed}"]), [*common, *cell, f"seed={seed}"]) for cell in cells for seed in seeds]


def _planned(name: str, overrides: list[str], sweep: Path, out_dir: str) -> dict:
    """The config the run will train with (``train_all`` adds the sweep's name and out_dir)."""
    return planned_config([*overrides, f"name={sweep.name}", f"out_dir={out_dir}"], name)


def _train(cfg: AblateConfig, plan: list[tuple[str, list[str]]], sweep: Path, train_overrides) -> None:
    if not plan:
        return
    check_ours(sweep, "sweep", SweepDir.owns, "choose another name= or out_dir=")  # at once, not in each worker
    workers = cfg.workers or default_workers(train_overrides, sum(not is_done(sweep / n) for n, _ in plan))
    train_all(plan, sweep, cfg.out_dir, workers)

