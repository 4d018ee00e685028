"""The analysis tables: their schemas, how they are assembled fast, and ``AnalysisResult``.

Every table is tidy (one row per item, ID columns first) and round-trips through Parquet unchanged:
``AnalysisResult.load(folder)`` gives frames equal to the saved ones, dtypes included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lora_analysis.analysis.memory import analysis_memory
from lora_analysis.atomic import replaced_folder, write_atomic, write_json
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.layout import AnalysisDir

if TYPE_CHECKING:  # inputs imports torch (1.5-2 s); only a folder with input statistics needs it
    import pandas as pd

    from lora_analysis.analysis.inputs import InputStatistics


def import_for_tables() -> None:
    """Import pandas and pyarrow's Parquet writer (0.5 s), which only assembling and saving the tables
    use: ``compare`` calls this on its main thread while the worker threads analyse the modules, so the
    imports cost no time there (instead of ahead of everything, at ``import``)."""
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

# --- table schemas: ID columns first; "cat" = categorical of strings, "Int64" = nullable integer
_IDS = {"run": "cat", "r": "int64", "seed": "Int64"}
_MODULE_IDS = {"layer": "Int64", "module": "cat"}
SCHEMAS: dict[str, dict[str, str]] = {
    "phi": {
        "comparison": "cat", "run_a": "cat", "run_b": "cat", "r_a": "int64", "r_b": "int64",
        "seed_a": "Int64", "seed_b": "Int64", "targets": "cat", **_MODULE_IDS, "subject": "cat",
        "i": "int32", "j": "int32", "phi": "float64", "baseline": "float64",
        "geometry_baseline": "float64", "geometry_std": "float64",
    },
    "spectra": {**_IDS, **_MODULE_IDS, "subject": "cat", "index": "int32", "singular_value": "float64"},
    "modules": {
        **_IDS, "targets": "cat", **_MODULE_IDS, "path": "str", "in_features": "int64",
        "out_features": "int64", "scale": "float64", "norm_A": "float64", "norm_B": "float64",
        "norm_dW": "float64", "a_moved": "float64", "effective_rank_dW": "float64",
        "stable_rank_dW": "float64", "numerical_rank_A": "int64",
    },
    "dw_vs_w": {
        **_IDS, **_MODULE_IDS, "source": "cat", "top": "int64", "projection_norm": "float64",
        "w_norm": "float64", "dw_norm": "float64", "amplification": "float64",
    },
    "w_dw_phi": {
        **_IDS, **_MODULE_IDS, "side": "cat", "i": "int32", "j": "int32", "phi": "float64",
        "baseline": "float64",
    },
    "intruders": {
        **_IDS, **_MODULE_IDS, "index": "int32", "max_abs_cos": "float64", "is_intruder": "bool",
        "threshold": "float64",
    },
    "runs": {
        "run": "cat", "folder": "str", "r": "int64", "seed": "Int64", "targets": "cat", "base": "str",
        "modules": "int64", "has_init": "bool",
    },
}  # fmt: skip


class TableBuilder:
    """Rows collected in blocks (scalars broadcast over a block, or arrays), assembled once at the end."""

    def __init__(self, schema: dict[str, str]) -> None:
        self.schema, self.blocks = schema, []

    def add(self, n: int, **columns) -> None:
        if set(columns) != set(self.schema):
            raise ValueError(f"columns {sorted(columns)} do not match {sorted(self.schema)}")
        if n:
            self.blocks.append((n, columns))

    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame; the blocks are released (a phi table can hold millions of rows)."""
        import pandas as pd

        lengths = np.array([n for n, _ in self.blocks], dtype=np.int64)
        columns = {c: _column([b[c] for _, b in self.blocks], lengths, k) for c, k in self.schema.items()}
        self.blocks = []
        return pd.DataFrame(columns, copy=False)  # one block per column: no consolidated 2-D copy


def _column(values: list, lengths: np.ndarray, kind: str):
    """One column from per-block values: a scalar repeated over its block, or an array of the block's length."""
    import pandas as pd

    if kind == "cat":
        categories = list(dict.fromkeys(values))
        code_type = np.int8 if len(categories) < 128 else np.int32
        codes = np.repeat(np.array([categories.index(v) for v in values], dtype=code_type), lengths)
        return pd.Categorical.from_codes(codes, categories=pd.Index(categories, dtype="str"))
    if kind == "Int64":
        filled = _repeat(np.array([0 if v is None else v for v in values], dtype=np.int64), lengths)
        mask = np.repeat(np.array([v is None for v in values], dtype=bool), lengths)
        return pd.arrays.IntegerArray(filled, mask)
    if kind == "str":
        return pd.array(np.repeat(np.array(values, dtype=object), lengths), dtype="str")
    if not any(isinstance(v, np.ndarray) for v in values):
        return _repeat(np.array(values, dtype=kind), lengths)
    if all(isinstance(v, np.ndarray) for v in values):
        return np.concatenate([np.asarray(v, dtype=kind).ravel() for v in values])
    parts = [
        np.asarray(v, dtype=kind).ravel() if isinstance(v, np.ndarray) else np.full(n, v, dtype=kind)
        for v, n in zip(values, lengths, strict=True)
    ]
    return np.concatenate(parts)


def _repeat(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``np.repeat(values, lengths)``, filled run by run: consecutive blocks mostly share their value
    (a module's r, seed, layer), and a fill of a run is several times faster than ``repeat``'s
    element-by-element copy of 8-byte items (1-byte items it copies as fast: codes, masks)."""
    if len(values) == 0:
        return np.repeat(values, lengths)
    same = values[1:] == values[:-1]
    if values.dtype.kind == "f":
        same |= np.isnan(values[1:]) & np.isnan(values[:-1])
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ends = np.append(starts[1:], len(values))
    out = np.empty(offsets[-1], dtype=values.dtype)
    for start, end, value in zip(offsets[starts].tolist(), offsets[ends].tolist(), values[starts], strict=True):
        out[start:end] = value
    return out


def restore_dtypes(frame: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    """Undo what Parquet loses: categories of an empty categorical column come back as objects."""
    import pandas as pd

    for column, kind in schema.items():
        if kind == "cat" and frame[column].cat.categories.dtype != "str":
            frame[column] = pd.Categorical.from_codes(
                frame[column].cat.codes, pd.Index(frame[column].cat.categories.astype(str), dtype="str")
            )
    return frame


@dataclass
class AnalysisResult:
    """The analysis tables (see ``SCHEMAS``), the notes on what was skipped, and the settings used."""

    phi: pd.DataFrame
    spectra: pd.DataFrame
    modules: pd.DataFrame
    dw_vs_w: pd.DataFrame
    w_dw_phi: pd.DataFrame
    intruders: pd.DataFrame
    runs: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    inputs: InputStatistics | None = None  # the modules' input statistics (``AnalysisDir.INPUTS``), if gathered

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: getattr(self, name) for name in SCHEMAS}

    def save(self, folder: str | Path) -> Path:
        """Write ``<table>.parquet`` for each table and ``analysis.json`` (settings, notes) into ``folder``."""
        folder = Path(folder)
        with replaced_folder(folder, lambda old: AnalysisDir(old).exists()) as tmp, analysis_memory():
            out = AnalysisDir(tmp)  # written whole beside the old one, then renamed into place
            for name, frame in self.tables().items():
                write_atomic(out.table(name), partial(_to_parquet, frame, name=name))
            if self.inputs is not None:
                self.inputs.save(out.inputs_path)
            write_json(out.meta_path, {"config": self.config, "notes": self.notes})
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, partial: bool = False) -> AnalysisResult:
        """Read a folder written by ``save``; the tables compare equal to the saved ones.

        ``partial``: a missing table is an empty table of its schema, and a missing ``analysis.json``
        leaves no notes, instead of an error (a report still shows what is there).
        """
        where = AnalysisDir(folder)
        missing = [n for n in SCHEMAS if not where.table(n).is_file()]
        has_meta = where.meta_path.is_file()
        if not partial and (missing or not has_meta):
            raise LoraAnalysisError(f"{folder} is not an analysis folder (missing {missing or 'analysis.json'})")
        meta = {}
        if has_meta:
            try:
                meta = json.loads(where.meta_path.read_text())
                if not isinstance(meta, dict):
                    raise ValueError(f"a JSON {type(meta).__name__}, not an object")
            except (OSError, ValueError) as error:
                raise where.unreadable(where.meta_path, error) from None
        frames = {n: TableBuilder(s).frame() if n in missing else _read_table(where, n) for n, s in SCHEMAS.items()}
        inputs = None
        if where.inputs_path.is_file():
            from lora_analysis.analysis.inputs import InputStatistics

            inputs = InputStatistics.load(where.inputs_path)
        return cls(**frames, notes=meta.get("notes", []), config=meta.get("config", {}), inputs=inputs)


def _read_table(where: AnalysisDir, name: str) -> pd.DataFrame:
    import pandas as pd

    try:
        return restore_dtypes(pd.read_parquet(where.table(name)), SCHEMAS[name])
    except (OSError, ValueError, KeyError, AttributeError) as error:  # truncated, foreign or mis-typed
        raise where.unreadable(where.table(name), error) from None


def _to_parquet(frame: pd.DataFrame, path: Path, name: str) -> None:
    """Write one table: ``write_atomic`` calls this with a temporary path."""
    # Dictionary encoding only where values repeat (see _dictionary_columns), lz4, no column statistics
    # (with row groups of 1M rows they would prune little): 2x faster than the defaults on a phi
    # table of millions of rows, and half the size.
    frame.to_parquet(
        path, index=False, compression="lz4", use_dictionary=_dictionary_columns(name), write_statistics=False
    )


def _dictionary_columns(name: str) -> list[str]:
    """Columns dictionary-encoded: IDs (few distinct values over many rows) and the constant threshold.

    Plain are the float values and the int32 grid indices (``i``, ``j``, ``index``): their dictionary
    buys little, and hashing every value costs. Measured per column on the 8.6M-row phi table of
    benchmarks/analysis_speed.py (CPU time of the write, shared machine): ``i`` 69 -> 48 ms, ``j``
    95 -> 44 ms, ``baseline`` 80 -> 59 ms, for 1.1 MB more (41.1 -> 42.2 MB); categoricals written
    plain took 4-6x longer than with their dictionary, integer IDs 1.1x. The values read back unchanged.
    """
    return [c for c, kind in SCHEMAS[name].items() if kind not in ("float64", "int32") or c == "threshold"]
