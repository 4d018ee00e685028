"""Verdicts against the strongest control: is a shared direction more than input geometry or label noise?

For run a's i-th direction ``v_i`` and run b's whole subspace (``j = r_b``), the energy
``e_i = ||V_b^T v_i||^2 = i phi(i, r_b) - (i - 1) phi(i - 1, r_b)`` (``stats.direction_energies``)
is compared with what it would be without a task, three ways (each the same increment of its own
``phi`` expectation, so like is compared with like):

- ``isotropic``: uniformly random subspaces of R^k, ``E phi(i, j) = max(i, j) / k`` (the ``baseline``
  column of the phi table), so ``E e_i = r_b / k``;
- ``geometry``: random subspaces drawn from the module's input distribution (the ``geometry_baseline``
  column, see ``analysis/geometry.py``). Rows of ``A - A_init`` are sums of ``(B^T g_t) x_t^T``, so
  they lie in the span of the inputs ``x_t``; two adapters trained on the same inputs share their
  dominant directions with no task at all;
- ``shuffled``: the same pair (comparison, r_a, r_b, targets, layer, role, subject) trained on
  shuffled labels (``data.shuffle_labels=true``): inputs and optimiser kept, the task destroyed.
  Where several shuffled pairs match, their mean energy per direction is used;
- ``init``: for ``A`` and ``dW`` (right singular vectors, in A's row space), the same pair's ``A_init``
  energy: two runs started from one random draw (one seed, or a shared init stream) share A's init,
  and A (which moves little from it) shares it too, with nothing learned. Needs ``adapter_init``.

The strongest control of a direction is the largest of those available, ``c_i``. A direction is
**task-specific** when ``e_i >= (1 + c_i) / 2``, halfway between the strongest control and a direction
lying wholly inside run b's subspace: the rule the report used against the isotropic baseline alone,
``(1 + r_b / k) / 2``, with the strongest control in its place (and strictly above it, so a control
that shares a direction fully leaves nothing to call task-specific). Its excess is ``e_i - c_i``.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd

from lora_analysis.analysis.kinds import Comparison, Subject
from lora_analysis.derive.queries import PAIR_KEYS

MATCH_KEYS = ["comparison", "r_a", "r_b", "targets", "layer", "module", "subject"]  # a pair and its shuffled twin
# The rule of ``direction_controls`` in words, for every sentence that states it ("... whose <rule>").
TASK_RULE = ("energy in the other run's subspace reaches halfway from the strongest control (the largest of the "
             "isotropic baseline, the input-geometry baseline, the shuffled-label pair and, for A and ΔW, the same "
             "pair's A_init) to 1")
_TIE = 1e-9  # a direction exactly as shared as its control (e.g. both 1) is not above it
CONTROLS = ("isotropic", "geometry", "shuffled", "init")
INIT_SUBJECTS = (Subject.A, Subject.dW)  # subjects in A's row space, for which the shared init is a control
SUMMARY_KEYS = ("comparison", "r_a", "r_b", "subject")  # a row of top_direction_summary: pairs of these ranks
CONTROL_LABELS = {"isotropic": "isotropic baseline", "geometry": "input-geometry baseline",
                  "shuffled": "shuffled-label pair", "init": "the pair's shared init (A_init)"}


def increments(phi: pd.DataFrame, columns: Collection[str], keep: Collection[str] = ()) -> pd.DataFrame:
    """Per-direction increments ``i c(i, r_b) - (i - 1) c(i - 1, r_b)`` of each column ``c`` of ``phi``.

    ``phi`` holds whole grids (every ``i <= r_a`` at ``j = r_b``, the group's largest j). Returns
    ``PAIR_KEYS`` + ``i`` + one column per name in ``columns`` + the columns ``keep`` as they are at
    ``j = r_b``; rows of groups whose column is NaN stay NaN.
    """
    columns = [c for c in columns if c in phi]
    if phi.empty:
        return pd.DataFrame(columns=[*PAIR_KEYS, "i", *columns, *keep])
    j_max = phi.groupby(PAIR_KEYS, observed=True, dropna=False, sort=False)["j"].transform("max")
    col = phi[(phi["j"] == j_max) & (phi["i"] <= j_max)].sort_values([*PAIR_KEYS, "i"])
    out = col[PAIR_KEYS].copy()
    out["i"] = col["i"].to_numpy()
    i = col["i"].to_numpy(np.float64)
    grouped = col.groupby(PAIR_KEYS, observed=True, dropna=False, sort=False)
    for name in columns:
        previous = grouped[name].shift(1, fill_value=0.0).to_numpy(np.float64)
        value = i * col[name].to_numpy(np.float64) - (i - 1) * previous
        out[name] = np.clip(value, 0.0, 1.0)  # rounding in cumulative sums can leave +-1e-15
    for name in keep:
        out[name] = col[name].to_numpy()
    return out.reset_index(drop=True)


def direction_controls(phi: pd.DataFrame, shuffled_runs: Collection[str] = (),
                       init_subjects: Collection[str] = INIT_SUBJECTS) -> pd.DataFrame:
    """Every direction of every real (not shuffled) pair with its four controls and its verdict.

    ``shuffled_runs``: the run labels (``run_a``/``run_b`` of ``phi``) trained on shuffled labels.
    ``init_subjects``: the subjects judged against their pair's ``A_init`` too (drop ``dW`` when its phi
    rows are of left singular vectors, ``dw_side=left``).
    Returns ``PAIR_KEYS`` + ``i``, ``energy``, ``isotropic``, ``geometry``, ``shuffled``, ``init``, ``control``
    (the largest available), ``control_name``, ``excess`` (``energy - control``), ``threshold``
    (``(1 + control) / 2``) and ``task`` (``energy >= threshold``).
    """
    pairs = phi[phi["comparison"].isin([Comparison.rank, Comparison.seed, Comparison.other])]
    e = increments(pairs, ["phi", "baseline", "geometry_baseline"]).rename(
        columns={"phi": "energy", "baseline": "isotropic", "geometry_baseline": "geometry"})
    if "geometry" not in e:
        e["geometry"] = np.nan
    shuffled = e["run_a"].astype(str).isin(set(shuffled_runs)) & e["run_b"].astype(str).isin(set(shuffled_runs))
    real, control = e[~shuffled].copy(), e[shuffled]
    if not control.empty:
        twin = control.groupby([*MATCH_KEYS, "i"], observed=True, dropna=False)["energy"].mean().rename("shuffled")
        real = real.merge(twin.reset_index(), on=[*MATCH_KEYS, "i"], how="left")
    else:
        real["shuffled"] = np.nan
    real = _with_init(real, init_subjects)
    stack = real[list(CONTROLS)].to_numpy(np.float64)
    available = ~np.isnan(stack)
    filled = np.where(available, stack, -np.inf)
    strongest = filled.argmax(axis=1)
    real["control"] = filled[np.arange(len(real)), strongest] if len(real) else np.empty(0)
    real["control_name"] = np.asarray(CONTROLS, dtype=object)[strongest] if len(real) else np.empty(0, object)
    real["excess"] = real["energy"] - real["control"]
    real["threshold"] = (1.0 + real["control"]) / 2.0
    real["task"] = (real["energy"] >= real["threshold"]) & (real["excess"] > _TIE)
    return real.reset_index(drop=True)


def _with_init(real: pd.DataFrame, subjects: Collection[str]) -> pd.DataFrame:
    """``init``: the energy of the same pair's A_init direction i, on the rows of ``subjects``; else NaN."""
    keys = [k for k in PAIR_KEYS if k != "subject"] + ["i"]
    init = real.loc[real["subject"] == Subject.A_init, [*keys, "energy"]].rename(columns={"energy": "init"})
    if init.empty:
        return real.assign(init=np.nan)
    out = real.merge(init, on=keys, how="left")
    out.loc[~out["subject"].isin(list(subjects)), "init"] = np.nan
    return out


def task_directions(controls: pd.DataFrame) -> pd.DataFrame:
    """Per (pair, layer, module, subject): directions tested, ``shared`` against the isotropic baseline
    alone (the old count), ``task`` against the strongest control, and the top direction's numbers."""
    columns = [*PAIR_KEYS, "directions", "shared", "task", "top_energy", "top_control", "top_control_name",
               "control_name"]
    if controls.empty:
        return pd.DataFrame(columns=columns)
    c = controls.assign(iso_shared=controls["energy"] >= (1.0 + controls["isotropic"]) / 2.0)
    grouped = c.groupby(PAIR_KEYS, observed=True, dropna=False, sort=False)
    out = grouped.agg(
        directions=("i", "size"), shared=("iso_shared", "sum"), task=("task", "sum"),
        top_energy=("energy", "first"), top_control=("control", "first"), top_control_name=("control_name", "first"),
        control_name=("control_name", lambda s: s.value_counts().index[0]),
    )
    return out.reset_index()


def top_direction_summary(controls: pd.DataFrame, keys: Collection[str] = SUMMARY_KEYS) -> pd.DataFrame:
    """The top direction (i = 1) of each (comparison, r_a, r_b, subject): real energy and each control,
    averaged over the (pair, layer, role) cases, with the excess over the strongest control and its spread.
    ``keys``: the columns a summary row is per (``run_a, run_b, subject`` for named pairs).

    Columns: ``keys`` (by default ``comparison, r_a, r_b, subject``), ``cases, energy, isotropic, geometry,
    shuffled, init, control, control_name`` (the control that is strongest in most cases), ``excess_mean, excess_std,
    excess_min, excess_max, task_cases`` (cases whose top direction is task-specific).
    """
    keys = list(keys)
    columns = [*keys, "cases", "energy", *CONTROLS, "control", "control_name", "excess_mean", "excess_std",
               "excess_min", "excess_max", "task_cases"]
    top = controls[controls["i"] == 1] if not controls.empty else controls
    if top.empty:
        return pd.DataFrame(columns=columns)
    grouped = top.groupby(keys, observed=True, sort=True)
    out = grouped.agg(
        cases=("energy", "size"), energy=("energy", "mean"), isotropic=("isotropic", "mean"),
        geometry=("geometry", "mean"), shuffled=("shuffled", "mean"), init=("init", "mean"),
        control=("control", "mean"),
        control_name=("control_name", lambda s: s.value_counts().index[0]),
        excess_mean=("excess", "mean"), excess_std=("excess", "std"), excess_min=("excess", "min"),
        excess_max=("excess", "max"), task_cases=("task", "sum"),
    )
    return out.reset_index()[columns]


def verdict_kind(row: pd.Series) -> str:
    """``shared``, ``weak`` or ``not above`` for a ``top_direction_summary`` row (the rule of ``verdict``)."""
    se = row["excess_std"] / np.sqrt(row["cases"]) if row["cases"] > 1 else np.nan
    clear = row["excess_mean"] > 0 and (np.isnan(se) or row["excess_mean"] > 2 * se)
    if clear and row["task_cases"] >= row["cases"] / 2:
        return "shared"
    return "weak" if clear else "not above"


def verdict(row: pd.Series, what: str = "a task-specific direction") -> str:
    """One clause for a ``top_direction_summary`` row: learned beyond the strongest control, or not told apart.

    Clear means the mean excess is positive and larger than twice its standard error over the cases,
    and the top direction is task-specific (``e_1 >= (1 + c_1)/2``) in at least half of them. ``what``
    names such a direction (two tasks' adapters sharing one share it across tasks, so it is not task-specific).
    """
    label = CONTROL_LABELS[row["control_name"]]
    kind = verdict_kind(row)
    if kind == "shared":
        return f"shared beyond the strongest control ({label}): {what}"
    if kind == "weak":
        return (f"above the strongest control ({label}) on average, but task-specific (halfway from the control "
                f"to 1) in only {int(row['task_cases'])} of {int(row['cases'])} cases: weak evidence of task signal")
    return (f"not above the strongest control ({label}): the data cannot tell this shared direction from what "
            "the inputs, a shared init or training without the task give")


def shuffled_run_labels(runs: pd.DataFrame) -> set[str]:
    """Names of the sweep's runs trained on shuffled labels (``data.shuffle_labels`` in the sweep table)."""
    if runs.empty or "data.shuffle_labels" not in runs or "run" not in runs:
        return set()
    flag = runs["data.shuffle_labels"].map(lambda v: str(v).lower() in ("true", "1"))
    return set(runs.loc[flag, "run"].astype(str))
