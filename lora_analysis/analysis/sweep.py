"""A sweep's analysis folder kept up to date: analysed when missing or older than the sweep's finished runs."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pandas as pd

from lora_analysis.errors import LoraAnalysisError, first_line
from lora_analysis.layout import SweepDir


def stale_reason(sweep: Path) -> str | None:
    """Why ``<sweep>/analysis`` is missing or lacks some of the sweep's finished adapters, or None."""
    folder = SweepDir(sweep).analysis
    if not folder.exists() or not folder.table("runs").is_file():
        return "no analysis yet"
    try:
        analysed = set(pd.read_parquet(folder.table("runs"), columns=["run"])["run"])
    except (OSError, ValueError, KeyError) as error:  # damaged: analysing again rebuilds it
        return f"{folder.table('runs')} is unreadable ({first_line(error)})"
    new = sorted(run.name for run in SweepDir(sweep).finished_runs() if run.has_adapter() and run.name not in analysed)
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
    from lora_analysis.analysis.compare import analyze  # torch: imported only when there is work

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = analyze(sweep, progress=progress)
    for warning in caught:
        print(f"{command}: note: {warning.message}", file=sys.stderr)
    result.save(SweepDir(sweep).analysis.path)
