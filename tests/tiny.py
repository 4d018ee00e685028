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


def tiny_config(family: str, hidden: int = 32, vocab: int = VOCAB, positions: int = 128,
                special: tuple[int, int] = (101, 102), pad: int | None = 0):
    """A 2-block model of the family, hidden 32 (Llama: 4 heads, 2 KV heads, gated FFN of 48).

    The one builder of tiny configs: ``_tiny_models`` uses it too, with a vocabulary of 100 and no
    tokenizer. ``special``: the BOS and EOS ids of GPT-2 and Llama (MiniLM's [CLS] and [SEP] by default).
    """
    bos, eos = special
    if family == "bert":
        return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=2 * hidden, max_position_embeddings=positions, pad_token_id=0)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=2, n_head=2, n_positions=positions,
                          pad_token_id=pad, bos_token_id=bos, eos_token_id=eos)
    if family == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=48, max_position_embeddings=positions,
                           pad_token_id=pad, bos_token_id=bos, eos_token_id=eos)
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
        "data.val_size=40",
        "optim.eval_every=2",
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


def interrupted_at(step: int):
    """``(the real trainer._save_checkpoint, one that saves and then raises KeyboardInterrupt at step)``:
    monkeypatch the second in to cut a run short right after its checkpoint at ``step``."""
    from lora_analysis.train import trainer

    real = trainer._save_checkpoint

    def save_then_stop(run_dir, params, optimizer, progress, best):
        real(run_dir, params, optimizer, progress, best)
        if progress.step == step:
            raise KeyboardInterrupt

    return real, save_then_stop
