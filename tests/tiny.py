"""Tiny randomly initialised models and data, built from configs: no downloads, seconds to train.

Each model directory holds config.json, model.safetensors and a tokenizer (MiniLM's WordPiece
tokenizer, copied from the embedded model, so every family can read the same text).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import (
    AutoModel,
    BertConfig,
    GPT2Config,
    LlamaConfig,
)

from lora_analysis.embedded import minilm_dir

VOCAB = 30522
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def tiny_config(family: str):
    """A 2-block model of the family, hidden 32 (Llama: 4 heads, 2 KV heads, gated FFN of 48)."""
    if family == "bert":
        return BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=128, pad_token_id=0)
    if family == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                          pad_token_id=0, bos_token_id=101, eos_token_id=102)
    if family == "llama":
        return LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=48, max_position_embeddings=128,
                           pad_token_id=0, bos_token_id=101, eos_token_id=102)
    raise ValueError(family)


def build_tiny_model(family: str, path: Path, seed: int = 0) -> Path:
    """Write a tiny pretrained-looking model directory for ``family`` (bert, gpt2, llama)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    torch.manual_seed(seed)
    model = AutoModel.from_config(tiny_config(family))
    model.save_pretrained(path)
    for name in TOKENIZER_FILES:
        source = minilm_dir() / name
        if source.is_file():
            shutil.copy(source, path / name)
    return path


def write_tiny_csv(path: Path, rows: int = 240, seed: int = 0) -> Path:
    """A learnable sentiment task: positive texts use positive words, negative texts negative ones."""
    rng = np.random.default_rng(seed)
    good, bad = ["great", "superb", "moving", "fun", "brilliant"], ["awful", "dull", "boring", "bad", "weak"]
    filler = ["the", "film", "plot", "actors", "story", "was", "quite", "and", "very"]
    texts, labels = [], []
    for i in range(rows):
        label = int(rng.integers(2))
        words = list(rng.choice(filler, size=int(rng.integers(3, 12)))) + list(rng.choice(good if label else bad, 2))
        rng.shuffle(words)
        texts.append(" ".join(words) + f" {i}")  # the index keeps texts distinct
        labels.append("pos" if label else "neg")
    pd.DataFrame({"review": texts, "sentiment": labels}).to_csv(path, index=False)
    return Path(path)


def tiny_overrides(model_dir: Path, csv: Path, out_dir: Path, steps: int = 4) -> list[str]:
    """Overrides that point ``train`` at a tiny model and tiny data, with tiny batches."""
    return [
        f"model.name_or_path={model_dir}",
        f"data.path={csv}",
        "data.text_column=review",
        "data.label_column=sentiment",
        "data.test_size=40",
        "data.max_length=24",
        f"optim.steps={steps}",
        "optim.batch_size=8",
        "optim.eval_batch_size=32",
        "optim.log_every=1",
        "lora.r=2",
        f"out_dir={out_dir}",
        "progress=false",
        "threads=1",
    ]
