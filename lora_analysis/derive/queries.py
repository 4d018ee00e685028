"""Table queries: which rows of the analysis and sweep tables a statistic, a sentence or a figure reads.

Pure functions over the tidy tables of the analysis (see ``lora_analysis.analysis.tables.SCHEMAS``)
and the sweep table (``layout.SweepDir.TABLE``): picking a target set, a layer, the roles to show, the
rows of one pair of runs, the LoRA runs and their test metric. No statistics here (``stats``), no
sentences (``show.findings``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# One (pair of runs, layer, module, subject) group of the phi table.
PAIR_KEYS = ["comparison", "run_a", "run_b", "r_a", "r_b", "seed_a", "seed_b", "targets", "layer", "module", "subject"]
SHOWN_ROLES = ("q", "v", "qkv", "ffn_gate", "ffn_in", "ffn_out")  # the paper's q, v and the FFN it froze
METRICS = ("test_accuracy", "test_loss", "test_perplexity")  # in order of preference
LOWER_IS_BETTER = {"test_loss", "test_perplexity"}


def main_targets(frame: pd.DataFrame) -> str | None:
    """The target set the paper figures show: ``all`` when present, else the one with most rows."""
    if frame.empty or "targets" not in frame:
        return None
    counts = frame["targets"].astype(str).value_counts()
    return "all" if "all" in counts.index else str(counts.index[0])


def adapted_layers(frame: pd.DataFrame) -> list[int]:
    """The layers present in ``frame``, ascending."""
    return sorted(int(x) for x in frame["layer"].dropna().unique()) if "layer" in frame else []


def middle_layer(frame: pd.DataFrame) -> int | None:
    """The middle adapted layer (the paper's layer 48 of 96): ``layers[(n - 1) // 2]``."""
    layers = adapted_layers(frame)
    return layers[(len(layers) - 1) // 2] if layers else None


def shown_roles(frame: pd.DataFrame) -> list[str]:
    """q, v and the FFN roles present, in that order; every role present if none of those is."""
    present = [str(m) for m in frame["module"].dropna().unique()] if "module" in frame else []
    shown = [m for m in SHOWN_ROLES if m in present]
    return shown or sorted(present)


def pair_rows(
    phi: pd.DataFrame,
    comparison: str,
    *,
    subject: str,
    layer: int,
    module: str,
    r_a: int | None = None,
    r_b: int | None = None,
    seed: int | None = None,
) -> pd.DataFrame:
    """The phi rows of one pair of runs (the one with the lowest seeds if several match); may be empty.

    ``seed`` fixes ``seed_a`` (for a rank pair, both runs have it). Random rows match on run a's r.
    """
    mask = (phi["comparison"] == comparison) & (phi["subject"] == subject)
    mask &= (phi["layer"] == layer) & (phi["module"] == module)
    if r_a is not None:
        mask &= phi["r_a"] == r_a
    if r_b is not None:
        mask &= phi["r_b"] == r_b
    if seed is not None:
        mask &= (phi["seed_a"] == seed).fillna(False)
    rows = phi[mask]
    if rows.empty:
        return rows
    pairs = rows[["seed_a", "seed_b", "run_a", "run_b"]].drop_duplicates()
    pairs = pairs.assign(run_a=pairs["run_a"].astype(str), run_b=pairs["run_b"].astype(str))
    first = pairs.sort_values(["seed_a", "seed_b", "run_a", "run_b"], na_position="last").iloc[0]
    return rows[(rows["run_a"].astype(str) == first["run_a"]) & (rows["run_b"].astype(str) == first["run_b"])]


def phi_matrix(rows: pd.DataFrame) -> np.ndarray:
    """The ``(max i, max j)`` grid of one pair's phi rows; NaN where a cell is absent (rank-deficient)."""
    if rows.empty:
        raise ValueError("no phi rows to arrange in a grid")
    i, j = rows["i"].to_numpy(np.int64), rows["j"].to_numpy(np.int64)
    grid = np.full((i.max(), j.max()), np.nan)
    grid[i - 1, j - 1] = rows["phi"].to_numpy(np.float64)
    return grid


def empty_phi() -> pd.DataFrame:
    """A phi table with no rows and the columns (and dtypes) the statistics read."""
    ints, floats = ("r_a", "r_b", "layer", "i", "j"), ("phi", "baseline")
    return pd.DataFrame({c: pd.Series(dtype="int64" if c in ints else "float64" if c in floats else "str")
                         for c in [*PAIR_KEYS, "i", "j", "phi", "baseline"]})


# --- the sweep table


def metric_column(runs: pd.DataFrame) -> str | None:
    """The test metric of the sweep: accuracy for classification, else loss."""
    for name in METRICS:
        if name in runs and runs[name].notna().any():
            return name
    return None


def lora_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The LoRA runs of the sweep table (all rows when it has no ``method`` column)."""
    return runs[runs["method"] == "lora"] if "method" in runs else runs


def full_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The full fine-tuning runs of the sweep table (none when it has no ``method`` column)."""
    return runs[runs["method"] == "full"] if "method" in runs else runs.iloc[0:0]


def budgeted_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs whose rank was chosen for a parameter budget (``lora.budget`` set)."""
    return runs[runs["lora.budget"].notna()] if "lora.budget" in runs else runs.iloc[0:0]


def patterned_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with a ``lora.rank_pattern`` (a rank per module: a recommendation under test, not a rank)."""
    return runs[runs["lora.rank_pattern"].notna()] if "lora.rank_pattern" in runs else runs.iloc[0:0]


def has_majority(runs: pd.DataFrame) -> bool:
    """Whether the sweep table records the majority-class accuracy of the test set."""
    return "majority_accuracy" in runs and bool(runs["majority_accuracy"].notna().any())


def unfinished_cells(unfinished: pd.DataFrame) -> pd.DataFrame:
    """The cell each unfinished run (``show.sweep.unfinished_runs``: run and config columns) will join when it
    finishes: ``run``, ``kind`` (``rank``: a LoRA cell of one rank; ``pattern``, ``full``, ``control``: a
    shuffled-label run; ``unknown``: no readable config), ``targets``, ``r`` (for ``rank``) and ``label``
    (``attn r=8``, ``full fine-tuning``, ...)."""
    rows = []
    for run in unfinished.to_dict("records") if not unfinished.empty else []:
        targets, r = run.get("lora.targets"), run.get("lora.r")
        r = None if r is None or pd.isna(r) else int(r)  # a float where another run's config lacks it
        if str(run.get("data.shuffle_labels")).lower() in ("true", "1"):
            kind, label = "control", f"{targets} r={r} (shuffled labels)"
        elif run.get("method") == "full":
            kind, label = "full", "full fine-tuning"
        elif isinstance(run.get("lora.rank_pattern"), str):
            kind, label = "pattern", f"{targets} rank pattern"
        elif targets is None or r is None or pd.isna(targets):
            kind, label = "unknown", "config unreadable"
        else:
            kind, label = "rank", f"{targets} r={r}"
        rows.append({"run": run["run"], "kind": kind, "targets": targets, "r": r if kind == "rank" else None,
                     "label": label})
    return pd.DataFrame(rows, columns=["run", "kind", "targets", "r", "label"])
