"""What a report reads from a sweep folder: the sweep table, each run's history and the analysis tables.

File names come from ``layout`` and the analysis tables from ``AnalysisResult.load`` (partially, so a
missing table is an empty one, named in ``missing``, and the report says so where it would show it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lora_analysis.derive.queries import unfinished_cells
from lora_analysis.errors import LoraAnalysisError, first_line
from lora_analysis.layout import SweepDir

TABLES = ("phi", "spectra", "modules", "dw_vs_w", "w_dw_phi", "intruders")  # the analysis tables a report shows


@dataclass
class SweepData:
    """Everything a report reads from a sweep folder; absent tables are empty frames, listed in ``missing``."""

    sweep_dir: Path
    runs: pd.DataFrame
    histories: dict[str, pd.DataFrame]
    tables: dict[str, pd.DataFrame]
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unfinished: pd.DataFrame = field(default_factory=pd.DataFrame)  # started, not finished: queries.unfinished_cells


def load_sweep(sweep_dir: str | Path) -> SweepData:
    """Read a sweep folder; only the sweep table is required."""
    from lora_analysis.analysis.tables import AnalysisResult

    sweep = SweepDir(Path(sweep_dir))
    if not sweep.is_sweep():
        raise LoraAnalysisError(f"{sweep.path} is not a sweep folder: no {SweepDir.TABLE} (expected the output of "
                                "lora-analysis train -m or reproduce)")
    runs = sweep.read_table()
    histories, missing = {}, []
    for name in runs["run"].astype(str):
        run = sweep.run(name)
        if not run.history_path.is_file():
            missing.append(_relative(run.history_path, sweep))
            continue
        try:
            history = pd.read_csv(run.history_path)
            if not {"step", "loss"} <= set(history.columns):
                raise ValueError("no step and loss columns")
            histories[name] = history
        except (OSError, ValueError, UnicodeDecodeError) as error:  # emptied or damaged by hand: left out, said
            missing.append(f"{_relative(run.history_path, sweep)} (unreadable: {first_line(error)})")
    analysis = sweep.analysis
    result = AnalysisResult.load(analysis.path, partial=True)
    missing += [_relative(analysis.table(name), sweep) for name in TABLES if not analysis.table(name).is_file()]
    return SweepData(sweep.path, runs, histories, {name: getattr(result, name) for name in TABLES},
                     list(result.notes), missing, unfinished_runs(sweep))


def unfinished_runs(sweep: SweepDir) -> pd.DataFrame:
    """One row per run started and not finished (``SweepDir.unfinished_runs``): the cell it will join when it
    finishes (``queries.unfinished_cells`` of its flattened config; a config that does not read: the name alone)."""
    rows = []
    for run in sweep.unfinished_runs():
        try:
            config = run.load_config() or {}
        except LoraAnalysisError:  # damaged (RunDir.load_config says how): the run is still named
            config = {}
        rows.append({"run": run.name, **pd.json_normalize(config, sep=".").iloc[0].to_dict()} if config
                    else {"run": run.name})
    return unfinished_cells(pd.DataFrame(rows))


def _relative(path: Path, sweep: SweepDir) -> str:
    return path.relative_to(sweep.path).as_posix()


def without_runs(data: SweepData, names: set[str], *, tables_only: bool = False) -> SweepData:
    """``data`` without the runs ``names`` (the shuffled-label controls): in no table, pair or history.
    ``tables_only``: out of the analysis tables (phi, modules, ...) only, kept in the sweep table and histories
    (an ablation's search runs at other learning rates: their accuracies still make the U-curves)."""
    if not names:
        return data
    tables = {}
    for key, frame in data.tables.items():
        keep = pd.Series(True, index=frame.index)
        for column in ("run", "run_a", "run_b"):
            if column in frame:
                keep &= ~frame[column].astype(str).isin(names)
        tables[key] = frame[keep]
    if tables_only:
        return SweepData(data.sweep_dir, data.runs, data.histories, tables, data.notes, data.missing, data.unfinished)
    runs = data.runs[~data.runs["run"].astype(str).isin(names)] if "run" in data.runs else data.runs
    histories = {k: v for k, v in data.histories.items() if k not in names}
    return SweepData(data.sweep_dir, runs, histories, tables, data.notes, data.missing, data.unfinished)
