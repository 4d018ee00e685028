"""phi and subspace bases against known answers and independent algorithms."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from lora_analysis.analysis.subspace import (
    GRAM_MAX_COND,
    analytic_baseline,
    column_basis,
    frame_product,
    gaussian_right_basis,
    left_singular,
    numerical_rank,
    overlap,
    phi_cell,
    phi_from_overlap,
    phi_grid,
    qr_frame,
    right_singular,
    sampled_baseline,
)


def orthonormal(k: int, r: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((k, r)))[0]


def test_identical_subspaces_give_one_and_orthogonal_give_zero():
    V = orthonormal(40, 6, 0)
    np.testing.assert_allclose(phi_grid(V, V), np.ones((6, 6)), atol=1e-12)
    Q = orthonormal(40, 10, 1)
    np.testing.assert_allclose(phi_grid(Q[:, :4], Q[:, 4:]), np.zeros((4, 6)), atol=1e-12)


def test_phi_of_a_matrix_with_itself_and_its_row_space():
    A = np.random.default_rng(2).standard_normal((5, 30))
    V, _ = right_singular(A)
    np.testing.assert_allclose(phi_grid(V, V), 1.0, atol=1e-12)
    _, V_dense = np.linalg.svd(A, full_matrices=False)[1:]
    np.testing.assert_allclose(np.abs(np.sum(V * V_dense.T, axis=0)), 1.0, atol=1e-10)  # same vectors up to sign


def test_grid_equals_per_cell_definition_and_subspace_angles():
    V1, V2 = orthonormal(50, 6, 3), orthonormal(50, 9, 4)
    grid = phi_grid(V1, V2)
    for i in range(1, 7):
        for j in range(1, 10):
            assert abs(grid[i - 1, j - 1] - phi_cell(V1, V2, i, j)) <= 1e-10
            angles = scipy.linalg.subspace_angles(V1[:, :i], V2[:, :j])
            assert abs(grid[i - 1, j - 1] - np.mean(np.cos(angles) ** 2)) <= 1e-10


def test_symmetry():
    V1, V2 = orthonormal(30, 4, 5), orthonormal(30, 7, 6)
    np.testing.assert_allclose(phi_grid(V1, V2), phi_grid(V2, V1).T, atol=1e-14)


def test_invariance_under_sign_flips_and_orthogonal_mixing():
    rng = np.random.default_rng(7)
    A1, A2 = rng.standard_normal((4, 25)), rng.standard_normal((6, 25))
    base = phi_grid(right_singular(A1)[0], right_singular(A2)[0])
    signs = np.diag([1.0, -1.0, -1.0, 1.0])
    rotation = np.linalg.qr(rng.standard_normal((4, 4)))[0]  # A -> O A (O orthogonal) keeps the singular vectors
    for transformed in (signs @ A1, rotation @ A1):
        np.testing.assert_allclose(phi_grid(right_singular(transformed)[0], right_singular(A2)[0]), base, atol=1e-10)
    V1, V2 = right_singular(A1)[0], right_singular(A2)[0]
    np.testing.assert_allclose(phi_grid(V1 * np.array([-1, 1, -1, 1]), V2), base, atol=1e-12)


def test_invertible_mixing_keeps_the_whole_subspace():
    rng = np.random.default_rng(8)
    A1, A2 = rng.standard_normal((4, 25)), rng.standard_normal((6, 25))
    Q = rng.standard_normal((4, 4)) + 3 * np.eye(4)  # invertible, not orthogonal: order changes, span does not
    before = phi_grid(right_singular(A1)[0], right_singular(A2)[0])[-1, -1]
    after = phi_grid(right_singular(Q @ A1)[0], right_singular(A2)[0])[-1, -1]
    assert after == pytest.approx(before, abs=1e-10)
    assert phi_grid(right_singular(Q @ A1)[0], right_singular(A1)[0])[-1, -1] == pytest.approx(1.0, abs=1e-10)


def test_phi_from_overlap_by_hand():
    M = np.array([[1.0, 0.0], [0.0, 0.6]])
    expected = np.array([[1.0, 1.0], [1.0, (1 + 0.36) / 2]])
    np.testing.assert_allclose(phi_from_overlap(M), expected)


def test_analytic_baseline_values():
    b = analytic_baseline(3, 5, 10)
    assert b.shape == (3, 5)
    assert b[0, 0] == pytest.approx(0.1) and b[2, 1] == pytest.approx(0.3) and b[1, 4] == pytest.approx(0.5)


def test_sampled_baseline_matches_max_ij_over_k():
    rng = np.random.default_rng(9)
    samples = np.stack([sampled_baseline(4, 6, 48, rng) for _ in range(300)])
    mean, sem = samples.mean(axis=0), samples.std(axis=0) / np.sqrt(len(samples))
    expected = analytic_baseline(4, 6, 48)
    assert np.all(np.abs(mean - expected) < 5 * sem + 1e-3)
    assert not np.allclose(mean, 0)


def test_gaussian_basis_is_orthonormal_and_deterministic():
    V = gaussian_right_basis(5, 20, np.random.default_rng(1))
    np.testing.assert_allclose(V.T @ V, np.eye(5), atol=1e-12)
    np.testing.assert_array_equal(V, gaussian_right_basis(5, 20, np.random.default_rng(1)))


def test_zero_and_rank_deficient_A_warn_and_use_numerical_rank():
    with pytest.warns(UserWarning, match="numerical rank 0"):
        V, s = right_singular(np.zeros((4, 10)))
    assert V.shape == (10, 0) and s.size == 0
    rng = np.random.default_rng(10)
    A = rng.standard_normal((4, 10))
    A[3] = A[0] - 2 * A[1]
    with pytest.warns(UserWarning, match="numerical rank 3"):
        V, _ = right_singular(A)
    assert V.shape == (10, 3)
    np.testing.assert_allclose(A @ V @ V.T, A, atol=1e-10)  # the basis spans every row of A


def test_numerical_rank_tolerance():
    assert numerical_rank(np.array([1.0, 1e-3, 1e-9]), (3, 100)) == 2
    assert numerical_rank(np.array([1.0, 1e-3, 1e-9]), (3, 100), rtol=1e-2) == 1
    assert numerical_rank(np.zeros(3), (3, 3)) == 0


def test_left_singular_of_B():
    B = np.random.default_rng(11).standard_normal((20, 3))
    U, s = left_singular(B)
    U_dense, s_dense, _ = np.linalg.svd(B, full_matrices=False)
    np.testing.assert_allclose(s, s_dense, rtol=1e-12)
    np.testing.assert_allclose(U @ U.T, U_dense @ U_dense.T, atol=1e-12)


def test_rank_larger_than_dimension():
    V, s = right_singular(np.random.default_rng(12).standard_normal((8, 5)))
    assert V.shape == (5, 5) and len(s) == 5


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"\(30, 2\).*\(20, 2\)"):
        phi_grid(np.zeros((30, 2)), np.zeros((20, 2)))
    with pytest.raises(ValueError, match="outside the grid"):
        phi_cell(orthonormal(10, 2, 0), orthonormal(10, 2, 1), 3, 1)
    with pytest.raises(ValueError, match="shape"):
        right_singular(np.zeros(5))


def with_spectrum(n: int, s: np.ndarray, seed: int) -> np.ndarray:
    """A tall ``(n, len(s))`` matrix with singular values ``s``."""
    return orthonormal(n, len(s), seed) * s @ orthonormal(len(s), len(s), seed + 1).T


@pytest.mark.parametrize("cond", [3.0, 0.5 * GRAM_MAX_COND, 1e6])
def test_frame_is_an_exact_thin_svd_on_both_routes(cond):
    """Gram route below GRAM_MAX_COND, Householder above: both give X = Q U diag(s) Vh exactly."""
    s_true = np.geomspace(1.0, 1.0 / cond, 6)
    X = with_spectrum(200, s_true, 20)
    frame = qr_frame(X)
    assert np.array_equal(frame.U, np.eye(6)) == (cond < GRAM_MAX_COND)  # the Gram route has U = I
    np.testing.assert_allclose(frame.s, s_true, rtol=1e-9)
    np.testing.assert_allclose(frame.Q.T @ frame.Q, np.eye(6), atol=1e-10)
    np.testing.assert_allclose((frame.Q @ frame.U) * frame.s @ frame.Vh, X, atol=1e-12)
    np.testing.assert_allclose(frame.Q @ frame.R, X, atol=1e-12)


def test_frame_without_q_gives_the_same_r_spectrum():
    X = with_spectrum(100, np.array([2.0, 1.0, 0.5]), 30)
    full, r_only = qr_frame(X), qr_frame(X, with_q=False)
    assert not r_only.has_q and r_only.shape == (100, 3)
    np.testing.assert_allclose(r_only.s, full.s, rtol=1e-12)
    np.testing.assert_allclose(r_only.R.T @ r_only.R, X.T @ X, rtol=1e-10)


@pytest.mark.parametrize("cond", [2.0, 0.99 * GRAM_MAX_COND])
def test_implicit_frame_products_match_dense_svd_bases(cond):
    """Products of Gram-route frames never form Q; phi from them equals phi from numpy's SVD."""
    A1 = with_spectrum(1000, np.geomspace(1.0, 1.0 / cond, 16), 40).T * 3.0
    A2 = with_spectrum(1000, np.geomspace(1.0, 1.0 / cond, 12), 41).T + 0.5 * A1[:12]
    b1, b2 = column_basis(qr_frame(A1.T)), column_basis(qr_frame(A2.T))
    assert b1.frame.X is not None and b2.frame.X is not None  # the implicit route was taken
    V1, V2 = (np.linalg.svd(A, full_matrices=False)[2].T for A in (A1, A2))
    np.testing.assert_allclose(phi_from_overlap(overlap(b1, b2)), phi_grid(V1, V2), atol=1e-11)
    np.testing.assert_allclose(frame_product(b1.frame, b2.frame), b1.frame.Q.T @ b2.frame.Q, atol=1e-12)
