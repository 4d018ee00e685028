"""usage: lora-analysis ablate [experiment=rank_ablation|target_ablation] [lrs=[...]] [seeds=3] [train overrides ...]

An ablation as a reviewer accepts it, end to end:
1) every cell of the experiment (target set x rank; a budget experiment: target set) on seed 0 at every
   learning rate of ``lrs`` (full fine-tuning at ``full_lrs``), each run stopped at its validation optimum;
2) per cell, the rate with the best validation metric (``derive.tuned``: the test split is not read);
3) seeds 1 .. seeds-1 of every cell at its rate;
4) the analysis and the report: each cell at its rate, mean and 95% interval over the seeds, the U-curves.
Interrupted and restarted, it skips the runs that finished. Other key=value pairs are training
overrides for every run (model=..., data=..., device=...).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lora_analysis.cli.reproduce import default_workers, publish, train_all
from lora_analysis.cli.schemas import AblateConfig
from lora_analysis.hydra_compose import compose, help_text, to_settings
from lora_analysis.layout import ReportDir, SweepDir, is_done
from lora_analysis.owned import check_ours
from lora_analysis.train.sweep import run_name

_OWN_KEYS = ("targets", "ranks", "lrs", "full_lrs", "seeds", "out_dir", "name", "figures", "workers")


def main(argv: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(__doc__, "ablate"))
        return 0
    own = [a for a in argv if a.partition("=")[0].lstrip("+~") in _OWN_KEYS]
    # experiment= is also train's config group: Hydra would read it as that group here, so it is taken by hand
    named = [a.partition("=")[2] for a in argv if a.startswith("experiment=")]
    cfg: AblateConfig = to_settings(compose("ablate", own))
    cfg.experiment = named[-1] if named else cfg.experiment
    print(f"report: {ablate(cfg, [a for a in argv if a not in own and not a.startswith('experiment=')])}")
    return 0


def cells(cfg: AblateConfig) -> list[list[str]]:
    """The experiment's cells as override lists: its swept target sets and ranks, or the ones given."""
    params = compose("train", [f"experiment={cfg.experiment}"], hydra=True).hydra.sweeper.params or {}
    targets = cfg.targets or str(params.get("lora.targets", "all")).split(",")
    ranks = cfg.ranks if cfg.ranks is not None else [int(r) for r in str(params.get("lora.r", "")).split(",") if r]
    return [[f"lora.targets={t}", *([f"lora.r={r}"] if r else [])] for t in targets for r in (ranks or [None])]


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
    _train(cfg, [run for plan in search.values() for run in plan], sweep, train_overrides)
    picked = [[*cell, f"optim.lr={chosen_rate(sweep, [name for name, _ in plan])}"] for cell, plan in search.items()]
    seeds = _plan(common, picked, range(1, cfg.seeds))
    print(f"2) seeds: {len(seeds)} runs, each cell at its rate chosen on validation", file=sys.stderr)
    _train(cfg, seeds, sweep, train_overrides)
    print(f"3) analysing {sweep} ...", file=sys.stderr)
    analyse_sweep(sweep, "lora-analysis ablate")
    html, _ = build_report(sweep)
    if cfg.figures:
        publish(html.parent, Path(cfg.figures))
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr)
    return html


def chosen_rate(sweep: Path, names: list[str]) -> float:
    """The learning rate of the best validation metric among the finished search runs ``names`` of one cell."""
    from lora_analysis.derive.tuned import lr_choices
    from lora_analysis.train.sweep import collect_runs

    runs = collect_runs(sweep)
    runs = runs[runs["run"].isin(names)].assign(cell="one")
    choices = lr_choices(runs, ["cell"])
    return float(choices.loc[choices["chosen"], "lr"].iloc[0])


def _plan(common: list[str], cells: list[list[str]] | list[tuple[str, ...]], seeds) -> list[tuple[str, list[str]]]:
    """(run name, overrides) of every cell at every seed; the name from the cell, its rate and its seed."""
    return [(run_name([*cell, f"seed={seed}"]), [*common, *cell, f"seed={seed}"]) for cell in cells for seed in seeds]


def _train(cfg: AblateConfig, plan: list[tuple[str, list[str]]], sweep: Path, train_overrides) -> None:
    if not plan:
        return
    check_ours(sweep, "sweep", SweepDir.owns, "choose another name= or out_dir=")  # at once, not in each worker
    workers = cfg.workers or default_workers(train_overrides, sum(not is_done(sweep / n) for n, _ in plan))
    train_all(plan, sweep, cfg.out_dir, workers)

