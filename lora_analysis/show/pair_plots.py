"""Figures for named pairs of adapters (any analysis, not only a sweep): their phi maps, their top direction
layer by layer against the strongest control, and each adapter's spectrum.

The sweep figures (``show.plots``) pick pairs by rank and seed; two foreign adapters may share both (two
tasks at r=8), so these pick the pair by its run names. Same look as ``show.plots``: tables in, a
``Figure`` out, ``LoraAnalysisError`` when there is nothing to draw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from lora_analysis.analysis.kinds import Comparison, Subject
from lora_analysis.derive.queries import shown_roles
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.show.labels import label
from lora_analysis.show.plots import colorbar, new_figure, pair_heatmap, styled

SUBJECT_ORDER = (Subject.A_init, Subject.A, Subject.A_delta, Subject.B, Subject.dW)
ROLES_SHOWN = 4  # rows of a pair's maps: more roles make a figure taller than a page


def _pair(frame: pd.DataFrame, run_a: str, run_b: str) -> pd.DataFrame:
    return frame[(frame["run_a"].astype(str) == run_a) & (frame["run_b"].astype(str) == run_b)]


def pair_subjects(phi: pd.DataFrame) -> list[str]:
    """The subjects present in ``phi``, in the order the maps show them."""
    present = set(phi["subject"].astype(str))
    return [s.value for s in SUBJECT_ORDER if s.value in present]


@styled
def pair_similarity(phi: pd.DataFrame, *, run_a: str, run_b: str, layer: int, modules=None) -> Figure:
    """phi(i, j) of one pair of runs at one layer: a row per role, a column per subject, and run a against
    two Gaussian matrices of its shape (the ``random`` rows) in the last column, for the chance level."""
    rows = _pair(phi, run_a, run_b)
    rows = rows[rows["layer"] == layer]
    modules = list(modules or shown_roles(rows))[:ROLES_SHOWN]
    subjects = pair_subjects(rows)
    if rows.empty or not modules or not subjects:
        raise LoraAnalysisError(f"no phi rows for {run_a} vs {run_b} at layer {layer}")
    gauss = phi[(phi["comparison"] == Comparison.random) & (phi["run_a"].astype(str) == run_a)
                & (phi["layer"] == layer) & (phi["subject"] == subjects[0])]
    columns = len(subjects) + (not gauss.empty)
    r_a, r_b = int(rows["r_a"].iloc[0]), int(rows["r_b"].iloc[0])
    fig = new_figure(min(2.5 * columns + 0.9, 11.5), 0.7 + 2.3 * len(modules))
    axes = fig.subplots(len(modules), columns, squeeze=False)
    image = None
    for row, module in enumerate(modules):
        for col, subject in enumerate(subjects):
            cell = rows[(rows["module"] == module) & (rows["subject"] == subject)]
            if cell.empty:
                axes[row, col].set_axis_off()
                continue
            image = pair_heatmap(axes[row, col], cell, f"{module}: {label(subject)}")
        if not gauss.empty:
            cell = gauss[gauss["module"] == module]
            if cell.empty:
                axes[row, -1].set_axis_off()
            else:
                pair_heatmap(axes[row, -1], cell, f"{module}: random, r={r_a}")
    fig.suptitle(f"φ(i, j) between {run_a} (i, r={r_a}) and {run_b} (j, r={r_b}), layer {layer}"
                 + ("; right: two Gaussian matrices" if not gauss.empty else ""))
    colorbar(fig, image, axes)
    return fig


@styled
def pair_layers(controls: pd.DataFrame, *, run_a: str, run_b: str, subjects=None, modules=None) -> Figure:
    """The energy of run a's top direction in run b's subspace, ``e_1 = phi(1, r_b)``, layer by layer, one
    line per role (solid), beside its strongest control (dashed, same colour): the spread over layers that
    a mean over them hides. ``controls`` is ``derive.controls.direction_controls``' table."""
    top = _pair(controls, run_a, run_b)
    top = top[top["i"] == 1]
    subjects = [s for s in (subjects or pair_subjects(top)) if (top["subject"] == s).any()]
    if top.empty or not subjects:
        raise LoraAnalysisError(f"no controls for {run_a} vs {run_b}")
    modules = list(modules or shown_roles(top))
    fig = new_figure(min(3.0 * len(subjects) + 0.6, 11.5), 3.3)
    axes = fig.subplots(1, len(subjects), squeeze=False, sharey=True)[0]
    colours = {m: f"C{n}" for n, m in enumerate(modules)}
    for ax, subject in zip(axes, subjects, strict=True):
        for module in modules:
            g = top[(top["subject"] == subject) & (top["module"] == module)].sort_values("layer")
            if g.empty:
                continue
            ax.plot(g["layer"], g["energy"], marker="o", ms=3, lw=1.3, color=colours[module], label=module)
            ax.plot(g["layer"], g["control"], ls="--", lw=1.0, color=colours[module])
        ax.set(title=label(subject), xlabel="layer", ylim=(0, 1.02))
        ax.xaxis.set_major_locator(_integer_ticks(top["layer"]))
    axes[0].set_ylabel("e₁ = φ(1, r_b)")
    handles, labels = axes[0].get_legend_handles_labels()  # beside the panels: inside, it hides lines near 1
    fig.legend(handles, labels, loc="outside right upper", frameon=False, title="solid: pair\ndashed: control",
               title_fontsize=7.5)
    fig.suptitle(f"Top direction of {run_a} in the subspace of {run_b}, per layer, against the strongest control")
    return fig


def _integer_ticks(layers: pd.Series) -> MaxNLocator:
    return MaxNLocator(integer=True, nbins=min(8, max(1, int(layers.nunique()))))


@styled
def run_spectra(spectra: pd.DataFrame, *, layer: int, subject: str = Subject.dW, modules=None) -> Figure:
    """Singular values of ``subject`` at one layer: a panel per role, a line per run (named, not by rank)."""
    s = spectra[(spectra["subject"] == subject) & (spectra["layer"] == layer)]
    modules = list(modules or shown_roles(s))[:ROLES_SHOWN]
    if s.empty or not modules:
        raise LoraAnalysisError(f"no {subject} spectra at layer {layer}")
    fig = new_figure(min(2.9 * len(modules) + 0.4, 11.5), 3.3)
    axes = fig.subplots(1, len(modules), squeeze=False)[0]
    for ax, module in zip(axes, modules, strict=True):
        for run, g in s[s["module"] == module].groupby("run", observed=True, sort=True):
            g = g.sort_values("index")
            r = int(g["r"].iloc[0])
            ax.plot(g["index"], g["singular_value"], marker="o", ms=2.5, lw=1.2, label=f"{run} (r={r})")
        ax.set(title=module, xlabel="index (1 = largest)", ylabel="singular value", yscale="log")
        ax.yaxis.set_minor_formatter(NullFormatter())  # labels at every minor tick crowd a short axis
        top = int(s["index"].max())
        ax.set_xticks(np.unique(np.linspace(1, top, min(top, 5)).round().astype(int)))
    axes[0].legend(frameon=False)
    fig.suptitle(f"Singular values of {label(subject)} at layer {layer}, one line per adapter")
    return fig
