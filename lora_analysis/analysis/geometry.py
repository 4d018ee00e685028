"""The input-geometry baseline: expected phi(i, j) between two random updates drawn from the inputs.

**Definition.** For a module with inputs ``x`` of second moment ``M = E[x x^T]: (k, k)``, a null update
of rank ``r`` is ``Z: (r, k)`` with independent rows ``z ~ N(0, M)``; its directions are its
right-singular vectors ordered by singular value (``V_Z: (k, r)``), exactly as the analysis orders a
real adapter's. The baseline is

    g(i, j) = E phi(V_Za[:, :i], V_Zb[:, :j])     (Za: (r_a, k), Zb: (r_b, k) independent)

and ``geometry_std`` the standard deviation of that phi over draws (the spread of one null pair, not
the error of the mean). Why M, the uncentred moment: ``A - A_init`` is a sum of gradient rows
``(B^T g_t) x_t^T``, so its rows are combinations ``sum_t c_t x_t`` of the raw inputs; a combination
with Gaussian weights over many tokens is ``N(0, sum_t x_t x_t^T)``, i.e. ``N(0, n M)``, and the scale
does not change phi. (``moment="covariance"`` uses ``C = M - mu mu^T`` instead: rows of ``G @ X`` with
centred ``X``, the null of issue 9's table.) For isotropic ``M`` it is ``max(i, j) / k``.

**Sampling scheme** (``sampled_geometry``), with only the top ``m`` eigenpairs ``(lambda, V)`` of M
known and the rest of the energy spread evenly, ``M ~ V diag(lambda) V^T + s2 (I - V V^T)``,
``s2 = (tr M - sum lambda) / (k - m)``:

1. top coordinates: ``Z_top = N(0, 1)^(n x m) * sqrt(lambda)`` for all ``n = r_a + r_b`` rows of a draw;
2. tail coordinates: the tail parts are ``n`` isotropic Gaussian vectors in a ``q = k - m``
   dimensional space; phi depends on them only through their inner products (their Gram matrix, a
   Wishart ``W_n(q, s2 I)``), so they are drawn as the rows of the Bartlett factor ``T: (n, min(n, q))``
   (``T_ii^2 ~ chi2(q - i)``, ``T_ij ~ N(0, 1)`` below the diagonal) times ``sqrt(s2)``: ``n`` coordinates
   instead of ``k``, so the cost is independent of k (14,336 costs what 384 does);
3. ``Za`` = the first ``r_a`` rows of ``[Z_top, Z_tail]``, ``Zb`` the other ``r_b``; right-singular
   vectors of each (batched SVD over draws), phi grid, mean and std over ``draws``.

**Second method** (``geometry_from_energies``, exact given the energies): ``E[Pi_a Pi_b] = E Pi_a E Pi_b``
for independent draws, so ``g(i, j) = tr(E Pi_{a,i} E Pi_{b,j}) / min(i, j)``, with ``Pi_{r,i}`` the
projector on the top-i directions of a rank-r draw. ``E Pi`` commutes with every sign flip of M's
eigenbasis (the law of Z is invariant under them), so it is diagonal there: ``E Pi_{r,i} =
V diag(p_{r,i}) V^T``, ``p_{r,i}(l) = E ||V_{Z,i}^T v_l||^2``, and ``g(i, j) = sum_l p_{ra,i}(l)
p_{rb,j}(l) / min(i, j)``. The energies ``p`` are sampled from single draws (``direction_energies``);
for ``r = 1`` they are analytic (``rank_one_energies``): with ``1/S = int_0^inf exp(-tS) dt``,
``p(l) = E[lambda_l z_l^2 / sum_m lambda_m z_m^2] = int_0^inf lambda_l / (1 + 2 t lambda_l)
prod_m (1 + 2 t lambda_m)^(-1/2) dt``. Isotropic M gives ``p = i / k`` and ``g = max(i, j) / k``.

**Two runs on different inputs** (two tasks through one base, ``sampled_cross_geometry``): the null pair is
``Za`` with rows ``N(0, M_a)`` and ``Zb`` with rows ``N(0, M_b)``, each run drawn from its own inputs, so
``g`` measures what the two input distributions share. The eigenbases differ, so the rows are drawn in the
``k`` input coordinates, ``z = V diag(sqrt(lambda)) g + sqrt(s2) (I - V V^T) h`` with ``g, h`` standard
normal (cost ``k`` per row, not ``r_a + r_b``; k is at most a few thousand). With ``M_a = M_b`` it is the
same null as ``sampled_geometry``'s.
"""

from __future__ import annotations

import numpy as np
import torch


def tail_level(values: np.ndarray, trace: float, k: int) -> float:
    """``s2``: the energy not in the ``m`` kept eigenvalues ``values: (m,)``, per remaining dimension."""
    m = len(values)
    if m > k:
        raise ValueError(f"{m} eigenvalues for a space of dimension {k}")
    return 0.0 if m == k else max(float(trace) - float(np.sum(values)), 0.0) / (k - m)


def _check(values: np.ndarray, s2: float, k: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) > k or np.any(values < 0) or s2 < 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"need m <= k={k} non-negative eigenvalues and s2 >= 0, got shape {values.shape}, s2={s2}")
    if values.sum() + s2 * (k - len(values)) <= 0:
        raise ValueError("the inputs have no energy: every eigenvalue is zero")
    return values


def null_rows(values: np.ndarray, s2: float, k: int, n: int, draws: int, rng: np.random.Generator) -> torch.Tensor:
    """``draws`` independent sets of ``n`` rows ``z ~ N(0, M)`` in coordinates ``(draws, n, m + t)``:
    ``m`` top-eigenvector coordinates, then ``t = min(n, k - m)`` Bartlett coordinates of the tail."""
    values = _check(values, s2, k)
    m, q = len(values), k - len(values)
    top = rng.standard_normal((draws, n, m)) * np.sqrt(values)
    t = min(n, q)
    if t == 0 or s2 == 0:
        return torch.from_numpy(top)
    tail = np.tril(rng.standard_normal((draws, n, t)), -1)
    diag = np.sqrt(rng.chisquare(q - np.arange(t), size=(draws, t)))  # T_ii^2 ~ chi2(q - i), i = 0..t-1
    tail[:, np.arange(t), np.arange(t)] = diag
    return torch.from_numpy(np.concatenate([top, np.sqrt(s2) * tail], axis=2))


def _top_right(Z: torch.Tensor, r: int) -> torch.Tensor:
    """Right-singular vectors of each ``Z[d]: (r', D)``, decreasing singular value: ``(draws, r, D)``."""
    return torch.linalg.svd(Z, full_matrices=False)[2][:, :r]


def _phi_grids(Va: torch.Tensor, Vb: torch.Tensor) -> torch.Tensor:
    """phi grids ``(draws, ra, rb)`` of bases given as rows ``Va: (draws, ra, D)``, ``Vb: (draws, rb, D)``."""
    energy = torch.cumsum(torch.cumsum(torch.square(Va @ Vb.transpose(1, 2)), dim=1), dim=2)
    ra, rb = Va.shape[1], Vb.shape[1]
    i = torch.arange(1, ra + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, rb + 1, dtype=torch.float64)[None, :]
    return energy / torch.minimum(i, j)


def sampled_geometry(
    values: np.ndarray, s2: float, k: int, r_a: int, r_b: int, draws: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over ``draws`` of phi between two independent null updates, each ``(r_a, r_b)``.

    ``values: (m,)`` top eigenvalues of M, ``s2`` the tail level (``tail_level``), ``k`` the dimension.
    Grids are for ``i <= min(r_a, k)``, ``j <= min(r_b, k)``.
    """
    if min(r_a, r_b, draws) < 1:
        raise ValueError(f"need r_a, r_b, draws >= 1, got {r_a}, {r_b}, {draws}")
    ra, rb = min(r_a, k), min(r_b, k)
    Z = null_rows(values, s2, k, r_a + r_b, draws, rng)
    grids = _phi_grids(_top_right(Z[:, :r_a], ra), _top_right(Z[:, r_a:], rb))
    std = grids.std(dim=0) if draws > 1 else torch.zeros(ra, rb, dtype=torch.float64)
    return grids.mean(dim=0).numpy(), std.numpy()


def full_null_rows(values: np.ndarray, vectors: np.ndarray, s2: float, n: int, draws: int,
                   rng: np.random.Generator) -> torch.Tensor:
    """``draws`` sets of ``n`` rows ``z ~ N(0, M)`` in the ``k`` input coordinates, ``(draws, n, k)``, for
    ``M = V diag(values) V^T + s2 (I - V V^T)`` with ``vectors = V: (k, m)`` orthonormal."""
    k = vectors.shape[0]
    values = _check(values, s2, k)
    rows = (rng.standard_normal((draws, n, len(values))) * np.sqrt(values)) @ vectors.T
    if s2 > 0 and len(values) < k:
        tail = rng.standard_normal((draws, n, k))
        rows += np.sqrt(s2) * (tail - (tail @ vectors) @ vectors.T)
    return torch.from_numpy(rows)


def sampled_cross_geometry(
    a: tuple[np.ndarray, np.ndarray, float], b: tuple[np.ndarray, np.ndarray, float], r_a: int, r_b: int,
    draws: int, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over ``draws`` of phi between a null update of rank ``r_a`` drawn from inputs ``a`` and
    one of rank ``r_b`` from inputs ``b``; each of ``a``, ``b`` is ``(values (m,), vectors (k, m), s2)``."""
    k = a[1].shape[0]
    if b[1].shape[0] != k or min(r_a, r_b, draws) < 1:
        raise ValueError(f"need one input dimension and r_a, r_b, draws >= 1, got k={k}, {b[1].shape[0]}, "
                         f"{r_a}, {r_b}, {draws}")
    ra, rb = min(r_a, k), min(r_b, k)
    Za, Zb = full_null_rows(*a, r_a, draws, rng), full_null_rows(*b, r_b, draws, rng)
    grids = _phi_grids(_top_right(Za, ra), _top_right(Zb, rb))
    std = grids.std(dim=0) if draws > 1 else torch.zeros(ra, rb, dtype=torch.float64)
    return grids.mean(dim=0).numpy(), std.numpy()


def direction_energies(
    values: np.ndarray, s2: float, k: int, r: int, draws: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``p_{r,i}(l)``: expected energy of eigendirection ``l`` in the top-i directions of one null draw.

    Returns ``top: (min(r, k), m)`` (row i-1 for the top-i subspace, column l for eigenvector l) and
    ``tail: (min(r, k),)``, the energy per tail dimension (the same for each by rotation invariance).
    """
    m, q = len(values), k - len(values)
    V = _top_right(null_rows(values, s2, k, r, draws, rng), min(r, k))  # (draws, rho, D)
    captured = torch.cumsum(torch.square(V), dim=1).mean(dim=0).numpy()  # (rho, D): top-i energy per coordinate
    top = captured[:, :m]
    i = np.arange(1, top.shape[0] + 1, dtype=np.float64)
    tail = (i - top.sum(axis=1)) / q if q > 0 else np.zeros_like(i)
    return top, tail


def geometry_from_energies(ea: tuple[np.ndarray, np.ndarray], eb: tuple[np.ndarray, np.ndarray], k: int) -> np.ndarray:
    """``g(i, j) = (sum_l p_a,i(l) p_b,j(l) + q p_a,i^tail p_b,j^tail) / min(i, j)`` from two
    ``direction_energies`` results (or ``rank_one_energies``) of the same M; shape ``(ra, rb)``."""
    (top_a, tail_a), (top_b, tail_b) = ea, eb
    q = k - top_a.shape[1]
    energy = top_a @ top_b.T + q * np.outer(tail_a, tail_b)
    i = np.arange(1, top_a.shape[0] + 1)
    j = np.arange(1, top_b.shape[0] + 1)
    return energy / np.minimum.outer(i, j)


def rank_one_energies(values: np.ndarray, s2: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Analytic ``p_{1,1}(l) = E[lambda_l z_l^2 / sum_m lambda_m z_m^2]`` for one row ``z ~ N(0, M)``.

    ``p(l) = int_0^inf lambda_l (1 + 2 t lambda_l)^-1 prod_m (1 + 2 t lambda_m)^-1/2 dt``, the tail's
    ``k - m`` dimensions entering the product with multiplicity. Returns ``((1, m), (1,))`` like
    ``direction_energies`` with ``r = 1``.
    """
    from scipy import integrate  # 0.3-0.8 s to import; only this function needs it

    values = _check(values, s2, k)
    q = k - len(values)
    scale = values.max(initial=s2)

    def density(t: float) -> float:  # prod_m (1 + 2 t lambda_m)^-1/2, in logs
        return np.exp(-0.5 * (np.sum(np.log1p(2 * t * values)) + q * np.log1p(2 * t * s2)))

    def energy(lam: float) -> float:
        if lam == 0:
            return 0.0
        def integrand(u: float) -> float:  # t = u / ((1 - u) scale): [0, 1) onto [0, inf), well scaled
            t = u / (1 - u) / scale
            return lam / (1 + 2 * t * lam) * density(t) / (scale * (1 - u) ** 2)

        return integrate.quad(integrand, 0.0, 1.0, limit=200, epsabs=1e-13, epsrel=1e-10)[0]

    top = np.array([energy(v) for v in values])
    tail = np.array([energy(s2) if q > 0 else 0.0])
    return top[None, :], tail
