"""Subspaces of LoRA factors and the normalised subspace similarity phi (Hu et al. 2021, Eq. 4).

Conventions (Hu et al. 2021, arXiv 2106.09685, Section 7.2): ``A: (r, k)`` acts on the input space
R^k, its subspace is spanned by its right-singular vectors (rows of ``Vh``); ``B: (d, r)`` writes into
the output space R^d, its subspace is spanned by its left-singular vectors. A basis is returned as a
``(dim, rho)`` matrix whose columns are orthonormal and ordered by decreasing singular value, ``rho``
being the numerical rank.

    phi(V1, V2, i, j) = ||V1[:, :i]^T V2[:, :j]||_F^2 / min(i, j)

Everything is float64, through numpy's LAPACK and BLAS (``X^T X`` of a factor is one ``syrk``, half a
general product). Its BLAS threads are limited by the caller where it runs several analyses at once
(``compare``): OpenBLAS threads spinning on busy cores slow small products down a hundredfold.
numpy, not torch: importing torch alone takes 1.5-2 s, half the 4 s a whole Llama-3-8B-shaped analysis
may take (benchmarks/analysis_speed.py). A matrix's bases come from one orthonormal factorisation
(``qr_frame``) shared by every use of it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

DEFAULT_RTOL = 1e-6  # float32 rounding of a rank-deficient factor stays below this, real directions above


def _t(x: np.ndarray) -> np.ndarray:
    # No copy for float64 input: BLAS takes either memory order (a transposed A is column-major).
    return np.asarray(x, dtype=np.float64)


def frobenius(x: np.ndarray) -> float:
    """``||x||_F`` of an array of any shape, float64."""
    return float(np.linalg.norm(_t(x).ravel()))


def mm(*matrices: np.ndarray) -> np.ndarray:
    """Chained float64 matrix product ``M1 @ M2 @ ...`` of 2-D arrays."""
    out = _t(matrices[0])
    for m in matrices[1:]:
        out = out @ _t(m)
    return out


def numerical_rank(s: np.ndarray, shape: tuple[int, int], rtol: float | None = None) -> int:
    """Number of singular values ``s: (n,)`` (decreasing) of a matrix of ``shape`` above the tolerance.

    Tolerance: ``s[0] * max(rtol, max(shape) * eps64)``; a zero matrix has rank 0.
    """
    s = np.asarray(s, dtype=np.float64)
    if s.size == 0 or not s[0] > 0:
        return 0
    rtol = DEFAULT_RTOL if rtol is None else rtol
    tol = s[0] * max(rtol, max(shape) * np.finfo(np.float64).eps)
    return int(np.count_nonzero(s > tol))


GRAM_MAX_COND = 100.0  # Gram route up to this condition number of X (errors ~ eps * cond^2, see qr_frame)


@dataclass(frozen=True)
class Frame:
    """Orthonormal factorisation ``X: (n, m) = Q @ R``, with the SVD ``R = U diag(s) Vh`` kept.

    ``R: (p, m)``, ``p = min(n, m)``; ``X = (Q U) diag(s) Vh`` is the thin SVD of X and ``s`` holds all
    its singular values. ``Q: (n, p)`` is either stored (Householder route, ``Q_stored``) or implicit,
    ``Q = X @ W`` (Gram route), and then never formed for products between frames (``frame_product``).
    Without Q (``has_q`` False) a frame still gives ``R`` and the singular values.
    """

    shape: tuple[int, int]  # (n, m) of X
    R: np.ndarray
    U: np.ndarray
    s: np.ndarray
    Vh: np.ndarray
    Q_stored: np.ndarray | None = None
    X: np.ndarray | None = None
    W: np.ndarray | None = None  # (m, m): Q = X @ W

    @property
    def has_q(self) -> bool:
        return self.Q_stored is not None or self.X is not None

    @property
    def Q(self) -> np.ndarray:
        """The ``(n, p)`` orthonormal factor, formed now if implicit."""
        if self.Q_stored is not None:
            return self.Q_stored
        if self.X is None:
            raise ValueError(f"frame of a {self.shape} matrix was computed without Q")
        if self.X.flags.c_contiguous:
            return mm(self.X, self.W)
        return mm(self.W.T, self.X.T).T  # X = A.T: multiply in A's memory order, 4x faster


def qr_frame(X: np.ndarray, with_q: bool = True) -> Frame:
    """Orthonormal factorisation of ``X: (n, m)``, float64; ``with_q=False`` drops ``Q``.

    1) Gram route, for tall X with ``cond(X) <= GRAM_MAX_COND``: ``X^T X = V diag(s^2) V^T`` (eigh),
       ``R = diag(s) V^T`` and ``Q = X V diag(1/s)`` kept implicit: one matrix product instead of a
       Householder QR (3-4x faster); singular values and products of frames are accurate to
       ~ eps * cond^2 (<= 1e-12 here). 2) Otherwise (rank-deficient, ill-conditioned or wide X):
       Householder QR, backward stable, then the SVD of ``R``.
    """
    if X.ndim != 2:
        raise ValueError(f"qr_frame expects a 2-D matrix, got shape {X.shape}")
    n, m = X.shape
    x = _t(X)
    if n >= m > 0:
        lam, V = np.linalg.eigh(x.T @ x)  # x.T @ x: numpy sees the transpose and calls syrk
        s, V = np.sqrt(np.maximum(lam[::-1], 0)), np.ascontiguousarray(V[:, ::-1])
        if s[-1] * GRAM_MAX_COND > s[0]:  # also false for a zero X
            implicit = {"X": X, "W": V / s} if with_q else {}
            return Frame((n, m), s[:, None] * V.T, np.eye(m), s, np.ascontiguousarray(V.T), **implicit)
    if with_q:
        Q, R = np.linalg.qr(x, mode="reduced")
    else:
        Q, R = None, np.linalg.qr(x, mode="r")
    U, s, Vh = np.linalg.svd(R, full_matrices=False)
    return Frame((n, m), R, U, s, Vh, Q_stored=Q)


def frame_product(f1: Frame, f2: Frame) -> np.ndarray:
    """``Q1^T Q2: (p1, p2)`` for frames of the same space; ``W1^T (X1^T X2) W2`` when both are implicit."""
    if f1.shape[0] != f2.shape[0]:
        raise ValueError(f"frames of different spaces: {f1.shape} vs {f2.shape}")
    if f1.X is not None and f2.X is not None:
        return mm(f1.W.T, mm(f1.X.T, f2.X), f2.W)
    return mm(f1.Q.T, f2.Q)


@dataclass(frozen=True)
class Basis:
    """An orthonormal basis in factored form: ``vectors = frame.Q @ coords``.

    ``frame`` is shared (``A`` and dW's right vectors use the frame of ``A^T``), ``coords: (p, rho)``
    has orthonormal columns, ``values: (rho,)`` are the matching singular values, decreasing.
    """

    frame: Frame
    coords: np.ndarray
    values: np.ndarray

    @property
    def dim(self) -> int:
        return self.frame.shape[0]

    @property
    def rank(self) -> int:
        return self.coords.shape[1]

    @property
    def vectors(self) -> np.ndarray:
        """The basis as a ``(dim, rho)`` matrix."""
        return mm(self.frame.Q, self.coords)


def svd_small(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD of a small matrix ``M: (p, q) = U @ diag(s) @ Vh``, float64 (LAPACK gesdd)."""
    U, s, Vh = np.linalg.svd(_t(M), full_matrices=False)
    return U, s, Vh


def column_basis(frame: Frame, rtol: float | None = None) -> Basis:
    """Orthonormal basis ``(n, rho)`` of the column space of ``X = Q R``, by decreasing singular value.

    For ``A: (r, k)`` pass the frame of ``A^T``: its right-singular vectors (rows of ``Vh``). For
    ``B: (d, r)`` pass the frame of ``B``: its left-singular vectors. ``rho`` is the numerical rank.
    """
    rho = numerical_rank(frame.s, frame.shape, rtol)
    return Basis(frame, frame.U[:, :rho], frame.s[:rho])


def _warn_rank(name: str, shape: tuple[int, ...], rank: int, full: int) -> None:
    if rank < full:
        warnings.warn(
            f"{name} of shape {shape} has numerical rank {rank} < {full}; using its top {rank} singular directions",
            stacklevel=3,
        )


def right_singular(A: np.ndarray, rtol: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-singular vectors of ``A: (r, k)``: returns ``V: (k, rho)`` (= ``Vh[:rho].T``) and ``s: (rho,)``.

    A zero or rank-deficient ``A`` keeps only its numerical rank ``rho`` and warns.
    """
    if A.ndim != 2:
        raise ValueError(f"A must be (r, in_features), got shape {A.shape}")
    basis = column_basis(qr_frame(A.T), rtol)
    _warn_rank("A", A.shape, basis.rank, min(A.shape))
    return basis.vectors, basis.values


def left_singular(B: np.ndarray, rtol: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-singular vectors of ``B: (d, r)``: returns ``U: (d, rho)`` and ``s: (rho,)``; warns if rank-deficient."""
    if B.ndim != 2:
        raise ValueError(f"B must be (out_features, r), got shape {B.shape}")
    basis = column_basis(qr_frame(B), rtol)
    _warn_rank("B", B.shape, basis.rank, min(B.shape))
    return basis.vectors, basis.values


def overlap(b1: Basis, b2: Basis, frames: np.ndarray | None = None) -> np.ndarray:
    """Inner products ``V1^T V2: (rho1, rho2)`` of two factored bases of the same space.

    ``frames: (p1, p2)`` = ``frame_product(b1.frame, b2.frame)`` may be passed in when several bases
    share frames (``A`` and ``dW`` share the frame of ``A^T``), to compute it once.
    """
    if b1.dim != b2.dim:
        raise ValueError(f"bases live in different spaces: dim {b1.dim} vs {b2.dim}")
    F = frame_product(b1.frame, b2.frame) if frames is None else frames
    return mm(b1.coords.T, F, b2.coords)


def phi_from_overlap(M: np.ndarray) -> np.ndarray:
    """The whole phi grid from ``M = V1^T V2: (r1, r2)``; entry ``[i-1, j-1]`` is ``phi(i, j)``.

    1) square the inner products; 2) cumulative sums over rows then columns give
    ``||V1[:, :i]^T V2[:, :j]||_F^2`` for every (i, j); 3) divide by ``min(i, j)``.
    """
    if M.ndim != 2:
        raise ValueError(f"overlap matrix must be 2-D, got shape {M.shape}")
    r1, r2 = M.shape
    energy = np.cumsum(np.cumsum(np.square(M), axis=0), axis=1)
    return energy / np.minimum.outer(np.arange(1, r1 + 1), np.arange(1, r2 + 1))


def _check_bases(V1: np.ndarray, V2: np.ndarray) -> None:
    if V1.ndim != 2 or V2.ndim != 2 or V1.shape[0] != V2.shape[0]:
        raise ValueError(f"bases must be (k, r1) and (k, r2) with the same k, got {V1.shape} and {V2.shape}")


def phi_grid(V1: np.ndarray, V2: np.ndarray) -> np.ndarray:
    """phi for all ``1 <= i <= r1, 1 <= j <= r2`` from bases ``V1: (k, r1)``, ``V2: (k, r2)`` -> ``(r1, r2)``."""
    _check_bases(V1, V2)
    return phi_from_overlap(_t(V1).T @ _t(V2))


def phi_cell(V1: np.ndarray, V2: np.ndarray, i: int, j: int) -> float:
    """Eq. 4 for one cell, straight from the definition (the reference for ``phi_grid``).

    ``V1: (k, r1)``, ``V2: (k, r2)``, ``1 <= i <= r1``, ``1 <= j <= r2``.
    """
    _check_bases(V1, V2)
    if not (1 <= i <= V1.shape[1] and 1 <= j <= V2.shape[1]):
        raise ValueError(f"cell ({i}, {j}) outside the grid {V1.shape[1]} x {V2.shape[1]}")
    inner = V1[:, :i].T @ V2[:, :j]
    return float(np.sum(inner * inner) / min(i, j))


def analytic_baseline(r1: int, r2: int, k: int) -> np.ndarray:
    """Expected phi of independent uniformly random subspaces of R^k: ``max(i, j) / k``, shape ``(r1, r2)``."""
    if min(r1, r2, k) < 1:
        raise ValueError(f"baseline needs r1, r2, k >= 1, got {r1}, {r2}, {k}")
    return np.maximum.outer(np.arange(1, r1 + 1), np.arange(1, r2 + 1)) / k


def gaussian_right_basis(r: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Right-singular basis ``(k, min(r, k))`` of a standard Gaussian ``(r, k)`` matrix drawn from ``rng``."""
    return right_singular(rng.standard_normal((r, k)))[0]


def sampled_baseline(r1: int, r2: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """phi grid ``(r1, r2)`` between two independent Gaussian matrices ``(r1, k)`` and ``(r2, k)``.

    The same draws and the same grid as ``phi_grid`` of two ``gaussian_right_basis``, but the bases stay
    factored (``overlap`` of the two frames): no ``(k, r)`` basis is formed, so at most the two Gaussian
    matrices are in memory (at r = 64, k = 2^19: 512 MiB instead of 1 GiB).
    """
    frames = [column_basis(qr_frame(rng.standard_normal((r, k)).T)) for r in (r1, r2)]
    return phi_from_overlap(overlap(*frames))
