"""``lora-analysis train [key=value ...]``: one LoRA run; ``-m`` with comma lists for a Hydra sweep.

    lora-analysis train lora.r=4 lora.targets=qv
    lora-analysis train -m lora.r=1,2,4,8,16,32,64 seed=0,1 lora.targets=attn,ffn,all
    lora-analysis train -m experiment=rank_ablation hydra/launcher=local

Runs land in ``<out_dir>/<name>/<run name>`` (``runs/default/r4-qv``); a finished run is skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lora_analysis.atomic import write_bytes
from lora_analysis.cli import one_line
from lora_analysis.errors import LoraAnalysisError, printable
from lora_analysis.hydra_compose import compose, conf_dir
from lora_analysis.paths import user_path
from lora_analysis.train.config import register_configs
from lora_analysis.train.divergence import DivergedError
from lora_analysis.train.sweep import RunBusy, default_threads, run_name, settings_from, train_run

KEY_SEPARATOR = "+"  # between the swept keys in the run_name resolver's second argument
_DIVERGED: list[str] = []  # runs of this sweep that diverged: the sweep goes on, the exit status says so


def _run_name_resolver(overrides, swept: str = "", *, _root_) -> str:
    """``hydra.sweep.subdir``: a run is named by the keys its sweep varies (command line or experiment).

    ``swept``: the command line's swept keys, joined by ``KEY_SEPARATOR`` (``main`` passes them in the
    ``hydra.sweep.subdir`` override, so every launcher worker reads them from its own config).
    """
    if str(OmegaConf.select(_root_, "hydra.mode", default="")) != "RunMode.MULTIRUN":
        return run_name(overrides)
    keys = [k for k in str(swept).split(KEY_SEPARATOR) if k]
    params = OmegaConf.select(_root_, "hydra.sweeper.params", default=None) or {}
    return run_name(overrides, keys + list(params))


register_configs()
if not OmegaConf.has_resolver("run_name"):
    OmegaConf.register_new_resolver("run_name", _run_name_resolver)


def main(argv: list[str]) -> int:
    keys = swept_keys(argv)
    if keys and not any(a.startswith("hydra.sweep.subdir=") for a in argv):  # into the config the resolver reads
        # quoted: the override grammar would read the comma between the resolver's arguments as a sweep
        argv = [*argv, f"hydra.sweep.subdir='${{run_name:${{hydra:overrides.task}},{KEY_SEPARATOR.join(keys)}}}'"]
    # @hydra.main takes no argument list in Hydra 1.3: it parses sys.argv (and so do its launchers).
    sys.argv = ["lora-analysis train", *argv]
    _DIVERGED.clear()
    kept = _multirun_file(argv) if keys or any(a in ("-m", "--multirun") for a in argv) else None
    try:
        _hydra_app()
    except SystemExit as stop:
        if kept is not None and stop.code not in (0, None):
            _restore(*kept)  # Hydra rewrote the sweep's multirun.yaml before the launch was refused
        raise
    return 2 if _DIVERGED else 0


def _multirun_file(argv: Sequence[str]) -> tuple[Path, bytes | None] | None:
    """The sweep's ``multirun.yaml`` and its bytes before this launch (None: not there yet)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = [a for a in argv if "=" in a and not a.startswith("-") and not a.startswith("hydra.")]
        fixed = [o.input_line for o in OverridesParser.create().parse_overrides(overrides)
                 if not o.is_sweep_override()]
        cfg = compose("train", fixed)
        path = user_path(str(cfg.out_dir)) / str(cfg.name) / "multirun.yaml"
    except Exception:  # noqa: BLE001 - a bad command line is Hydra's to report, in its own words
        return None
    return path, (path.read_bytes() if path.is_file() else None)


def _restore(path: Path, before: bytes | None) -> None:
    if before is None:
        path.unlink(missing_ok=True)
    elif not path.is_file() or path.read_bytes() != before:
        write_bytes(path, before)


def swept_keys(argv: Sequence[str]) -> list[str]:
    """The keys a command line sweeps over (``lora.r=1,2`` or ``seed=range(3)``); none without -m."""
    if not any(a in ("-m", "--multirun") for a in argv):
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


def _refuse(run_dir: Path, message: str) -> None:
    for folder in (run_dir, run_dir.parent):  # Hydra made them for a run that never started
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    # Raised, the error would reach Hydra, which prints the job's overrides before our line.
    print(f"lora-analysis train: error: {printable(message)}", file=sys.stderr)
    raise SystemExit(2) from None


@hydra.main(config_path=str(conf_dir()), config_name="train", version_base="1.3")
def _hydra_app(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        settings = settings_from(cfg, run_dir.name)
        if settings.threads is None:
            settings.threads = default_threads()
        metrics = train_run(settings, run_dir)
    except RunBusy as busy:  # another sweep trains it: not this one's failure (its folder is the other's)
        print(f"lora-analysis train: note: {printable(str(busy))}; skipped", file=sys.stderr)
        return None
    except LoraAnalysisError as error:
        if isinstance(error.__cause__, DivergedError) and HydraConfig.get().mode == RunMode.MULTIRUN:
            print(f"lora-analysis train: error: {printable(str(error))}", file=sys.stderr)  # the other runs go on
            _DIVERGED.append(run_dir.name)
            return None
        _refuse(run_dir, str(error))
    except Exception as error:  # a config value OmegaConf refused while building the typed config
        message = one_line(error)
        if message is None:
            raise
        _refuse(run_dir, message)
    return metrics.get("test_accuracy", metrics.get("test_loss"))
