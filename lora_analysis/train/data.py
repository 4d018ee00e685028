"""Task data: load a labelled text table, split it once, tokenise once (cached), batch by length.

Reading a table, the fixed split and tokenisation live in ``lora_analysis/texts.py`` (the analysis reads
the same texts for its input statistics); this module adds the cache, label shuffling and batching.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lora_analysis.atomic import write_atomic
from lora_analysis.texts import read_text_table, split_indices, tokenize
from lora_analysis.train.config import DataConfig, Task


@dataclass
class Examples:
    """Tokenised examples: ``ids[n]`` is an int64 array of token ids, ``labels`` is (n,) or None."""

    ids: list[np.ndarray]
    labels: np.ndarray | None
    targets: list[np.ndarray] | None = None  # causal_lm with shuffled labels: next-token targets of another text

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def subset(self, rows: np.ndarray) -> Examples:
        """The examples at ``rows``, in that order."""
        return Examples([self.ids[i] for i in rows], None if self.labels is None else self.labels[rows],
                        None if self.targets is None else [self.targets[i] for i in rows])


@dataclass
class TaskData:
    train: Examples
    val: Examples
    test: Examples
    label_names: list[str]  # empty for causal_lm
    dropped_rows: dict[str, int] = field(default_factory=dict)  # texts.TextTable.dropped

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def load_table(cfg: DataConfig, task: Task) -> tuple[list[str], np.ndarray | None, list[str]]:
    """Texts, integer labels (None for causal_lm), label names and dropped-row counts (``texts.TextTable``)."""
    return read_text_table(cfg.path, cfg.text_column, cfg.label_column if task == Task.classification else None,
                           cfg.many_labels, cfg.encoding)


def load_task_data(cfg: DataConfig, task: Task, tokenizer, cache_dir: Path, seed: int = 0) -> TaskData:
    """Load, split and tokenise (from the cache when this tokenizer saw these texts before).

    With ``cfg.shuffle_labels`` the training split's labels are shuffled by ``seed`` (``shuffle_labels``).
    """
    texts, labels, names, dropped = load_table(cfg, task)
    ids = tokenize_cached(tokenizer, texts, cfg.max_length, task, cache_dir)
    split = split_indices(len(texts), cfg.test_size, cfg.val_size, cfg.train_size, cfg.split_seed)

    def subset(rows: np.ndarray) -> Examples:
        return Examples([ids[i] for i in rows], None if labels is None else labels[rows])

    train_examples = subset(split.train)
    if cfg.shuffle_labels:  # validation and test keep their labels: the control is scored on the real task
        train_examples = shuffle_labels(train_examples, seed)
    return TaskData(train_examples, subset(split.val), subset(split.test), names, dropped)


def label_permutation(n: int, seed: int) -> np.ndarray:
    """The permutation of ``n`` training examples that ``data.shuffle_labels`` applies, fixed by ``seed``.

    Its own stream (``[seed, 1]``), so it does not change the batch order or the LoRA init of the run.
    """
    return np.random.default_rng([seed, 1]).permutation(n)


def shuffle_labels(examples: Examples, seed: int) -> Examples:
    """The same inputs with the task destroyed: labels permuted (classification), or each text's
    next-token targets taken from another text (causal_lm). Label counts are kept either way."""
    order = label_permutation(len(examples), seed)
    if examples.labels is not None:
        return Examples(examples.ids, examples.labels[order])
    return Examples(examples.ids, None, [examples.ids[i] for i in order])


def tokenize_cached(tokenizer, texts: list[str], max_length: int, task: Task, cache_dir: Path) -> list[np.ndarray]:
    """Token ids per text, cached per (tokenizer, texts, max length, task) as a flat .npz file."""
    key = hashlib.sha256()
    key.update(_tokenizer_fingerprint(tokenizer).encode())
    key.update(f"{max_length}|{task.value}|{len(texts)}".encode())
    for text in texts:
        key.update(text.encode("utf-8", "surrogatepass") + b"\0")
    path = Path(cache_dir) / "tokens" / f"{key.hexdigest()[:24]}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            return np.split(stored["flat"].astype(np.int64), np.cumsum(stored["lengths"])[:-1])
    ids = _tokenize(tokenizer, texts, max_length, task)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, flat=np.concatenate(ids).astype(np.int32), lengths=lengths)

    write_atomic(path, save)
    return ids


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.to_str()
    return f"{type(tokenizer).__name__}|{tokenizer.name_or_path}|{len(tokenizer)}"


def _tokenize(tokenizer, texts: list[str], max_length: int, task: Task) -> list[np.ndarray]:
    return tokenize(tokenizer, texts, max_length, causal_lm=task != Task.classification)


def train_batches(lengths: np.ndarray, batch_size: int, seed: int, group: int = 50) -> Iterator[np.ndarray]:
    """Endless length-grouped batches of example indices, epoch after epoch.

    Each epoch: 1) a seeded permutation, 2) chunks of ``group * batch_size`` sorted by length, so a
    batch holds texts of similar length and pads little, 3) the batches shuffled. The order depends only
    on ``(seed, epoch)``, so a resumed run skips the batches it has done and sees the same ones after.
    """
    n = len(lengths)
    epoch = 0
    while True:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n)
        batches = []
        for start in range(0, n, group * batch_size):
            chunk = order[start : start + group * batch_size]
            chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        for b in rng.permutation(len(batches)):
            yield batches[b]
        epoch += 1


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """All examples once, sorted by length so that padding is minimal."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(examples: Examples, rows: np.ndarray, pad_id: int, task: Task) -> dict[str, torch.Tensor]:
    """Pad a batch to its own longest example: input_ids, attention_mask (B, T) and labels."""
    seqs = [examples.ids[i] for i in rows]
    width = max(len(s) for s in seqs)
    input_ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
    if task == Task.classification:
        batch["labels"] = torch.from_numpy(examples.labels[rows])
    elif examples.targets is None:
        batch["labels"] = torch.from_numpy(np.where(mask == 1, input_ids, -100))
    else:  # shuffled: another text's tokens as targets, cut to this text's length (-100 where it is shorter)
        labels = np.full((len(seqs), width), -100, dtype=np.int64)
        for row, i in enumerate(rows):
            target = examples.targets[i][: len(seqs[row])]
            labels[row, : len(target)] = target
        batch["labels"] = torch.from_numpy(labels)
    return batch
