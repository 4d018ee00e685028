"""The input-geometry baseline: sampled against analytic answers, planted inputs, the big-k path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lora_analysis.analysis.geometry import (
    direction_energies,
    geometry_from_energies,
    rank_one_energies,
    sampled_cross_geometry,
    sampled_geometry,
    tail_level,
)
from lora_analysis.analysis.subspace import analytic_baseline, phi_grid, right_singular
from lora_analysis.derive.controls import direction_controls

SPECTRUM = np.array([50.0, 5.0, 3.0, 2.0, 1.0])  # five kept eigenvalues, then a tail


@pytest.mark.parametrize("kept", [0, 48])
def test_isotropic_inputs_give_max_i_j_over_k(kept):
    """Whether the energy is all tail (no eigenpair kept) or all kept, isotropic M gives max(i, j)/k."""
    k = 48
    values = np.ones(kept)
    g, std = sampled_geometry(values, tail_level(values, float(k), k), k, 4, 8, 3000, np.random.default_rng(0))
    assert g.shape == std.shape == (4, 8)
    np.testing.assert_allclose(g, analytic_baseline(4, 8, k), atol=4 * std.max() / np.sqrt(3000))


def test_rank_one_sampled_against_the_analytic_integral():
    k, s2 = 48, 0.3
    g, std = sampled_geometry(SPECTRUM, s2, k, 1, 1, 20000, np.random.default_rng(1))
    energies = rank_one_energies(SPECTRUM, s2, k)
    assert energies[0].sum() + (k - 5) * energies[1][0] == pytest.approx(1.0, abs=1e-8)  # p sums to i = 1
    exact = geometry_from_energies(energies, energies, k)
    assert abs(g[0, 0] - exact[0, 0]) < 4 * std[0, 0] / np.sqrt(20000)
    iso = rank_one_energies(np.ones(10), 1.0, 40)  # isotropic: p = 1/k, phi(1, 1) = 1/k
    assert geometry_from_energies(iso, iso, 40)[0, 0] == pytest.approx(1 / 40, rel=1e-8)


def test_sampled_grid_against_the_independence_formula():
    """Second method: E phi = tr(E Pi_a E Pi_b)/min(i, j), the energies from separate single draws."""
    k, s2, draws = 48, 0.3, 4000
    g, std = sampled_geometry(SPECTRUM, s2, k, 4, 8, draws, np.random.default_rng(2))
    ea = direction_energies(SPECTRUM, s2, k, 4, draws, np.random.default_rng(3))
    eb = direction_energies(SPECTRUM, s2, k, 8, draws, np.random.default_rng(4))
    np.testing.assert_allclose(g, geometry_from_energies(ea, eb, k), atol=0.01)
    assert g[0, 0] > 0.5 > analytic_baseline(1, 1, k)[0, 0]  # the dominant direction is shared by the null


def test_planted_dominant_input_direction_is_shared_isotropically_but_not_beyond_geometry():
    """Tokens with one dominant direction: two random updates in their span share it (phi(1, j) ~ 1);
    the isotropic baseline calls that shared, the input-geometry baseline expects it (near 1 too)."""
    rng = np.random.default_rng(5)
    k, n, r_a, r_b = 64, 4000, 4, 16
    X = rng.standard_normal((n, k))
    X[:, 0] *= 30.0  # the dominant input direction e_1
    grid_real = phi_grid(right_singular(rng.standard_normal((r_a, n)) @ X)[0],
                         right_singular(rng.standard_normal((r_b, n)) @ X)[0])
    M = X.T @ X / n
    values = np.linalg.eigvalsh(M)[::-1]
    geometry, std = sampled_geometry(values[:8], tail_level(values[:8], np.trace(M), k), k, r_a, r_b, 200,
                                     np.random.default_rng(6))
    assert grid_real[0, r_b - 1] > 0.95 and geometry[0, r_b - 1] > 0.95
    iso = analytic_baseline(r_a, r_b, k)
    assert grid_real[0, r_b - 1] >= (1 + iso[0, r_b - 1]) / 2  # shared against the isotropic baseline
    i, j = np.meshgrid(np.arange(1, r_a + 1), np.arange(1, r_b + 1), indexing="ij")
    phi = pd.DataFrame({"comparison": "rank", "run_a": "a", "run_b": "b", "r_a": r_a, "r_b": r_b, "seed_a": 0,
                        "seed_b": 0, "targets": "all", "layer": 0, "module": "q", "subject": "A_delta",
                        "i": i.ravel(), "j": j.ravel(), "phi": grid_real.ravel(), "baseline": iso.ravel(),
                        "geometry_baseline": geometry.ravel(), "geometry_std": std.ravel()})
    top = direction_controls(phi).query("i == 1").iloc[0]
    assert top["control_name"] == "geometry" and not top["task"]


def test_big_k_costs_what_small_k_does_and_stays_isotropic():
    """k = 14,336 (Llama's FFN): the tail is drawn in r_a + r_b Bartlett coordinates, never in R^k."""
    k = 14_336
    g, _ = sampled_geometry(np.zeros(0), 1.0, k, 8, 64, 256, np.random.default_rng(7))
    assert g.shape == (8, 64)
    assert g.mean() == pytest.approx(analytic_baseline(8, 64, k).mean(), rel=0.05)
    values = np.array([1e6, 1.0])
    g, _ = sampled_geometry(values, tail_level(values, 1e6 + k - 1, k), k, 8, 64, 16, np.random.default_rng(8))
    assert g[0, -1] > 0.99  # one direction holding most of the energy is shared by every null pair


def test_deterministic_and_checked():
    a = sampled_geometry(SPECTRUM, 0.3, 48, 3, 5, 8, np.random.default_rng(9))
    b = sampled_geometry(SPECTRUM, 0.3, 48, 3, 5, 8, np.random.default_rng(9))
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ValueError):
        sampled_geometry(np.array([-1.0]), 0.0, 4, 1, 1, 4, np.random.default_rng(0))
    with pytest.raises(ValueError):
        tail_level(np.ones(5), 5.0, 4)


def test_cross_geometry_of_one_input_distribution_is_the_same_null():
    """Two runs on the same inputs: the full-coordinate sampler gives sampled_geometry's grid."""
    rng = np.random.default_rng(0)
    k, values = 48, np.array([30.0, 12.0, 5.0, 2.0])
    vectors = np.linalg.qr(rng.standard_normal((k, 4)))[0]
    s2 = tail_level(values, values.sum() + 0.3 * (k - 4), k)
    same, _ = sampled_geometry(values, s2, k, 4, 8, 2000, np.random.default_rng(1))
    cross, std = sampled_cross_geometry((values, vectors, s2), (values, vectors, s2), 4, 8, 2000,
                                        np.random.default_rng(2))
    assert cross.shape == (4, 8) and std.shape == (4, 8)
    assert np.abs(cross - same).max() < 0.03
    assert cross[0, 0] > 3 * analytic_baseline(4, 8, k)[0, 0]  # anisotropic: far above max(i, j) / k


def test_cross_geometry_of_two_tasks_whose_inputs_differ_falls_to_isotropic():
    """Inputs whose dominant directions are orthogonal share nothing beyond chance; the same inputs do."""
    rng = np.random.default_rng(3)
    k, values = 40, np.array([50.0, 20.0])
    basis = np.linalg.qr(rng.standard_normal((k, 4)))[0]
    a, b = (values, basis[:, :2], 0.1), (values, basis[:, 2:], 0.1)
    apart, _ = sampled_cross_geometry(a, b, 2, 2, 500, np.random.default_rng(4))
    together, _ = sampled_cross_geometry(a, a, 2, 2, 500, np.random.default_rng(5))
    assert together[0, 0] > 0.4 and apart[0, 0] < 0.05
    with pytest.raises(ValueError, match="one input dimension"):
        sampled_cross_geometry(a, (values, basis[:30, :2], 0.1), 2, 2, 10, rng)
