"""Dropout on the CPU from 15-bit random integers: the model's ``nn.Dropout`` layers, 2x faster.

torch's CPU dropout draws its mask with ``bernoulli_``, about 8 ns per element on one core: on the
embedded default that was 17% of a bfloat16 training step (``benchmarks/profile_step.py``), more than
any operator but the matrix products. Here the mask comes from ``random_`` on int64 (63 random bits
per draw, about 1 ns per element for four elements), each 16-bit quarter masked to 15 bits: an element
is dropped when its 15 bits are below ``t = round(p * 2^15)``, and the kept ones are scaled by
``2^15 / (2^15 - t)``. The drop probability is ``t / 2^15`` (0.1 becomes 0.100006) and the expectation
of the output is exactly the input, as with torch's. The masks come from torch's default generator, so
a seeded run is as reproducible as before, but its masks are not torch's: a run trained with
``optim.fast_dropout=false`` sees different ones. Attention dropout inside
``scaled_dot_product_attention`` is left to torch (it has no module to replace).
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


def use_fast_dropout(model: torch.nn.Module) -> int:
    """Turn every plain ``nn.Dropout`` of ``model`` into a ``FastDropout`` (same ``p``); how many."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Dropout:
            module.__class__ = FastDropout
            count += 1
    return count
