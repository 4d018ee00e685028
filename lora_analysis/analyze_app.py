"""``lora-analysis analyze <sweep folder | run folders | adapter folders> [key=value ...]``.

Composes ``conf/analyze.yaml`` (typed by ``AnalyzeConfig``) with the overrides, runs
``compare.run_analysis`` and writes the tables as Parquet under ``<sweep>/analysis/`` (or ``out=``).
Notes about skipped runs or analyses are printed on stderr, one line each.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from lora_analysis.compare import AnalyzeConfig, default_out, run_analysis
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.hydra_compose import compose, help_text, split_args
from lora_analysis.runs import finished_runs

SUMMARY = """\
usage: lora-analysis analyze <sweep folder | run folders | adapter folders> [key=value ...]

Subspace analysis of LoRA adapters (Hu et al. 2021, Section 7): phi grids across ranks, seeds and a
Gaussian baseline for A, A_init, A - A_init, B and dW; spectra; dW against the base weights W
(Table 7, Figure 8) and intruder dimensions. Tables go to <sweep>/analysis/*.parquet (or out=...).
"""

ConfigStore.instance().store(name="analyze_schema", node=AnalyzeConfig)


def stale_reason(sweep: Path) -> str | None:
    """Why ``<sweep>/analysis`` is missing or lacks some of the sweep's finished adapters, or None."""
    folder = sweep / "analysis"
    if not (folder / "analysis.json").is_file() or not (folder / "runs.parquet").is_file():
        return "no analysis yet"
    analysed = set(pd.read_parquet(folder / "runs.parquet", columns=["run"])["run"])
    new = sorted(run.name for run in finished_runs(sweep)
                 if (run / "adapter_config.json").is_file() and run.name not in analysed)
    if not new:  # runs analysed and since deleted stay in the tables: their results were real
        return None
    shown = ", ".join(new[:3]) + (", ..." if len(new) > 3 else "")
    return f"analysis is out of date: {len(new)} finished run(s) not analysed ({shown})"


def ensure_analysis(sweep: Path, run_it: bool = True, command: str = "lora-analysis") -> None:
    """Analyse the sweep when ``<sweep>/analysis`` is missing or older than its finished runs."""
    reason = stale_reason(sweep)
    if reason is None:
        return
    if not run_it:
        raise LoraAnalysisError(f"{sweep}: {reason}: run lora-analysis analyze {sweep} (or leave analyze=true)")
    print(f"{command}: {sweep}: {reason}; analysing it", file=sys.stderr)
    analyse_sweep(sweep, command, progress=False)


def analyse_sweep(sweep: Path, command: str = "lora-analysis", progress: bool = True) -> None:
    """Analyse a sweep into ``<sweep>/analysis``; the analysis' warnings become one ``note:`` line each."""
    from lora_analysis.compare import analyze

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = analyze(sweep, progress=progress)
    for warning in caught:
        print(f"{command}: note: {warning.message}", file=sys.stderr)
    result.save(sweep / "analysis")


def main(argv: Sequence[str] | None = None) -> int:
    overrides, wants_help = split_args(list(sys.argv[1:] if argv is None else argv), "inputs")
    if wants_help:
        print(help_text(SUMMARY, "analyze"))
        return 0
    cfg: AnalyzeConfig = OmegaConf.to_object(compose("analyze", overrides))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_analysis(cfg)
    for warning in caught:
        print(f"lora-analysis analyze: note: {warning.message}", file=sys.stderr)
    folder = result.save(cfg.out or default_out(cfg.inputs))
    rows = ", ".join(f"{name} {len(frame)}" for name, frame in result.tables().items())
    print(f"analysed {len(result.runs)} runs; wrote {folder} ({rows} rows)")
    return 0
