"""dW from its factors, Table 7, Figure 8, spectra and intruders against dense computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lora_analysis.analysis.delta import (
    WeightSVD,
    delta_svd,
    dw_vs_w,
    effective_rank,
    intruders,
    lora_delta,
    lora_scale,
    module_factors,
    projection_norm,
    relative_change,
    stable_rank,
    w_dw_phi,
)
from lora_analysis.analysis.subspace import phi_grid, right_singular


def factors(d=40, k=30, r=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((r, k)), rng.standard_normal((d, r))


def projector(U):
    return U @ U.T


def test_scale():
    assert lora_scale(16, 4) == 4.0
    assert lora_scale(16, 4, rslora=True) == 8.0
    with pytest.raises(ValueError):
        lora_scale(8, 0)


@pytest.mark.parametrize("shape", [(40, 30, 5), (30, 40, 5), (6, 5, 8)])
def test_factored_svd_equals_dense_svd(shape):
    d, k, r = shape
    A, B = factors(d, k, r)
    U, s, Vh = delta_svd(A, B, 0.75)
    dense = lora_delta(A, B, 0.75)
    np.testing.assert_allclose(dense, 0.75 * B @ A, rtol=1e-13)
    U_d, s_d, Vh_d = np.linalg.svd(dense, full_matrices=False)
    rho = len(s)
    assert rho == min(d, k, r)
    np.testing.assert_allclose(s, s_d[:rho], rtol=1e-10)
    np.testing.assert_allclose(projector(U), projector(U_d[:, :rho]), atol=1e-10)
    np.testing.assert_allclose(projector(Vh.T), projector(Vh_d[:rho].T), atol=1e-10)
    np.testing.assert_allclose(U * s @ Vh, dense, atol=1e-10)


def test_negative_scale_keeps_positive_singular_values():
    A, B = factors()
    U, s, Vh = delta_svd(A, B, -2.0)
    assert np.all(s > 0)
    np.testing.assert_allclose(U * s @ Vh, lora_delta(A, B, -2.0), atol=1e-10)


def test_rank_deficient_B_gives_numerical_rank():
    A, B = factors()
    B[:, 2] = 0.0
    _, s, _ = delta_svd(A, B, 1.0)
    assert len(s) == 4


def test_spectral_summaries():
    assert effective_rank(np.ones(7)) == pytest.approx(7.0)
    assert effective_rank(np.array([3.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert math.isnan(effective_rank(np.zeros(3)))
    assert stable_rank(np.array([2.0, 1.0])) == pytest.approx(5 / 4)
    A = np.random.default_rng(1).standard_normal((6, 9))
    s = np.linalg.svd(A, compute_uv=False)
    assert stable_rank(s) == pytest.approx(np.linalg.norm(A) ** 2 / np.linalg.norm(A, 2) ** 2)


def test_relative_change():
    A0 = np.ones((2, 3))
    assert relative_change(A0 * 1.1, A0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        relative_change(A0, A0.T)


def test_module_factors_share_frames_and_match_direct_svds():
    A, B = factors()
    A0 = A + 0.3 * np.random.default_rng(3).standard_normal(A.shape)
    f = module_factors(A, B, 0.5, A0, subjects=("A", "A_init", "A_delta", "B", "dW"))
    assert f.bases["A"].frame is f.bases["dW"].frame  # one QR of A^T for both
    for name, matrix in (("A", A), ("A_init", A0), ("A_delta", A - A0)):
        np.testing.assert_allclose(projector(f.bases[name].vectors), projector(right_singular(matrix)[0]), atol=1e-10)
    np.testing.assert_allclose(f.spectra["B"], np.linalg.svd(B, compute_uv=False), rtol=1e-10)
    np.testing.assert_allclose(f.spectra["A_delta"], np.linalg.svd(A - A0, compute_uv=False), rtol=1e-10)
    assert f.a_moved == pytest.approx(np.linalg.norm(A - A0) / np.linalg.norm(A0))
    assert f.norm_B == pytest.approx(np.linalg.norm(B))
    assert f.numerical_rank_A == 5


def weight(d=40, k=30, seed=5):
    """A base weight with a decaying spectrum, like a pretrained matrix."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((d, d)))[0]
    V = np.linalg.qr(rng.standard_normal((k, k)))[0]
    m = min(d, k)
    return (U[:, :m] * (10.0 / np.arange(1, m + 1))) @ V[:, :m].T


def test_table7_against_dense_computation():
    W = weight()
    A, B = factors()
    f = module_factors(A, B, 0.5, dense_left=True)
    rows = {row["source"]: row for row in dw_vs_w(W, WeightSVD.of(W), f.dw, 5, np.random.default_rng(0))}
    dW = lora_delta(A, B, 0.5)
    U_d, s_d, Vh_d = np.linalg.svd(dW)
    U_w, s_w, Vh_w = np.linalg.svd(W)
    expected_dw = np.linalg.norm(U_d[:, :5].T @ W @ Vh_d[:5].T)
    assert rows["dW"]["projection_norm"] == pytest.approx(expected_dw, rel=1e-9)
    assert rows["W"]["projection_norm"] == pytest.approx(np.sqrt(np.sum(s_w[:5] ** 2)), rel=1e-9)
    assert rows["dW"]["amplification"] == pytest.approx(np.linalg.norm(dW) / expected_dw, rel=1e-9)
    assert rows["W"]["w_norm"] == pytest.approx(np.linalg.norm(W)) and rows["W"]["dw_norm"] == pytest.approx(
        np.linalg.norm(dW)
    )
    assert 0 < rows["random"]["projection_norm"] < rows["W"]["projection_norm"]
    assert math.isnan(rows["random"]["amplification"]) and rows["random"]["top"] == 5


def test_projection_norm_checks_shapes():
    with pytest.raises(ValueError, match="do not fit"):
        projection_norm(np.zeros((4, 3)), np.zeros((3, 1)), np.zeros((3, 1)))


def test_figure8_against_dense_computation():
    W = weight()
    A, B = factors()
    f = module_factors(A, B, 2.0, dense_left=True)
    grids = w_dw_phi(WeightSVD.of(W), f.dw, 12)
    U_d, _, Vh_d = np.linalg.svd(lora_delta(A, B, 2.0))
    U_w, _, Vh_w = np.linalg.svd(W)
    np.testing.assert_allclose(grids["left"], phi_grid(U_w[:, :12], U_d[:, :5]), atol=1e-10)
    np.testing.assert_allclose(grids["right"], phi_grid(Vh_w[:12].T, Vh_d[:5].T), atol=1e-10)


def test_intruders_known_answers_and_dense_oracle():
    W = weight(32, 32)
    svd = WeightSVD.of(W)
    np.testing.assert_allclose(intruders(W, np.zeros_like(W), svd, 10), 1.0, atol=1e-8)  # nothing new
    x = svd.U.sum(axis=1) / np.sqrt(32)  # |cos| = 1/sqrt(32) to every singular vector of W
    y = svd.Vh.T.sum(axis=1) / np.sqrt(32)
    cos = intruders(W, 1e7 * np.outer(x, y), svd, 3)  # dominates W: the top vector of W + dW is x
    assert cos[0] == pytest.approx(1 / np.sqrt(32), abs=1e-5) and cos[0] < 0.5
    assert np.all(cos[1:] > 0.5)  # the rest are W's own directions, barely moved
    rng = np.random.default_rng(2)
    dW = rng.standard_normal((32, 32))
    U_t = np.linalg.svd(W + dW)[0]
    np.testing.assert_allclose(intruders(W, dW, svd, 4), np.abs(U_t[:, :4].T @ svd.U).max(axis=1), atol=1e-8)
    Vh_t = np.linalg.svd(W + dW)[2]
    right = np.abs(Vh_t[:4] @ svd.Vh.T).max(axis=1)
    np.testing.assert_allclose(intruders(W, dW, svd, 4, side="right"), right, atol=1e-8)


def test_a_zero_scale_update_has_no_directions_and_no_table7_row():
    """lora_alpha = 0 makes dW = 0: no dW directions, no projection norm, only W and random rows."""
    W = weight()
    A, B = factors()
    f = module_factors(A, B, 0.0, dense_left=True)
    assert f.dw.right.rank == 0 and not f.dw.values.size and not np.any(f.dw.all_values)
    rows = {row["source"]: row for row in dw_vs_w(W, WeightSVD.of(W), f.dw, 5, np.random.default_rng(0))}
    assert set(rows) == {"W", "random"} and rows["W"]["dw_norm"] == 0
