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



class Attention(torch.nn.Module):
    """What the attention functions read from a transformers attention module."""

    def __init__(self, groups: int = 1, causal: bool = False) -> None:
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, causal


def qkv(heads: int = 4, kv_heads: int = 4, length: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, heads, length, 8, generator=g), torch.randn(2, kv_heads, length, 8, generator=g),
            torch.randn(2, kv_heads, length, 8, generator=g))


def padding_mask(kind: str, length: int = 7):
    keep = torch.ones(2, 1, length, length, dtype=torch.bool)
    keep[1, :, :, 5:] = False  # the second text is 5 tokens long
    return keep if kind == "bool" else torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)


@pytest.mark.parametrize(("mask", "groups", "causal"), [
    (None, 1, False), ("bool", 1, False), ("additive", 1, False), (None, 1, True), (None, 2, True), ("bool", 2, False),
])  # fmt: skip
def test_the_written_out_attention_is_sdpas(mask, groups, causal, monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from lora_analysis.train import dropout

    q, k, v = qkv(kv_heads=4 // groups)
    attention_mask, module = (None if mask is None else padding_mask(mask)), Attention(groups, causal)
    expected, _ = sdpa_attention_forward(module, q, k, v, attention_mask, dropout=0.0, scaling=0.3)
    monkeypatch.setattr(dropout, "fast_dropout", lambda x, p: x)  # the same path, nothing dropped
    written, _ = dropout.sdpa_fast_dropout(module, q, k, v, attention_mask, dropout=0.1, scaling=0.3)
    assert written.shape == expected.shape == (2, 7, 4, 8)
    torch.testing.assert_close(written, expected, rtol=1e-5, atol=1e-6)


def test_attention_probabilities_are_dropped_with_the_fast_mask():
    from lora_analysis.train.dropout import sdpa_fast_dropout

    q, k, v = qkv()
    torch.manual_seed(5)
    out, _ = sdpa_fast_dropout(Attention(), q, k, v, padding_mask("bool"), dropout=0.25, scaling=0.3)
    torch.manual_seed(5)
    mask = fast_dropout(torch.ones(2, 4, 7, 7), 0.25)
    scores = (q @ k.transpose(-2, -1) * 0.3).masked_fill(~padding_mask("bool"), float("-inf"))
    expected = (torch.softmax(scores, -1) * mask) @ v
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_a_model_switches_to_the_fast_attention_and_evaluates_as_before(tmp_path):
    from lora_analysis.train.dropout import ATTENTION

    path = str(build_tiny_model("bert", tmp_path / "bert"))
    before, after = (load_model(ModelConfig(name_or_path=path), 2, 0) for _ in range(2))
    after.load_state_dict(before.state_dict())
    use_fast_dropout(after)
    assert after.config._attn_implementation == ATTENTION and before.config._attn_implementation == "sdpa"
    ids = torch.randint(3, 90, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    before.eval(), after.eval()
    with torch.inference_mode():
        logits = [m(input_ids=ids, attention_mask=mask).logits for m in (before, after)]
    assert torch.equal(*logits)
    after.train()
    torch.manual_seed(0)
    loss = after(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert torch.isfinite(loss)
