"""Verdicts against the strongest control, on phi tables built from real bases with planted inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
from fabricate import orthonormal, phi_of

from lora_analysis.derive import controls as C

K, R_A, R_B = 64, 4, 16


def anisotropic_frame(rng, r, scales):
    """Orthonormal ``(k, r)`` frame of the row space of ``r`` Gaussian draws from ``N(0, diag(scales**2))``,
    ordered by singular value as the analysis orders an adapter's directions."""
    draws = rng.standard_normal((r, K)) * scales
    return np.linalg.svd(draws, full_matrices=False)[2].T


def geometry_grid(scales, rng, samples=200):
    return np.mean([phi_of(anisotropic_frame(rng, R_A, scales), anisotropic_frame(rng, R_B, scales))
                    for _ in range(samples)], axis=0)


def rows(grid, geometry, run_a, run_b, layer=0, module="v"):
    i, j = np.meshgrid(np.arange(1, grid.shape[0] + 1), np.arange(1, grid.shape[1] + 1), indexing="ij")
    n = grid.size
    return pd.DataFrame({
        "comparison": "rank", "run_a": run_a, "run_b": run_b, "r_a": R_A, "r_b": R_B, "seed_a": 0, "seed_b": 0,
        "targets": "all", "layer": layer, "module": module, "subject": "A_delta", "i": i.ravel(), "j": j.ravel(),
        "phi": grid.ravel(), "baseline": np.maximum(i, j).ravel() / K,
        "geometry_baseline": np.full(n, np.nan) if geometry is None else geometry.ravel(),
    })


def test_a_direction_the_inputs_dominate_is_shared_isotropically_but_not_beyond_geometry():
    rng = np.random.default_rng(0)
    scales = np.ones(K)
    scales[0] = 30.0  # one input direction carries most of the energy
    geometry = geometry_grid(scales, rng)
    real = phi_of(anisotropic_frame(rng, R_A, scales), anisotropic_frame(rng, R_B, scales))
    controls = C.direction_controls(rows(real, geometry, "r4", "r16"))
    top = controls[controls["i"] == 1].iloc[0]
    assert top["energy"] > 0.9 and top["geometry"] > 0.9  # two random updates in the inputs' span share it
    assert top["energy"] >= (1 + top["isotropic"]) / 2  # the isotropic baseline would call it shared
    assert top["control_name"] == "geometry" and not top["task"]  # the input-geometry baseline does not


def test_a_planted_task_direction_outside_the_dominant_input_is_task_specific():
    rng = np.random.default_rng(1)
    scales = np.ones(K)
    scales[0] = 30.0
    geometry = geometry_grid(scales, rng)
    task = orthonormal(rng.standard_normal((K, 1)))[:, 0]
    task -= task[0] * np.eye(K)[0]
    task /= np.linalg.norm(task)
    Vb = orthonormal(np.column_stack([task, rng.standard_normal((K, R_B - 1))]))
    Va = orthonormal(np.column_stack([task, rng.standard_normal((K, R_A - 1))]))
    controls = C.direction_controls(rows(phi_of(Va, Vb), geometry, "r4", "r16"))
    summary = C.task_directions(controls)
    assert int(summary["task"].iloc[0]) == 1 and controls.loc[controls["i"] == 1, "task"].item()


def test_a_shuffled_twin_pair_is_the_control_when_it_shares_as_much():
    rng = np.random.default_rng(2)
    Va = orthonormal(rng.standard_normal((K, R_A)))
    Vb = orthonormal(np.column_stack([Va[:, 0], rng.standard_normal((K, R_B - 1))]))
    real = rows(phi_of(Va, Vb), None, "r4", "r16")
    twin = rows(phi_of(Va, Vb), None, "r4-shuffled", "r16-shuffled")
    controls = C.direction_controls(pd.concat([real, twin]), shuffled_runs={"r4-shuffled", "r16-shuffled"})
    assert set(controls["run_a"]) == {"r4"}  # the control pair is not itself judged
    top = controls[controls["i"] == 1].iloc[0]
    assert top["control_name"] == "shuffled" and top["shuffled"] > 0.99 and not top["task"]
    without = C.direction_controls(real)  # without the twin the isotropic baseline is all there is
    assert without.loc[without["i"] == 1, "task"].item()


def test_top_direction_summary_and_verdict_say_when_the_data_cannot_tell():
    rng = np.random.default_rng(3)
    scales = np.ones(K)
    scales[:2] = 20.0
    geometry = geometry_grid(scales, rng)
    frames = [rows(phi_of(anisotropic_frame(rng, R_A, scales), anisotropic_frame(rng, R_B, scales)), geometry,
                   "r4", "r16", layer=layer) for layer in range(4)]
    summary = C.top_direction_summary(C.direction_controls(pd.concat(frames)))
    row = summary.iloc[0]
    assert row["cases"] == 4 and row["control_name"] == "geometry"
    assert "cannot tell" in C.verdict(row) or "weak evidence" in C.verdict(row)
    assert row["isotropic"] < 0.3 < row["energy"]


def test_shuffled_run_labels_from_the_sweep_table():
    runs = pd.DataFrame({"run": ["a", "b", "c"], "data.shuffle_labels": [True, False, None]})
    assert C.shuffled_run_labels(runs) == {"a"}
    assert C.shuffled_run_labels(pd.DataFrame({"run": ["a"]})) == set()


def _sweep_tables(rng, frames, layers=(0, 1), shuffled=False):
    """phi (rank pair r4 vs r16, seed pair at r16), modules and runs of a fabricated sweep, role v.

    ``frames(rng, r)`` draws an adapter's directions; the geometry column is the anisotropic null's."""
    scales = np.ones(K)
    scales[0] = 30.0
    tag = "-shuffled" if shuffled else ""
    parts, modules = [], []
    for layer in layers:
        geometry_rank = geometry_grid(scales, rng, samples=60)
        geometry_seed = np.mean([phi_of(anisotropic_frame(rng, R_B, scales), anisotropic_frame(rng, R_B, scales))
                                 for _ in range(60)], axis=0)
        a4, a16, b16 = frames(rng, R_A), frames(rng, R_B), frames(rng, R_B)
        rank = rows(phi_of(a4, a16), geometry_rank, f"r4{tag}", f"r16{tag}", layer=layer)
        seed = rows(phi_of(a16, b16), geometry_seed, f"r16{tag}", f"r16-seed1{tag}", layer=layer)
        seed = seed.assign(comparison="seed", r_a=R_B, seed_b=1)
        parts += [rank, seed]
        modules.append({"module": "v", "layer": layer, "path": f"bert.encoder.layer.{layer}.attention.self.value"})
    runs = pd.DataFrame({"run": [f"r4{tag}", f"r16{tag}", f"r16-seed1{tag}"], "method": "lora",
                         "lora.r": [R_A, R_B, R_B], "lora.targets": "all", "data.shuffle_labels": shuffled,
                         "test_accuracy": [0.8, 0.8, 0.8]})
    return pd.concat(parts, ignore_index=True), pd.DataFrame(modules), runs


def test_recommendation_counts_nothing_when_shared_directions_are_the_inputs_top_directions():
    from lora_analysis.derive.recommend import recommend_from

    scales = np.ones(K)
    scales[0] = 30.0
    phi, modules, runs = _sweep_tables(np.random.default_rng(5), lambda rng, r: anisotropic_frame(rng, r, scales))
    result = recommend_from(phi, modules, runs)
    assert result.nothing and result.rank_pattern == {}
    assert "strongest control" in result.explain()[0] and "input-geometry" in result.explain()[0]


def test_recommendation_recovers_a_planted_task_direction_outside_the_inputs_top_directions():
    from lora_analysis.derive.recommend import recommend_from

    rng0 = np.random.default_rng(6)
    task = rng0.standard_normal(K)
    task[0] = 0.0
    task /= np.linalg.norm(task)

    def frames(rng, r):  # the task direction first, the rest random
        return orthonormal(np.column_stack([task, rng.standard_normal((K, r - 1))]))

    phi, modules, runs = _sweep_tables(rng0, frames)
    result = recommend_from(phi, modules, runs)
    assert result.nothing is None
    assert result.roles.set_index("role").loc["v", "rank"] == 1
    assert list(result.rank_pattern.values()) == [1]
    assert "input-geometry baseline" in result.explain()[0] or "isotropic" in result.explain()[0]


def test_a_sweep_of_shuffled_label_runs_only_recommends_nothing():
    from lora_analysis.derive.recommend import recommend_from

    rng = np.random.default_rng(7)
    phi, modules, runs = _sweep_tables(rng, lambda g, r: orthonormal(g.standard_normal((K, r))), shuffled=True)
    result = recommend_from(phi, modules, runs)
    assert result.nothing and "shuffled labels" in result.nothing and result.rank_pattern == {}
