"""Each figure function on fabricated tables: panels, titles, axis labels, colour range, planted values."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from fabricate import DELTA_TOP
from matplotlib.figure import Figure

from lora_analysis.derive.queries import budgeted_runs
from lora_analysis.derive.stats import accuracy_table, full_reference
from lora_analysis.errors import LoraAnalysisError
from lora_analysis.show import plots, run_plots


@pytest.fixture(scope="module")
def runs(sweep):
    return pd.read_parquet(sweep / "runs.parquet")


def heatmaps(fig: Figure, count: int) -> list:
    """The heatmap axes, checked: fixed [0, 1] colour scale, i down and j across, one colour bar."""
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == count
    for ax in maps:
        assert ax.images[0].get_clim() == (0.0, 1.0)
        assert ax.get_ylabel().startswith("i") and ax.get_xlabel().startswith("j")
        assert ax.get_title()
    colour_bars = [ax for ax in fig.axes if not ax.images]
    assert len(colour_bars) == 1 and colour_bars[0].get_ylabel() == "φ(i, j)"
    return maps


def test_fig3_full_grid_and_zoom_per_role(tables):
    fig = plots.fig3_rank_similarity(tables.phi, layer=1, subject="A_delta")
    title = fig.get_suptitle()
    assert all(part in title for part in ("Figure 3", "A − A_init", "r=8", "r=64", "layer 1", "seed 0"))
    maps = heatmaps(fig, 6)
    assert [ax.get_title().split(":")[0] for ax in maps[::2]] == ["q", "v", "ffn_out"]
    full, zoom = maps[0].images[0].get_array(), maps[1].images[0].get_array()
    assert full.shape == (8, 64) and zoom.shape == (8, 8)
    assert full[0, -1] == pytest.approx(DELTA_TOP)  # phi(1, 64): the planted top direction
    assert "r8-seed0" in maps[0].get_ylabel() and "r64-seed0" in maps[0].get_xlabel()
    assert plots.grid_ticks(64) == [1, 16, 32, 48, 64] and plots.grid_ticks(8) == [1, 3, 5, 7]


def test_fig4_two_seeds_beside_random(tables):
    fig = plots.fig4_seed_similarity(tables.phi, layer=0, modules=("q", "v"))
    assert "two seeds" in fig.get_suptitle() and "r=64" in fig.get_suptitle() and "layer 0" in fig.get_suptitle()
    maps = heatmaps(fig, 4)
    assert "seeds 0 and 1" in maps[0].get_title() and "random Gaussian" in maps[1].get_title()
    assert "Gaussian 1" in maps[1].get_ylabel() and maps[1].images[0].get_array().shape == (64, 64)


def test_fig6_and_fig7_one_row_per_layer(tables):
    fig6 = plots.fig6_rank_similarity_layers(tables.phi, subject="A")
    maps = heatmaps(fig6, 2 * 3)  # layers x (q, v, ffn_out), no zoom for three roles
    assert {ax.get_title().split(",")[0] for ax in maps} == {"layer 0", "layer 1"}
    assert "Figure 6" in fig6.get_suptitle() and "every layer" in fig6.get_suptitle()
    zoomed = plots.fig6_rank_similarity_layers(tables.phi, subject="A", modules=("q", "v"))
    assert sum("zoom" in ax.get_title() for ax in heatmaps(zoomed, 2 * 2 * 2)) == 4  # layers x roles x (full, zoom)
    fig7 = plots.fig7_seed_similarity_layers(tables.phi, subject="dW")
    maps = heatmaps(fig7, 2 * 5)  # layers x (q, v, ffn_out, random k=384, random k=1536)
    assert "ΔW" in fig7.get_suptitle()
    assert [ax.get_title() for ax in maps[3:5]] == ["random Gaussian, k=384", "random Gaussian, k=1536"]


def test_fig8_one_panel_per_rank_and_the_baseline(tables):
    fig = plots.fig8_w_dw_similarity(tables.w_dw_phi, layer=1)
    assert "W_q" in fig.get_suptitle() and "layer 1" in fig.get_suptitle()
    maps = heatmaps(fig, 4)
    assert [ax.get_title() for ax in maps] == ["r = 4", "r = 8", "r = 64", "random: max(i, j) / k"]
    baseline = maps[-1].images[0].get_array()
    assert baseline[0, 0] == pytest.approx(1 / 384) and baseline[-1, -1] == pytest.approx(64 / 384)


def test_controls_show_every_subject_for_the_same_pair(tables):
    fig = plots.controls_similarity(tables.phi, layer=1)
    maps = heatmaps(fig, 2 * 4)
    assert [ax.get_title() for ax in maps[:4]] == ["q: A_init", "q: A", "q: A − A_init", "q: ΔW"]
    seed = plots.controls_similarity(tables.phi, layer=1, comparison="seed", r_a=64, r_b=64, modules=("v",))
    assert "two seeds at r=64" in seed.get_suptitle()
    heatmaps(seed, 4)


def test_accuracy_against_rank_with_references(runs):
    fig = run_plots.accuracy_vs_rank(runs, accuracy_table(runs), full=full_reference(runs))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["4", "8", "64"]
    labels = ax.get_legend_handles_labels()[1]
    assert "all" in labels and any("full fine-tuning at 5e-05 (0.801" in label for label in labels)
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert len(dotted) == 1 and dotted[0].get_ydata()[0] == pytest.approx(0.575)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    assert png.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    title = fig._suptitle.get_window_extent()  # drawn by savefig: the title fits the figure (it was cut at both ends)
    assert title.x0 >= 0 and title.x1 <= fig.bbox.width


def test_budget_matched_accuracy_states_parameters(runs):
    with pytest.raises(LoraAnalysisError, match="budget"):
        run_plots.accuracy_by_targets(runs, accuracy_table(runs), full=None)
    budgeted = runs.assign(**{"lora.budget": np.where(runs["method"] == "lora", "r32@q", None)})
    budgeted["lora.targets"] = ["q", "q+v", "all", "q", "q+v", "all"]
    budgeted["lora.r"] = [32, 16, 3, 32, 16, 3]
    fig = run_plots.accuracy_by_targets(budgeted, accuracy_table(budgeted_runs(budgeted)),
                                      full=full_reference(budgeted))
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert len(ticks) == 3 and all("k" in t and "r=" in t for t in ticks)
    assert "r32@q" in fig.get_suptitle()


def test_spectra_and_loss_curves(tables, sweep, runs):
    fig = plots.dw_spectra(tables.spectra, layer=0)
    assert len(fig.axes) == 3 and "ΔW" in fig.get_suptitle() and "layer 0" in fig.get_suptitle()
    assert all(len(ax.get_lines()) == 3 and ax.get_yscale() == "log" for ax in fig.axes)
    histories = {run: pd.read_csv(sweep / run / "history.csv") for run in runs["run"]}
    fig = run_plots.loss_curves(histories)
    assert len(fig.axes[0].get_lines()) == 6 and fig.axes[0].get_xlabel() == "step"


def test_nothing_to_draw_names_what_is_missing(tables, runs):
    with pytest.raises(LoraAnalysisError, match="layer 9"):
        plots.fig3_rank_similarity(tables.phi, layer=9)
    with pytest.raises(LoraAnalysisError, match="r=16"):
        plots.fig4_seed_similarity(tables.phi, layer=0, r=16)
    with pytest.raises(LoraAnalysisError, match="w_dw_phi"):
        plots.fig8_w_dw_similarity(tables.w_dw_phi.iloc[0:0], layer=0)
    with pytest.raises(LoraAnalysisError, match="no finished LoRA run"):
        run_plots.accuracy_vs_rank(runs[runs["method"] == "full"], accuracy_table(runs[runs["method"] == "full"]),
                                   full=None)
    with pytest.raises(LoraAnalysisError, match="history"):
        run_plots.loss_curves({})


def _rank_pair(run_a: str, run_b: str, phi: np.ndarray, baseline: float) -> pd.DataFrame:
    i, j = np.meshgrid(np.arange(1, phi.shape[0] + 1), np.arange(1, phi.shape[1] + 1), indexing="ij")
    return pd.DataFrame({"comparison": "rank", "subject": "A_delta", "layer": 0, "module": "q", "r_a": phi.shape[0],
                         "r_b": phi.shape[1], "run_a": run_a, "run_b": run_b, "seed_a": 0, "seed_b": 0,
                         "i": i.ravel(), "j": j.ravel(), "phi": phi.ravel(), "baseline": baseline,
                         "geometry_baseline": np.nan})


def test_the_difference_to_the_strongest_control_reads_on_its_own_scale_and_axes():
    """An excess of 0.12 over the shuffled-label pair is drawn on ±0.5, not on ±1, with the maps' ticks."""
    real = np.full((8, 64), 0.52)
    twin = np.full((8, 64), 0.40)
    phi = pd.concat([_rank_pair("r8", "r64", real, 0.1), _rank_pair("s8", "s64", twin, 0.1)])
    fig = plots.against_controls(phi, ["s8", "s64"], layer=0, r_a=8, r_b=64, modules=["q"])
    (diff,) = [ax for ax in fig.axes if ax.images and ax.get_title().endswith(plots.DIFFERENCE)]
    assert diff.images[0].get_clim() == (-0.5, 0.5)
    np.testing.assert_allclose(diff.images[0].get_array(), 0.12)
    (real_map,) = [ax for ax in fig.axes if ax.images and ax.get_title() == "q: real"]
    assert list(diff.get_xticks()) == list(real_map.get_xticks()) == [1, 16, 32, 48, 64]
    assert list(diff.get_yticks()) == list(real_map.get_yticks()) == [1, 3, 5, 7]
    assert plots._difference_limit([np.array([[0.31, -0.62]])]) == pytest.approx(0.65)
    assert plots._difference_limit([np.array([[np.nan]])]) == 0.5 and plots._difference_limit([np.array([[3.0]])]) == 1
