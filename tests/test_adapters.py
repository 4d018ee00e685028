"""Adapter folders saved by PEFT itself, base weights, and bad input named by file and tensor."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from _tiny_models import peft_adapter, save_base, tiny_model
from peft import PeftModel
from peft.utils.other import get_pattern_key
from safetensors.torch import load_file, save_file

from lora_analysis.analysis import adapters
from lora_analysis.analysis.adapters import Adapter
from lora_analysis.analysis.base_weights import BaseWeights
from lora_analysis.analysis.compare import analyze
from lora_analysis.analysis.delta import lora_delta
from lora_analysis.analysis.runs import find_runs
from lora_analysis.embedded import minilm_dir
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.targets import pattern_key


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("adapters")


def peft_deltas(family, folder, adapter_name="default"):
    """dW of every LoRA layer as PEFT itself computes it after loading the folder."""
    model = PeftModel.from_pretrained(tiny_model(family), folder, adapter_name=adapter_name)
    out = {}
    for name, module in model.base_model.model.named_modules():
        if hasattr(module, "get_delta_weight") and adapter_name in getattr(module, "lora_A", {}):
            out[name] = (
                module.get_delta_weight(adapter_name).double().numpy(),
                module.r[adapter_name],
                module.scaling[adapter_name],
            )
    return out


def check_against_peft(adapter, deltas, transpose=False):
    assert set(adapter.modules) == set(deltas)
    for path, (delta, r, scaling) in deltas.items():
        m = adapter.modules[path]
        assert (m.r, m.scale) == (r, pytest.approx(scaling))
        A, B = adapter.factors(path)
        assert A.shape == (m.r, m.in_features) and B.shape == (m.out_features, m.r)
        ours = lora_delta(A, B, m.scale)
        np.testing.assert_allclose(ours.T if transpose else ours, delta, atol=1e-6)


def test_bert_adapter_roles_scale_and_head_ignored(root):
    folder = peft_adapter("bert", root / "bert", r=4, alpha=8, modules_to_save=["classifier"])
    adapter = Adapter(folder)
    assert {m.role for m in adapter} == {"q", "v", "ffn_in"}
    assert sorted({m.layer for m in adapter}) == [0, 1]
    assert adapter.targets == "q+v+ffn_in"
    assert all("classifier" not in path for path in adapter.modules)
    assert adapter.modules["bert.encoder.layer.1.intermediate.dense"].out_features == 64
    check_against_peft(adapter, peft_deltas("bert", folder))


def test_gpt2_fused_qkv_fan_in_fan_out_and_rslora(root):
    folder = peft_adapter("gpt2", root / "gpt2", r=4, alpha=8, fan_in_fan_out=True, use_rslora=True)
    adapter = Adapter(folder)
    roles = {m.path: m.role for m in adapter}
    assert roles["transformer.h.0.attn.c_attn"] == "qkv" and roles["transformer.h.0.attn.c_proj"] == "o"
    assert roles["transformer.h.1.mlp.c_fc"] == "ffn_in" and roles["transformer.h.1.mlp.c_proj"] == "ffn_out"
    qkv = adapter.modules["transformer.h.0.attn.c_attn"]
    assert (qkv.in_features, qkv.out_features, qkv.scale) == (32, 96, pytest.approx(8 / 2))
    check_against_peft(adapter, peft_deltas("gpt2", folder), transpose=True)  # Conv1D: PEFT gives (in, out)
    base = BaseWeights(save_base("gpt2", root / "gpt2-base"))
    model = tiny_model("gpt2")
    for path, module in (
        ("transformer.h.0.attn.c_attn", model.transformer.h[0].attn.c_attn),
        ("transformer.h.1.attn.c_proj", model.transformer.h[1].attn.c_proj),
    ):  # square: by family
        m = adapter.modules[path]
        W = base.weight(path, m.out_features, m.in_features, adapter.fan_in_fan_out)
        np.testing.assert_array_equal(W, module.weight.detach().double().numpy().T)


def test_llama_named_adapter_with_rank_and_alpha_patterns(root):
    folder = peft_adapter(
        "llama",
        root / "llama",
        r=4,
        alpha=8,
        adapter_name="task",
        rank_pattern={"v_proj": 2, r"layers\.1\.mlp\.down_proj": 6},
        alpha_pattern={"k_proj": 3.0},
    )
    assert folder.name == "task"
    adapter = Adapter(folder)
    assert {m.role for m in adapter} == {"q", "k", "v", "o", "ffn_gate", "ffn_in", "ffn_out"}
    assert adapter.modules["model.layers.0.self_attn.v_proj"].r == 2
    assert adapter.modules["model.layers.1.mlp.down_proj"].r == 6
    assert adapter.modules["model.layers.0.mlp.down_proj"].r == 4
    assert adapter.modules["model.layers.0.self_attn.k_proj"].scale == pytest.approx(3.0 / 4)
    check_against_peft(adapter, peft_deltas("llama", folder, "task"), transpose=False)
    runs, _ = find_runs([root / "llama"])  # PEFT's layout: the named adapter is a subfolder
    assert [r.label for r in runs] == ["task"]


def test_pattern_key_matches_peft():
    patterns = ["v_proj", r"layers\.1\.mlp\.down_proj", "self_attn.q_proj", "query"]
    for path in (
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.mlp.down_proj",
        "model.layers.11.mlp.down_proj",
        "model.layers.2.self_attn.q_proj",
        "bert.encoder.layer.0.attention.self.query",
        "x.key",
    ):
        assert pattern_key(patterns, path) == get_pattern_key(patterns, path)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_other_families_analysed_with_their_base(root, family):
    a = peft_adapter(family, root / f"{family}-a", r=2, seed=0)
    b = peft_adapter(family, root / f"{family}-b", r=4, seed=1)
    base = save_base(family, root / f"{family}-base2")
    result = analyze([a, b], base=str(base), progress=False, w_directions=8)
    assert set(result.phi["comparison"]) == {"rank", "random"}
    assert len(result.dw_vs_w) == 3 * len(result.modules) and result.intruders["max_abs_cos"].notna().all()
    assert set(result.modules["r"]) == {2, 4}


def copy_adapter(source, target):
    shutil.copytree(source, target)
    return target


def edit_tensors(folder, edit):
    tensors = load_file(folder / "adapter_model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "adapter_model.safetensors")


QUERY_A = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"


def test_nan_tensor_named(root):
    folder = copy_adapter(peft_adapter("bert", root / "bert"), root / "nan")
    edit_tensors(folder, lambda t: t[QUERY_A].__setitem__((0, 0), float("nan")))
    with pytest.raises(LoraAnalysisError, match=rf"nan/adapter_model.safetensors: tensor {QUERY_A} has 1 NaN"):
        analyze([folder], progress=False, w_tables=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_nan_and_inf_counted_over_every_piece_of_a_tensor(root, dtype, monkeypatch):
    monkeypatch.setattr(adapters, "_READ_CHUNK", 5)  # checked piece by piece, before the upcast
    folder = copy_adapter(peft_adapter("bert", root / "bert"), root / f"nan-{str(dtype)[6:]}")

    def spoil(tensors):
        A = tensors[QUERY_A].to(dtype)
        A.view(-1)[[1, 6, -1]] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype)
        tensors[QUERY_A] = A

    edit_tensors(folder, spoil)
    with pytest.raises(LoraAnalysisError, match=rf"tensor {QUERY_A} has 3 NaN/Inf values"):
        Adapter(folder).factors("bert.encoder.layer.0.attention.self.query")


def test_truncated_and_corrupt_files_named(root):
    folder = copy_adapter(peft_adapter("bert", root / "bert"), root / "truncated")
    data = (folder / "adapter_model.safetensors").read_bytes()
    (folder / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LoraAnalysisError, match="truncated/adapter_model.safetensors: not a readable tensor file"):
        Adapter(folder)
    (folder / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(LoraAnalysisError, match="truncated/adapter_model.safetensors"):
        Adapter(folder)


def test_module_with_A_but_no_B_named(root):
    folder = copy_adapter(peft_adapter("bert", root / "bert"), root / "no-b")
    edit_tensors(folder, lambda t: t.pop(QUERY_A.replace("lora_A", "lora_B")))
    with pytest.raises(LoraAnalysisError, match=rf"tensor {QUERY_A} has no matching lora_B"):
        Adapter(folder)


def test_not_an_adapter(root, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LoraAnalysisError, match="neither an adapter nor a sweep folder"):
        find_runs([tmp_path])
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(LoraAnalysisError, match="adapter_config.json: peft_type IA3 is not LORA"):
        Adapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    with pytest.raises(LoraAnalysisError, match="no adapter_model.safetensors"):
        Adapter(tmp_path)


@pytest.mark.parametrize("chunk", [None, 7])  # 7: a tensor read in many pieces, the last one short
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_half_precision_tensors_upcast_exactly(root, dtype, chunk, monkeypatch):
    if chunk:
        monkeypatch.setattr(adapters, "_READ_CHUNK", chunk)
    source = peft_adapter("bert", root / "bert")
    folder = copy_adapter(source, root / f"half-{str(dtype)[6:]}-{chunk}")
    edit_tensors(folder, lambda t: t.update({k: v.to(dtype) for k, v in t.items()}))
    stored = load_file(folder / "adapter_model.safetensors")
    A, B = Adapter(folder).factors("bert.encoder.layer.1.attention.self.value")
    key = "base_model.model.bert.encoder.layer.1.attention.self.value.lora_{}.weight"
    np.testing.assert_array_equal(A, stored[key.format("A")].double().numpy())
    np.testing.assert_array_equal(B, stored[key.format("B")].double().numpy())


def test_bin_weights_only(root):
    source = peft_adapter("bert", root / "bert")
    folder = root / "bin"
    folder.mkdir()
    shutil.copy(source / "adapter_config.json", folder)
    torch.save(load_file(source / "adapter_model.safetensors"), folder / "adapter_model.bin")
    A, B = Adapter(folder).factors("bert.encoder.layer.0.attention.self.query")
    np.testing.assert_array_equal(A, Adapter(source).factors("bert.encoder.layer.0.attention.self.query")[0])
    torch.save({"x": Exploit()}, folder / "adapter_model.bin")
    with pytest.raises(LoraAnalysisError, match="adapter_model.bin: refusing to unpickle"):
        Adapter(folder)


class Exploit:
    """Any object that is not a tensor: ``weights_only`` loading must refuse it."""


def test_zero_and_rank_deficient_A(root):
    folder = copy_adapter(peft_adapter("bert", root / "bert"), root / "deficient")
    value_A = QUERY_A.replace("query", "value")

    def edit(tensors):
        tensors[QUERY_A].zero_()
        tensors[value_A][3] = tensors[value_A][0]  # rank 3 of 4

    edit_tensors(folder, edit)
    with pytest.warns(UserWarning, match="numerical rank 0 < r=4"):
        result = analyze([folder], progress=False, w_tables=False)
    modules = result.modules.set_index("path")["numerical_rank_A"]
    assert modules["bert.encoder.layer.0.attention.self.query"] == 0
    assert modules["bert.encoder.layer.0.attention.self.value"] == 3
    rows = result.phi[(result.phi["layer"] == 0) & (result.phi["subject"] == "A")]
    assert set(rows["module"]) == {"v", "ffn_in"}  # no A subspace (and no baseline) for the zero A
    assert rows.loc[rows["module"] == "v", "i"].max() == 4  # random baseline keeps r; the run has rank 3


def test_minilm_base_by_suffix():
    base = BaseWeights()  # the embedded default
    assert base.key_for("bert.encoder.layer.5.output.dense") == "encoder.layer.5.output.dense.weight"
    W = base.weight("bert.encoder.layer.0.attention.self.query", 384, 384)
    np.testing.assert_array_equal(
        W, load_file(minilm_dir() / "model.safetensors")["encoder.layer.0.attention.self.query.weight"].double().numpy()
    )
    with pytest.raises(LoraAnalysisError, match=r"has shape \(384, 1536\), but .* expects \(384, 3072\)"):
        base.weight("bert.encoder.layer.0.output.dense", 384, 1536 * 2)


def test_sharded_base(root, tmp_path):
    tensors = load_file(save_base("bert", root / "bert-base") / "model.safetensors")
    keys = sorted(tensors)
    half = len(keys) // 2
    save_file({k: tensors[k] for k in keys[:half]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({k: tensors[k] for k in keys[half:]}, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {k: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, k in enumerate(keys)}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    base = BaseWeights(tmp_path)
    for path in ("bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.output.dense"):
        key = base.key_for(path)
        m = tensors[key]
        np.testing.assert_array_equal(base.weight(path, *m.shape), m.double().numpy())


def test_a_module_under_two_keys_and_rank_zero_tensors_are_one_line(root):
    twice = copy_adapter(peft_adapter("bert", root / "bert"), root / "twice")
    edit_tensors(twice, lambda t: t.__setitem__(QUERY_A.removeprefix("base_model.model."), t[QUERY_A].clone()))
    with pytest.raises(LoraAnalysisError, match=r"module bert\.encoder\.layer\.0\.attention\.self\.query has two "
                                                r"lora_A tensors"):
        Adapter(twice)
    empty = copy_adapter(peft_adapter("bert", root / "bert"), root / "rank0")
    b_key = QUERY_A.replace("lora_A", "lora_B")
    edit_tensors(empty, lambda t: t.update({QUERY_A: t[QUERY_A][:0].contiguous(), b_key: t[b_key][:, :0].contiguous()}))
    with pytest.raises(LoraAnalysisError, match="have an empty dimension"):
        Adapter(empty)


def test_a_large_folder_of_adapters_is_compared_in_neighbour_pairs_and_other_bases_are_noted(root, tmp_path):
    from lora_analysis.analysis.pairs import MAX_OTHER_PAIRS, plan_pairs

    source = peft_adapter("bert", root / "bert")
    for k in range(22):  # 231 'other' pairs of plain adapters, more than the bound
        copy_adapter(source, tmp_path / "many" / f"a{k:02d}")
    runs, _ = find_runs([tmp_path / "many"])
    notes: list[str] = []
    pairs = plan_pairs(runs, notes=notes)
    assert len(pairs) == 21 < MAX_OTHER_PAIRS and all(abs(p.a - p.b) == 1 for p in pairs)
    assert "22 runs give 231 'other' pairs, more than 190" in notes[0]
    other = copy_adapter(source, tmp_path / "two" / "b")
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "org/another"}))
    first = copy_adapter(source, tmp_path / "two" / "a")
    config = json.loads((first / "adapter_config.json").read_text())
    (first / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "org/one"}))
    notes = []
    plan_pairs(find_runs([tmp_path / "two"])[0], notes=notes)
    assert any("record different base models (org/one and org/another)" in n for n in notes)
