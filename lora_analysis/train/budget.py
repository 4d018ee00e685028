"""Budget-matched ranks, as in the paper's Table 5: a fixed number of trainable LoRA parameters.

A LoRA of rank r on a ``(out, in)`` weight costs ``r * (in + out)`` parameters, so a target set of
modules gets ``r = floor(budget / sum(in + out))``: FFN matrices (384 x 1536 in MiniLM) cost more per
rank than attention matrices (384 x 384), and the rank comes from the model's real shapes, never by hand.

A budget is a parameter count (``120000``) or what a reference set costs at a reference rank
(``r32@q``: rank 32 on every q matrix), which carries over to any model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from lora_analysis.errors import LoraAnalysisError

Shape = tuple[int, int]  # (out_features, in_features)


def lora_params(r: int, shapes: Sequence[Shape]) -> int:
    """Trainable parameters of rank-``r`` LoRA on each ``(out, in)`` weight: ``r * sum(in + out)``."""
    return r * sum(out + inp for out, inp in shapes)


def rank_for_budget(budget: int, shapes: Sequence[Shape]) -> int:
    """The largest rank whose LoRA on ``shapes`` costs at most ``budget`` parameters (at least 1)."""
    if not shapes:
        raise LoraAnalysisError("a budget needs at least one target module")
    per_rank = lora_params(1, shapes)
    if budget < per_rank:
        raise LoraAnalysisError(
            f"budget of {budget:,} parameters is below rank 1 on these modules ({per_rank:,} parameters)"
        )
    return budget // per_rank


def budget_params(spec: str | int, shapes_of: Mapping[str, Sequence[Shape]]) -> int:
    """A budget in parameters from ``spec``: an integer, or ``r<rank>@<targets>`` priced by ``shapes_of``.

    ``shapes_of`` maps a target set (``"q"``, ``"q+v"``) to the shapes of its modules in this model.
    """
    if isinstance(spec, int) or str(spec).isdigit():
        return int(spec)
    match = re.fullmatch(r"r(\d+)@(.+)", str(spec))
    if not match:
        raise LoraAnalysisError(f"lora.budget {spec!r}: expected a parameter count or r<rank>@<targets>, e.g. r32@q")
    return lora_params(int(match.group(1)), shapes_of[match.group(2)])
