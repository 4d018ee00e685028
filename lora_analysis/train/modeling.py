"""Build the model to train: a transformers model with PEFT's LoRA layers on the chosen roles.

PEFT injects the adapters; this module decides where (``targets.select_modules``) and how ``A`` starts.
PEFT draws every ``A`` from one global random stream, so whether two ranks share init rows depends on
the order of draws. Here each ``A`` is redrawn from its own stream, seeded by (seed, rank, module path),
or by (seed, module path) with ``init_stream=shared``, which makes ``A_init`` of rank r the first r rows
of the larger ranks' (up to scale): the shared-init setting, kept as a labelled control.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
import zlib

import numpy as np
import peft
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from lora_analysis import hub
from lora_analysis.errors import LoraAnalysisError, first_line
from lora_analysis.targets import ModuleTarget, family_for, pattern_key, select_modules
from lora_analysis.train.budget import budget_params, rank_for_budget
from lora_analysis.train.config import Init, InitStream, LoraSettings, ModelConfig, Task

log = logging.getLogger(__name__)


def load_tokenizer(cfg: ModelConfig):
    path = _model_source(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.revision)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as error:  # a damaged config.json too
        raise LoraAnalysisError(f"cannot load a tokenizer from {cfg.name_or_path!r}: {first_line(error)}") from error
    if tokenizer.pad_token_id is None:  # GPT-2 and Llama have none; padded positions are masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, num_labels: int, pad_token_id: int | None) -> torch.nn.Module:
    """The pretrained model with a task head (classification head freshly initialised)."""
    path = _model_source(cfg)
    quiet_transformers()
    try:
        if cfg.task == Task.classification:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, revision=cfg.revision
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(path, revision=cfg.revision)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as error:  # a damaged config.json too
        raise LoraAnalysisError(f"cannot load model {cfg.name_or_path!r}: {first_line(error)}") from error
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return model


def quiet_transformers() -> None:
    """Our progress bar and metrics say what matters; transformers' load reports and bars do not."""
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")


def _model_source(cfg: ModelConfig) -> str:
    """A local model folder: the embedded default, a path, or a hub id from the Hugging Face cache (``hub``)."""
    path = hub.resolve(cfg.name_or_path, cfg.revision)
    if not (path / "config.json").is_file():
        raise LoraAnalysisError(f"model path {str(path)!r} is not a transformers model directory (no config.json)")
    return str(path)


def model_type(model: torch.nn.Module) -> str:
    return model.config.model_type


def choose_targets(model: torch.nn.Module, cfg: LoraSettings) -> list[ModuleTarget]:
    """The modules to adapt, checked against ``r <= min(in, out)`` for each (its rank_pattern rank if any)."""
    chosen = _select(model, cfg, cfg.targets)
    modules = dict(model.named_modules())
    pattern = cfg.ranks()
    used = set()
    for target in chosen:
        key = pattern_key(pattern, target.path)  # the path itself when no key matches
        used.add(key)
        r = pattern.get(key, cfg.r)
        out_features, in_features = _weight_shape(modules[target.path])
        if r > min(in_features, out_features):
            raise LoraAnalysisError(
                f"{'lora.rank_pattern ' + repr(key) if key in pattern else 'lora.r'}={r} exceeds min(in, out) = "
                f"{min(in_features, out_features)} of {target.path} ({out_features} x {in_features})"
            )
    unused = [key for key in pattern if key not in used]
    if unused:
        raise LoraAnalysisError(f"lora.rank_pattern key {unused[0]!r} matches none of the adapted modules "
                                f"(for example {chosen[0].path})")
    return chosen


def resolved_ranks(targets: list[ModuleTarget], cfg: LoraSettings) -> dict[str, int]:
    """``lora.rank_pattern`` resolved here in linear time, as PEFT would, into one escaped path per module.

    PEFT matches pattern keys with Python's backtracking ``re``: given the user's keys it could take
    exponential time on a crafted one. Longest paths first, so no path is taken for a suffix of another.
    """
    pattern = cfg.ranks()
    ranks = {t.path: pattern[key] for t in targets if (key := pattern_key(pattern, t.path)) in pattern}
    return {re.escape(path): ranks[path] for path in sorted(ranks, key=len, reverse=True)}


def _select(model: torch.nn.Module, cfg: LoraSettings, targets: str) -> list[ModuleTarget]:
    names = [name for name, module in model.named_modules() if _weight_shape(module) is not None]
    return select_modules(names, model_type(model), targets, cfg.layers, cfg.target_regex)


def check_max_length(cfg: ModelConfig, max_length: int) -> None:
    """Refuse ``data.max_length`` beyond the model's position embeddings (read from its config only)."""
    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(_model_source(cfg), revision=cfg.revision)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as error:  # a damaged config.json too
        raise LoraAnalysisError(f"cannot load model {cfg.name_or_path!r}: {first_line(error)}") from error
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions and max_length > positions:
        raise LoraAnalysisError(f"data.max_length={max_length} exceeds the model's {positions} positions")


def skeleton(cfg: ModelConfig) -> torch.nn.Module:
    """The model's modules on the meta device: shapes and names without reading or allocating weights."""
    path = _model_source(cfg)
    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(path, revision=cfg.revision)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as error:  # a damaged config.json too
        raise LoraAnalysisError(f"cannot load model {cfg.name_or_path!r}: {first_line(error)}") from error
    auto = AutoModelForSequenceClassification if cfg.task == Task.classification else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config)


def target_shapes(model: torch.nn.Module, cfg: LoraSettings, targets: str) -> list[tuple[int, int]]:
    """``(out, in)`` of every module that ``targets`` selects (with ``cfg``'s layers)."""
    modules = dict(model.named_modules())
    return [_weight_shape(modules[t.path]) for t in _select(model, cfg, targets)]


def rank_from_budget(model_cfg: ModelConfig, cfg: LoraSettings) -> int:
    """The rank that spends ``cfg.budget`` on ``cfg.targets`` in this model (see ``budget``)."""
    model = skeleton(model_cfg)
    reference = str(cfg.budget).partition("@")[2]
    spent = budget_params(cfg.budget, {reference: target_shapes(model, cfg, reference)} if reference else {})
    return rank_for_budget(spent, target_shapes(model, cfg, cfg.targets))


def _weight_shape(module: torch.nn.Module) -> tuple[int, int] | None:
    """(out_features, in_features) of a Linear or GPT-2 Conv1D, else None."""
    if isinstance(module, torch.nn.Linear):
        return module.out_features, module.in_features
    if type(module).__name__ == "Conv1D":  # weight stored (in, out)
        return module.weight.shape[1], module.weight.shape[0]
    return None


def add_lora(
    model: torch.nn.Module, cfg: LoraSettings, task: Task, seed: int
) -> tuple[peft.PeftModel, list[ModuleTarget]]:
    """Wrap ``model`` with PEFT LoRA layers on the chosen roles; ``A`` drawn from explicit streams."""
    targets = choose_targets(model, cfg)
    fan_in_fan_out = cfg.target_regex is None and family_for(model_type(model)).fan_in_fan_out
    lora_config = peft.LoraConfig(
        r=cfg.r,
        rank_pattern=resolved_ranks(targets, cfg),
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        use_rslora=cfg.rslora,
        target_modules=sorted(t.path for t in targets),
        fan_in_fan_out=fan_in_fan_out,
        init_lora_weights=True,
        task_type=peft.TaskType.SEQ_CLS if task == Task.classification else peft.TaskType.CAUSAL_LM,
    )
    wrapped = peft.get_peft_model(model, lora_config)
    init_lora_streams(wrapped, cfg, seed)
    return wrapped, targets


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """PEFT LoRA layers by the path of the module they adapt (``bert.encoder.layer.0...query``)."""
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer) and "default" in module.lora_A:
            layers[name.removeprefix("base_model.model.")] = module
    return layers


def init_lora_streams(model: torch.nn.Module, cfg: LoraSettings, seed: int) -> None:
    """Redraw every ``A`` from its own stream (see the module docstring) and zero every ``B``."""
    for path, layer in lora_layers(model).items():
        weight_a = layer.lora_A["default"].weight  # (r, in_features)
        r, in_features = weight_a.shape
        entropy = [seed, zlib.crc32(path.encode())]
        if cfg.init_stream == InitStream.per_module:
            entropy.insert(1, r)
        rng = np.random.default_rng(entropy)
        # numpy fills row by row, so with a shared stream the first r rows are the same for every rank.
        if cfg.init == Init.gaussian:
            values = rng.standard_normal((r, in_features)) / r
        else:
            bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform_(a=sqrt(5)) on (r, in)
            values = rng.uniform(-bound, bound, (r, in_features))
        with torch.no_grad():
            weight_a.copy_(torch.from_numpy(values).to(weight_a.dtype))
            layer.lora_B["default"].weight.zero_()


def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Current A and B under the keys PEFT saves them with (``base_model.model.<path>.lora_A.weight``)."""
    state = {}
    for path, layer in lora_layers(model).items():
        state[f"base_model.model.{path}.lora_A.weight"] = layer.lora_A["default"].weight.detach().cpu().clone()
        state[f"base_model.model.{path}.lora_B.weight"] = layer.lora_B["default"].weight.detach().cpu().clone()
    return state

