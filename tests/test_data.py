"""Data: the embedded split, the token cache, length-grouped batches, padding."""

from __future__ import annotations

import numpy as np
import pytest

from lora_analysis.train.config import DataConfig, Task
from lora_analysis.train.data import (
    Examples,
    collate,
    eval_batches,
    load_table,
    split_indices,
    tokenize_cached,
    train_batches,
)


def test_embedded_rotten_tomatoes_split_is_fixed():
    texts, labels, names = load_table(DataConfig(), Task.classification)
    assert (len(texts), names) == (12_752, ["rotten", "fresh"])
    assert len(set(texts)) == len(texts)
    train, test = split_indices(len(texts), 2000, None, split_seed=0)
    assert (len(train), len(test)) == (10_752, 2_000) and not set(train) & set(test)
    again, _ = split_indices(len(texts), 2000, None, split_seed=0)
    assert np.array_equal(train, again)
    assert 0.55 < labels[test].mean() < 0.60  # fresh is the majority class


def test_split_refuses_too_little_data():
    with pytest.raises(ValueError, match="not more than data.test_size"):
        split_indices(100, 100, None, 0)


def test_length_grouped_batches_cover_each_epoch_once():
    lengths = np.random.default_rng(0).integers(3, 60, size=1000)
    batches = train_batches(lengths, batch_size=32, seed=0)
    epoch = [next(batches) for _ in range(32)]  # 1000 rows in chunks of 1600: 31 full batches + 1
    seen = np.concatenate(epoch)
    assert sorted(seen) == list(range(1000))
    # Grouping pads less than random batches of the same size would.
    padded = sum(len(b) * lengths[b].max() for b in epoch)
    shuffled = np.random.default_rng(1).permutation(1000)
    random_padded = sum(len(b) * lengths[b].max() for b in np.array_split(shuffled, 32))
    assert padded < 0.8 * random_padded
    # Same seed, same order; another seed, another order.
    assert all(np.array_equal(a, b) for a, b in zip(epoch, train_batches(lengths, 32, 0), strict=False))
    assert not np.array_equal(epoch[0], next(train_batches(lengths, 32, 1)))


def test_eval_batches_and_collate_pad_to_the_longest_in_batch():
    examples = Examples([np.arange(1, n + 1) for n in (5, 2, 9, 3)], np.array([0, 1, 1, 0]))
    batches = eval_batches(examples.lengths, 2)
    assert [list(b) for b in batches] == [[1, 3], [0, 2]]
    batch = collate(examples, batches[0], pad_id=0, task=Task.classification)
    assert batch["input_ids"].shape == (2, 3)
    assert batch["attention_mask"].sum().item() == 5
    assert batch["labels"].tolist() == [1, 0]
    lm = collate(examples, batches[1], pad_id=0, task=Task.causal_lm)
    assert (lm["labels"] == -100).sum().item() == 4  # padding is never a target


def test_token_cache_is_reused(tmp_path):
    calls = []

    class Tokenizer:
        name_or_path, eos_token_id = "fake", 2

        def __len__(self):
            return 10

        def __call__(self, texts, truncation, max_length):
            calls.append(len(texts))
            return {"input_ids": [[1] * min(len(t), max_length) for t in texts]}

    first = tokenize_cached(Tokenizer(), ["ab", "abcd"], 8, Task.classification, tmp_path)
    second = tokenize_cached(Tokenizer(), ["ab", "abcd"], 8, Task.classification, tmp_path)
    assert calls == [2] and [list(x) for x in first] == [list(x) for x in second] == [[1, 1], [1, 1, 1, 1]]
    tokenize_cached(Tokenizer(), ["ab", "abcd"], 3, Task.classification, tmp_path)
    assert calls == [2, 2]


def test_atomic_writes_leave_no_temporary_file_and_usual_permissions(tmp_path):
    import os
    import stat

    from lora_analysis.atomic import write_atomic, write_text

    target = write_text(tmp_path / "a" / "metrics.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask

    def fail(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(target, fail)
    assert target.read_text() == "{}" and [p.name for p in target.parent.iterdir()] == ["metrics.json"]
