"""Figures: one function per figure, analysis tables in, ``matplotlib.figure.Figure`` out; the caller saves.

Figures are built on the Agg canvas directly, without pyplot: no GUI backend, no global registry of
open figures to leak in a long report. Every heatmap shares one look: viridis, colour scale fixed to
[0, 1] with a colour bar, ``i`` (run a's top directions) down the rows from 1, ``j`` (run b's) across.
A function that finds nothing to draw raises ``LoraAnalysisError`` naming what is missing.
"""

from __future__ import annotations

import functools

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

from lora_analysis.analysis.kinds import GAUSSIAN, Comparison, Side, Subject
from lora_analysis.derive.queries import pair_rows, phi_matrix, shown_roles
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.show.labels import label as _label

CONTROL_SUBJECTS = (Subject.A_init, Subject.A, Subject.A_delta, Subject.dW)  # the control maps, in this order
CMAP = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")  # grey: cell absent (rank-deficient)
STYLE = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 8.5, "xtick.labelsize": 7.5, "ytick.labelsize": 7.5,
    "legend.fontsize": 8, "figure.titlesize": 11, "axes.spines.top": False, "axes.spines.right": False,
    "text.parse_math": False,  # names are drawn as typed: a "$" in a run name is no formula (none is drawn)
}  # fmt: skip


def styled(draw):
    """Create the figure's text under the house style (fonts are fixed when a text object is made)."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained", dpi=100)
    FigureCanvasAgg(fig)
    return fig


def heatmap(ax, grid: np.ndarray, title: str, ylabel: str, xlabel: str):
    """phi grid ``(n_i, n_j)`` with 1-based cell centres; returns the image (for the colour bar)."""
    n_i, n_j = grid.shape
    image = ax.imshow(np.ma.masked_invalid(grid), vmin=0.0, vmax=1.0, cmap=CMAP, aspect="auto",
                      interpolation="nearest", extent=(0.5, n_j + 0.5, n_i + 0.5, 0.5))
    ax.set(title=title, ylabel=ylabel, xlabel=xlabel)
    ax.xaxis.set_major_locator(FixedLocator(grid_ticks(n_j)))
    ax.yaxis.set_major_locator(FixedLocator(grid_ticks(n_i)))
    ax.set_xlim(0.5, n_j + 0.5)
    ax.set_ylim(n_i + 0.5, 0.5)
    return image


def grid_ticks(n: int) -> list[int]:
    """1 and round multiples up to n (1, 16, 32, 48, 64 for 64): the paper's axes start at direction 1."""
    if n <= 8:
        return list(range(1, n + 1, 1 if n <= 5 else 2))
    step = next(s for s in (2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 200, 256) if n / s <= 5)
    return [1, *range(step, n + 1, step)]


def colorbar(fig: Figure, image, axes) -> None:
    if image is None:
        raise LoraAnalysisError("no panel had phi rows to draw")
    fig.colorbar(image, ax=list(np.ravel(axes)), label="φ(i, j)", shrink=0.9, aspect=30)


def pair_heatmap(ax, rows: pd.DataFrame, title: str, zoom: int | None = None):
    grid = phi_matrix(rows)
    if zoom:
        grid = grid[:zoom, :zoom]
    run_a, run_b = str(rows["run_a"].iloc[0]), str(rows["run_b"].iloc[0])
    if run_b == GAUSSIAN:
        run_a, run_b = "Gaussian 1", "Gaussian 2"
    return heatmap(ax, grid, title, f"i  ({run_a})", f"j  ({run_b})")


def _two_roles(phi: pd.DataFrame, modules) -> list[str]:
    roles = shown_roles(phi)
    return list(modules) if modules else ([m for m in roles if m in ("q", "v")] or roles[:2])


def _seed_text(rows: pd.DataFrame) -> str:
    seed = rows["seed_a"].iloc[0]
    return "" if pd.isna(seed) else f", seed {int(seed)}"


# --- Figures 3, 4, 6 and 7: phi heatmaps across ranks and seeds


@styled
def fig3_rank_similarity(phi: pd.DataFrame, *, layer: int, r_small: int = 8, r_large: int = 64,
                         subject: str = Subject.A, modules=None, seed: int | None = None) -> Figure:
    """Figure 3: phi(X_{r_small}, X_{r_large}, i, j) at one layer, full grid and ``r_small x r_small`` zoom.

    One row per role (default: q, v and the FFN roles present); ``phi`` is the whole phi table.
    """
    found = [(m, pair_rows(phi, Comparison.rank, subject=subject, layer=layer, module=m, r_a=r_small, r_b=r_large,
                           seed=seed)) for m in (modules or shown_roles(phi))]
    found = [(m, rows) for m, rows in found if not rows.empty]
    if not found:
        raise LoraAnalysisError(f"no phi rows for {subject}, r={r_small} vs r={r_large}, at layer {layer}")
    fig = new_figure(10.5, 0.6 + 2.1 * len(found))
    axes = fig.subplots(len(found), 2, squeeze=False, gridspec_kw={"width_ratios": [3, 1]})
    for (module, rows), (full, zoom) in zip(found, axes, strict=True):
        image = pair_heatmap(full, rows, f"{module}: i ≤ {r_small}, j ≤ {r_large}")
        pair_heatmap(zoom, rows, f"{module}: zoom i, j ≤ {r_small}", zoom=r_small)
    fig.suptitle(f"Figure 3: φ(i, j) between {_label(subject)} at r={r_small} (i) and r={r_large} (j), layer {layer}"
                 f"{_seed_text(found[0][1])}")
    colorbar(fig, image, axes)
    return fig


@styled
def fig4_seed_similarity(phi: pd.DataFrame, *, layer: int, r: int = 64, subject: str = Subject.A, modules=None,
                         seed: int | None = None) -> Figure:
    """Figure 4: phi between two seeds at rank r, beside phi between two random Gaussian ``(r, k)`` matrices."""
    found = []
    for module in modules or shown_roles(phi):
        rows = pair_rows(phi, Comparison.seed, subject=subject, layer=layer, module=module, r_a=r, r_b=r, seed=seed)
        if not rows.empty:
            gauss = pair_rows(phi, Comparison.random, subject=subject, layer=layer, module=module, r_a=r,
                              seed=rows["seed_a"].iloc[0] if pd.notna(rows["seed_a"].iloc[0]) else None)
            found.append((module, rows, gauss))
    if not found:
        raise LoraAnalysisError(f"no seed pair at r={r} for {subject} at layer {layer}")
    fig = new_figure(6.4, 0.6 + 2.9 * len(found))
    axes = fig.subplots(len(found), 2, squeeze=False)
    for (module, rows, gauss), (left, right) in zip(found, axes, strict=True):
        seeds = f"seeds {rows['seed_a'].iloc[0]} and {rows['seed_b'].iloc[0]}"
        image = pair_heatmap(left, rows, f"{module}: {_label(subject)}, {seeds}")
        if gauss.empty:
            right.set_axis_off()
            right.text(0.5, 0.5, "no random baseline rows", ha="center", va="center", transform=right.transAxes)
        else:
            pair_heatmap(right, gauss, f"{module}: two random Gaussian ({r} x k) matrices")
    fig.suptitle(f"Figure 4: φ(i, j) between two seeds of {_label(subject)} at r={r}, layer {layer}; right: random")
    colorbar(fig, image, axes)
    return fig


def _layers(phi: pd.DataFrame, mask: pd.Series) -> list[int]:
    return sorted(int(x) for x in phi.loc[mask, "layer"].dropna().unique())


@styled
def fig6_rank_similarity_layers(phi: pd.DataFrame, *, r_small: int = 8, r_large: int = 64, subject: str = Subject.A,
                                modules=None, seed: int | None = None, zoom: bool | None = None) -> Figure:
    """Figure 6: Figure 3 for every layer, one row per layer, one column per role (default: q, v, FFN).

    ``zoom`` adds the ``r_small x r_small`` zoom beside each grid; by default only for at most two roles.
    """
    modules = list(modules or shown_roles(phi))
    zoom = len(modules) <= 2 if zoom is None else zoom
    mask = (phi["comparison"] == Comparison.rank) & (phi["subject"] == subject) & (phi["r_a"] == r_small)
    layers = _layers(phi, mask & (phi["r_b"] == r_large))
    if not layers or not modules:
        raise LoraAnalysisError(f"no phi rows for {subject}, r={r_small} vs r={r_large}")
    per_role = 2 if zoom else 1
    fig = new_figure((4.6 if zoom else 3.4) * len(modules) + 0.8, 0.6 + 1.55 * len(layers))
    axes = fig.subplots(len(layers), per_role * len(modules), squeeze=False,
                        gridspec_kw={"width_ratios": ([3, 1] if zoom else [1]) * len(modules)})
    image = shown = None
    for row, layer in enumerate(layers):
        for col, module in enumerate(modules):
            rows = pair_rows(phi, Comparison.rank, subject=subject, layer=layer, module=module, r_a=r_small,
                             r_b=r_large, seed=seed)
            panels = axes[row, per_role * col:per_role * (col + 1)]
            if rows.empty:
                for ax in panels:
                    ax.set_axis_off()
                continue
            image, shown = pair_heatmap(panels[0], rows, f"layer {layer}, {module}"), rows
            if zoom:
                pair_heatmap(panels[1], rows, f"layer {layer}, {module}: zoom", zoom=r_small)
    fig.suptitle(f"Figure 6: φ(i, j) between {_label(subject)} at r={r_small} (i) and r={r_large} (j), every layer"
                 f"{_seed_text(shown) if shown is not None else ''}")
    colorbar(fig, image, axes)
    return fig


def _space_dim(rows: pd.DataFrame) -> int:
    """k, the dimension of the space a pair's bases live in, from its baseline ``max(i, j) / k``."""
    first = rows.iloc[0]
    return round(max(first["i"], first["j"]) / first["baseline"])


@styled
def fig7_seed_similarity_layers(phi: pd.DataFrame, *, r: int = 64, subject: str = Subject.A, modules=None,
                                seed: int | None = None) -> Figure:
    """Figure 7: Figure 4 for every layer: one row per layer, one column per role (default: q, v, FFN), then
    one Gaussian map per input dimension k among those roles (the random level r / k depends on k)."""
    modules = list(modules or shown_roles(phi))
    mask = (phi["comparison"] == Comparison.seed) & (phi["subject"] == subject) & (phi["r_a"] == r)
    layers = _layers(phi, mask)
    if not layers or not modules:
        raise LoraAnalysisError(f"no seed pair at r={r} for {subject}")
    randoms: dict[int, str] = {}
    for module in modules:
        rows = pair_rows(phi, Comparison.random, subject=subject, layer=layers[0], module=module, r_a=r, seed=seed)
        if not rows.empty:
            randoms.setdefault(_space_dim(rows), module)
    columns = len(modules) + len(randoms)
    fig = new_figure(2.5 * columns + 0.8, 0.6 + 2.3 * len(layers))
    axes = fig.subplots(len(layers), columns, squeeze=False)
    image = None
    for row, layer in enumerate(layers):
        for col, module in enumerate(modules):
            rows = pair_rows(phi, Comparison.seed, subject=subject, layer=layer, module=module, r_a=r, r_b=r, seed=seed)
            if rows.empty:
                axes[row, col].set_axis_off()
                continue
            image = pair_heatmap(axes[row, col], rows, f"layer {layer}, {module}")
        for col, (k, module) in enumerate(randoms.items(), start=len(modules)):
            gauss = pair_rows(phi, Comparison.random, subject=subject, layer=layer, module=module, r_a=r, seed=seed)
            if gauss.empty:
                axes[row, col].set_axis_off()
            else:
                pair_heatmap(axes[row, col], gauss, f"random Gaussian, k={k}")
    fig.suptitle(f"Figure 7: φ(i, j) between two seeds of {_label(subject)} at r={r}, every layer; right: random")
    colorbar(fig, image, axes)
    return fig


@styled
def controls_similarity(phi: pd.DataFrame, *, layer: int, comparison: str = Comparison.rank, r_a: int = 8,
                        r_b: int = 64, seed: int | None = None, modules=None,
                        subjects: tuple[str, ...] = CONTROL_SUBJECTS) -> Figure:
    """The controls the paper lacks: phi of A_init, A, A - A_init and dW for the same pair, side by side.

    ``comparison`` is ``rank`` (r_a vs r_b, same seed) or ``seed`` (two seeds at r_a = r_b).
    """
    modules = _two_roles(phi, modules)
    subjects = [s for s in subjects if (phi["subject"] == s).any()]
    image = None
    cells = {(m, s): pair_rows(phi, comparison, subject=s, layer=layer, module=m, r_a=r_a, r_b=r_b, seed=seed)
             for m in modules for s in subjects}
    modules = [m for m in modules if any(not cells[m, s].empty for s in subjects)]
    if not modules:
        raise LoraAnalysisError(f"no {comparison} pair r={r_a} vs r={r_b} at layer {layer} for {subjects}")
    wide = r_b >= 2 * r_a
    fig = new_figure((3.2 if wide else 2.6) * len(subjects) + 0.8, 0.7 + 2.4 * len(modules))
    axes = fig.subplots(len(modules), len(subjects), squeeze=False)
    for row, module in enumerate(modules):
        for col, subject in enumerate(subjects):
            rows = cells[module, subject]
            if rows.empty:
                axes[row, col].set_axis_off()
                continue
            image = pair_heatmap(axes[row, col], rows, f"{module}: {_label(subject)}")
    what = f"r={r_a} vs r={r_b}" if comparison == Comparison.rank else f"two seeds at r={r_a}"
    fig.suptitle(f"Controls: φ of {', '.join(_label(s) for s in subjects)} for the same pair ({what}), "
                 f"layer {layer}")
    colorbar(fig, image, axes)
    return fig


DIFFERENCE = "real − strongest control"


def _difference_limit(grids: list[np.ndarray]) -> float:
    """The colour range ±limit of the difference maps: their largest |difference| rounded up to 0.05,
    at least 0.5 and at most 1. On ±1 an excess of 0.1 was near white; below ±0.5 one far short of a
    verdict's (halfway from the control to 1, usually 0.25 or more) would look as strong as one."""
    largest = max((float(np.nanmax(np.abs(g))) for g in grids if np.isfinite(g).any()), default=0.0)
    return float(min(1.0, max(0.5, np.ceil(largest / 0.05 - 1e-9) * 0.05)))


def _control_grids(real: pd.DataFrame, twin: pd.DataFrame) -> dict[str, np.ndarray]:
    """The real phi grid of one pair, its controls' grids (where present) and real minus the strongest."""
    grids = {"real": phi_matrix(real), "isotropic": phi_matrix(real.assign(phi=real["baseline"]))}
    if "geometry_baseline" in real and real["geometry_baseline"].notna().any():
        grids["input geometry"] = phi_matrix(real.assign(phi=real["geometry_baseline"]))
    if not twin.empty:
        grids["shuffled labels"] = phi_matrix(twin)[: grids["real"].shape[0], : grids["real"].shape[1]]
    strongest = np.nanmax(np.stack([g for k, g in grids.items() if k != "real"]), axis=0)
    grids[DIFFERENCE] = grids["real"] - strongest
    return grids


@styled
def against_controls(phi: pd.DataFrame, shuffled, *, layer: int, r_a: int = 8, r_b: int = 64,
                     subject: str = Subject.A_delta, modules=None) -> Figure:
    """Figure 3's pair beside its controls: the real phi map, the same pair on shuffled labels, the
    input-geometry expectation, and the real map minus the strongest control, cell by cell.

    ``phi`` holds the real and the shuffled-label runs; ``shuffled`` names the latter.
    """
    names = set(shuffled)
    is_twin = phi["run_a"].astype(str).isin(names) & phi["run_b"].astype(str).isin(names)
    real_phi, twin_phi = phi[~is_twin & ~phi["run_a"].astype(str).isin(names)], phi[is_twin]
    modules = _two_roles(real_phi, modules)
    cells = {}
    for m in modules:
        real = pair_rows(real_phi, Comparison.rank, subject=subject, layer=layer, module=m, r_a=r_a, r_b=r_b)
        if not real.empty:
            twin = pair_rows(twin_phi, Comparison.rank, subject=subject, layer=layer, module=m, r_a=r_a, r_b=r_b)
            cells[m] = _control_grids(real, twin)
    if not cells:
        raise LoraAnalysisError(f"no rank pair r={r_a} vs r={r_b} at layer {layer} for {subject}")
    columns = [c for c in ("real", "shuffled labels", "input geometry", DIFFERENCE)
               if any(c in g for g in cells.values())]
    fig = new_figure(3.0 * len(columns) + 1.2, 0.8 + 2.4 * len(cells))
    axes = fig.subplots(len(cells), len(columns), squeeze=False)
    image = diff = None
    limit = _difference_limit([g[DIFFERENCE] for g in cells.values() if DIFFERENCE in g])
    for row, (module, grids) in enumerate(cells.items()):
        for col, name in enumerate(columns):
            ax = axes[row, col]
            if name not in grids:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"no {name}", ha="center", va="center", transform=ax.transAxes)
                continue
            if name == DIFFERENCE:
                n_i, n_j = grids[name].shape
                diff = ax.imshow(grids[name], vmin=-limit, vmax=limit, cmap="RdBu_r", aspect="auto",
                                 interpolation="nearest", extent=(0.5, n_j + 0.5, n_i + 0.5, 0.5))
                ax.set(title=f"{module}: {name}", xlabel=f"j  (r={r_b})", ylabel=f"i  (r={r_a})")
                ax.xaxis.set_major_locator(FixedLocator(grid_ticks(n_j)))  # the same axes as the maps beside it
                ax.yaxis.set_major_locator(FixedLocator(grid_ticks(n_i)))
            else:
                image = heatmap(ax, grids[name], f"{module}: {name}", f"i  (r={r_a})", f"j  (r={r_b})")
    fig.suptitle(f"{_label(subject)}, r={r_a} vs r={r_b}, layer {layer}: the real map against its controls")
    fig.colorbar(image, ax=list(axes[:, :-1].ravel()) if diff is not None else list(axes.ravel()),
                 label="φ(i, j)", shrink=0.9, aspect=30)
    if diff is not None:
        fig.colorbar(diff, ax=list(axes[:, -1]), label="φ − strongest control", shrink=0.9, aspect=30)
    return fig


# --- Figure 8, spectra


@styled
def fig8_w_dw_similarity(w_dw_phi: pd.DataFrame, *, layer: int, module: str = "q", side: str = Side.left,
                         seed: int | None = None) -> Figure:
    """Figure 8: phi between the top-i singular directions of W and the top-j of dW, one panel per rank,
    and the random expectation ``max(i, j) / k`` of the largest rank's grid."""
    d = w_dw_phi[(w_dw_phi["layer"] == layer) & (w_dw_phi["module"] == module) & (w_dw_phi["side"] == side)]
    if d.empty:
        raise LoraAnalysisError(f"no w_dw_phi rows for {module} at layer {layer} ({side} singular vectors)")
    seed = seed if seed is not None else (d["seed"].min() if d["seed"].notna().any() else None)
    ranks = sorted(int(r) for r in d["r"].unique())
    fig = new_figure(max(7.5, 1.9 * (len(ranks) + 1) + 1.0), 5.2)
    axes = fig.subplots(1, len(ranks) + 1, squeeze=False)[0]
    for ax, r in zip(axes, ranks, strict=False):
        g = d[d["r"] == r]
        g = g[g["seed"] == seed] if seed is not None and (g["seed"] == seed).any() else g[g["run"] == g["run"].iloc[0]]
        image = heatmap(ax, phi_matrix(g), f"r = {r}", "i  (top directions of W)", f"j  (ΔW, r={r})")
    grid = np.full((int(g["i"].max()), int(g["j"].max())), np.nan)
    grid[g["i"].to_numpy() - 1, g["j"].to_numpy() - 1] = g["baseline"].to_numpy()
    heatmap(axes[-1], grid, "random: max(i, j) / k", "i  (top directions of W)", f"j  (r={ranks[-1]})")
    seed_text = "" if seed is None else f", seed {int(seed)}"
    fig.suptitle(f"Figure 8: φ(W_{module} top-i, ΔW_{module} top-j) at layer {layer}, {side} singular vectors"
                 f"{seed_text}")
    colorbar(fig, image, axes)
    return fig


@styled
def dw_spectra(spectra: pd.DataFrame, *, layer: int, modules=None, seed: int | None = None,
               subject: str = Subject.dW) -> Figure:
    """Singular values of dW at one layer: one panel per role, one line per rank (the lowest seed each)."""
    s = spectra[(spectra["subject"] == subject) & (spectra["layer"] == layer)]
    modules = list(modules or shown_roles(s))
    if s.empty or not modules:
        raise LoraAnalysisError(f"no {subject} spectra at layer {layer}")
    fig = new_figure(2.9 * len(modules) + 0.4, 3.2)
    axes = fig.subplots(1, len(modules), squeeze=False)[0]
    for ax, module in zip(axes, modules, strict=True):
        for r, g in s[s["module"] == module].groupby("r"):
            chosen = seed if seed is not None and (g["seed"] == seed).any() else g["seed"].min()
            g = g[g["seed"] == chosen] if pd.notna(chosen) else g[g["run"] == g["run"].iloc[0]]
            g = g.sort_values("index")
            ax.plot(g["index"], g["singular_value"], marker="o", ms=2.5, lw=1.2, label=f"r={r}")
        ax.set(title=f"{module}", xlabel="index (1 = largest)", ylabel="singular value", xscale="log", yscale="log")
        top = int(s["index"].max())
        ax.xaxis.set_major_locator(FixedLocator([2**p for p in range(top.bit_length()) if 2**p <= top]))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.legend(frameon=False)
    seed_text = "" if seed is None else f", seed {seed}"
    fig.suptitle(f"Singular values of {_label(subject)} at layer {layer}, one line per rank{seed_text}")
    return fig
