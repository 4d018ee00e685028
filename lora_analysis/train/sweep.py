"""Run folders and sweeps: names from overrides, skip-if-done, resume, and the sweep table.

A sweep is a folder ``<out_dir>/<name>/`` with one folder per run, named by the run's meaningful
overrides (``r8-seed0-attn``), so a re-launched sweep finds its finished runs and skips them. A run is
finished when its ``DONE`` marker exists; it is written last, after every other file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open

from lora_analysis.atomic import locked, try_lock, write_json, write_parquet, write_text
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.hydra_compose import compose, to_settings
from lora_analysis.layout import RunDir, SweepDir
from lora_analysis.owned import check_ours, remove_own
from lora_analysis.train import provenance
from lora_analysis.train.config import Method, Precision, TrainConfig, register_configs
from lora_analysis.train.divergence import DivergedError, record_failure
from lora_analysis.train.loggers import open_tracker

log = logging.getLogger("lora_analysis")
# Overrides that do not change what a run computes, or that name the sweep rather than the run.
_NOT_IN_NAME = {"name", "out_dir", "device", "threads", "progress", "experiment", "run_name", "preset", "pause_at",
                "halt"}
_SHORT = {"lora.r": "r", "seed": "seed", "lora.alpha": "alpha", "optim.lr": "lr", "optim.steps": "steps"}
_VALUE_ONLY = {"lora.targets", "method", "lora.init", "lora.init_stream", "data.shuffle_labels"}
_ORDER = ["method", "lora.r", "seed", "lora.targets"]
# Config keys that may differ between a finished run and a re-launch of it.
_VOLATILE = {"progress", "threads", "device", "out_dir", "logger", "pause_at", "halt"}
# Nested keys that change speed and memory only, not what a run computes, so a run trained with another value is
# skipped or resumed, not refused: how many texts an evaluation forwards at once (the scores agree to rounding).
_VOLATILE_NESTED = {("optim", "eval_batch_size")}


def run_name(overrides: Iterable[str], sweep_keys: Iterable[str] | None = None) -> str:
    """A folder name from a run's overrides: ``["seed=0", "lora.r=8", "lora.targets=attn"]`` -> ``r8-seed0-attn``.

    In a sweep only the swept keys name a run (``sweep_keys``); a single run is named by all its
    overrides. Known keys come first in a fixed order, so the name does not depend on the order of the
    overrides; defaults (``method=lora``) and keys that do not change the computation are left out.
    """
    keep = {*sweep_keys, "method"} if sweep_keys else None
    pairs = {}
    for item in overrides:
        key, _, value = str(item).lstrip("+~").partition("=")
        if key in _NOT_IN_NAME or key.startswith("hydra") or (key == "method" and value == "lora"):
            continue
        if key == "data.shuffle_labels":  # the control is named by what it is; off is the default, unnamed
            if value.lower() == "true":
                pairs[key] = "shuffled"
            continue
        if keep is None or key in keep:
            pairs[key] = value
    keys = [k for k in _ORDER if k in pairs] + sorted(k for k in pairs if k not in _ORDER)
    parts = []
    for key in keys:
        value = pairs[key].strip("[]'\"").replace(",", "+")
        if key in _VALUE_ONLY:
            parts.append(value)
        elif key in _SHORT:
            parts.append(f"{_SHORT[key]}{value}")
        else:
            parts.append(f"{key.split('.')[-1].split('/')[-1]}-{Path(value).name or value}")
    name = re.sub(r"[^A-Za-z0-9_.+=-]", "_", "-".join(parts)) or "default"
    if len(name) > 100:  # keep folder names usable; the hash keeps them distinct
        name = f"{name[:90]}-{zlib.crc32(name.encode()):08x}"
    return name


def comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _VOLATILE}


def prepare_run_dir(run_dir: Path, config: dict) -> str:
    """Decide what to do with ``run_dir`` for a run of ``config``: ``skip``, ``resume`` or ``start``.

    A finished run of the same config is skipped; a finished run of another config is an error (it
    would be silently mixed into the sweep). An unfinished run resumes from its checkpoint if its
    config matches; otherwise its leftovers are removed and it starts again cleanly.
    """
    run = RunDir(run_dir)
    diff = config_difference(run, config)
    same = diff == ""
    if run.is_done() and config.get("method") == Method.lora.value and not (run.has_adapter() and run.has_weights()):
        log.warning("%s: finished, but its adapter files are missing; training the run again", run_dir)
        run.done_path.unlink()
    if run.is_done():
        if not same:
            raise LoraAnalysisError(
                f"{run_dir} holds a finished run with a different config ({diff or 'its config.yaml is missing'}); "
                "use another name=... or remove that folder"
            )
        return "skip"
    if same and run.checkpoint_path.is_file():
        if readable_checkpoint(run):
            return "resume"
        log.warning("%s: discarded an unreadable %s; starting the run again", run_dir, RunDir.CHECKPOINT)
    _remove_all_but_lock(run)
    return "start"


def config_difference(run: RunDir, config: dict) -> str | None:
    """The first setting in which the run's saved config differs from ``config`` ("" when none; volatile
    keys such as threads or pause_at aside), None when the run saved no config. A key missing from an
    older run's config counts as null: a setting added later, left at its default."""
    saved = run.load_config()
    return None if saved is None else _first_difference(_resumable(saved), _resumable(config))


def _resumable(config: dict) -> dict:
    """``comparable`` without the nested keys that change speed only (``_VOLATILE_NESTED``)."""
    out = comparable(config)
    for section, key in _VOLATILE_NESTED:
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def planned_config(overrides: Sequence[str], name: str) -> dict:
    """The config ``run_overrides(overrides, name)`` would train and compare with the run folder's."""
    register_configs()
    settings = settings_from(compose("train", overrides), name)
    inherit_precision(settings, Path(settings.out_dir) / settings.name / name)
    return plain_config(settings)


def readable_checkpoint(run: RunDir) -> bool:
    """Whether the run's checkpoint reads whole (a truncated one would wedge every relaunch)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        load_file(str(run.checkpoint_path))
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return False
    return bool(checkpoint_progress(run))


def checkpoint_progress(run: RunDir) -> dict:
    """The trainer's ``Progress`` in the run's checkpoint (step, evaluations, early stopping), read from its
    header alone; {} without a checkpoint or with an unreadable one (the trainer then starts the run again)."""
    from safetensors import SafetensorError

    if not run.checkpoint_path.is_file():
        return {}
    try:
        with safe_open(str(run.checkpoint_path), "pt") as handle:
            return json.loads((handle.metadata() or {})["progress"])
    except (SafetensorError, OSError, ValueError, KeyError):
        return {}


def _first_difference(old: dict, new: dict, prefix: str = "") -> str:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {a!r} there, {b!r} now"
    return ""


def finish_run(run_dir: Path, metrics: dict) -> None:
    """Write metrics, then the completion marker, then refresh the sweep table."""
    run = RunDir(run_dir)
    write_json(run.metrics_path, metrics)
    write_json(run.done_path, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    write_sweep_table(run.path.parent)


def collect_runs(sweep_dir: Path) -> pd.DataFrame:
    """One row per finished run: run name, flattened config values, scalar metrics."""
    rows = []
    for run in SweepDir(sweep_dir).finished_runs():
        config = run.load_config() or {}
        metrics = run.load_metrics()
        row = {"run": run.name}
        row.update(pd.json_normalize(comparable(config), sep=".").iloc[0].to_dict())
        row.update({k: v for k, v in metrics.items() if not isinstance(v, dict | list)})
        row.update(provenance.columns(run.path))
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in frame.columns:  # mixed None/str columns (e.g. lora.layers) must stay writable
        if frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(v))
    return frame


def write_sweep_table(sweep_dir: Path) -> Path | None:
    """Rewrite ``runs.parquet`` from the finished runs, under a lock shared by parallel workers."""
    sweep = SweepDir(sweep_dir)
    with locked(sweep.lock_path):
        frame = collect_runs(sweep.path)
        if frame.empty:
            return None
        return write_parquet(sweep.table_path, frame)


def run_overrides(overrides: Sequence[str], name: str | None = None) -> tuple[Path, dict]:
    """Compose ``train`` with ``overrides`` and train that run in this process, unless finished.

    The run folder is ``<out_dir>/<name>/<run name>``; the run name is ``name``, or the one
    ``lora-analysis train <overrides>`` would use.
    """
    register_configs()
    name = name or run_name(overrides)
    settings = settings_from(compose("train", overrides), name)
    settings.threads = settings.threads or default_threads()
    run_dir = Path(settings.out_dir) / settings.name / name
    return run_dir, train_run(settings, run_dir)


def settings_from(cfg: DictConfig, name: str) -> TrainConfig:
    """The typed, checked config (``__post_init__`` runs here) with its run name filled in."""
    settings: TrainConfig = to_settings(cfg)
    settings.run_name = name
    if settings.lora.budget is not None and settings.method == Method.lora:
        from lora_analysis.train.modeling import rank_from_budget

        settings.lora.r = rank_from_budget(settings.model, settings.lora)
    return settings


def plain_config(settings: TrainConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(settings), enum_to_str=True)


class RunBusy(LoraAnalysisError):
    """The run is being trained by another live process (it holds the run's lock): skip it, it is no failure."""

    def __init__(self, run_dir: Path, pid: int):
        self.run_dir, self.pid = run_dir, pid
        super().__init__(f"{run_dir} is being trained by another process (pid {pid or 'unknown'})")


def train_run(settings: TrainConfig, run_dir: Path) -> dict:
    """Train one run into ``run_dir`` unless it is already finished; return its metrics.

    The run's lock is held from before anything of the run is read or written until the end, so two
    sweeps launched into one folder train each run once: ``RunBusy`` when another process holds it.
    A run folder, or a sweep folder above it, that holds anything but the toolkit's own files is refused
    before anything is written (``owned``): training never empties a folder of the user's.
    """
    hint = "choose another name=, out_dir= or hydra.run.dir="
    check_ours(run_dir, "run", RunDir.owns, hint)
    check_ours(run_dir.parent, "sweep", SweepDir.owns, hint)  # where runs.parquet and its lock are written
    try:
        with try_lock(RunDir(run_dir).lock_path) as holder:
            if holder is not None:
                raise RunBusy(run_dir, holder)
            return _train_locked(settings, run_dir)
    except LoraAnalysisError as error:
        if not isinstance(error, RunBusy):
            with contextlib.suppress(OSError):  # refused before anything was kept: leave no empty folder
                run_dir.rmdir()
        raise


def _train_locked(settings: TrainConfig, run_dir: Path) -> dict:
    from lora_analysis.train.trainer import train

    inherit_precision(settings, run_dir)
    config = plain_config(settings)
    action = prepare_run_dir(run_dir, config)
    if action == "skip":
        log.info("%s: finished already, skipped", run_dir)
        return RunDir(run_dir).load_metrics()
    from lora_analysis.train.modeling import check_max_length

    check_max_length(settings.model, settings.data.max_length)  # before the run folder holds anything
    write_text(RunDir(run_dir).config_path, yaml.safe_dump(config, sort_keys=False))
    try:
        note = provenance.record(run_dir, settings.device, settings.threads or 0, settings.data.path)
        if note:
            log.warning("note: %s", note)
        tracker = open_tracker(settings, run_dir, config)
        metrics = train(settings, run_dir, tracker.log)
        if metrics is None:  # paused at a search's rung (pause_at): unfinished, its checkpoint kept
            tracker.pause()
            log.info("%s: paused at step %d", run_dir, settings.pause_at)
            return {}
        tracker.finish(run_dir, metrics)
    except DivergedError as error:  # the folder stays, saying why; no DONE, no final adapter
        record_failure(run_dir, error)
        raise LoraAnalysisError(f"{run_dir}: {error} (recorded in {RunDir.FAILED})") from error
    except LoraAnalysisError:
        # Bad input is found before any step is taken: leave no trace of the run but the lock, removed on release.
        _remove_all_but_lock(RunDir(run_dir))
        raise
    finish_run(run_dir, metrics)
    scores = {k: round(v, 4) for k, v in metrics.items() if k.startswith("test_") and isinstance(v, float)}
    log.info("%s: %s", run_dir, scores)
    return metrics


def _remove_all_but_lock(run: RunDir) -> None:
    """Remove the trainer's files from a run folder but its lock (removing a held lock file would let a
    second trainer in); anything else stays where it is."""
    remove_own(run.path, RunDir.owns, keep=lambda entry: entry.name == RunDir.LOCK)


def inherit_precision(settings: TrainConfig, run_dir: Path) -> None:
    """``optim.precision=auto`` on a folder whose run resolved it already: keep what it chose (a rerun or
    resume computes as the run did; runs saved before ``auto`` existed recorded fp32)."""
    if settings.optim.precision != Precision.auto:
        return
    saved = (RunDir(run_dir).load_config() or {}).get("optim") or {}
    if saved.get("precision") in (Precision.fp32.value, Precision.bf16.value):
        settings.optim.precision = Precision(saved["precision"])


def default_threads() -> int:
    """All usable cores, divided among the launcher's parallel workers so they don't oversubscribe."""
    from lora_analysis.machine import usable_cores

    cores = usable_cores()
    if not HydraConfig.initialized():
        return cores
    launcher = HydraConfig.get().launcher
    per_task = launcher.get("cpus_per_task")  # submitit: the cores the scheduler gave this job
    if per_task:
        return int(per_task)
    workers = launcher.get("n_jobs")  # joblib: -1 means one worker per core
    if workers:
        workers = cores if workers < 0 else workers
        return max(1, cores // workers)
    return cores
