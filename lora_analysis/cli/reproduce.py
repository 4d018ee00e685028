"""usage: lora-analysis reproduce [preset=paper|quick] [name=...] [figures=<folder>] [train overrides ...]

The paper's Section 7, end to end: 1) train the runs the preset names into the sweep folder
<out_dir>/<preset> (finished runs are skipped, so an interrupted reproduction resumes), 2) analyse them
(analysis/), 3) draw the figures and write the report (report/report.html and report.md); with
figures=<folder> the report and its figures are copied there. Any other key=value is a training
override applied to every run: model=hf model.name_or_path=/models/x data=file data.path=y.csv runs the
same reproduction on another model and task; device=auto takes a GPU when there is one.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from lora_analysis.atomic import write_atomic, write_json
from lora_analysis.cli.schemas import ReproduceConfig
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.hydra_compose import compose, help_text, to_settings
from lora_analysis.layout import ReportDir, is_done
from lora_analysis.machine import resolve_device, usable_cores
from lora_analysis.owned import check_ours, remove_own
from lora_analysis.train.sweep import run_name

_OWN_KEYS = ("preset", "out_dir", "name", "figures", "workers")


def main(argv: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(__doc__, "reproduce"))
        return 0
    own = [a for a in argv if a.partition("=")[0].split(".")[0].lstrip("+~") in _OWN_KEYS]
    train_overrides = [a for a in argv if a not in own]
    cfg: ReproduceConfig = to_settings(compose("reproduce", own))
    report = reproduce(cfg, train_overrides)
    print(f"report: {report}")
    return 0


def reproduce(cfg: ReproduceConfig, train_overrides: Sequence[str] = ()) -> Path:
    """Train, analyse and report; returns the path of the HTML report."""
    from lora_analysis.analysis.sweep import analyse_sweep
    from lora_analysis.show.report import build_report

    started = time.perf_counter()
    if cfg.figures:  # refused before hours of training, not after
        check_ours(cfg.figures, "figures", ReportDir.owns, "choose another figures=")
    sweep = Path(cfg.out_dir) / (cfg.name or cfg.preset.name)
    plan = [(run_name([o for o in run if not matched(o)]), [*cfg.preset.common, *train_overrides, *run])
            for run in cfg.preset.runs]
    workers = cfg.workers or default_workers(train_overrides, sum(not is_done(sweep / n) for n, _ in plan))
    timings = train_all(plan, sweep, cfg.out_dir, workers)
    print(f"analysing {sweep} ...", file=sys.stderr)
    analyse_sweep(sweep, "lora-analysis reproduce")
    html, markdown = build_report(sweep, layer=cfg.preset.layer)
    elapsed = time.perf_counter() - started
    write_json(sweep / "reproduce.json", {
        "preset": cfg.preset.name, "command": "lora-analysis reproduce " + " ".join(sys.argv[2:]),
        "seconds": round(elapsed, 1), "train_seconds": timings,
    })
    if cfg.figures:
        publish(html.parent, Path(cfg.figures))
    print(f"done in {elapsed / 60:.1f} min", file=sys.stderr)
    return html


MATCHED = "optim.steps=@"  # optim.steps=@<run>: as many steps as that run's best_step (a matched control)


def matched(override: str) -> bool:
    return override.startswith(MATCHED)


def train_all(plan: list[tuple[str, list[str]]], sweep: Path, out_dir: str, workers: int) -> dict[str, float]:
    """Train each (run name, overrides) into the sweep, skipping finished runs; show i of N and time left.

    With ``workers > 1`` runs train in parallel processes, the cores divided among them (see
    ``default_workers`` for when that pays). A run with ``optim.steps=@<run>`` (a shuffled-label control)
    trains after that run, for as many steps as it kept (its ``best_step``), without early stopping, and
    keeps its last state (``optim.patience=0 optim.keep=last``).
    """
    first = [(n, o) for n, o in plan if not any(map(matched, o))]
    timings = _train_plan(first, plan, sweep, out_dir, workers)
    later = [(n, [x for o in overrides for x in _matched_steps(o, sweep)]) for n, overrides in plan
             if any(map(matched, overrides))]
    return timings | _train_plan(later, plan, sweep, out_dir, workers) if later else timings


def _matched_steps(override: str, sweep: Path) -> list[str]:
    """``optim.steps=@<run>`` as that run's ``best_step``, no early stopping, the last state kept; any other
    override as it is."""
    if not matched(override):
        return [override]
    from lora_analysis.layout import RunDir

    source = RunDir(sweep / override.removeprefix(MATCHED))
    if not source.is_done():
        raise LoraAnalysisError(f"{override}: run {source.name} has not finished in {sweep}, so there is no step "
                                "count to match")
    return [f"optim.steps={int(source.load_metrics()['best_step'])}", "optim.patience=0", "optim.keep=last"]


def _train_plan(part, plan, sweep: Path, out_dir: str, workers: int) -> dict[str, float]:
    if not part:
        return {}
    todo = [(name, [*overrides, f"name={sweep.name}", f"out_dir={out_dir}"])
            for name, overrides in part if not is_done(sweep / name)]
    print(f"{sweep}: {len(part)} runs, {len(part) - len(todo)} finished already", file=sys.stderr)
    started, timings = time.perf_counter(), {}
    if workers <= 1:
        for name, overrides in todo:
            _report_progress(name, "starts", plan, timings, len(todo), workers, started)
            timings[name] = _train_one(overrides, name)
        return timings
    threads = max(1, usable_cores() // workers)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    pool = ProcessPoolExecutor(workers, mp_context=context)
    futures = {pool.submit(_train_one, [*o, f"threads={threads}", "progress=false"], n): n for n, o in todo}
    print(f"training {len(todo)} runs, {workers} at a time with {threads} thread(s) each", file=sys.stderr)
    try:
        for future in as_completed(futures):
            name = futures[future]
            timings[name] = future.result()
            _report_progress(name, "finished", plan, timings, len(todo), workers, started)
    finally:  # on an error, runs not started yet are dropped; running ones end (or keep their checkpoint)
        pool.shutdown(wait=True, cancel_futures=True)
    return timings


def _train_one(overrides: list[str], name: str) -> float:
    from lora_analysis.train.sweep import run_overrides

    start = time.perf_counter()
    run_overrides(overrides, name=name)
    return round(time.perf_counter() - start, 1)


def _report_progress(name, event, plan, timings, todo, workers, started) -> None:
    index = [n for n, _ in plan].index(name) + 1
    left = ""
    if timings:
        remaining = (todo - len(timings)) * (sum(timings.values()) / len(timings)) / workers
        left = f" ({(time.perf_counter() - started) / 60:.1f} min so far, about {remaining / 60:.0f} min left)"
    print(f"run {index} of {len(plan)}: {name} {event}{left}", file=sys.stderr)


def default_workers(train_overrides: Sequence[str], runs: int) -> int:
    """Two parallel runs on a CPU with two or more cores and four or more runs to train; else one.

    A GPU is kept busy by one run. On a 2-core CPU (``benchmarks/workers.py``, AMD EPYC, fp32), two runs of
    200 steps took 316.8 s two at a time on one thread each against 361.8 s one after another on two threads
    (1.14x). Runs stopped at their validation optimum differ in length, and the longer one then finishes
    alone on one thread: for two or three runs that eats the gain, so they go one after another; from four
    runs on, the queue keeps both workers busy.
    """
    device = next((o.split("=", 1)[1] for o in train_overrides if o.startswith("device=")), "auto")
    on_gpu = resolve_device(device).type == "cuda"
    return 1 if on_gpu or usable_cores() < 2 or runs < 4 else 2


def publish(report_dir: Path, target: Path) -> None:
    """Copy a report folder (report.html, report.md, figures/, its tables) to ``target``, file by file.

    ``target`` must hold the report's own files only (``ReportDir.owns``); each is replaced atomically, and
    figure files of an earlier report that this one no longer draws are removed.
    """
    check_ours(target, "figures", ReportDir.owns, "choose another figures=")
    source, out = ReportDir(report_dir), ReportDir(target)
    drawn = {p.name for p in source.figures_path.iterdir()} if source.figures_path.is_dir() else set()
    remove_own(out.figures_path, ReportDir.owns_figure, keep=lambda entry: entry.name in drawn)
    for item in sorted(source.path.rglob("*")):
        if item.is_file():
            destination = target / item.relative_to(source.path)
            write_atomic(destination, lambda tmp, item=item: shutil.copyfile(item, tmp))


def load_timing(sweep: Path) -> dict:
    path = Path(sweep) / "reproduce.json"
    return json.loads(path.read_text()) if path.is_file() else {}
