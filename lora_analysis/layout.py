"""The folder contract between the stages: every file name a stage writes or reads, in one place.

A sweep (``SweepDir``) is ``<out_dir>/<name>/``; every run of it is a ``RunDir``; its analysis is an
``AnalysisDir``::

    runs/paper/                    SweepDir
      runs.parquet                 the sweep table: one row per finished run (config values, metrics)
      r8-seed0/                    RunDir
        config.yaml                the resolved config, written first
        adapter_config.json        PEFT's own save_pretrained ...
        adapter_model.safetensors  ... so peft.PeftModel.from_pretrained loads the run
        adapter_init.safetensors   A and B at step 0 (the init control)
        checkpoint.safetensors     while training: the state to resume from (removed at the end)
        history.csv                step, loss, learning rate; validation loss and accuracy where evaluated
        metrics.json               test scores at the validation optimum, best_step, stop_reason, timings, how
                                   far A moved, the precision used
        provenance.json            versions of torch, transformers, peft and this package, CPU/GPU, threads,
                                   the data file's sha256
        FAILED.json                a run that stopped on a non-finite loss: why (no DONE then)
        DONE                       written last: the run finished
        .train.lock                while training: held by the one process that trains the run
      analysis/                    AnalysisDir: <table>.parquet, analysis.json, inputs.safetensors
      report/                      report.html, report.md, figures/, accuracy.parquet, runs.csv

Training writes run folders and the sweep table; analysis reads them (and any PEFT adapter folder) and
writes an analysis folder; the report reads both. None of them spells a file name of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from lora_analysis.errors import LoraAnalysisError, first_line
from lora_analysis.owned import all_ours, plain_file

# PEFT's adapter files (its format, not ours).
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_BIN = "adapter_model.bin"
MODEL_CARD = "README.md"  # PEFT's model card, recognised by its front matter


# Settings added after runs were saved, with the value such a run had without naming it: a run's saved
# config is read with them filled in, so an older run is skipped, paired and tabled like a new one.
ADDED_SETTINGS: dict[tuple[str, str], object] = {("data", "shuffle_labels"): False, ("data", "many_labels"): False,
                                                  ("data", "val_size"): 0, ("optim", "keep"): "best"}


@dataclass(frozen=True)
class RunDir:
    """One training run's folder."""

    path: Path

    CONFIG = "config.yaml"
    INIT = "adapter_init.safetensors"
    CHECKPOINT = "checkpoint.safetensors"
    HISTORY = "history.csv"
    METRICS = "metrics.json"
    PROVENANCE = "provenance.json"
    FAILED = "FAILED.json"
    DONE = "DONE"
    LOCK = ".train.lock"  # held (flock) by the process training the run: one trainer per run
    TENSORBOARD = "tensorboard"  # logger=tensorboard's event files
    FILES = frozenset({CONFIG, INIT, CHECKPOINT, HISTORY, METRICS, PROVENANCE, FAILED, DONE, LOCK,
                       ADAPTER_CONFIG, ADAPTER_WEIGHTS})

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def owns(cls, entry: Path) -> bool:
        """Whether ``entry`` (in a run folder) is a file the trainer writes there (``owned``)."""
        if entry.name == cls.TENSORBOARD:
            return all_ours(entry, lambda e: plain_file(e) and e.name.startswith("events.out.tfevents."))
        if entry.name == MODEL_CARD:
            return plain_file(entry) and _is_peft_card(entry)
        return entry.name in cls.FILES and plain_file(entry)

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def init_path(self) -> Path:
        return self.path / self.INIT

    @property
    def checkpoint_path(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def history_path(self) -> Path:
        return self.path / self.HISTORY

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def provenance_path(self) -> Path:
        return self.path / self.PROVENANCE

    @property
    def done_path(self) -> Path:
        return self.path / self.DONE

    @property
    def lock_path(self) -> Path:
        return self.path / self.LOCK

    @property
    def failed_path(self) -> Path:
        return self.path / self.FAILED

    def is_done(self) -> bool:
        return self.done_path.is_file()

    def failure(self) -> str | None:
        """Why the run stopped without finishing (its ``FAILED.json``), or None when it did not fail."""
        if not self.failed_path.is_file():
            return None
        try:
            record = json.loads(self.failed_path.read_text())
            return str(record.get("reason", "no reason recorded"))
        except (OSError, ValueError, AttributeError):
            return f"{self.failed_path} is unreadable"

    def has_adapter(self) -> bool:
        return (self.path / ADAPTER_CONFIG).is_file()

    def has_weights(self) -> bool:
        return (self.path / ADAPTER_WEIGHTS).is_file()

    def load_config(self) -> dict | None:
        """The saved config, or None when there is none; a file that is not a YAML mapping is an error."""
        if not self.config_path.is_file():
            return None
        try:
            config = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise LoraAnalysisError(f"{self.config_path}: not valid YAML ({first_line(error)})") from error
        except (OSError, UnicodeDecodeError) as error:  # unreadable, or not text: damaged
            raise LoraAnalysisError(f"{self.config_path}: cannot be read as UTF-8 text ({first_line(error)})"
                                    ) from error
        if config is None:
            return {}
        if not isinstance(config, dict):
            kind = type(config).__name__
            raise LoraAnalysisError(f"{self.config_path}: expected a mapping of config keys, got a {kind}")
        for (group, key), value in ADDED_SETTINGS.items():
            if isinstance(config.get(group), dict):
                config[group].setdefault(key, value)
        return config

    def load_metrics(self) -> dict:
        try:
            return json.loads(self.metrics_path.read_text())
        except (OSError, ValueError) as error:
            raise LoraAnalysisError(f"{self.metrics_path}: unreadable ({first_line(error)})") from error


@dataclass(frozen=True)
class AnalysisDir:
    """An analysis folder: one Parquet file per table of ``analysis.tables.SCHEMAS`` and ``analysis.json``."""

    path: Path

    META = "analysis.json"
    INPUTS = "inputs.safetensors"  # every module's input statistics (analysis/inputs.py)
    TABLES = ("phi", "spectra", "modules", "dw_vs_w", "w_dw_phi", "intruders", "runs")  # analysis.tables.SCHEMAS
    REBUILD = "rebuild it with lora-analysis analyze <its sweep or adapter folders> (out= this folder)"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def owns(cls, entry: Path) -> bool:
        """Whether ``entry`` (in an analysis folder) is a file ``AnalysisResult.save`` writes."""
        own = {cls.META, cls.INPUTS, *(f"{table}.parquet" for table in cls.TABLES)}
        return entry.name in own and plain_file(entry)

    def unreadable(self, path: Path, error: BaseException) -> LoraAnalysisError:
        """The one-line error for a damaged file of this folder, saying how to rebuild it."""
        return LoraAnalysisError(f"{path}: unreadable ({first_line(error)}); {self.REBUILD}")

    def table(self, name: str) -> Path:
        return self.path / f"{name}.parquet"

    @property
    def meta_path(self) -> Path:
        return self.path / self.META

    @property
    def inputs_path(self) -> Path:
        return self.path / self.INPUTS

    def exists(self) -> bool:
        return self.meta_path.is_file()

    @property
    def report_path(self) -> Path:
        """Where this analysis' report goes: ``report/`` beside an ``analysis/`` folder, ``<name>-report/``
        beside any other; never inside it, since a new analysis replaces its folder whole."""
        if self.path.name == SweepDir.ANALYSIS:
            return self.path.parent / SweepDir.REPORT
        return self.path.parent / f"{self.path.name}-{SweepDir.REPORT}"


@dataclass(frozen=True)
class SweepDir:
    """A sweep's folder: its runs, the sweep table, its analysis and its report."""

    path: Path

    TABLE = "runs.parquet"
    LOCK = ".runs.lock"
    ANALYSIS = "analysis"
    REPORT = "report"
    REPRODUCE = "reproduce.json"
    MULTIRUN = "multirun.yaml"  # Hydra's record of a -m sweep
    SUBMITIT = ".submitit"  # the submitit launchers' job logs (hydra/launcher=submitit_local, slurm)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def owns(cls, entry: Path) -> bool:
        """Whether ``entry`` (in a sweep folder) is the toolkit's: its files, its analysis and report, or a
        run folder (a folder of run files only, or an empty one)."""
        if entry.name in (cls.TABLE, cls.LOCK, cls.REPRODUCE, cls.MULTIRUN):
            return plain_file(entry)
        if entry.name == cls.SUBMITIT:
            return entry.is_dir() and not entry.is_symlink()
        if entry.name == cls.ANALYSIS:
            return all_ours(entry, AnalysisDir.owns)
        if entry.name == cls.REPORT:
            return all_ours(entry, ReportDir.owns)
        return all_ours(entry, RunDir.owns)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def table_path(self) -> Path:
        return self.path / self.TABLE

    @property
    def lock_path(self) -> Path:
        return self.path / self.LOCK

    @property
    def analysis(self) -> AnalysisDir:
        return AnalysisDir(self.path / self.ANALYSIS)

    @property
    def report_path(self) -> Path:
        return self.path / self.REPORT

    @property
    def reproduce_path(self) -> Path:
        return self.path / self.REPRODUCE

    def is_sweep(self) -> bool:
        return self.table_path.is_file()

    def read_table(self, columns: list[str] | None = None):
        """The sweep table as a DataFrame; a damaged file is one line saying how to rebuild it."""
        import pandas as pd

        try:
            return pd.read_parquet(self.table_path, columns=columns)
        except (OSError, ValueError) as error:
            raise LoraAnalysisError(
                f"{self.table_path}: unreadable ({first_line(error)}); rebuild it by re-launching the sweep's "
                "lora-analysis train command (finished runs are skipped, the table is rewritten)"
            ) from None

    def run(self, name: str) -> RunDir:
        return RunDir(self.path / name)

    def finished_runs(self) -> list[RunDir]:
        """Runs with a ``DONE`` marker and no ``FAILED.json`` (a failed run is never a finished one)."""
        runs = (RunDir(p.parent) for p in self.path.glob(f"*/{RunDir.DONE}"))
        return sorted((r for r in runs if not r.failed_path.exists()), key=lambda r: r.path)

    def unfinished_runs(self) -> list[RunDir]:
        """Run folders with a saved config and neither ``DONE`` nor ``FAILED.json``: started and not finished
        (a sweep still running, a search paused at its rung, or one stopped)."""
        runs = (RunDir(p.parent) for p in self.path.glob(f"*/{RunDir.CONFIG}"))
        return sorted((r for r in runs if not r.done_path.exists() and not r.failed_path.exists()),
                      key=lambda r: r.path)

    def failed_runs(self) -> list[RunDir]:
        return sorted((RunDir(p.parent) for p in self.path.glob(f"*/{RunDir.FAILED}")), key=lambda r: r.path)


def is_adapter_folder(folder: Path) -> bool:
    """A PEFT adapter folder or a run folder of this toolkit (``find_runs`` reads either)."""
    return (folder / ADAPTER_CONFIG).is_file() or (folder / RunDir.CONFIG).is_file()


def holds_adapters(path: Path) -> bool:
    """Whether ``path`` is an adapter or run folder, or has one among its subfolders."""
    if not path.is_dir():
        return False
    return is_adapter_folder(path) or any(p.is_dir() and is_adapter_folder(p) for p in path.iterdir())


def is_done(run_dir: str | Path) -> bool:
    return RunDir(Path(run_dir)).is_done()


@dataclass(frozen=True)
class ReportDir:
    """A report folder (``<sweep>/report`` unless chosen): the two documents, their figures and two tables."""

    path: Path

    HTML = "report.html"
    MARKDOWN = "report.md"
    FIGURES = "figures"
    ACCURACY = "accuracy.parquet"
    RUNS_CSV = "runs.csv"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def owns(cls, entry: Path) -> bool:
        """Whether ``entry`` (in a report folder) is the report's: its documents, tables and figure files."""
        if entry.name == cls.FIGURES:
            return all_ours(entry, cls.owns_figure)
        return entry.name in (cls.HTML, cls.MARKDOWN, cls.ACCURACY, cls.RUNS_CSV) and plain_file(entry)

    @staticmethod
    def owns_figure(entry: Path) -> bool:
        """A figure file the report draws (``figures/<name>.png`` and ``.pdf``)."""
        return plain_file(entry) and entry.suffix in (".png", ".pdf")

    @property
    def html_path(self) -> Path:
        return self.path / self.HTML

    @property
    def markdown_path(self) -> Path:
        return self.path / self.MARKDOWN

    @property
    def figures_path(self) -> Path:
        return self.path / self.FIGURES

    @property
    def accuracy_path(self) -> Path:
        return self.path / self.ACCURACY

    @property
    def runs_csv_path(self) -> Path:
        return self.path / self.RUNS_CSV


def _is_peft_card(path: Path) -> bool:
    """PEFT's model card: YAML front matter naming ``library_name: peft`` in its first lines."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return head.startswith("---") and "library_name: peft" in head
