"""The analysis tables: their schemas, how they are assembled fast, and ``AnalysisResult``.

Every table is tidy (one row per item, ID columns first) and round-trips through Parquet unchanged:
``AnalysisResult.load(folder)`` gives frames equal to the saved ones, dtypes included.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
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
    import pyarrow as pa

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


ROW_GROUP = 1 << 20  # rows per Parquet row group (pyarrow's default), and per piece of a streamed table


class TableBuilder:
    """Rows collected in blocks (scalars broadcast over a block, or arrays), assembled once at the end."""

    def __init__(self, schema: dict[str, str]) -> None:
        self.schema, self.blocks = schema, []

    def add(self, n: int, **columns) -> None:
        if set(columns) != set(self.schema):
            raise ValueError(f"columns {sorted(columns)} do not match {sorted(self.schema)}")
        if n:
            self.blocks.append((n, columns))

    @property
    def rows(self) -> int:
        return sum(n for n, _ in self.blocks)

    def frame(self, blocks: list | None = None, categories: dict[str, list] | None = None) -> pd.DataFrame:
        """The rows as a DataFrame; the blocks are released (a phi table can hold millions of rows).

        ``blocks``: only these (a piece of the table), and kept; ``categories``: the categories of each
        categorical column (default: those of the blocks, in order of appearance)."""
        import pandas as pd

        piece = blocks is not None
        blocks = self.blocks if blocks is None else blocks
        categories = categories or {}
        lengths = np.array([n for n, _ in blocks], dtype=np.int64)
        columns = {
            c: _column([b[c] for _, b in blocks], lengths, k, categories.get(c)) for c, k in self.schema.items()
        }
        if not piece:
            self.blocks = []
        return pd.DataFrame(columns, copy=False)  # one block per column: no consolidated 2-D copy

    def pieces(self, rows: int | None = None, convert: Callable | None = None) -> Iterator:
        """The table as consecutive DataFrames of about ``rows`` rows (default ``ROW_GROUP``; whole
        blocks), categoricals with
        the categories of the whole table, each built on a thread while the caller uses the one before;
        the blocks are kept. Pieces, not the whole table: a table of 0.7 GB is never formed, and pieces
        of a few MB reuse the freed memory of the one before instead of faulting in fresh pages.
        ``convert``: applied to each piece on the thread (one piece at a time, in order)."""
        from concurrent.futures import ThreadPoolExecutor

        categories = {
            c: list(dict.fromkeys(b[c] for _, b in self.blocks)) for c, k in self.schema.items() if k == "cat"
        }
        groups, current, count, rows = [], [], 0, rows or ROW_GROUP
        for block in self.blocks:
            current.append(block)
            count += block[0]
            if count >= rows:
                groups.append(current)
                current, count = [], 0
        groups += [current] if current else []

        def piece(blocks: list):
            frame = self.frame(blocks, categories)
            return frame if convert is None else convert(frame)

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(piece, groups[0]) if groups else None
            for following in [*groups[1:], None]:
                done = pending.result()
                pending = None if following is None else pool.submit(piece, following)
                yield done


def _column(values: list, lengths: np.ndarray, kind: str, categories: list | None = None):
    """One column from per-block values: a scalar repeated over its block, or an array of the block's length."""
    import pandas as pd

    if kind == "cat":
        categories = list(dict.fromkeys(values)) if categories is None else categories
        code_type = np.int8 if len(categories) < 128 else np.int32
        index = {v: i for i, v in enumerate(categories)}
        codes = np.repeat(np.array([index[v] for v in values], dtype=code_type), lengths)
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


class _Table:
    """An ``AnalysisResult`` table: assembled from its ``TableBuilder`` when first read, then kept."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, result: AnalysisResult | None, owner: type | None = None):
        if result is None:
            return self
        table = result._tables[self.name]
        if isinstance(table, TableBuilder):
            table = result._tables[self.name] = table.frame()
        return table

    def __set__(self, result: AnalysisResult, table) -> None:
        result._tables[self.name] = table


class AnalysisResult:
    """The analysis tables (see ``SCHEMAS``), the notes on what was skipped, and the settings used.

    Each table is a DataFrame, or a ``TableBuilder`` still in blocks (what ``analyze`` returns): it is
    assembled the first time it is read, and ``save`` writes a large one piece by piece without
    assembling it (``TableBuilder.pieces``), so a command that only saves never forms its 0.7 GB phi table.
    """

    phi = _Table()
    spectra = _Table()
    modules = _Table()
    dw_vs_w = _Table()
    w_dw_phi = _Table()
    intruders = _Table()
    runs = _Table()

    def __init__(self, phi, spectra, modules, dw_vs_w, w_dw_phi, intruders, runs, notes: list[str] | None = None,
                 config: dict | None = None, inputs: InputStatistics | None = None) -> None:
        given = dict(phi=phi, spectra=spectra, modules=modules, dw_vs_w=dw_vs_w, w_dw_phi=w_dw_phi,
                     intruders=intruders, runs=runs)  # fmt: skip
        self._tables: dict[str, pd.DataFrame | TableBuilder] = {name: given[name] for name in SCHEMAS}
        self.notes = [] if notes is None else notes
        self.config = {} if config is None else config
        self.inputs = inputs  # the modules' input statistics (``AnalysisDir.INPUTS``), if gathered

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: getattr(self, name) for name in SCHEMAS}

    def rows(self) -> dict[str, int]:
        """Rows per table, without assembling any."""
        return {n: t.rows if isinstance(t, TableBuilder) else len(t) for n, t in self._tables.items()}

    def save(self, folder: str | Path) -> Path:
        """Write ``<table>.parquet`` for each table and ``analysis.json`` (settings, notes) into ``folder``."""
        folder = Path(folder)
        with replaced_folder(folder, "analysis", AnalysisDir.owns) as tmp, analysis_memory():
            out = AnalysisDir(tmp)  # written whole beside the old one, then renamed into place
            for name, table in self._tables.items():
                if not isinstance(table, TableBuilder) or table.rows <= ROW_GROUP:
                    table = getattr(self, name)  # one piece: assembled (and kept)
                write_atomic(out.table(name), partial(_to_parquet, table, name=name))
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
                if not isinstance(meta.get("notes", []), list) or not all(isinstance(n, str) for n in meta["notes"]):
                    raise ValueError("'notes' is not a list of strings")
                if not isinstance(meta.get("config", {}), dict):
                    raise ValueError("'config' is not an object")
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


def _to_parquet(table: pd.DataFrame | TableBuilder, path: Path, name: str) -> None:
    """Write one table, a DataFrame or a builder's pieces: ``write_atomic`` calls this with a temporary path.

    Dictionary encoding only where values repeat (see _dictionary_columns), lz4, no column statistics
    (with row groups of 1M rows they would prune little): 2x faster than the defaults on a phi table of
    millions of rows, and half the size; ID and index columns are written as required (``_required``).
    A builder is written one row group per piece, each piece built
    while the one before is written (``TableBuilder.pieces``): the same file as of its whole frame, but
    for where the row groups end."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    options = dict(compression="lz4", use_dictionary=_dictionary_columns(name), write_statistics=False)
    # The first piece's schema, with the pandas metadata: every piece is converted to it. Its required
    # columns hold for the later pieces: a builder's int and cat columns cannot hold missing values
    # (numpy integers; categories of block values, never null), and a DataFrame is one piece.
    first = {}

    def to_arrow(piece: pd.DataFrame) -> pa.Table:  # on the pieces' thread: hidden behind the writes
        if "schema" in first:
            return pa.Table.from_pandas(piece, preserve_index=False, schema=first["schema"])
        arrow = pa.Table.from_pandas(piece, preserve_index=False)
        first["schema"] = _required(arrow, SCHEMAS[name])
        return arrow.cast(first["schema"])

    writer = None
    try:
        builder = isinstance(table, TableBuilder)
        for arrow in table.pieces(convert=to_arrow) if builder else [to_arrow(table)]:
            writer = writer or pq.ParquetWriter(path, arrow.schema, **options)
            writer.write_table(arrow, row_group_size=max(len(arrow), 1) if builder else ROW_GROUP)
    finally:
        if writer is not None:
            writer.close()


_NEVER_NULL = ("int32", "int64", "bool", "cat")  # kinds whose columns hold no missing values (NaN, None)


def _required(table: pa.Table, kinds: dict[str, str]) -> pa.Schema:
    """``table``'s schema with the columns of kinds that are never missing (and have no nulls here)
    marked non-nullable: Parquet writes them as required, without a definition level per value ("save
    Parquet" in ``benchmarks/analysis_speed.py``: 0.91 against 1.17 s before). Floats stay nullable:
    pyarrow writes NaN as null."""
    import pyarrow as pa

    fields = [
        f.with_nullable(kinds.get(f.name) not in _NEVER_NULL or table.column(f.name).null_count > 0)
        for f in table.schema
    ]
    return pa.schema(fields, metadata=table.schema.metadata)


def _dictionary_columns(name: str) -> list[str]:
    """Columns dictionary-encoded: IDs (few distinct values over many rows) and the constant threshold.

    Plain are the float values and the int32 grid indices (``i``, ``j``, ``index``): their dictionary
    buys little, and hashing every value costs. Measured per column on the 8.6M-row phi table of
    benchmarks/analysis_speed.py (CPU time of the write, shared machine): ``i`` 69 -> 48 ms, ``j``
    95 -> 44 ms, ``baseline`` 80 -> 59 ms, for 1.1 MB more (41.1 -> 42.2 MB); categoricals written
    plain took 4-6x longer than with their dictionary, integer IDs 1.1x. The values read back unchanged.
    """
    return [c for c, kind in SCHEMAS[name].items() if kind not in ("float64", "int32") or c == "threshold"]
