"""Training runs on tiny BERT, GPT-2 and Llama models: run folder, PEFT round trip, determinism, resume."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from tiny import build_tiny_model, interrupted_at, tiny_overrides, write_tiny_csv
from transformers import AutoModelForSequenceClassification

from lora_analysis.layout import RunDir
from lora_analysis.train import trainer
from lora_analysis.train.sweep import collect_runs, run_overrides


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    models = {f: build_tiny_model(f, root / f) for f in ("bert", "gpt2", "llama")}
    return models, write_tiny_csv(root / "reviews.csv")


def overrides(tiny, tmp_path, family="bert", steps=4, extra=()):
    models, csv = tiny
    return tiny_overrides(models[family], csv, tmp_path / "runs", steps) + list(extra)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_run_folder_holds_everything(tiny, tmp_path, family):
    run_dir, metrics = run_overrides(overrides(tiny, tmp_path, family, extra=["lora.targets=all"]))
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "adapter_config.json", "adapter_model.safetensors", "adapter_init.safetensors",
            "history.csv", "metrics.json", RunDir.DONE} <= names
    assert "checkpoint.safetensors" not in names
    assert metrics["steps"] == 4 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["examples_per_s"] > 0 and metrics["tokens_per_s"] > metrics["examples_per_s"]
    assert set(metrics["a_moved"]) and all(v > 0 for v in metrics["a_moved"].values())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["lora"]["r"] == 2 and config["optim"]["lr"] == 1e-3 and config["run_name"] == run_dir.name
    init = load_file(str(run_dir / "adapter_init.safetensors"))
    final = load_file(str(run_dir / "adapter_model.safetensors"))
    lora_keys = {k for k in final if ".lora_" in k}
    assert lora_keys == set(init)
    assert all(not init[k].any() for k in init if ".lora_B." in k)  # B starts at zero
    assert all(init[k].shape[0] == 2 for k in init if ".lora_A." in k)


def test_peft_round_trip_gives_identical_outputs(tiny, tmp_path):
    models, _ = tiny
    run_dir, _ = run_overrides(overrides(tiny, tmp_path, "bert"))
    base = AutoModelForSequenceClassification.from_pretrained(models["bert"], num_labels=2)
    loaded = PeftModel.from_pretrained(base, run_dir).eval()
    # Rebuild the trained model independently: base + saved A/B/head put back by hand.
    ids = torch.tensor([[101, 2204, 3185, 102, 0], [101, 6659, 102, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        logits = loaded(input_ids=ids, attention_mask=mask).logits
    saved = load_file(str(run_dir / "adapter_model.safetensors"))
    reference = AutoModelForSequenceClassification.from_pretrained(models["bert"], num_labels=2).eval()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    scale = config["lora"]["alpha"] / config["lora"]["r"]
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for key, a in saved.items():
            if key.endswith(".lora_A.weight"):
                path = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                b = saved[key.replace(".lora_A.", ".lora_B.")]
                modules[path].weight += scale * b @ a
        reference.classifier.weight.copy_(saved["base_model.model.classifier.weight"])
        reference.classifier.bias.copy_(saved["base_model.model.classifier.bias"])
        expected = reference(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_same_config_gives_identical_adapters(tiny, tmp_path):
    first, _ = run_overrides(overrides(tiny, tmp_path, extra=["name=a"]))
    second, _ = run_overrides(overrides(tiny, tmp_path, extra=["name=b"]))
    a = load_file(str(first / "adapter_model.safetensors"))
    b = load_file(str(second / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other, _ = run_overrides(overrides(tiny, tmp_path, extra=["name=c", "seed=1"]))
    c = load_file(str(other / "adapter_model.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_finished_run_is_skipped(tiny, tmp_path):
    run_dir, metrics = run_overrides(overrides(tiny, tmp_path))
    stamp = (run_dir / "adapter_model.safetensors").stat().st_mtime_ns
    again_dir, again = run_overrides(overrides(tiny, tmp_path))
    assert again_dir == run_dir and again == json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_interrupted_run_resumes_to_the_same_adapter(tiny, tmp_path, monkeypatch):
    extra = ["optim.checkpoint_every=2", "lora.dropout=0.1"]  # dropout: the RNG state must resume too
    straight, straight_metrics = run_overrides(overrides(tiny, tmp_path, steps=6, extra=[*extra, "name=straight"]))

    real_save, save_then_stop = interrupted_at(4)

    monkeypatch.setattr(trainer, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_overrides(overrides(tiny, tmp_path, steps=6, extra=[*extra, "name=cut"]))
    cut = tmp_path / "runs" / "cut" / straight.name
    assert (cut / "checkpoint.safetensors").is_file() and not (cut / RunDir.DONE).exists()
    monkeypatch.setattr(trainer, "_save_checkpoint", real_save)
    resumed, metrics = run_overrides(overrides(tiny, tmp_path, steps=6, extra=[*extra, "name=cut"]))
    assert metrics["steps"] == 6
    assert metrics["best_step"] == straight_metrics["best_step"]  # the best state came back with the checkpoint
    assert metrics["val_loss"] == straight_metrics["val_loss"]
    a = load_file(str(straight / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r.split(",")[:2] for r in (straight / "history.csv").read_text().splitlines()] == [
        r.split(",")[:2] for r in (resumed / "history.csv").read_text().splitlines()
    ]


def test_full_fine_tuning_reference(tiny, tmp_path):
    run_dir, metrics = run_overrides(overrides(tiny, tmp_path, extra=["method=full"]))
    assert run_dir.name.startswith("full")
    assert not (run_dir / "adapter_model.safetensors").exists()
    assert metrics["lora_params"] == 0 and metrics["trainable_params"] > 100_000
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 5e-5


def test_causal_lm_on_a_text_column(tiny, tmp_path):
    run_dir, metrics = run_overrides(
        overrides(tiny, tmp_path, "gpt2", extra=["model.task=causal_lm", "data.label_column=null"])
    )
    assert metrics["test_loss"] > 0 and metrics["test_perplexity"] > 1
    assert "test_accuracy" not in metrics


def test_sweep_table_lists_every_run(tiny, tmp_path):
    for r in (1, 2):
        run_overrides(overrides(tiny, tmp_path, extra=[f"lora.r={r}"]))
    table = collect_runs(tmp_path / "runs" / "default")
    assert sorted(table["lora.r"]) == [1, 2] and "test_accuracy" in table
    assert (tmp_path / "runs" / "default" / "runs.parquet").is_file()


def init_A(model_dir, r, stream, seed=0):
    from lora_analysis.train.config import LoraSettings, Task
    from lora_analysis.train.modeling import add_lora, lora_state

    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model, _ = add_lora(base, LoraSettings(r=r, targets="q", init_stream=stream), Task.classification, seed)
    return {k: v for k, v in lora_state(model).items() if ".lora_A." in k}


def test_init_streams_per_module_and_shared(tiny):
    models, _ = tiny
    r2, r4 = init_A(models["bert"], 2, "per_module"), init_A(models["bert"], 4, "per_module")
    for key in r2:  # independent draws: no row of rank 2 is a rescaled row of rank 4
        assert not torch.allclose(r2[key] * 2, r4[key][:2] * 4)
    assert all(torch.equal(a, b) for a, b in zip(r4.values(), init_A(models["bert"], 4, "per_module").values(),
                                                    strict=True))
    s2, s4 = init_A(models["bert"], 2, "shared"), init_A(models["bert"], 4, "shared")
    for key in s2:  # Gaussian A ~ N(0, 1/r^2): the same standard normal rows, scaled by 1/r
        torch.testing.assert_close(s2[key] * 2, s4[key][:2] * 4)
    layers = list(s4.values())
    assert not torch.allclose(layers[0], layers[1])  # every module has a stream of its own


def test_rank_pattern_from_a_recommendation_file(tiny, tmp_path):
    pattern = tmp_path / "ranks.json"
    pattern.write_text(json.dumps({r"encoder\.layer\.1\.attention\.self\.query": 3,
                                   r"encoder\.layer\.\d+\.attention\.self\.query": 1}))
    run_dir, _ = run_overrides(overrides(tiny, tmp_path, extra=["lora.targets=q+v", f"lora.rank_pattern={pattern}"]))
    final = load_file(str(run_dir / "adapter_model.safetensors"))
    ranks = {k.split("bert.encoder.layer.")[1].removesuffix(".lora_A.weight"): v.shape[0]
             for k, v in final.items() if k.endswith(".lora_A.weight")}
    assert ranks == {"0.attention.self.query": 1, "1.attention.self.query": 3,
                     "0.attention.self.value": 2, "1.attention.self.value": 2}
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["lora"]["rank_pattern"]
    assert json.loads(saved) == json.loads(pattern.read_text())  # the pattern itself, not the file name
    models, _ = tiny
    base = AutoModelForSequenceClassification.from_pretrained(models["bert"], num_labels=2)
    loaded = PeftModel.from_pretrained(base, run_dir)  # PEFT reads the pattern back: shapes match
    assert loaded.base_model.model.bert.encoder.layer[1].attention.self.query.lora_A["default"].weight.shape[0] == 3


@pytest.mark.parametrize("spec, message", [
    ("missing.json", "is not a file"),
    ("'{\"query\": 0}'", "must be an integer >= 1"),
    ("'{\"(query\": 2}'", "is not a valid regular expression"),
    ("'{\"pooler\\\\.dense\": 2}'", "matches none of the adapted modules"),
    ("'{\"query\": 40}'", "exceeds min(in, out) = 32"),
])
def test_bad_rank_patterns_are_one_clear_error(tiny, tmp_path, spec, message):
    from lora_analysis.errors import LoraAnalysisError

    with pytest.raises(LoraAnalysisError, match=re.escape(message)):
        run_overrides(overrides(tiny, tmp_path, extra=[f"lora.rank_pattern={spec}"]))


def test_runs_from_before_a_new_setting_are_still_skipped(tiny, tmp_path):
    run_dir, metrics = run_overrides(overrides(tiny, tmp_path))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    del saved["lora"]["rank_pattern"]  # a run saved before lora.rank_pattern existed
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert run_overrides(overrides(tiny, tmp_path))[1] == metrics
    saved["lora"]["alpha"] = 3.0  # a finished run of another config is never mixed in
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    from lora_analysis.errors import LoraAnalysisError

    with pytest.raises(LoraAnalysisError, match=r"different config \(lora.alpha: 3.0 there, 8.0 now\)"):
        run_overrides(overrides(tiny, tmp_path))


def test_a_run_evaluated_at_another_batch_size_is_skipped_not_refused(tiny, tmp_path):
    """optim.eval_batch_size changes speed only: a finished run saved with another value (the old default 256)
    is skipped; the same edit to a setting that changes the run (optim.batch_size) is still refused."""
    from lora_analysis.errors import LoraAnalysisError

    run_dir, metrics = run_overrides(overrides(tiny, tmp_path))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["optim"]["eval_batch_size"] = 256
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert run_overrides(overrides(tiny, tmp_path))[1] == metrics
    saved["optim"]["batch_size"] = saved["optim"]["batch_size"] + 1
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(LoraAnalysisError, match=r"different config \(optim.batch_size"):
        run_overrides(overrides(tiny, tmp_path))


def test_run_folder_records_its_provenance_and_a_resume_elsewhere_says_so(tiny, tmp_path):
    import json

    from lora_analysis.train import provenance

    run_dir, _ = run_overrides(overrides(tiny, tmp_path))
    saved = json.loads((run_dir / "provenance.json").read_text())
    assert set(saved["versions"]) == {"torch", "transformers", "peft", "lora-analysis"}
    assert saved["versions"]["torch"] == torch.__version__ and len(saved["data_sha256"]) == 64
    assert saved["threads"] >= 1 and saved["device_name"]
    assert provenance.record(run_dir, "cpu", 1, str(tiny[1])) is None  # same environment: no note
    saved["versions"]["torch"] = "0.0.1"
    (run_dir / "provenance.json").write_text(json.dumps(saved))
    note = provenance.record(run_dir, "cpu", 1, str(tiny[1]))
    assert "resumed in another environment" in note and "0.0.1" in note
