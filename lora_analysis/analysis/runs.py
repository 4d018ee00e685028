"""Runs to analyse: the adapters found in sweep, run and PEFT folders, with what pairs them (r, seed, group).

A folder with ``adapter_config.json`` or ``config.yaml`` is one run; otherwise each such subfolder is (a
sweep, or PEFT's layout for a named adapter). A run of this toolkit brings its config (rank, seed,
targets, base model, the group of settings it shares with the runs it is compared with); a plain PEFT
folder brings what its adapter_config.json records.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lora_analysis import hub
from lora_analysis.analysis.adapters import CONFIG_FILE, RUN_CONFIG, Adapter
from lora_analysis.errors import LoraAnalysisError, utf8
from lora_analysis.layout import RunDir, is_adapter_folder
from lora_analysis.targets import targets_label

# Config keys that may differ between two runs that are still compared (rank and seed are what varies).
MATCH_IGNORE = [
    "lora.r", "seed", "run_name", "name", "out_dir", "device", "threads", "progress", "logger",
    "data.cache_dir", "optim.checkpoint_every", "optim.log_every", "optim.eval_batch_size",
    "optim.steps", "optim.patience", "optim.keep",  # a ceiling and when to stop; a matched control sets them
]  # fmt: skip

@dataclass(frozen=True)
class Run:
    """An adapter with what the comparisons need to know about it.

    ``group`` holds the run's config values other than rank and seed (``match_ignore`` left out): runs
    are compared only within a group. Plain PEFT folders have no config: seed None, empty group.
    """

    label: str
    adapter: Adapter
    r: int
    seed: int | None
    targets: str
    base: str | None  # the base model's name or path as recorded by the run (resolved later)
    group: tuple = ()

    @property
    def folder(self) -> Path:
        return self.adapter.folder


def find_runs(
    inputs: list[str | Path], match_ignore: tuple[str, ...] | list[str] = tuple(MATCH_IGNORE)
) -> tuple[list[Run], list[str]]:
    """Runs in ``inputs`` (sweep folders, run folders or PEFT adapter folders) and notes on what was skipped.

    A folder with ``adapter_config.json`` or ``config.yaml`` is one run; otherwise each such subfolder
    is (a sweep, or PEFT's layout for a named adapter). Unfinished and full fine-tuning runs are skipped.
    """
    runs, notes = [], []
    for item in inputs:
        local = hub.resolve(str(item), what="adapter") if hub.is_hub_id(str(item)) else Path(item)
        for folder in _run_folders(local):
            run = _load_run(folder, match_ignore, notes)
            if run is not None:
                runs.append(run)
    twice = sorted(str(f) for f, n in Counter(r.folder.resolve() for r in runs).items() if n > 1)
    if twice:
        raise LoraAnalysisError(f"the same run or adapter folder given more than once: {', '.join(twice)}")
    labels = [r.label for r in runs]
    if len(set(labels)) < len(labels):  # e.g. two sweeps with the same run names
        runs = [_relabel(r, f"{utf8(r.folder.parent.name)}/{r.label}") for r in runs]
    if len({r.label for r in runs}) < len(runs):
        raise LoraAnalysisError(f"runs with the same name in {[str(r.folder) for r in runs]}")
    return runs, notes


def _relabel(run: Run, label: str) -> Run:
    return Run(label, run.adapter, run.r, run.seed, run.targets, run.base, run.group)


def _is_run(folder: Path) -> bool:
    return is_adapter_folder(folder)


def _run_folders(path: Path) -> list[Path]:
    if not path.is_dir():
        raise LoraAnalysisError(f"{path} is not a folder" if path.exists() else f"{path} does not exist")
    if _is_run(path):
        return [path]
    found = sorted(p for p in path.iterdir() if p.is_dir() and _is_run(p))
    if not found:
        raise LoraAnalysisError(
            f"{path} is neither an adapter nor a sweep folder: no {CONFIG_FILE} or {RUN_CONFIG} "
            "in it or in its subfolders"
        )
    return found


def _load_run(folder: Path, match_ignore: tuple[str, ...], notes: list[str]) -> Run | None:
    config_path = folder / RUN_CONFIG
    if not config_path.is_file():
        adapter = Adapter(folder)
        r = int(adapter.config.get("r", next(iter(adapter)).r))
        return Run(utf8(folder.name), adapter, r, None, adapter.targets, adapter.base_model_name_or_path)
    run_dir = RunDir(folder)
    config = run_dir.load_config() or {}
    failure = run_dir.failure()
    if failure is not None:
        notes.append(f"skipped {folder}: failed run ({failure})")
        return None
    if not run_dir.is_done():
        notes.append(f"skipped {folder}: unfinished run (no {RunDir.DONE} marker)")
        return None
    if config.get("method", "lora") != "lora":
        notes.append(f"skipped {folder}: method {config.get('method')} has no adapter")
        return None
    adapter = Adapter(folder)
    lora = config.get("lora") or {}
    targets = lora.get("targets") or adapter.targets
    seed = config.get("seed")
    return Run(
        utf8(str(config.get("run_name") or folder.name)),
        adapter,
        int(lora.get("r", adapter.config.get("r"))),
        None if seed is None else int(seed),
        targets if isinstance(targets, str) else targets_label([str(t) for t in targets]),
        (config.get("model") or {}).get("name_or_path") or adapter.base_model_name_or_path,
        _group(config, match_ignore),
    )


def _group(config: dict, ignore: tuple[str, ...]) -> tuple:
    """Config values as sorted ``(dotted key, JSON value)`` pairs, without the ignored keys (or their children)
    and without nulls."""
    flat: dict[str, str] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if name in ignore:
                continue
            if isinstance(value, dict):
                walk(value, f"{name}.")
            elif value is not None:  # null = absent: a run saved before a setting existed matches a newer one
                flat[name] = json.dumps(value, sort_keys=True, default=str)

    walk(config, "")
    return tuple(sorted(flat.items()))
