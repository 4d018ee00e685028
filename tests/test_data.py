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
    load_task_data,
    split_indices,
    tokenize_cached,
    train_batches,
)


def test_embedded_rotten_tomatoes_split_is_fixed():
    texts, labels, names, _ = load_table(DataConfig(), Task.classification)
    assert (len(texts), names) == (12_752, ["rotten", "fresh"])
    assert len(set(texts)) == len(texts)
    split = split_indices(len(texts), 2000, 1000, None, split_seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (9_752, 1_000, 2_000)
    assert not set(split.train) & set(split.test) and not set(split.val) & set(split.train)
    assert not set(split.val) & set(split.test) and not set(split.val) & set(split.train)
    assert set(split.train) | set(split.val) | set(split.test) == set(range(len(texts)))
    again = split_indices(len(texts), 2000, 1000, None, split_seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(split, again, strict=True))
    without_val = split_indices(len(texts), 2000, 0, None, split_seed=0)
    assert np.array_equal(split.test, without_val.test)  # the test split does not move with val_size
    assert 0.55 < labels[split.test].mean() < 0.60  # fresh is the majority class


def test_the_split_does_not_move_with_the_runs_seed(tiny, tmp_path):
    """Train, validation and test are disjoint and the same whatever the run's seed."""
    from lora_analysis.train.config import ModelConfig
    from lora_analysis.train.modeling import load_tokenizer

    model, csv = tiny
    cfg = DataConfig(path=str(csv), text_column="review", label_column="sentiment", test_size=40, val_size=40)
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(model)))
    first, other = (load_task_data(cfg, Task.classification, tokenizer, tmp_path, seed) for seed in (0, 7))
    for a, b in zip((first.train, first.val, first.test), (other.train, other.val, other.test), strict=True):
        assert [x.tolist() for x in a.ids] == [x.tolist() for x in b.ids]
    as_tuples = [{tuple(x) for x in part.ids} for part in (first.train, first.val, first.test)]
    assert not (as_tuples[0] & as_tuples[1] or as_tuples[0] & as_tuples[2] or as_tuples[1] & as_tuples[2])
    assert (len(first.val), len(first.test)) == (40, 40)


def test_split_refuses_too_little_data():
    with pytest.raises(ValueError, match="not more than data.test_size=100 \\+ data.val_size=0"):
        split_indices(100, 100, 0, None, 0)
    with pytest.raises(ValueError, match="nothing is left to train on"):
        split_indices(100, 60, 40, None, 0)


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


class _WordTokenizer:
    """Token ids = word lengths + 1: enough to check what shuffling does to labels and targets."""

    eos_token_id = 0
    name_or_path = "words"

    def __len__(self) -> int:
        return 100

    def __call__(self, texts, truncation=True, max_length=64):
        return {"input_ids": [[len(w) + 1 for w in t.split()][:max_length] for t in texts]}


def _shuffled_pair(tmp_path, task, seed):
    from lora_analysis.train.data import load_task_data

    rows = [f"{'word ' * (1 + i % 7)}text{i}" for i in range(300)]
    path = tmp_path / "d.csv"
    import pandas as pd

    pd.DataFrame({"text": rows, "label": [i % 3 == 0 for i in range(300)]}).to_csv(path, index=False)
    plain = DataConfig(path=str(path), test_size=50, val_size=50)
    shuffled = DataConfig(path=str(path), test_size=50, val_size=50, shuffle_labels=True)
    return (load_task_data(plain, task, _WordTokenizer(), tmp_path, seed),
            load_task_data(shuffled, task, _WordTokenizer(), tmp_path, seed))


def test_shuffled_labels_permute_the_training_labels_by_the_seed_and_keep_the_test_split(tmp_path):
    from lora_analysis.train.data import label_permutation

    plain, shuffled = _shuffled_pair(tmp_path, Task.classification, seed=3)
    order = label_permutation(len(plain.train), 3)
    assert np.array_equal(shuffled.train.labels, plain.train.labels[order])  # a permutation fixed by the seed
    assert not np.array_equal(shuffled.train.labels, plain.train.labels)
    assert np.bincount(shuffled.train.labels).tolist() == np.bincount(plain.train.labels).tolist()
    assert np.array_equal(shuffled.test.labels, plain.test.labels)  # the test split is untouched
    assert np.array_equal(shuffled.val.labels, plain.val.labels)  # and validation: stopping reads the real task
    assert all(np.array_equal(a, b) for a, b in zip(shuffled.train.ids, plain.train.ids, strict=True))
    _, other_seed = _shuffled_pair(tmp_path, Task.classification, seed=4)
    assert not np.array_equal(other_seed.train.labels, shuffled.train.labels)


def test_shuffled_causal_lm_keeps_the_inputs_and_takes_another_texts_targets(tmp_path):
    from lora_analysis.train.data import label_permutation

    plain, shuffled = _shuffled_pair(tmp_path, Task.causal_lm, seed=0)
    order = label_permutation(len(plain.train), 0)
    rows = np.arange(8)
    batch = collate(shuffled.train, rows, pad_id=0, task=Task.causal_lm)
    assert np.array_equal(batch["input_ids"], collate(plain.train, rows, 0, Task.causal_lm)["input_ids"])
    for row, i in enumerate(rows):
        own, target = plain.train.ids[i], plain.train.ids[order[i]]
        n = min(len(own), len(target))
        assert batch["labels"][row, :n].tolist() == target[:n].tolist()
        assert (batch["labels"][row, n:] == -100).all()
    assert shuffled.test.targets is None
