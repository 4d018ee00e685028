"""Config composition for the commands that are not Hydra applications (analyze, report, recommend).

``train`` runs as a full Hydra application (sweeps, launchers, run folders). The other commands only
need a typed config from ``conf/`` plus the user's overrides, so they use Hydra's compose API: same
YAML, same override grammar, same validation, no output folder or logging set-up of Hydra's own.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lora_analysis.errors import LoraAnalysisError
from lora_analysis.paths import user_path


def conf_dir() -> Path:
    """The config folder: the repository's ``conf/`` in a checkout, else its copy in the installed package."""
    checkout = Path(__file__).resolve().parent.parent / "conf"
    if checkout.is_dir():
        return checkout
    spec = importlib.util.find_spec("lora_analysis.conf")  # a namespace package: YAML only, no __init__.py
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("lora_analysis.conf is not installed: reinstall lora-analysis")
    return Path(next(iter(spec.submodule_search_locations)))


def compose(config_name: str, overrides: Sequence[str] = (), hydra: bool = False) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides (``key=value``); ``hydra``: with the ``hydra``
    node (an experiment's sweep parameters, ``hydra.sweeper.params``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra)


def to_settings(cfg: DictConfig):
    """The typed config (``OmegaConf.to_object``: dataclasses whose ``__post_init__`` checks the values),
    after refusing keys its schema does not have. Hydra's ``+key=value`` adds a key even to a structured
    config, and ``to_object`` would keep it as a stray attribute that nothing reads: a typo that runs."""
    _refuse_unknown(cfg, "")
    return OmegaConf.to_object(cfg)


# PEFT's and Trainer's names for our keys: what a LoRA user is likely to type instead.
ALIASES = {"rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "targets",
           "use_rslora": "rslora", "init_lora_weights": "init", "layers_to_transform": "layers",
           "learning_rate": "lr", "max_steps": "steps", "per_device_train_batch_size": "batch_size",
           "analyse": "analyze"}


def did_you_mean(key: str, known: Sequence[str], prefix: str = "") -> str:
    """``" (did you mean 'optim.steps'?)"``: the known key nearest to a mistyped one, or "" if none is near.

    A name PEFT or the Trainer use for one of ours (``rank`` for ``r``) points at ours."""
    import difflib

    alias = ALIASES.get(key)
    close = [alias] if alias in known else difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _refuse_unknown(node, where: str) -> None:
    import dataclasses

    from omegaconf import ListConfig

    if isinstance(node, DictConfig):
        keys = [str(k) for k in node.keys()]
        schema = OmegaConf.get_type(node)
        if dataclasses.is_dataclass(schema):
            known = [f.name for f in dataclasses.fields(schema)]
            for key in keys:
                if key not in known:
                    raise LoraAnalysisError(f"config: unknown key {where + key!r}{did_you_mean(key, known, where)}")
        children = [(key, node._get_node(key)) for key in keys]  # nodes, not values: nothing is resolved
    elif isinstance(node, ListConfig):
        children = [(str(i), node._get_node(i)) for i in range(len(node))]
    else:
        return
    for key, child in children:
        if isinstance(child, DictConfig | ListConfig):
            _refuse_unknown(child, f"{where}{key}.")


_KEY = re.compile(r"[+~]{0,2}[A-Za-z_][\w.\-]*")


def _is_override(arg: str) -> bool:
    """``key=value``; an existing path with ``=`` in it whose part before ``=`` is no config key
    (``runs/lr=1e-3/r8``) is a path."""
    key, sep, _ = arg.partition("=")
    return bool(sep) and (_KEY.fullmatch(key) is not None or not user_path(arg).exists())


def split_args(argv: Sequence[str], positional_key: str, many: bool = True) -> tuple[list[str], bool]:
    """Turn ``[path, path, key=value]`` into Hydra overrides; paths become ``<positional_key>=[...]``.

    With ``many=False`` a single path becomes ``<positional_key>='path'``. Returns the overrides and
    whether ``--help`` was asked for.
    """
    wants_help = any(a in ("-h", "--help") for a in argv)
    args = [a for a in argv if a not in ("-h", "--help")]
    paths = [a for a in args if not _is_override(a)]
    overrides = [a for a in args if _is_override(a)]
    if len(paths) > 1 and not many:
        raise LoraAnalysisError(f"one {positional_key} folder expected, got {len(paths)}: {' '.join(paths)}")
    quoted = ["'" + p.replace("\\", "\\\\").replace("'", "\\'") + "'" for p in paths]
    if quoted:
        overrides.insert(0, f"{positional_key}=[{','.join(quoted)}]" if many else f"{positional_key}={quoted[0]}")
    return overrides, wants_help


def help_text(summary: str, config_name: str) -> str:
    """Usage text: the command's summary and its config with defaults, as YAML."""
    cfg = compose(config_name)
    return f"{summary.strip()}\n\nconfig (override with key=value):\n\n{OmegaConf.to_yaml(cfg)}"
