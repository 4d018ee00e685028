"""Findings: numbers and short sentences computed from the analysis tables and the sweep table.

Pure functions over the tidy tables of the analysis (``phi``, ``spectra``, ``modules``, ``dw_vs_w``,
``w_dw_phi``, ``intruders``; see ``lora_analysis.analysis.tables.SCHEMAS``) and ``runs.parquet``. A finding's
sentences quote the numbers they rest on and its table holds them all. Missing data gives a finding
whose sentence says what is missing, never an exception, so the report of a partial sweep still builds.

The per-direction statistic (``direction_energy``, ``shared_directions``) is also what the rank
recommendation counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

PAIR_KEYS = ["comparison", "run_a", "run_b", "r_a", "r_b", "seed_a", "seed_b", "targets", "layer", "module", "subject"]
SHOWN_ROLES = ("q", "v", "qkv", "ffn_gate", "ffn_in", "ffn_out")  # the paper's q, v and the FFN it froze
SUBJECT_LABELS = {"A": "A", "A_init": "A_init", "A_delta": "A − A_init", "B": "B", "dW": "ΔW"}
LOWER_IS_BETTER = {"test_loss", "test_perplexity"}


@dataclass
class Finding:
    """One finding: ``sentences`` for the reader, ``table`` with every number, ``values`` the headline ones."""

    key: str
    title: str
    sentences: list[str]
    table: pd.DataFrame | None = None
    values: dict[str, float] = field(default_factory=dict)

    @classmethod
    def missing(cls, key: str, title: str, why: str) -> Finding:
        return cls(key, title, [why])


def fmt(x: float, digits: int = 2) -> str:
    """A number for a sentence: fixed digits, ``n/a`` for NaN."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _by_rank(table: pd.DataFrame, column: str) -> dict[str, float]:
    return {f"r{int(r)}": float(v) for r, v in zip(table["r"], table[column], strict=True)}


# --- choosing what to show


def main_targets(frame: pd.DataFrame) -> str | None:
    """The target set the paper figures show: ``all`` when present, else the one with most rows."""
    if frame.empty or "targets" not in frame:
        return None
    counts = frame["targets"].astype(str).value_counts()
    return "all" if "all" in counts.index else str(counts.index[0])


def middle_layer(frame: pd.DataFrame) -> int | None:
    """The middle adapted layer (the paper's layer 48 of 96): ``layers[(n - 1) // 2]``."""
    layers = sorted(int(x) for x in frame["layer"].dropna().unique()) if "layer" in frame else []
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


# --- the per-direction statistic


def direction_energies(phi: pd.DataFrame) -> pd.DataFrame:
    """Per-direction energy for every (pair, layer, module, subject) group of ``phi`` at once.

    For run a's i-th direction ``v_i`` and run b's whole subspace ``V_b`` (the largest j present, r_b):
    ``e_i = ||V_b^T v_i||^2 = i * phi(i, r_b) - (i - 1) * phi(i - 1, r_b)``, in [0, 1], since
    ``phi(i, r_b)`` is the mean of the first i energies when ``i <= r_b``. Its expectation for a random
    subspace is ``r_b / k``, the ``baseline`` column at ``j = r_b``. Returns ``PAIR_KEYS`` + ``i``,
    ``energy``, ``baseline``.
    """
    if phi.empty:
        return pd.DataFrame(columns=[*PAIR_KEYS, "i", "energy", "baseline"])
    j_max = phi.groupby(PAIR_KEYS, observed=True, dropna=False, sort=False)["j"].transform("max")
    col = phi[(phi["j"] == j_max) & (phi["i"] <= j_max)].sort_values([*PAIR_KEYS, "i"])
    previous = col.groupby(PAIR_KEYS, observed=True, dropna=False, sort=False)["phi"].shift(1, fill_value=0.0)
    i = col["i"].to_numpy(np.float64)
    energy = i * col["phi"].to_numpy() - (i - 1) * previous.to_numpy()
    out = col[PAIR_KEYS].copy()
    out["i"] = col["i"].to_numpy()
    out["energy"] = np.clip(energy, 0.0, 1.0)  # rounding in phi's cumulative sums can leave +-1e-15
    out["baseline"] = col["baseline"].to_numpy()
    return out.reset_index(drop=True)


def direction_energy(phi_rows: pd.DataFrame) -> pd.DataFrame:
    """``i``, ``energy``, ``baseline`` for the rows of ONE (pair, layer, module, subject).

    See ``direction_energies`` for the definition.
    """
    groups = phi_rows[PAIR_KEYS].astype(str).drop_duplicates()
    if len(groups) != 1:
        raise ValueError(f"direction_energy needs the rows of one pair, layer, module and subject; got {len(groups)}")
    return direction_energies(phi_rows)[["i", "energy", "baseline"]]


def shared_directions(phi: pd.DataFrame, comparisons: tuple[str, ...] = ("rank", "seed")) -> pd.DataFrame:
    """How many of run a's directions lie in run b's subspace clearly above chance, per pair and module.

    A direction counts as shared when its energy (``direction_energies``) reaches
    ``(1 + b) / 2``, halfway between the random expectation ``b = r_b / k`` and a direction lying wholly
    inside run b's subspace. Every direction of run a is tested, not only a leading run of them.
    Returns ``PAIR_KEYS`` + ``directions`` (tested), ``shared``, ``top_energy`` (e_1), ``baseline``,
    ``threshold``; one row per (pair, layer, module, subject).
    """
    energies = direction_energies(phi[phi["comparison"].isin(comparisons)])
    if energies.empty:
        return pd.DataFrame(columns=[*PAIR_KEYS, "directions", "shared", "top_energy", "baseline", "threshold"])
    energies["threshold"] = (1.0 + energies["baseline"]) / 2.0
    energies["is_shared"] = energies["energy"] >= energies["threshold"]
    grouped = energies.groupby(PAIR_KEYS, observed=True, dropna=False, sort=False)
    out = grouped.agg(
        directions=("i", "size"),
        shared=("is_shared", "sum"),
        top_energy=("energy", "first"),
        baseline=("baseline", "first"),
        threshold=("threshold", "first"),
    )
    return out.reset_index()


# --- findings on the subspaces


def top_direction(phi: pd.DataFrame, *, r_small: int = 8, r_large: int = 64,
                  subjects: tuple[str, ...] = ("A", "A_delta", "dW")) -> Finding:
    """Figure 3's claim per layer: does r_small's top direction lie in r_large's subspace above chance?"""
    key, title = "top_direction", f"Top direction of r={r_small} in the r={r_large} subspace (Figure 3)"
    rows = phi[(phi["comparison"] == "rank") & (phi["r_a"] == r_small) & (phi["r_b"] == r_large)]
    energies = direction_energies(rows[rows["subject"].isin(subjects)])
    top = energies[energies["i"] == 1]
    if top.empty:
        return Finding.missing(key, title, f"No rank pair r={r_small} vs r={r_large} in the analysis: not measured.")
    table = top.groupby(["subject", "layer", "module"], observed=True).agg(
        phi_1_rb=("energy", "mean"), baseline=("baseline", "mean"), pairs=("energy", "size")).reset_index()
    sentences, values = [], {}
    for subject in [s for s in subjects if s in set(table["subject"])]:
        t = table[table["subject"] == subject]
        by_layer = t.groupby("layer")["phi_1_rb"].mean()
        by_role = t.groupby("module", observed=True).agg(phi=("phi_1_rb", "mean"), base=("baseline", "mean"))
        mean, base = t["phi_1_rb"].mean(), t["baseline"].mean()
        values[subject] = float(mean)
        sentences.append(
            f"{SUBJECT_LABELS.get(subject, subject)}: φ(1, {r_large}) between r={r_small} and r={r_large} is "
            f"{fmt(mean)} on average over layers and roles (range {fmt(t['phi_1_rb'].min())}–"
            f"{fmt(t['phi_1_rb'].max())}) against a random baseline of {fmt(base)}; by layer "
            + ", ".join(f"{int(layer)}: {fmt(v)}" for layer, v in by_layer.items())
            + "; by role " + ", ".join(f"{m} {fmt(r.phi)} (baseline {fmt(r.base)})" for m, r in by_role.iterrows())
            + "."
        )
    return Finding(key, title, sentences, table, values)


def q_vs_v(shared: pd.DataFrame, *, r: int = 64, subjects: tuple[str, ...] = ("A", "A_delta", "dW")) -> Finding:
    """Figure 4's claim: does q keep more directions than v across seeds (a higher intrinsic rank)?"""
    key, title = "q_vs_v", f"Directions shared across seeds at r={r}: q against v (Figure 4)"
    s = shared[(shared["comparison"] == "seed") & (shared["r_a"] == r) & (shared["subject"].isin(subjects))]
    if s.empty:
        return Finding.missing(key, title, f"No seed pair at r={r} in the analysis: intrinsic rank across seeds "
                               "not measured.")
    table = s.groupby(["subject", "layer", "module"], observed=True).agg(
        shared=("shared", "mean"), directions=("directions", "max"), threshold=("threshold", "mean")).reset_index()
    sentences, values = [], {}
    for subject in [x for x in subjects if x in set(table["subject"])]:
        t = table[table["subject"] == subject].pivot_table(index="layer", columns="module", values="shared",
                                                           observed=True)
        role_means = t.mean()
        values.update({f"{subject}.{m}": float(v) for m, v in role_means.items()})
        label = SUBJECT_LABELS.get(subject, subject)
        others = ", ".join(f"{m} {fmt(v, 1)}" for m, v in role_means.items() if m not in ("q", "v"))
        if {"q", "v"} <= set(t.columns):
            higher = int((t["q"] > t["v"]).sum())
            verdict = "shows" if role_means["q"] > role_means["v"] and higher > len(t) / 2 else "does not show"
            sentences.append(
                f"{label} at r={r}: q shares {fmt(role_means['q'], 1)} directions across seeds on average, "
                f"v {fmt(role_means['v'], 1)} (by layer q/v: "
                + ", ".join(f"{int(layer)}: {fmt(row.q, 0)}/{fmt(row.v, 0)}" for layer, row in t.iterrows())
                + f"); q exceeds v in {higher} of {len(t)} layers, so q {verdict} a higher intrinsic rank than v"
                + (f". Other roles: {others}." if others else ".")
            )
        else:
            every = ", ".join(f"{m} {fmt(v, 1)}" for m, v in role_means.items())
            sentences.append(f"{label} at r={r}: no q and v pair to compare; shared directions by role: {every}.")
    sentences.append("A direction is shared when its energy in the other run's subspace reaches (1 + b) / 2, "
                     "halfway between the random expectation b = r / k and 1.")
    return Finding(key, title, sentences, table, values)


def init_control(phi: pd.DataFrame, shared: pd.DataFrame) -> Finding:
    """The control the paper lacks: the random inits A_init of two runs should share nothing."""
    key, title = "init_control", "Control: A_init against the random baseline"
    pairs = phi[phi["comparison"].isin(["rank", "seed"])]
    if pairs.empty:
        return Finding.missing(key, title, "No rank or seed pair in the analysis (it needs two runs that differ "
                               "only in rank or only in seed): the init control is not available.")
    energies = direction_energies(pairs[pairs["subject"] == "A_init"])
    if energies.empty:
        return Finding.missing(key, title, "No A_init rows in the analysis (runs without adapter_init.safetensors, "
                               "or A_init not among the subjects): the init control is not available.")
    s = shared[shared["subject"] == "A_init"]
    top = energies[energies["i"] == 1].groupby("comparison").agg(e1=("energy", "mean"), base=("baseline", "mean"))
    table = s.groupby("comparison").agg(cases=("shared", "size"), shared_max=("shared", "max"),
                                        shared_mean=("shared", "mean")).join(top).reset_index()
    parts = [f"{c} pairs: φ(1, r_b) = {fmt(row.e1)} against the baseline {fmt(row.base)}, shared directions "
             f"{fmt(row.shared_mean, 1)} on average (at most {int(row.shared_max)}) over {int(row.cases)} "
             "(pair, layer, role) cases" for c, row in table.set_index("comparison").iterrows()]
    clean = int(table["shared_max"].max()) == 0
    verdict = ("the inits are independent, so a subspace shared by A − A_init or ΔW is learned, not inherited "
               "from the init" if clean else "the inits overlap (shared init stream?), so directions shared by A "
               "may be an init artefact; read A − A_init instead")
    values = {f"{c}.e1": float(v) for c, v in top["e1"].items()}
    values["shared_max"] = float(table["shared_max"].max())
    return Finding(key, title, ["A_init (the random init of A): " + "; ".join(parts) + f" — {verdict}."],
                   table, values)


def a_moved(modules: pd.DataFrame) -> Finding:
    """How far A moved from its init, and what that means for reading A alone."""
    key, title = "a_moved", "How far A moved from its init"
    m = modules.dropna(subset=["a_moved"]) if "a_moved" in modules else modules.iloc[0:0]
    if m.empty:
        return Finding.missing(key, title, "a_moved is not available (no saved A_init): how far A moved from its "
                               "init is unknown, so raw A cannot be told apart from its random init.")
    table = m.groupby("r").agg(mean=("a_moved", "mean"), min=("a_moved", "min"), max=("a_moved", "max"),
                               modules=("a_moved", "size")).reset_index()
    by_r = ", ".join(f"{fmt(100 * row['mean'], 0)}% at r={int(row['r'])} (range {fmt(100 * row['min'], 0)}–"
                     f"{fmt(100 * row['max'], 0)}%)" for _, row in table.iterrows())
    near = [int(r) for r, v in zip(table["r"], table["mean"], strict=True) if v < 0.5]
    far = [int(r) for r in table["r"] if int(r) not in near]
    parts = []
    if near:
        parts.append(f"at r={', '.join(map(str, near))} A is still mostly its random init, so the subspace of A "
                     "alone mostly shows the init: read A − A_init and ΔW for what training learned")
    if far:
        parts.append(f"at r={', '.join(map(str, far))} A moved by half its init's norm or more, so A itself "
                     "reflects training")
    sentence = f"A moved ||A − A_init||_F / ||A_init||_F = {by_r} on average over modules; {'; '.join(parts)}."
    return Finding(key, title, [sentence], table, _by_rank(table, "mean"))


def amplification(dw_vs_w: pd.DataFrame, *, layer: int, module: str = "q", ranks: tuple[int, int] = (4, 64)
                  ) -> Finding:
    """Table 7: ||dW||_F over ||U^T W V^T||_F with U, V the top directions of dW, W and a random matrix."""
    key, title = "amplification", f"Does ΔW amplify directions of W? (Table 7, layer {layer}, {module})"
    d = dw_vs_w[(dw_vs_w["layer"] == layer) & (dw_vs_w["module"] == module)]
    if d.empty:
        return Finding.missing(key, title, f"No dw_vs_w rows for {module} at layer {layer} (base weights not found "
                               "by the analysis): Table 7 not measured.")
    proj = d.pivot_table(index="r", columns="source", values="projection_norm", aggfunc="mean", observed=True)
    table = d.groupby("r").agg(seeds=("seed", "nunique"), dw_norm=("dw_norm", "mean"), w_norm=("w_norm", "mean"))
    table = table.join(proj.add_prefix("proj_"))
    table["amplification"] = d[d["source"] == "dW"].groupby("r")["amplification"].mean()
    table = table.reset_index()
    present = sorted(int(r) for r in table["r"])
    lo, hi = (ranks if all(r in present for r in ranks) else (present[0], present[-1]))
    rows = table.set_index("r")
    def describe(r: int) -> str:
        row = rows.loc[r]
        return (f"r={r}: ||ΔW||_F = {fmt(row.dw_norm)}, ||UᵀWVᵀ||_F = {fmt(row.get('proj_dW', math.nan))} / "
                f"{fmt(row.get('proj_W', math.nan))} / {fmt(row.get('proj_random', math.nan))} for ΔW / W / random")
    sentences = [f"At layer {layer} ({module}), the amplification factor ||ΔW||_F / ||UᵀWVᵀ||_F is "
                 f"{fmt(rows.loc[lo, 'amplification'], 1)} at r={lo} against {fmt(rows.loc[hi, 'amplification'], 1)} "
                 f"at r={hi}; {describe(lo)}; {describe(hi)}; ||W||_F = {fmt(rows['w_norm'].iloc[0])}."]
    everywhere = dw_vs_w[dw_vs_w["source"] == "dW"].groupby("r")["amplification"].mean()
    sentences.append("Over all layers and roles the amplification averages "
                     + ", ".join(f"{fmt(v, 1)} at r={int(r)}" for r, v in everywhere.items()) + ".")
    values = {f"r{r}": float(rows.loc[r, "amplification"]) for r in present}
    return Finding(key, title, sentences, table, values)


def w_dw_overlap(w_dw_phi: pd.DataFrame, *, layer: int, module: str = "q", side: str = "left") -> Finding:
    """Figure 8's claim: the top directions of dW are not the top directions of W."""
    key, title = "w_dw_overlap", f"Top directions of W against those of ΔW (Figure 8, layer {layer}, {module})"
    d = w_dw_phi[(w_dw_phi["layer"] == layer) & (w_dw_phi["module"] == module) & (w_dw_phi["side"] == side)]
    if d.empty:
        return Finding.missing(key, title, f"No w_dw_phi rows for {module} at layer {layer}: Figure 8 not measured.")
    i10 = max(1, round(0.1 * int(d["i"].max())))
    parts = []
    for r, g in d.groupby("r"):
        j = min(4, int(g["j"].max()))
        cell = g[(g["i"] == i10) & (g["j"] == j)]
        parts.append((int(r), j, cell["phi"].mean(), cell["baseline"].mean()))
    table = pd.DataFrame(parts, columns=["r", "j", "phi", "baseline"]).assign(i=i10)
    sentence = (f"φ between the top {i10} directions of W (10% of the {int(d['i'].max())} computed) and the top j "
                f"of ΔW ({side} singular vectors): " + ", ".join(f"{fmt(p)} at r={r} (j={j}, baseline {fmt(b)})"
                                                                  for r, j, p, b in parts) + ".")
    return Finding(key, title, [sentence], table, {f"r{r}": float(p) for r, _, p, _ in parts})


def intruder_counts(intruders: pd.DataFrame) -> Finding:
    """Intruder dimensions (Shuttleworth et al. 2024) per rank."""
    key, title = "intruders", "Intruder dimensions"
    if intruders.empty:
        return Finding.missing(key, title, "No intruder rows (base weights not found by the analysis): intruder "
                               "dimensions not measured.")
    per_module = intruders.groupby(["r", "run", "layer", "module"], observed=True)["is_intruder"].sum()
    table = per_module.groupby("r").agg(per_module="mean", total="sum", modules="size").reset_index()
    top_k, threshold = int(intruders["index"].max()), float(intruders["threshold"].iloc[0])
    sentence = (f"Intruder dimensions (top-{top_k} singular vectors of W + ΔW whose max |cos| to every singular "
                f"vector of W is below {fmt(threshold)}): " + ", ".join(
                    f"{fmt(row.per_module)} per module at r={int(row.r)} ({int(row.total)} in {int(row.modules)} "
                    "modules)" for row in table.itertuples()) + ".")
    return Finding(key, title, [sentence], table, _by_rank(table, "per_module"))


# --- findings on the runs


def metric_column(runs: pd.DataFrame) -> str | None:
    """The test metric of the sweep: accuracy for classification, else loss."""
    for name in ("test_accuracy", "test_loss", "test_perplexity"):
        if name in runs and runs[name].notna().any():
            return name
    return None


def lora_runs(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["method"] == "lora"] if "method" in runs else runs


def accuracy_table(runs: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """Tables 5/6 analogue: ``targets, r, n, mean, std, lora_params`` of the test metric over seeds."""
    metric = metric or metric_column(runs)
    lora = lora_runs(runs)
    columns = ["targets", "r", "n", "mean", "std", "lora_params"]
    if metric is None or lora.empty or "lora.r" not in lora:
        return pd.DataFrame(columns=columns)
    lora = lora.dropna(subset=["lora.r"])
    lora = lora.assign(targets=lora.get("lora.targets", "n/a"), r=lora["lora.r"].astype(int),
                       lora_params=lora.get("lora_params", np.nan))
    out = lora.groupby(["targets", "r"]).agg(n=(metric, "count"), mean=(metric, "mean"), std=(metric, "std"),
                                             lora_params=("lora_params", "mean"))
    return out.reset_index()[columns]


def full_reference(runs: pd.DataFrame, metric: str | None = None) -> dict[str, float] | None:
    """Mean, std and count of the test metric over the full fine-tuning runs; None without any."""
    metric = metric or metric_column(runs)
    full = runs[runs["method"] == "full"] if "method" in runs else runs.iloc[0:0]
    if metric is None or full.empty:
        return None
    values = full[metric].dropna()
    return {"mean": values.mean(), "std": values.std(), "n": len(values)} if len(values) else None


def accuracy(runs: pd.DataFrame, metric: str | None = None) -> Finding:
    """Test metric against rank and target set, beside full fine-tuning and the majority class."""
    metric = metric or metric_column(runs)
    key, title = "accuracy", "Test metric against rank and target set (Tables 5 and 6)"
    table = accuracy_table(runs, metric)
    if table.empty:
        return Finding.missing(key, title, "No finished LoRA run with a test metric in runs.parquet.")
    best = table.loc[table["mean"].idxmin() if metric in LOWER_IS_BETTER else table["mean"].idxmax()]
    sentences = []
    for targets, t in table.groupby("targets"):
        sentences.append(f"{metric} with targets {targets}: " + ", ".join(
            f"r={int(row.r)} {fmt(row.mean, 3)}" + (f" ± {fmt(row.std, 3)}" if row.n > 1 else "") + f" (n={row.n})"
            for row in t.itertuples()) + ".")
    full = full_reference(runs, metric)
    tail = f"Best LoRA: targets {best['targets']} at r={int(best['r'])}, {fmt(best['mean'], 3)}"
    if full:
        gap = best["mean"] - full["mean"]
        tail += f"; full fine-tuning {fmt(full['mean'], 3)} (n={full['n']}), difference {fmt(gap, 3)}"
    else:
        tail += "; no full fine-tuning run in the sweep to compare with"
    if "majority_accuracy" in runs and runs["majority_accuracy"].notna().any() and metric == "test_accuracy":
        tail += f"; majority class {fmt(runs['majority_accuracy'].dropna().iloc[0], 3)}"
    sentences.append(tail + ".")
    sentences += stuck_at_majority(runs) if metric == "test_accuracy" else []
    values = {"best": float(best["mean"])} | ({"full": float(full["mean"])} if full else {})
    return Finding(key, title, sentences, table, values)


def stuck_at_majority(runs: pd.DataFrame) -> list[str]:
    """A sentence naming the LoRA runs whose test accuracy is the majority class's (within 0.5 point).

    Such a run predicts one class: its rank tells nothing about the task. Their LoRA scale is given,
    since with alpha held fixed the smallest ranks get the largest ``alpha / r``.
    """
    lora = lora_runs(runs)
    if lora.empty or "majority_accuracy" not in lora or "test_accuracy" not in lora:
        return []
    stuck = lora[(lora["test_accuracy"] - lora["majority_accuracy"]).abs() < 0.005]
    if stuck.empty:
        return []
    names = ", ".join(sorted(stuck["run"].astype(str))) if "run" in stuck else f"{len(stuck)} runs"
    detail = ""
    if {"lora.alpha", "lora.r"} <= set(stuck.columns):
        scales = sorted({float(a) / float(r) for a, r in zip(stuck["lora.alpha"], stuck["lora.r"], strict=True)})
        largest = (lora["lora.alpha"].astype(float) / lora["lora.r"].astype(float)).max()
        detail += f" LoRA scale alpha/r {', '.join(f'{x:.3g}' for x in scales)}"
        detail += " (the largest in the sweep);" if min(scales) >= largest else ";"
    if "final_train_loss" in stuck:
        detail += f" final training loss {fmt(stuck['final_train_loss'].mean(), 3)} on average"
    return [f"{len(stuck)} of {len(lora)} LoRA runs predict the majority class ({names}):{detail}. Their test "
            "accuracy says the optimisation failed, not how much rank the task needs."]


def ffn_under_budget(runs: pd.DataFrame, metric: str | None = None) -> Finding:
    """Does adapting FFN matrices help at one parameter budget? Differences with their standard errors.

    Each budget-matched target set gets its mean over seeds and a standard error: ``std / sqrt(n)``
    over seeds, or with a single seed the binomial error of an accuracy on the test set,
    ``sqrt(p (1 - p) / n_test)``. Sets that adapt FFN matrices are compared with sets that do not
    (mean of set means, errors combined in quadrature), and ``all`` with ``attn``; a difference counts
    as clear when it exceeds twice its standard error.
    """
    from lora_analysis.targets import PRESETS, expand_roles

    metric = metric or metric_column(runs)
    key, title = "ffn_budget", "FFN matrices under a fixed parameter budget (Table 5 analogue)"
    budgeted = lora_runs(runs)
    budgeted = budgeted[budgeted["lora.budget"].notna()] if "lora.budget" in budgeted else budgeted.iloc[0:0]
    table = accuracy_table(budgeted, metric)
    if table.empty:
        return Finding.missing(key, title, "No budget-matched runs (lora.budget) in this sweep.")
    n_test = float(budgeted["test_examples"].iloc[0]) if "test_examples" in budgeted else math.nan
    binomial = np.sqrt(table["mean"] * (1 - table["mean"]) / n_test) if metric == "test_accuracy" else np.nan
    table["se"] = np.where(table["n"] > 1, table["std"] / np.sqrt(table["n"]), binomial)
    table["ffn"] = [bool(set(PRESETS["ffn"]) & set(expand_roles(str(t)))) for t in table["targets"]]
    better = -1.0 if metric in LOWER_IS_BETTER else 1.0
    sentences = [f"Budget {', '.join(sorted(map(str, budgeted['lora.budget'].unique())))}: " + ", ".join(
        f"{row.targets} (r={row.r}, {int(row.lora_params):,} parameters) {fmt(row.mean, 3)} ± {fmt(row.se, 3)}"
        for row in table.sort_values("mean", ascending=better < 0).itertuples()) + " (mean ± standard error)."]
    values = {}
    named = {targets: table[table["targets"] == targets] for targets in ("ffn", "attn", "all")}
    for label, a, b in (("ffn against attn (the two halves of a block)", named["ffn"], named["attn"]),
                        ("FFN sets against attention-only sets", table[table["ffn"]], table[~table["ffn"]]),
                        ("all against attn", named["all"], named["attn"])):
        if a.empty or b.empty:
            continue
        diff = a["mean"].mean() - b["mean"].mean()
        se = math.sqrt((a["se"] ** 2).sum() / len(a) ** 2 + (b["se"] ** 2).sum() / len(b) ** 2)
        verdict = ("no clear difference" if not abs(diff) > 2 * se else
                   "the FFN side is clearly better" if better * diff > 0 else "the FFN side is clearly worse")
        values[label] = float(diff)
        sentences.append(f"{label}: {fmt(a['mean'].mean(), 3)} against {fmt(b['mean'].mean(), 3)}, difference "
                         f"{diff:+.3f} ± {fmt(se, 3)}: {verdict} (clear means beyond twice the standard error).")
    return Finding(key, title, sentences, table, values)


def loss_levelled(histories: dict[str, pd.DataFrame], tolerance: float = 0.05) -> Finding:
    """Has the training loss levelled off? Mean loss of the last quarter of training against the quarter before."""
    key, title = "loss", "Has training levelled off?"
    rows = []
    for run, h in histories.items():
        h = h.dropna(subset=["loss"])
        if len(h) < 8:
            continue
        q = len(h) // 4
        last, before = h["loss"].iloc[-q:].mean(), h["loss"].iloc[-2 * q:-q].mean()
        rows.append((run, before, last, (last - before) / before if before else math.nan))
    if not rows:
        return Finding.missing(key, title, "No run has a history.csv with at least 8 logged steps.")
    table = pd.DataFrame(rows, columns=["run", "loss_before", "loss_last", "relative_change"])
    flat = table["relative_change"].abs() < tolerance
    worst = table.loc[table["relative_change"].idxmin()]
    sentence = (f"Mean training loss of the last quarter of steps against the quarter before: "
                f"{fmt(100 * table['relative_change'].mean(), 1)}% on average (largest drop "
                f"{fmt(100 * worst['relative_change'], 1)}% for {worst['run']}); {int(flat.sum())} of {len(table)} "
                f"runs changed by less than {fmt(100 * tolerance, 0)}%, i.e. levelled off.")
    return Finding(key, title, [sentence], table, {"levelled": float(flat.sum()), "runs": float(len(table))})
