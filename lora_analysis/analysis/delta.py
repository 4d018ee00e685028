"""The LoRA update ``dW = scale * B @ A`` and what it does to the frozen weight ``W``.

This module is the one place that defines the scale and dW (Hu et al. 2021, arXiv 2106.09685, Section 4.1):

    scale = alpha / r            (rsLoRA: alpha / sqrt(r))
    dW    = scale * B @ A        A: (r, k) = (r, in_features), B: (d, r) = (out_features, r)

dW is never formed for its SVD: with ``B = Qb Rb`` and ``A^T = Qa Ra`` (thin orthonormal
factorisations, ``subspace.qr_frame``), ``dW = scale * Qb (Rb Ra^T) Qa^T``, so the SVD of the small
core ``Rb Ra^T`` gives the singular triplets. The right-singular vectors of dW live in the same frame
``Qa`` as those of ``A``. Only the W-dependent diagnostics (Table 7, Figure 8, intruder dimensions)
need dense matrices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lora_analysis.analysis.kinds import Side, Subject
from lora_analysis.analysis.subspace import (
    Basis,
    Frame,
    column_basis,
    frobenius,
    mm,
    numerical_rank,
    phi_from_overlap,
    qr_frame,
    svd_small,
)


def lora_scale(alpha: float, r: int, rslora: bool = False) -> float:
    """The factor in ``dW = scale * B @ A``: ``alpha / r``, or ``alpha / sqrt(r)`` for rsLoRA."""
    if r < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {r}")
    return alpha / (math.sqrt(r) if rslora else r)


def lora_delta(A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
    """Dense ``dW = scale * B @ A: (d, k)`` from ``A: (r, k)``, ``B: (d, r)``; float64."""
    if A.ndim != 2 or B.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"need A: (r, in) and B: (out, r), got A {A.shape} and B {B.shape}")
    return scale * mm(B, A)


@dataclass(frozen=True)
class DeltaSVD:
    """Singular triplets of dW in factored form: ``dW = left.vectors @ diag(values) @ right.vectors^T``.

    ``left: (d, rho)`` (None when ``B``'s QR frame was computed without Q), ``right: (k, rho)``,
    ``values: (rho,)``; ``all_values`` holds every singular value of the core, zeros included.
    """

    left: Basis | None
    right: Basis
    values: np.ndarray
    all_values: np.ndarray


def delta_svd_from_frames(frame_A: Frame, frame_B: Frame, scale: float, rtol: float | None = None) -> DeltaSVD:
    """SVD of dW from ``frame_A`` of ``A^T: (k, r)`` and ``frame_B`` of ``B: (d, r)`` (``X = Q R`` each).

    1) core ``K = Rb Ra^T: (pb, pa)``; 2) ``K = Uk diag(sk) Vkh``; 3) dW's left vectors are
    ``Qb Uk``, right vectors ``Qa Vkh^T``, singular values ``|scale| * sk``.
    """
    U, s, Vh = svd_small(mm(frame_B.R, frame_A.R.T))
    # scale 0 (lora_alpha = 0): dW = 0 has no directions, whatever B and A hold
    rho = 0 if scale == 0 else numerical_rank(s, (frame_B.shape[0], frame_A.shape[0]), rtol)
    sign = -1.0 if scale < 0 else 1.0
    values = abs(scale) * s
    left = Basis(frame_B, sign * U[:, :rho], values[:rho]) if frame_B.has_q else None
    right = Basis(frame_A, Vh[:rho].T.copy(), values[:rho])
    return DeltaSVD(left, right, values[:rho], values)


def delta_svd(
    A: np.ndarray, B: np.ndarray, scale: float, rtol: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD of ``dW = scale * B @ A`` without forming it: returns ``U: (d, rho)``, ``s: (rho,)``, ``Vh: (rho, k)``."""
    if A.ndim != 2 or B.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"need A: (r, in) and B: (out, r), got A {A.shape} and B {B.shape}")
    svd = delta_svd_from_frames(qr_frame(A.T), qr_frame(B), scale, rtol)
    return svd.left.vectors, svd.values, svd.right.vectors.T


def effective_rank(s: np.ndarray) -> float:
    """``exp(entropy(p))`` with ``p = s / sum(s)`` (Roy & Vetterli 2007); NaN for a zero spectrum ``s: (n,)``."""
    s = np.asarray(s, dtype=np.float64)
    total = s.sum()
    if not total > 0:
        return math.nan
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def stable_rank(s: np.ndarray) -> float:
    """``||M||_F^2 / ||M||_2^2`` from singular values ``s: (n,)``; NaN for a zero matrix."""
    s = np.asarray(s, dtype=np.float64)
    return float(np.sum(s * s) / s.max() ** 2) if s.size and s.max() > 0 else math.nan


def relative_change(A: np.ndarray, A_init: np.ndarray) -> float:
    """How far ``A: (r, k)`` moved from ``A_init: (r, k)``: ``||A - A_init||_F / ||A_init||_F``."""
    if A.shape != A_init.shape:
        raise ValueError(f"A {A.shape} and A_init {A_init.shape} differ in shape")
    norm = frobenius(A_init)
    return frobenius(A - A_init) / norm if norm > 0 else math.nan


@dataclass(frozen=True)
class ModuleFactors:
    """Everything the analysis needs from one adapted module of one run, computed once.

    ``bases`` maps a subject (``A``, ``A_init``, ``A_delta``, ``B``, ``dW``: its ``dw_side`` vectors) to its basis;
    ``spectra`` maps ``A``, ``B``, ``A_delta``, ``dW`` to all singular values; ``dw`` is dW's SVD.
    """

    bases: dict[str, Basis]
    spectra: dict[str, np.ndarray]
    dw: DeltaSVD
    norm_A: float
    norm_B: float
    a_moved: float
    numerical_rank_A: int


def module_factors(
    A: np.ndarray,
    B: np.ndarray,
    scale: float,
    A_init: np.ndarray | None = None,
    subjects: tuple[str, ...] = tuple(Subject),
    dense_left: bool = False,
    rtol: float | None = None,
    dw_side: Side = Side.right,
) -> ModuleFactors:
    """Bases, spectra and norms of one module: ``A: (r, k)``, ``B: (d, r)``, ``A_init: (r, k)`` or None.

    One factorisation per matrix (``qr_frame``), reused: ``A``'s frame serves both ``A`` and dW's right
    vectors; ``B``'s Q is kept only if a left basis is needed (subject ``B``, dW's left vectors, ``dense_left``).
    ``dw_side``: which singular vectors of dW are its basis (``Side.left``: the output space, like B).
    """
    dw_left = Subject.dW in subjects and Side(dw_side) is Side.left
    want_left = dense_left or Subject.B in subjects or dw_left
    fa, fb = qr_frame(A.T), qr_frame(B, with_q=want_left)
    bases = {"A": column_basis(fa, rtol)}
    spectra = {"A": fa.s, "B": fb.s}
    dw = delta_svd_from_frames(fa, fb, scale, rtol)
    spectra["dW"] = dw.all_values
    bases["dW"] = dw.left if dw_left else dw.right
    if dw.left is not None:
        bases["B"] = column_basis(fb, rtol)
    a_moved = math.nan
    if A_init is not None:
        delta = A - A_init
        f_delta = qr_frame(delta.T, with_q="A_delta" in subjects)
        spectra["A_delta"] = f_delta.s
        if f_delta.has_q:
            bases["A_delta"] = column_basis(f_delta, rtol)
        if "A_init" in subjects:
            bases["A_init"] = column_basis(qr_frame(A_init.T), rtol)
        init_norm = frobenius(A_init)
        a_moved = frobenius(f_delta.s) / init_norm if init_norm > 0 else math.nan
    bases = {name: basis for name, basis in bases.items() if name in subjects}
    norm_A, norm_B = frobenius(fa.s), frobenius(fb.s)  # ||X||_F = ||singular values||_2
    return ModuleFactors(bases, spectra, dw, norm_A, norm_B, a_moved, numerical_rank(fa.s, A.shape, rtol))


@dataclass(frozen=True)
class WeightSVD:
    """Dense thin SVD of a base weight ``W: (d, k) = U diag(s) Vh``; ``U: (d, m)``, ``Vh: (m, k)``."""

    U: np.ndarray
    s: np.ndarray
    Vh: np.ndarray

    @classmethod
    def of(cls, W: np.ndarray) -> WeightSVD:
        import torch  # MKL's dense SVD; only the W tables need it, and they read W through torch anyway

        U, s, Vh = torch.linalg.svd(torch.from_numpy(np.asarray(W, np.float64)), full_matrices=False)
        return cls(U.numpy(), s.numpy(), Vh.numpy())


def projection_norm(W: np.ndarray, U: np.ndarray, V: np.ndarray) -> float:
    """``||U^T W V||_F`` for ``W: (d, k)``, ``U: (d, t)``, ``V: (k, t)`` (Table 7 writes ``V^T`` for rows)."""
    if U.shape[0] != W.shape[0] or V.shape[0] != W.shape[1]:
        raise ValueError(f"U {U.shape} and V {V.shape} do not fit W {W.shape}")
    return frobenius(mm(U.T, W, V))


def random_frame(n: int, t: int, rng: np.random.Generator) -> np.ndarray:
    """Haar-random orthonormal ``(n, t)`` frame (the top-t singular vectors of a Gaussian matrix)."""
    return qr_frame(rng.standard_normal((n, t))).Q


def dw_vs_w(W: np.ndarray, w_svd: WeightSVD, dw: DeltaSVD, top: int, rng: np.random.Generator) -> list[dict]:
    """Table 7 rows for one module: ``||U^T W V||_F`` with U, V the top directions of dW, W and random.

    ``W: (d, k)``; dW uses its numerical rank (at most ``top``) directions, W and random use ``top``.
    """
    d, k = W.shape
    w_norm, dw_norm = frobenius(W), frobenius(dw.values)
    rows = []
    if dw.right.rank > 0:
        t = min(top, dw.right.rank)
        proj = projection_norm(W, dw.left.vectors[:, :t], dw.right.vectors[:, :t])
        rows.append(("dW", t, proj, dw_norm / proj if proj > 0 else math.inf))
    t = min(top, len(w_svd.s))
    rows.append(("W", t, projection_norm(W, w_svd.U[:, :t], w_svd.Vh[:t].T), math.nan))
    rows.append(("random", top, projection_norm(W, random_frame(d, top, rng), random_frame(k, top, rng)), math.nan))
    return [
        dict(source=s, top=t, projection_norm=p, w_norm=w_norm, dw_norm=dw_norm, amplification=a) for s, t, p, a in rows
    ]


def w_dw_phi(w_svd: WeightSVD, dw: DeltaSVD, w_directions: int | None) -> dict[str, np.ndarray]:
    """Figure 8: phi between the top-i singular directions of W and the top-j of dW, per side.

    Returns ``{"left": (w, rho), "right": (w, rho)}`` with ``w = min(w_directions, rank of W)``.
    """
    w = len(w_svd.s) if w_directions is None else min(w_directions, len(w_svd.s))
    left = mm(w_svd.U[:, :w].T, dw.left.vectors)
    right = mm(w_svd.Vh[:w], dw.right.vectors)
    return {"left": phi_from_overlap(left), "right": phi_from_overlap(right)}


def intruders(W: np.ndarray, dW: np.ndarray, w_svd: WeightSVD, top_k: int = 10, side: str = "left") -> np.ndarray:
    """Intruder test (Shuttleworth et al. 2024): for the top ``top_k`` singular vectors of ``W + dW``,
    the largest ``|cos|`` to any singular vector of ``W`` (same side). ``W, dW: (d, k)`` -> ``(top_k,)``.

    A vector is an intruder when this is below a threshold (0.5 in the paper); the caller compares.
    """
    if W.shape != dW.shape:
        raise ValueError(f"W {W.shape} and dW {dW.shape} differ in shape")
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    tuned = WeightSVD.of(W + dW)
    k = min(top_k, len(tuned.s))
    if side == "left":
        cos = mm(tuned.U[:, :k].T, w_svd.U)
    else:
        cos = mm(tuned.Vh[:k], w_svd.Vh.T)
    return np.abs(cos).max(axis=1)
