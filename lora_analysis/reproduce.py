"""``lora-analysis reproduce [preset=paper|quick] [train overrides ...]``: the paper's Section 7, end to end.

1) train the runs the preset names (a sweep folder ``<out_dir>/<preset>``, finished runs skipped),
2) analyse them (``analysis/``), 3) draw the figures and write the report (``report/``), and with
``figures=<folder>`` copy the report and its figures there. Any other ``key=value`` is a training
override applied to every run: ``model=hf model.name_or_path=/models/x data=file data.path=y.csv``
runs the same reproduction on another model and task; ``device=auto`` takes a GPU when there is one.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from lora_analysis.atomic import write_json
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.hydra_compose import compose, help_text
from lora_analysis.runs import is_done, run_name


@dataclass
class Preset:
    name: str = "paper"  # the sweep folder under out_dir
    description: str = ""
    common: list[str] = field(default_factory=list)  # training overrides for every run of the preset
    runs: list[list[str]] = field(default_factory=list)  # one list of overrides per run
    layer: int | None = None  # the layer Figures 3 and 4 show; None: the middle one


@dataclass
class ReproduceConfig:
    preset: Preset = field(default_factory=Preset)
    out_dir: str = "runs"
    name: str | None = None  # the sweep folder; None: the preset's name
    figures: str | None = None  # copy report.html, report.md and figures/ here (the repository's figures/)

    def __post_init__(self) -> None:
        if not self.preset.runs:
            raise LoraAnalysisError(f"preset {self.preset.name!r} names no runs")


ConfigStore.instance().store(name="reproduce_schema", node=ReproduceConfig)
_OWN_KEYS = ("preset", "out_dir", "name", "figures")


def main(argv: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(__doc__, "reproduce"))
        return 0
    own = [a for a in argv if a.partition("=")[0].split(".")[0].lstrip("+~") in _OWN_KEYS]
    train_overrides = [a for a in argv if a not in own]
    cfg: ReproduceConfig = OmegaConf.to_object(compose("reproduce", own))
    report = reproduce(cfg, train_overrides)
    print(f"report: {report}")
    return 0


def reproduce(cfg: ReproduceConfig, train_overrides: Sequence[str] = ()) -> Path:
    """Train, analyse and report; returns the path of the HTML report."""
    from lora_analysis.compare import analyze
    from lora_analysis.report import build_report

    started = time.perf_counter()
    sweep = Path(cfg.out_dir) / (cfg.name or cfg.preset.name)
    plan = [(run_name(run), [*cfg.preset.common, *train_overrides, *run]) for run in cfg.preset.runs]
    timings = train_all(plan, sweep, cfg.out_dir)
    print(f"analysing {sweep} ...", file=sys.stderr)
    analyze([sweep]).save(sweep / "analysis")
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


def train_all(plan: list[tuple[str, list[str]]], sweep: Path, out_dir: str) -> dict[str, float]:
    """Train each (run name, overrides) into the sweep, skipping finished runs; show i of N and time left."""
    from lora_analysis.train_app import run_overrides

    timings: dict[str, float] = {}
    todo = [name for name, _ in plan if not is_done(sweep / name)]
    print(f"{sweep}: {len(plan)} runs, {len(plan) - len(todo)} finished already", file=sys.stderr)
    for index, (name, overrides) in enumerate(plan, start=1):
        if name not in todo:
            continue
        done = [timings[n] for n in timings]
        left = f", about {sum(done) / len(done) * (len(todo) - len(done)) / 60:.0f} min left" if done else ""
        print(f"run {index} of {len(plan)}: {name}{left}", file=sys.stderr)
        start = time.perf_counter()
        run_overrides([*overrides, f"name={sweep.name}", f"out_dir={out_dir}"], name=name)
        timings[name] = round(time.perf_counter() - start, 1)
    return timings


def publish(report_dir: Path, target: Path) -> None:
    """Copy a report folder (report.html, report.md, figures/) to ``target``, replacing what was there."""
    target.mkdir(parents=True, exist_ok=True)
    for item in report_dir.iterdir():
        destination = target / item.name
        if item.is_dir():
            shutil.rmtree(destination, ignore_errors=True)
            shutil.copytree(item, destination)
        else:
            shutil.copy2(item, destination)


def load_timing(sweep: Path) -> dict:
    path = Path(sweep) / "reproduce.json"
    return json.loads(path.read_text()) if path.is_file() else {}
