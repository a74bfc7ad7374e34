r"""The methods users reach for without mvae, as baselines for the benchmarks (DESIGN.md §2).

All start from a count table ``X`` (samples x features, numpy or scipy sparse) and work on a
dense ``(n, D)`` copy, so they suit small and moderate D.

- :func:`clr_pca` -- clr of ``X + c`` (a pseudocount, default 1), then probabilistic PCA;
- :func:`multiplicative_replacement`, :func:`mr_pca` -- zeros replaced multiplicatively
  (Martín-Fernández et al. 2003), then clr and PPCA;
- :func:`sample_clr_covariance` -- the dense sample covariance of clr(``X + c``).

PPCA (Tipping & Bishop 1999) on the clr table: with the eigenvalues :math:`\lambda_1 \ge \dots`
and eigenvectors :math:`U` of the clr sample covariance,

.. math::

    \hat\sigma^2 = \frac{1}{(D-1) - k} \sum_{j > k} \lambda_j, \qquad
    \hat W = U_k (\Lambda_k - \hat\sigma^2 I)^{1/2}, \qquad
    \hat\Sigma_{clr} = \hat W \hat W^\top + \hat\sigma^2 H .

The clr covariance has rank at most D - 1 (every clr vector sums to zero), so the discarded
variance is shared among the D - 1 - k remaining directions of :math:`\mathbf 1^\perp`, not D - k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from mvae.covariance import LowRankCovariance
from mvae.errors import InputError

__all__ = [
    "PCAResult",
    "clr_pca",
    "mr_pca",
    "multiplicative_replacement",
    "sample_clr_covariance",
]


@dataclass(frozen=True, eq=False)
class PCAResult:
    r"""Probabilistic PCA of a clr-transformed table.

    Attributes
    ----------
    embeddings : ndarray of shape (n, k)
        PCA scores :math:`(Y - \bar y) U_k` of the clr table ``Y`` (ordered by variance).
    loadings_clr : ndarray of shape (D, k)
        :math:`\hat W = U_k (\Lambda_k - \hat\sigma^2 I)^{1/2}`; columns sum to zero and
        :math:`\hat W \hat W^\top` is the low-rank part of the PPCA covariance. Each column's
        largest-magnitude entry is positive (fixes the SVD sign).
    noise_variance : float
        :math:`\hat\sigma^2`, the mean of the D - 1 - k discarded clr eigenvalues (0 when
        k = D - 1).
    explained_variance : ndarray of shape (k,)
        :math:`\lambda_1, \dots, \lambda_k`, the top eigenvalues of the clr sample covariance
        (``ddof=1``).
    mean_clr : ndarray of shape (D,)
        Column mean of the clr table that was subtracted.
    """

    embeddings: np.ndarray
    loadings_clr: np.ndarray
    noise_variance: float
    explained_variance: np.ndarray
    mean_clr: np.ndarray

    @property
    def covariance(self) -> LowRankCovariance:
        r"""The PPCA clr covariance :math:`\hat W \hat W^\top + \hat\sigma^2 H`."""
        return LowRankCovariance(self.loadings_clr, self.noise_variance, space="clr")


# --------------------------------------------------------------------------- helpers
def _dense_counts(X, min_samples=2):
    """Validated dense float64 copy of a count table, shape (n, D)."""
    if sp.issparse(X):
        X = X.toarray()
    x = np.array(X, dtype=np.float64, copy=True)
    if x.ndim != 2:
        raise InputError(f"X must be a 2-D samples x features table; got shape {x.shape}.")
    n, d = x.shape
    if n < min_samples or d < 2:
        raise InputError(
            f"X needs at least {min_samples} samples and 2 features; got shape {x.shape}."
        )
    if not np.all(np.isfinite(x)):
        i, j = np.argwhere(~np.isfinite(x))[0]
        raise InputError(
            f"X has a non-finite value at sample {i}, feature {j}; counts must be finite."
        )
    if np.any(x < 0):
        i, j = np.argwhere(x < 0)[0]
        raise InputError(
            f"X has a negative value {x[i, j]} at sample {i}, feature {j}; counts must be >= 0."
        )
    return x


def _clr_log(log_x):
    """Centre each row of a log table: clr = log x - mean(log x). In place; returns it."""
    log_x -= log_x.mean(axis=1, keepdims=True)
    return log_x


def _clr_pseudocount(X, pseudocount):
    r""":math:`\operatorname{clr}(X + c)`, dense (n, D)."""
    c = float(pseudocount)
    if not np.isfinite(c) or c < 0:
        raise InputError(f"pseudocount must be a finite number >= 0; got {pseudocount!r}.")
    x = _dense_counts(X)
    x += c
    if np.any(x <= 0):
        i, j = np.argwhere(x <= 0)[0]
        raise InputError(
            f"X + pseudocount is 0 at sample {i}, feature {j}; the log of 0 is undefined. "
            "Use pseudocount > 0 or multiplicative_replacement."
        )
    return _clr_log(np.log(x))


def _ppca(y, n_components):
    """PPCA of a clr table ``y`` (n, D) whose rows sum to zero."""
    n, d = y.shape
    k = int(n_components)
    if not 1 <= k <= min(n - 1, d - 1):
        raise InputError(
            f"n_components must be between 1 and min(n_samples - 1, n_features - 1) = "
            f"{min(n - 1, d - 1)}; got {n_components}."
        )
    mean = y.mean(axis=0)
    yc = y - mean  # (n, D)
    u, s, vt = scipy.linalg.svd(yc, full_matrices=False)  # yc = u diag(s) vt
    eig = s**2 / (n - 1)  # eigenvalues of the sample covariance, descending
    total = np.sum(yc**2) / (n - 1)  # trace = sum of all D - 1 possible eigenvalues
    top = eig[:k]
    n_discarded = (d - 1) - k
    noise = max(0.0, (total - top.sum()) / n_discarded) if n_discarded > 0 else 0.0
    v = vt[:k].T  # (D, k)
    signs = np.sign(v[np.argmax(np.abs(v), axis=0), np.arange(k)])
    signs[signs == 0] = 1.0
    v = v * signs
    loadings = v * np.sqrt(np.clip(top - noise, 0.0, None))  # (D, k) * (k,)
    embeddings = (u[:, :k] * s[:k]) * signs  # (n, k): scores yc @ v
    return PCAResult(
        embeddings=embeddings,
        loadings_clr=loadings,
        noise_variance=float(noise),
        explained_variance=top.copy(),
        mean_clr=mean,
    )


# --------------------------------------------------------------------------- public
def clr_pca(X, n_components, pseudocount=1.0) -> PCAResult:
    r"""clr(X + c) followed by probabilistic PCA.

    .. math::

        Y = \operatorname{clr}(X + c) = \log(X + c) - \tfrac1D \log(X + c) \mathbf 1 \mathbf 1^\top,
        \quad Y - \bar Y = U S V^\top, \quad \lambda = s^2 / (n - 1)

    then :math:`\hat\sigma^2 = \sum_{j>k}\lambda_j / (D - 1 - k)` and
    :math:`\hat W = V_k(\Lambda_k - \hat\sigma^2 I)^{1/2}` (module docstring).

    Parameters
    ----------
    X : array_like or scipy.sparse matrix of shape (n, D)
        Counts (samples x features), non-negative. A dense copy is made.
    n_components : int
        Number of components k, ``1 <= k <= min(n - 1, D - 1)``.
    pseudocount : float, default 1.0
        Added to every count before the log; 0 is allowed when ``X`` has no zeros.

    Returns
    -------
    PCAResult
    """
    return _ppca(_clr_pseudocount(X, pseudocount), n_components)


def multiplicative_replacement(X, delta=None):
    r"""Close rows to proportions and replace zeros multiplicatively.

    Martín-Fernández, Barceló-Vidal & Pawlowsky-Glahn (2003): with :math:`p = x / \sum x` and
    :math:`Z` zeros in the row,

    .. math::

        r_j = \begin{cases} \delta & x_j = 0 \\ (1 - Z\delta)\, p_j & x_j > 0 \end{cases}

    so each row still sums to 1 and the ratios of the non-zero parts are unchanged. The default
    :math:`\delta = 1 / D^2` is the default of ``skbio.stats.composition.multi_replace``.

    Parameters
    ----------
    X : array_like or scipy.sparse matrix of shape (n, D)
        Counts or proportions, non-negative, every row with a positive total.
    delta : float, optional
        Replacement value, ``0 < delta``; default ``1 / D**2``.

    Returns
    -------
    ndarray of shape (n, D)
        Strictly positive compositions, rows summing to 1.

    Examples
    --------
    >>> multiplicative_replacement(np.array([[2, 4, 4, 0], [0, 5, 5, 0]]))
    array([[0.1875, 0.375 , 0.375 , 0.0625],
           [0.0625, 0.4375, 0.4375, 0.0625]])
    """
    x = _dense_counts(X, min_samples=1)
    n, d = x.shape
    totals = x.sum(axis=1, keepdims=True)
    if np.any(totals <= 0):
        i = int(np.flatnonzero(totals[:, 0] <= 0)[0])
        raise InputError(f"sample {i} has no counts; drop empty samples before replacing zeros.")
    delta = 1.0 / d**2 if delta is None else float(delta)
    if not (np.isfinite(delta) and delta > 0):
        raise InputError(f"delta must be a positive number; got {delta!r}.")
    zero = x == 0
    scale = 1.0 - zero.sum(axis=1, keepdims=True) * delta  # (n, 1)
    if np.any(scale <= 0):
        i = int(np.flatnonzero(scale[:, 0] <= 0)[0])
        raise InputError(
            f"delta={delta} is too large: sample {i} has {int(zero[i].sum())} zeros and "
            f"{int(zero[i].sum())} * delta >= 1. Use a smaller delta."
        )
    return np.where(zero, delta, scale * (x / totals))


def mr_pca(X, n_components, delta=None) -> PCAResult:
    r"""Multiplicative replacement of zeros, clr, then probabilistic PCA.

    Parameters
    ----------
    X : array_like or scipy.sparse matrix of shape (n, D)
        Counts (samples x features).
    n_components : int
        Number of components k, ``1 <= k <= min(n - 1, D - 1)``.
    delta : float, optional
        Zero replacement value (:func:`multiplicative_replacement`); default ``1 / D**2``.

    Returns
    -------
    PCAResult
    """
    comp = multiplicative_replacement(X, delta=delta)
    return _ppca(_clr_log(np.log(comp)), n_components)


def sample_clr_covariance(X, pseudocount=1.0):
    r"""Sample covariance of :math:`\operatorname{clr}(X + c)` (``ddof=1``).

    .. math::

        \hat\Sigma_{clr} = \frac{1}{n-1} (Y - \bar Y)^\top (Y - \bar Y), \qquad
        Y = \operatorname{clr}(X + c)

    Parameters
    ----------
    X : array_like or scipy.sparse matrix of shape (n, D)
        Counts (samples x features).
    pseudocount : float, default 1.0

    Returns
    -------
    ndarray of shape (D, D)
        Rows and columns sum to zero.
    """
    y = _clr_pseudocount(X, pseudocount)
    y -= y.mean(axis=0)
    return y.T @ y / (y.shape[0] - 1)  # (D, n) @ (n, D) -> (D, D)
