"""train.dropout: the drop rate and expectation of torch's dropout, gradients through the same mask, seeded."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import build_tiny_model

from lora_analysis.train.config import ModelConfig
from lora_analysis.train.dropout import FastDropout, fast_dropout, keep_scale, use_fast_dropout
from lora_analysis.train.modeling import load_model


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drop_rate_and_expectation_are_torchs(p, dtype):
    torch.manual_seed(0)
    n = 1_000_003  # not a multiple of 4: the last draw is cut
    out = fast_dropout(torch.ones(n, dtype=dtype), p)
    assert out.dtype == dtype and out.shape == (n,)
    t, scale = keep_scale(p)
    dropped = float((out == 0).double().mean())
    assert abs(t / 2**15 - p) <= 2**-16
    assert abs(dropped - t / 2**15) < 5 * math.sqrt(p * (1 - p) / n)  # binomial: five standard errors
    kept = out[out != 0].double()
    assert torch.all(kept == torch.tensor(scale, dtype=dtype).double())
    rounding = 4e-3 if dtype == torch.bfloat16 else 0  # the scale is rounded to bf16, as in torch's dropout
    assert abs(float(out.double().mean()) - 1) < 5 * math.sqrt(p / (1 - p) / n) + rounding


def test_the_gradient_goes_through_the_same_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)
    out = fast_dropout(x, 0.3)
    out.backward(torch.ones_like(out))
    _, scale = keep_scale(0.3)
    expected = torch.where(out != 0, torch.tensor(scale), torch.tensor(0.0))
    assert torch.equal(x.grad, expected)


def test_masks_follow_the_seed_and_every_element_can_be_dropped():
    x = torch.ones(4, 1001)
    torch.manual_seed(3)
    a = fast_dropout(x, 0.5)
    torch.manual_seed(3)
    b = fast_dropout(x, 0.5)
    assert torch.equal(a, b) and not torch.equal(a, fast_dropout(x, 0.5))
    hits = torch.zeros(4, 1001)
    for _ in range(40):
        hits += fast_dropout(x, 0.5) == 0
    assert bool((hits > 0).all())  # no position (e.g. the top quarter of a draw) is never dropped


def test_modules_are_swapped_and_behave_like_dropout_outside_training(tmp_path):
    model = load_model(ModelConfig(name_or_path=str(build_tiny_model("bert", tmp_path / "bert"))), 2, 0)
    plain = sum(type(m) is torch.nn.Dropout for m in model.modules())
    assert plain > 0 and use_fast_dropout(model) == plain
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    layer = FastDropout(0.2)
    x = torch.randn(8, 16)
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    assert torch.equal(FastDropout(0.0)(x), x) and torch.equal(FastDropout(1.0)(x), torch.zeros_like(x))
    assert bool((layer(x) == 0).any())

