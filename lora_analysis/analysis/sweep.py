"""An analysis folder kept up to date: a sweep's (analysed when missing or older than its finished runs), or
that of a folder of adapters (analysed when missing or when the adapters in the folder changed)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from lora_analysis.errors import LoraAnalysisError, first_line, printable, utf8
from lora_analysis.layout import AnalysisDir, SweepDir

if TYPE_CHECKING:
    from lora_analysis.analysis.settings import AnalyzeConfig
    from lora_analysis.analysis.tables import AnalysisResult


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
    analyse_into([sweep], SweepDir(sweep).analysis.path, command, progress)


def analyse_into(inputs: list[Path], out: Path, command: str = "lora-analysis", progress: bool = True) -> Path:
    """Analyse ``inputs`` with the default settings into ``out``; warnings become ``note:`` lines on stderr."""
    from lora_analysis.analysis.settings import (
        AnalyzeConfig,  # numpy and the analysis: imported only when there is work
    )

    return analysis_with_notes(AnalyzeConfig(inputs=[str(p) for p in inputs], progress=progress), command).save(out)


def analysis_with_notes(cfg: AnalyzeConfig, command: str = "lora-analysis") -> AnalysisResult:
    """``compare.run_analysis(cfg)``, each of its warnings printed as one ``<command>: note:`` line on stderr."""
    from lora_analysis.analysis.compare import run_analysis

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_analysis(cfg)
    for warning in caught:
        print(f"{command}: note: {printable(utf8(str(warning.message)))}", file=sys.stderr)
    return result


def adapters_stale_reason(folder: Path) -> str | None:
    """Why ``<folder>/analysis`` is missing or does not analyse exactly the adapters now in ``folder``, or None."""
    from lora_analysis.analysis.runs import find_runs

    analysis = AnalysisDir(folder / SweepDir.ANALYSIS)
    if not analysis.exists() or not analysis.table("runs").is_file():
        return "no analysis yet"
    try:
        folders = pd.read_parquet(analysis.table("runs"), columns=["folder"])["folder"]
    except (OSError, ValueError, KeyError) as error:
        return f"{analysis.table('runs')} is unreadable ({first_line(error)})"
    analysed = {Path(f).resolve() for f in folders.astype(str)}
    now = {run.folder.resolve() for run in find_runs([folder])[0]}
    if now == analysed:
        return None
    new = len(now - analysed)
    return f"analysis is out of date: it holds {len(analysed)} adapter(s), the folder {len(now)} ({new} new)"


def ensure_adapter_analysis(folder: Path, run_it: bool = True, command: str = "lora-analysis") -> Path:
    """The analysis folder of a folder of adapters, analysed first (default settings) when missing or stale."""
    analysis = folder / SweepDir.ANALYSIS
    reason = adapters_stale_reason(folder)
    if reason is None:
        return analysis
    if not run_it:
        raise LoraAnalysisError(f"{folder}: {reason}: run lora-analysis analyze {folder} (or leave analyze=true)")
    print(f"{command}: {folder}: {reason}; analysing it with the default settings (for the W tables and the "
          f"input-geometry baseline of foreign adapters: lora-analysis analyze {folder} base=MODEL data_path=FILE)",
          file=sys.stderr)
    return analyse_into([folder], analysis, command, progress=False)
