"""Dropout on the CPU from 15-bit random integers: the model's ``nn.Dropout`` layers and its attention.

torch's CPU dropout draws its mask with ``bernoulli_``: on the embedded default that was 17% of a
bfloat16 training step (``benchmarks/profile_step.py``), more than any operator but the matrix
products. Here the mask comes from ``random_`` on int64 (63 random bits per draw, four elements
each), each 16-bit quarter masked to 15 bits: an element is dropped when its 15 bits are below
``t = round(p * 2^15)``, and the kept ones are scaled by ``2^15 / (2^15 - t)``. The drop probability
is ``t / 2^15`` (0.1 becomes 0.100006) and the expectation of the output is exactly the input, as
with torch's. A bf16 step is 1.18x faster with both parts (``benchmarks/dropout_speed.py``). The
masks come from torch's default generator, so a seeded run is as reproducible as before, but its
masks are not torch's: a run trained with ``optim.fast_dropout=false`` sees different ones.

Attention dropout has no module: transformers passes its probability to the attention function, and
``scaled_dot_product_attention`` draws the mask with ``bernoulli_`` inside. ``use_fast_dropout`` also
switches a model on ``sdpa`` to ``ATTENTION``, registered with transformers' ``AttentionInterface``:
SDPA itself whenever there is nothing to drop (evaluation, ``p = 0``, not the CPU), and in training
on the CPU the attention written out, ``softmax(q k^T * scale + mask) @ v`` with the probabilities
in float32 and dropped by ``fast_dropout``, as SDPA's own math path computes it with dropout on.
"""

from __future__ import annotations

import torch

BITS = 15


def keep_scale(p: float) -> tuple[int, float]:
    """The 15-bit threshold ``t`` below which an element is dropped, and the scale of the kept ones."""
    t = round(p * 2**BITS)
    return t, 2**BITS / (2**BITS - t)


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """``x`` with each element zeroed with probability ``round(p * 2^15) / 2^15``, the rest scaled up."""
    t, scale = keep_scale(p)
    n = x.numel()
    draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()  # 63 random bits each
    bits = draws.view(torch.int16)[:n].view(x.shape) & (2**BITS - 1)  # the top quarter's sign bit is 0
    return x * (bits >= t).to(x.dtype).mul_(scale)


class FastDropout(torch.nn.Dropout):
    """``nn.Dropout`` with ``fast_dropout`` on the CPU in training; torch's own elsewhere (and at p of 0 or 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or not 0 < self.p < 1:
            return super().forward(x)
        return fast_dropout(x, self.p)


ATTENTION = "sdpa_fast_dropout"


def sdpa_fast_dropout(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention function, with ``fast_dropout`` on the probabilities in CPU training.

    query: (B, H, L, D); key, value: (B, H_kv, S, D); attention_mask: None, bool (True: attend) or
    additive, broadcastable to (B, H, L, S). Returns the output as (B, L, H, D) and no weights.
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    special = kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
    if not 0 < dropout < 1 or query.device.type != "cpu" or special:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    length, keys = query.shape[2], key.shape[2]
    causal = length > 1 and attention_mask is None and (is_causal if is_causal is not None
                                                        else getattr(module, "is_causal", True))
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-2, -1)).float() * scale
    if causal:  # SDPA's is_causal: query i sees keys 0..i
        attention_mask = torch.ones(length, keys, dtype=torch.bool, device=query.device).tril()
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    probabilities = fast_dropout(torch.softmax(scores, dim=-1), dropout).to(value.dtype)
    return torch.matmul(probabilities, value).transpose(1, 2).contiguous(), None


def use_fast_dropout(model: torch.nn.Module, attention: bool = True) -> int:
    """Turn every plain ``nn.Dropout`` of ``model`` into a ``FastDropout`` (same ``p``), and (``attention``)
    a transformers model on ``sdpa`` attention to ``ATTENTION``; returns how many dropout layers were turned."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Dropout:
            module.__class__ = FastDropout
            count += 1
    if attention:
        _use_attention(model)
    return count


def _use_attention(model: torch.nn.Module) -> bool:
    """Switch the outermost transformers model inside ``model`` from ``sdpa`` to ``ATTENTION``."""
    from transformers import AttentionInterface, PreTrainedModel
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    outer = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if outer is None or outer.config._attn_implementation != "sdpa" or not outer._can_set_attn_implementation():
        return False
    AttentionInterface.register(ATTENTION, sdpa_fast_dropout)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks SDPA gets (bool, or None without padding)
    outer.set_attn_implementation(ATTENTION)
    return outer.config._attn_implementation == ATTENTION
