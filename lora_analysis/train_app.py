"""``lora-analysis train [key=value ...]``: one LoRA run; ``-m`` with comma lists for a Hydra sweep.

    lora-analysis train lora.r=4 lora.targets=qv
    lora-analysis train -m lora.r=1,2,4,8,16,32,64 seed=0,1 lora.targets=attn,ffn,all
    lora-analysis train -m experiment=rank_ablation hydra/launcher=local

Runs land in ``<out_dir>/<name>/<run name>`` (``runs/default/r4-qv``); a finished run is skipped.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lora_analysis.atomic import write_text
from lora_analysis.config import Method, TrainConfig, register_configs
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.hydra_compose import compose, conf_dir
from lora_analysis.runs import finish_run, prepare_run_dir, run_name

log = logging.getLogger("lora_analysis")

SWEEP_KEYS_ENV = "LORA_ANALYSIS_SWEEP_KEYS"  # inherited by launcher workers (joblib, submitit)


def _run_name_resolver(overrides, *, _root_) -> str:
    """``hydra.sweep.subdir``: a run is named by the keys its sweep varies (command line or experiment)."""
    if str(OmegaConf.select(_root_, "hydra.mode", default="")) != "RunMode.MULTIRUN":
        return run_name(overrides)
    swept = [k for k in os.environ.get(SWEEP_KEYS_ENV, "").split(",") if k]
    params = OmegaConf.select(_root_, "hydra.sweeper.params", default=None) or {}
    return run_name(overrides, swept + list(params))


register_configs()
if not OmegaConf.has_resolver("run_name"):
    OmegaConf.register_new_resolver("run_name", _run_name_resolver)


def main(argv: list[str]) -> int:
    os.environ[SWEEP_KEYS_ENV] = ",".join(swept_keys(argv))
    sys.argv = ["lora-analysis train", *argv]  # Hydra reads its arguments from sys.argv
    _hydra_app()
    return 0


def swept_keys(argv: Sequence[str]) -> list[str]:
    """The keys a command line sweeps over (``lora.r=1,2`` or ``seed=range(3)``); none without -m."""
    if not any(a in ("-m", "--multirun") for a in argv):
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


@hydra.main(config_path=str(conf_dir()), config_name="train", version_base="1.3")
def _hydra_app(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        settings = settings_from(cfg, run_dir.name)
        if settings.threads is None:
            settings.threads = default_threads()
        metrics = train_run(settings, run_dir)
    except LoraAnalysisError as error:
        for folder in (run_dir, run_dir.parent):  # Hydra made them for a run that never started
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        # Raised, the error would reach Hydra, which prints the job's overrides before our line.
        print(f"lora-analysis train: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return metrics.get("test_accuracy", metrics.get("test_loss"))


def run_overrides(overrides: Sequence[str], name: str | None = None) -> tuple[Path, dict]:
    """Compose ``train`` with ``overrides`` and train that run in this process, unless finished.

    The run folder is ``<out_dir>/<name>/<run name>``; the run name is ``name``, or the one
    ``lora-analysis train <overrides>`` would use.
    """
    name = name or run_name(overrides)
    settings = settings_from(compose("train", overrides), name)
    settings.threads = settings.threads or default_threads()
    run_dir = Path(settings.out_dir) / settings.name / name
    return run_dir, train_run(settings, run_dir)


def settings_from(cfg: DictConfig, name: str) -> TrainConfig:
    """The typed, checked config (``__post_init__`` runs here) with its run name filled in."""
    settings: TrainConfig = OmegaConf.to_object(cfg)
    settings.run_name = name
    if settings.lora.budget is not None and settings.method == Method.lora:
        from lora_analysis.modeling import rank_from_budget

        settings.lora.r = rank_from_budget(settings.model, settings.lora)
    return settings


def plain_config(settings: TrainConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(settings), enum_to_str=True)


def train_run(settings: TrainConfig, run_dir: Path) -> dict:
    """Train one run into ``run_dir`` unless it is already finished; return its metrics."""
    from lora_analysis.trainer import train

    config = plain_config(settings)
    action = prepare_run_dir(run_dir, config)
    if action == "skip":
        log.info("%s: finished already, skipped", run_dir)
        return yaml.safe_load((run_dir / "metrics.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    try:
        metrics = train(settings, run_dir)
    except LoraAnalysisError:
        # Bad input is found before any step is taken: leave no trace of the run.
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finish_run(run_dir, metrics)
    scores = {k: round(v, 4) for k, v in metrics.items() if k.startswith("test_") and isinstance(v, float)}
    log.info("%s: %s", run_dir, scores)
    return metrics


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
