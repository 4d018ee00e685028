"""Module roles: ``q, k, v, o, qkv, ffn_in, ffn_out, ffn_gate`` mapped to module paths per architecture.

Users name what to adapt by role (``lora.targets=attn``), never by module path. A role maps to one
module suffix per transformer block, anchored right after the block index, so that a role can never
catch an unintended layer: MiniLM's ``bert.pooler.dense`` and ``attention.output.dense`` are not
``ffn_out`` (``encoder.layer.N.output.dense``).

The same table parses the module paths of any PEFT adapter into ``(layer, role)`` for the analysis.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lora_analysis import patterns
from lora_analysis.errors import LoraAnalysisError

ROLES = ("q", "k", "v", "o", "qkv", "ffn_gate", "ffn_in", "ffn_out")
PRESETS = {
    "qv": ("q", "v"),
    "attn": ("q", "k", "v", "o", "qkv"),
    "ffn": ("ffn_gate", "ffn_in", "ffn_out"),
    "all": ROLES,
}


@dataclass(frozen=True)
class Family:
    """One architecture family: where its blocks live and what each role is called inside a block."""

    name: str
    model_types: tuple[str, ...]
    blocks: str  # regex for the container of numbered blocks, e.g. ``encoder\.layer``
    roles: dict[str, str]  # role -> module path inside a block
    fan_in_fan_out: bool = False  # weights stored (in, out), as GPT-2's Conv1D

    def pattern(self, role: str) -> re.Pattern[str]:
        suffix = re.escape(self.roles[role])
        return re.compile(rf"^(?:.*\.)?{self.blocks}\.(\d+)\.{suffix}$")


FAMILIES = (
    Family(
        "bert",
        ("bert", "roberta", "xlm-roberta", "electra", "camembert", "data2vec-text", "ernie"),
        r"encoder\.layer",
        {
            "q": "attention.self.query",
            "k": "attention.self.key",
            "v": "attention.self.value",
            "o": "attention.output.dense",
            "ffn_in": "intermediate.dense",
            "ffn_out": "output.dense",
        },
    ),
    Family(
        "distilbert",
        ("distilbert",),
        r"transformer\.layer",
        {
            "q": "attention.q_lin",
            "k": "attention.k_lin",
            "v": "attention.v_lin",
            "o": "attention.out_lin",
            "ffn_in": "ffn.lin1",
            "ffn_out": "ffn.lin2",
        },
    ),
    Family(
        "gpt2",
        ("gpt2",),
        r"h",
        {"qkv": "attn.c_attn", "o": "attn.c_proj", "ffn_in": "mlp.c_fc", "ffn_out": "mlp.c_proj"},
        fan_in_fan_out=True,
    ),
    Family(
        "llama",
        ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2"),
        r"layers",
        {
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.o_proj",
            "ffn_gate": "mlp.gate_proj",
            "ffn_in": "mlp.up_proj",
            "ffn_out": "mlp.down_proj",
        },
    ),
)


@dataclass(frozen=True)
class ModuleTarget:
    """A weight matrix picked for adaptation (or found in an adapter)."""

    path: str  # full module path in the model, e.g. ``bert.encoder.layer.3.attention.self.query``
    layer: int | None
    role: str  # one of ROLES, or the path's last component when no family knows the module


def family_for(model_type: str) -> Family:
    """The family of a transformers ``config.model_type``; unknown types get a clear error."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise LoraAnalysisError(
        f"model_type {model_type!r} has no role table (known: {known}); "
        "name modules with lora.target_regex instead"
    )


def expand_roles(targets: str | Sequence[str]) -> tuple[str, ...]:
    """``"attn"``, ``"q+v"``, ``["q", "ffn"]`` -> roles in canonical order, presets expanded."""
    names = targets.split("+") if isinstance(targets, str) else list(targets)
    roles: set[str] = set()
    for name in (n.strip() for n in names):
        if name in PRESETS:
            roles.update(PRESETS[name])
        elif name in ROLES:
            roles.add(name)
        else:
            raise LoraAnalysisError(
                f"unknown target {name!r}: expected roles {', '.join(ROLES)} "
                f"or presets {', '.join(PRESETS)}"
            )
    return tuple(r for r in ROLES if r in roles)


def parse_module_path(path: str, families: Iterable[Family] = FAMILIES) -> ModuleTarget:
    """Find layer index and role of a module path, trying each family's role table in turn."""
    for family in families:
        for role in family.roles:
            match = family.pattern(role).match(path)
            if match:
                return ModuleTarget(path, int(match.group(1)), role)
    numbers = re.findall(r"\.(\d+)\.", f".{path}.")
    return ModuleTarget(path, int(numbers[0]) if numbers else None, path.rsplit(".", 1)[-1])


def select_modules(
    module_paths: Iterable[str],
    model_type: str,
    targets: str | Sequence[str],
    layers: Sequence[int] | None = None,
    target_regex: str | None = None,
) -> list[ModuleTarget]:
    """Pick the modules to adapt among ``module_paths`` (all module names of a model).

    With ``target_regex`` the roles are ignored and every path that fully matches is taken.
    Otherwise each requested role must exist in the architecture; presets keep only the roles it has
    (``attn`` on GPT-2 is ``qkv`` and ``o``), but a role named on its own must exist.
    """
    paths = list(module_paths)
    if target_regex:
        chosen = [parse_module_path(p) for p in paths if patterns.fullmatch(target_regex, p, "lora.target_regex")]
        if not chosen:
            raise LoraAnalysisError(f"lora.target_regex {target_regex!r} matches no module")
    else:
        family = family_for(model_type)
        chosen = _select_by_role(paths, family, targets)
    if layers is not None:
        present = sorted({t.layer for t in chosen if t.layer is not None})
        missing = sorted(set(layers) - set(present))
        if missing:
            raise LoraAnalysisError(f"lora.layers {missing} not in the model (layers: {present})")
        chosen = [t for t in chosen if t.layer in set(layers)]
        if not chosen:  # lora.layers=[]: PEFT's own NoMatchingPeftModuleError would be a traceback
            raise LoraAnalysisError(f"lora.layers={list(layers)} leaves no module to adapt "
                                    "(give block indices, or null for all blocks)")
    return chosen


def _select_by_role(paths: list[str], family: Family, targets: str | Sequence[str]) -> list[ModuleTarget]:
    explicit = set(targets.split("+") if isinstance(targets, str) else targets) & set(ROLES)
    lacking = sorted(explicit - set(family.roles))
    if lacking:
        raise LoraAnalysisError(
            f"{family.name} models have no {'/'.join(lacking)} role "
            f"(roles: {', '.join(r for r in ROLES if r in family.roles)})"
        )
    roles = [r for r in expand_roles(targets) if r in family.roles]
    if not roles:
        raise LoraAnalysisError(f"targets {targets!r} name no role of {family.name} models")
    patterns = {role: family.pattern(role) for role in roles}
    chosen = []
    for path in paths:
        for role, pattern in patterns.items():
            match = pattern.match(path)
            if match:
                chosen.append(ModuleTarget(path, int(match.group(1)), role))
    if not chosen:
        raise LoraAnalysisError(f"no module of this {family.name} model matches roles {roles}")
    return chosen


def targets_label(targets: str | Sequence[str]) -> str:
    """A short name for a target set: ``"attn"`` stays, ``["q", "v"]`` becomes ``"q+v"``."""
    return targets if isinstance(targets, str) else "+".join(targets)


def pattern_key(pattern_keys, module_path: str, source: str = "rank_pattern") -> str:
    """The ``rank_pattern``/``alpha_pattern`` key that applies to ``module_path`` (else the path itself).

    PEFT's ``peft.utils.other.get_pattern_key``, matched in linear time (``patterns.pattern_key``).
    """
    return patterns.pattern_key(pattern_keys, module_path, source)
