"""The embedded default end to end: MiniLM + Rotten Tomatoes, a few real steps (slow: ~1 minute)."""

from __future__ import annotations

import pytest
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from lora_analysis.embedded import minilm_dir
from lora_analysis.train.sweep import run_overrides


@pytest.mark.slow
def test_a_few_steps_on_the_embedded_default(tmp_path):
    run_dir, metrics = run_overrides(["optim.steps=3", f"out_dir={tmp_path}", "progress=false"])
    assert (metrics["train_examples"], metrics["test_examples"]) == (10_752, 2_000)
    assert metrics["majority_accuracy"] == pytest.approx(0.575)
    assert metrics["lora_params"] == 8 * 6 * (4 * (384 + 384) + 2 * (384 + 1536))
    assert len(metrics["a_moved"]) == 36 and not any("pooler" in p for p in metrics["a_moved"])
    base = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    loaded = PeftModel.from_pretrained(base, run_dir)
    assert len([n for n, _ in loaded.named_modules() if n.endswith("lora_A.default")]) == 36
