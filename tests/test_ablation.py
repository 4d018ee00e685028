"""Budget-matched ranks against hand counts; the rank recommendation recovers a planted rank."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from peft import LoraConfig
from safetensors.torch import save_file
from tiny import build_tiny_model

from lora_analysis import cli
from lora_analysis.analysis.compare import analyze
from lora_analysis.analysis.sweep import stale_reason
from lora_analysis.derive.recommend import rank_pattern, recommend
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.train.budget import budget_params, lora_params, rank_for_budget
from lora_analysis.train.config import LoraSettings, ModelConfig
from lora_analysis.train.modeling import skeleton, target_shapes
from lora_analysis.train.sweep import write_sweep_table

# (out, in) per block, by role. BERT-base: hidden 768, FFN 3072. GPT-2 small: fused qkv 768 -> 2304.
# Llama-3-8B: hidden 4096, 8 KV heads of 128 (k, v: 4096 -> 1024), FFN 14336.
BERT = {"q": (768, 768), "k": (768, 768), "v": (768, 768), "o": (768, 768), "ffn_in": (3072, 768),
        "ffn_out": (768, 3072)}
GPT2 = {"qkv": (2304, 768), "o": (768, 768), "ffn_in": (3072, 768), "ffn_out": (768, 3072)}
LLAMA = {"q": (4096, 4096), "k": (1024, 4096), "v": (1024, 4096), "o": (4096, 4096), "ffn_gate": (14336, 4096),
         "ffn_in": (14336, 4096), "ffn_out": (4096, 14336)}


def shapes(table, roles, layers):
    return [table[r] for r in roles] * layers


def test_lora_params_match_hand_counts():
    assert lora_params(8, shapes(BERT, ["q"], 12)) == 8 * 1536 * 12 == 147_456
    assert lora_params(4, shapes(GPT2, ["qkv"], 12)) == 4 * (768 + 2304) * 12 == 147_456
    assert lora_params(16, shapes(LLAMA, ["k"], 32)) == 16 * (4096 + 1024) * 32 == 2_621_440


def test_rank_for_budget_matches_hand_counts():
    budget = lora_params(32, shapes(BERT, ["q"], 12))  # r32@q: 589,824
    assert rank_for_budget(budget, shapes(BERT, ["q", "v"], 12)) == 16
    assert rank_for_budget(budget, shapes(BERT, ["ffn_in"], 12)) == 589_824 // (3840 * 12) == 12
    assert rank_for_budget(budget, shapes(BERT, list(BERT), 12)) == 589_824 // (4 * 1536 + 2 * 3840) // 12 == 3
    gpt2 = lora_params(8, shapes(GPT2, ["o"], 12))  # 147,456
    assert rank_for_budget(gpt2, shapes(GPT2, ["qkv"], 12)) == 147_456 // (3072 * 12) == 4
    llama = lora_params(64, shapes(LLAMA, ["q"], 32))  # 64 * 8192 * 32 = 16,777,216
    assert rank_for_budget(llama, shapes(LLAMA, ["ffn_gate", "ffn_in", "ffn_out"], 32)) == 16_777_216 // (
        3 * 18432 * 32) == 9
    with pytest.raises(LoraAnalysisError, match="below rank 1"):
        rank_for_budget(100, shapes(BERT, ["q"], 12))


def test_budget_spec_prices_a_reference_set():
    assert budget_params("r32@q", {"q": shapes(BERT, ["q"], 12)}) == 589_824
    assert budget_params(1000, {}) == budget_params("1000", {}) == 1000
    with pytest.raises(LoraAnalysisError, match="r<rank>@<targets>"):
        budget_params("lots", {})


@pytest.mark.parametrize("family,roles", [("bert", ["q", "ffn_in"]), ("gpt2", ["qkv", "ffn_out"]),
                                          ("llama", ["k", "ffn_gate"])])
def test_shapes_come_from_the_real_model(tmp_path, family, roles):
    model = skeleton(ModelConfig(name_or_path=str(build_tiny_model(family, tmp_path / family))))
    found = target_shapes(model, LoraSettings(), "+".join(roles))
    expected = {"bert": [(32, 32), (64, 32)], "gpt2": [(96, 32), (32, 128)], "llama": [(16, 32), (48, 32)]}[family]
    assert sorted(set(found)) == sorted(expected) and len(found) == 2 * 2


# --- a sweep with a planted rank: q needs 2 directions, ffn_in needs 4

K, D_Q, D_FFN = 48, 48, 96
PLANTED = {"q": 2, "ffn_in": 4}
PATHS = {"q": "bert.encoder.layer.{}.attention.self.query", "ffn_in": "bert.encoder.layer.{}.intermediate.dense"}


def planted_run(sweep, r, seed, accuracy):
    """A finished run whose dW has the planted directions (shared by every run) plus per-run noise."""
    rng = np.random.default_rng([r, seed])
    truth = np.random.default_rng(123)
    name = f"r{r}-seed{seed}"
    tensors, init = {}, {}
    for role, t in PLANTED.items():
        for layer in range(2):
            basis = np.linalg.qr(truth.standard_normal((K, K)))[0][:, :t].T  # (t, K), the same in every run
            rows = np.vstack([basis * np.linspace(3, 2, t)[:, None], 0.05 * rng.standard_normal((r - t, K))])
            mix = np.linalg.qr(rng.standard_normal((r, r)))[0]
            a = mix @ rows
            out = D_Q if role == "q" else D_FFN
            key = f"base_model.model.{PATHS[role].format(layer)}"
            tensors[f"{key}.lora_A.weight"] = torch.tensor(a, dtype=torch.float32)
            tensors[f"{key}.lora_B.weight"] = torch.tensor(rng.standard_normal((out, r)), dtype=torch.float32)
            init[f"{key}.lora_A.weight"] = torch.tensor(rng.standard_normal((r, K)) / r, dtype=torch.float32)
            init[f"{key}.lora_B.weight"] = torch.zeros(out, r)
    run = sweep / name
    run.mkdir(parents=True)
    save_file(tensors, str(run / "adapter_model.safetensors"))
    save_file(init, str(run / "adapter_init.safetensors"))
    LoraConfig(r=r, lora_alpha=8, target_modules=["query", "intermediate.dense"]).save_pretrained(str(run))
    config = {"run_name": name, "seed": seed, "method": "lora", "model": {"name_or_path": "none"},
              "lora": {"r": r, "alpha": 8.0, "rslora": False, "targets": "q+ffn_in", "init": "gaussian",
                       "init_stream": "per_module"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    # validation says where accuracy stops improving; test (never read for it) would say r=16
    (run / "metrics.json").write_text(json.dumps({"val_accuracy": accuracy, "test_accuracy": 0.6 + 0.01 * r}))
    (run / "DONE").write_text("{}")


@pytest.fixture(scope="module")
def planted_sweep(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("planted") / "sweep"
    for r, seed, accuracy in [(4, 0, 0.7995), (4, 1, 0.8000), (8, 0, 0.8010), (8, 1, 0.8005), (16, 0, 0.8000),
                              (16, 1, 0.8005)]:
        planted_run(sweep, r, seed, accuracy)
    write_sweep_table(sweep)
    analyze([sweep], w_tables=False, intruders=False, progress=False).save(sweep / "analysis")
    return sweep


def test_recommendation_recovers_the_planted_rank(planted_sweep):
    result = recommend(planted_sweep)
    assert dict(zip(result.roles["role"], result.roles["rank"], strict=True)) == PLANTED
    assert set(result.layers["seed_shared"]) == {2.0, 4.0} and result.accuracy_plateau == 4
    assert result.rank_pattern == {r"encoder\.layer\.\d+\.attention\.self\.query": 2,
                                   r"encoder\.layer\.\d+\.intermediate\.dense": 4}
    # The learned-part subject agrees; the init (never shared) is not a subject one can recommend from.
    assert dict(zip(result.roles["role"], recommend(planted_sweep, "A").roles["rank"], strict=True)) == PLANTED


def test_rank_pattern_is_what_peft_accepts(planted_sweep, tmp_path, capsys):
    out = tmp_path / "ranks.json"
    assert cli.main(["recommend", str(planted_sweep), f"rank_pattern={out}"]) == 0
    printed = capsys.readouterr().out
    assert ("Validation accuracy stops improving at r=4 (the smallest rank within 0.01 of the best, r=8, at 95%); "
            "the largest recommended rank (4) is in agreement") in printed
    pattern = json.loads(out.read_text())
    config = LoraConfig(r=8, target_modules=["query", "intermediate.dense", "output.dense"], rank_pattern=pattern)
    from peft.utils.other import get_pattern_key

    def rank_of(path):
        return config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), path), config.r)

    assert rank_of("bert.encoder.layer.1.attention.self.query") == 2
    assert rank_of("bert.encoder.layer.0.intermediate.dense") == 4
    assert rank_of("bert.encoder.layer.0.attention.output.dense") == 8  # not caught by any role's key


def test_recommend_needs_a_sweep(tmp_path, capsys):
    assert cli.main(["recommend", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_recommend_analyses_runs_finished_after_the_analysis(tmp_path, capsys):
    sweep = tmp_path / "growing"
    for r, seed in [(4, 0), (8, 0), (8, 1)]:
        planted_run(sweep, r, seed, 0.8)
    write_sweep_table(sweep)
    analyze([sweep], w_tables=False, intruders=False, progress=False).save(sweep / "analysis")
    assert stale_reason(sweep) is None
    planted_run(sweep, 16, 0, 0.8)
    write_sweep_table(sweep)
    assert stale_reason(sweep) == "analysis is out of date: 1 finished run(s) not analysed (r16-seed0)"
    assert cli.main(["recommend", str(sweep)]) == 0
    assert "r16-seed0" in capsys.readouterr().err
    assert "r16-seed0" in set(pd.read_parquet(sweep / "analysis" / "runs.parquet")["run"])
    assert stale_reason(sweep) is None


def test_rank_pattern_keys_for_an_architecture_without_a_role_table():
    modules = pd.DataFrame({"module": ["q", "q", "ffn_in"], "layer": [0, 3, 3],
                            "path": ["net.blocks.0.attn.wq", "net.blocks.3.attn.wq", "net.blocks.3.mlp.w1"]})
    roles = pd.DataFrame({"role": ["q", "ffn_in"], "rank": [2, 8]})
    layers = pd.DataFrame({"role": ["q", "q", "ffn_in"], "layer": [0, 3, 3], "needed": [2, 6, 8]})
    assert rank_pattern(roles, layers, modules) == {
        r"blocks\.3\.attn\.wq": 6, r"blocks\.\d+\.attn\.wq": 2, r"blocks\.\d+\.mlp\.w1": 8}
    with pytest.raises(LoraAnalysisError, match="role v"):
        rank_pattern(pd.DataFrame({"role": ["v"], "rank": [2]}), layers, modules)


def test_a_role_with_no_task_specific_direction_is_named_with_how_to_leave_it_out():
    from lora_analysis.derive.recommend import Recommendation

    roles = pd.DataFrame({"role": ["q", "v", "ffn_in"], "rank": [0, 1, 0], "layers_min": [0, 0, 0],
                          "layers_max": [0, 1, 0], "n_layers": [6, 6, 6], "seed_shared": [0.0, 0.5, 0.0],
                          "rank_shared": [0.0, 1.0, 0.0]})
    text = "\n".join(Recommendation(pd.DataFrame(), roles, "A_delta", "all", None, {"v": 1}).explain())
    assert "q, ffn_in: no task-specific direction (rank 0)" in text and "(lora.targets=v)" in text
    full = roles.assign(rank=[2, 1, 4])
    assert "rank 0" not in "\n".join(Recommendation(pd.DataFrame(), full, "A_delta", "all", None, {}).explain())
