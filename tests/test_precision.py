"""optim.precision=auto: the probe's choice, its cache, the recorded result; frozen weights cast once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from tiny import build_tiny_model, tiny_overrides, write_tiny_csv

from lora_analysis.train import precision
from lora_analysis.train.config import Precision
from lora_analysis.train.sweep import run_overrides


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "lora-analysis" / "precision-probe.json"


def test_auto_follows_the_probe_and_caches_it(cache, monkeypatch):
    calls = []
    monkeypatch.setattr(precision, "probe", lambda shapes: calls.append(shapes) or 1.2)
    cpu = torch.device("cpu")
    slow = precision.resolve(Precision.auto, cpu, [(8, 4)], threads=2)
    assert slow.precision == Precision.fp32 and slow.speedup == 1.2 and "1.20x" in slow.reason
    assert precision.resolve(Precision.auto, cpu, [(8, 4)], threads=2).speedup == 1.2
    assert len(calls) == 1  # the second answer came from the cache
    (key,) = json.loads(cache.read_text())
    assert precision.cpu_model() in key and torch.__version__ in key and "threads 2" in key
    monkeypatch.setattr(precision, "probe", lambda shapes: 3.0)
    assert precision.resolve(Precision.auto, cpu, [(8, 4)], threads=1).precision == Precision.bf16  # another key
    asked = precision.resolve(Precision.fp32, cpu, [(8, 4)], threads=1)
    assert asked.precision == Precision.fp32 and asked.speedup is None


def test_probe_measures_a_positive_ratio():
    assert 0 < precision.probe([(64, 32)], tokens=64, seconds=0.01) < 1000


def test_frozen_weights_cast_once_give_what_autocast_computes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    model[0].requires_grad_(False)
    x = torch.randn(5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(x)
    assert precision.base_weight_shapes(model) == [(32, 16)]
    assert precision.cast_frozen_linears(model) == 1
    assert model[0].weight.dtype == torch.bfloat16 and model[2].weight.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        after = model(x)
    assert torch.equal(before, after)


def test_shared_input_casts_give_what_autocast_computes(tmp_path):
    """LoRA on q, k, v, o and the FFN of a tiny BERT under bf16 autocast: with the input casts shared the
    logits are bit-identical, fewer casts run, and the gradients are as close to float32's as autocast's
    own (their sums are only reordered, at bfloat16 precision)."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForSequenceClassification

    from lora_analysis.train.config import LoraSettings
    from lora_analysis.train.modeling import add_lora, lora_layers

    model_dir = build_tiny_model("bert", tmp_path / "bert")
    ids = torch.randint(5, 90, (4, 12), generator=torch.Generator().manual_seed(0))

    def run(mode: str):
        torch.manual_seed(0)  # the classifier head is drawn at load
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
        model, _ = add_lora(model, LoraSettings(r=4, targets="all"), "classification", 0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        if mode != "fp32":
            precision.cast_frozen_linears(model)
        if mode == "shared":
            assert precision.share_input_casts(lora_layers(model).values()) == len(lora_layers(model)) > 0
        model.eval()
        with profile(activities=[ProfilerActivity.CPU]) as prof, \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode != "fp32"):
            logits = model(input_ids=ids).logits
            logits.float().square().sum().backward()
        copies = sum(e.count for e in prof.key_averages() if e.key == "aten::copy_")
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        return logits, grads, copies

    plain, shared, exact = run("autocast"), run("shared"), run("fp32")
    assert torch.equal(plain[0], shared[0])
    assert shared[2] < plain[2]
    assert plain[1].keys() == shared[1].keys() == exact[1].keys() and len(exact[1]) > 0

    def error(grads):
        return np.mean([((grads[n] - g).norm() / g.norm()).item() for n, g in exact[1].items()])

    assert error(shared[1]) <= 1.25 * error(plain[1]) and error(plain[1]) < 0.05


def test_resolved_precision_is_recorded_and_kept(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(precision, "probe", lambda shapes: 2.0)
    model, csv = build_tiny_model("bert", tmp_path / "bert"), write_tiny_csv(tmp_path / "reviews.csv")
    overrides = tiny_overrides(model, csv, tmp_path / "runs", 3)
    run_dir, metrics = run_overrides(overrides)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["optim"]["precision"] == "bf16"
    assert metrics["precision"] == "bf16" and metrics["precision_probe_speedup"] == 2.0
    assert "2.00x" in metrics["precision_reason"]
    # The machine changes its mind: the finished run is still skipped, as computed with bf16.
    monkeypatch.setattr(precision, "probe", lambda shapes: 1.0)
    cache.unlink()
    again = run_overrides(overrides)[1]
    assert (again["precision"], again["test_accuracy"]) == ("bf16", metrics["test_accuracy"])
