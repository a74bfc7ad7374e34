r"""Probabilistic PCA of clr-transformed counts: the count model's starting point.

The count model starts its decoder from this fit (``_pca_initialise`` in :mod:`mvae.model`), and
the clr + PCA baseline of the benchmarks (:mod:`mvae.evaluation.baselines`) is the same function.
Pure numpy/scipy: nothing here imports torch.

- :func:`clr_pca` -- clr of ``X + c`` (a pseudocount, default 1), then probabilistic PCA;
- :func:`ppca` -- probabilistic PCA of a table already in clr coordinates;
- :func:`dense_counts`, :func:`clr_with_pseudocount`, :func:`centre_log_rows` -- the validated
  dense copy and the clr steps that :func:`clr_pca` is made of, shared with the baselines.

PPCA (Tipping & Bishop 1999) on the clr table: with the eigenvalues :math:`\lambda_1 \ge \dots`
and eigenvectors :math:`U` of the clr sample covariance,

.. math::

    \hat\sigma^2 = \frac{1}{(D-1) - k} \sum_{j > k} \lambda_j, \qquad
    \hat W = U_k (\Lambda_k - \hat\sigma^2 I)^{1/2}, \qquad
    \hat\Sigma_{clr} = \hat W \hat W^\top + \hat\sigma^2 H .

The clr covariance has rank at most D - 1 (every clr vector sums to zero), so the discarded
variance is shared among the D - 1 - k remaining directions of :math:`\mathbf 1^\perp`, not D - k.

Everything works on a dense ``(n, D)`` float64 copy of the table.

References
----------
Tipping ME, Bishop CM (1999) Probabilistic principal component analysis. J R Stat Soc B 61(3):
611-622.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from mvae.errors import InputError

__all__ = [
    "PCAResult",
    "centre_log_rows",
    "clr_pca",
    "clr_with_pseudocount",
    "dense_counts",
    "ppca",
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
    def covariance(self):
        r"""The PPCA clr covariance :math:`\hat W \hat W^\top + \hat\sigma^2 H`.

        Returns
        -------
        mvae.maths.covariance.LowRankCovariance
            In ``space="clr"``.
        """
        from mvae.maths.covariance import LowRankCovariance  # pandas: only when asked for

        return LowRankCovariance(self.loadings_clr, self.noise_variance, space="clr")


# --------------------------------------------------------------------------- steps
def dense_counts(X, min_samples=2):
    """Validated dense float64 copy of a count table.

    Parameters
    ----------
    X : array_like or scipy.sparse matrix of shape (n, D)
        Counts (samples x features): finite and non-negative.
    min_samples : int, default 2
        Fewest samples accepted; at least 2 features are always required.

    Returns
    -------
    ndarray of shape (n, D)
        A new float64 array; ``X`` is not modified.

    Raises
    ------
    InputError
        If ``X`` is not 2-D, too small, or has a non-finite or negative entry (the message
        names the sample and feature).
    """
    if sp.issparse(X):
        x = X.toarray()  # a new array already: no second copy (it is the size of the table)
        if x.dtype != np.float64:
            x = x.astype(np.float64)
    else:
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


def centre_log_rows(log_x):
    r"""Centre each row of a log table in place: :math:`\log x - \overline{\log x}`.

    On :math:`\log x` this is :math:`\operatorname{clr}(x)`.

    Parameters
    ----------
    log_x : ndarray of shape (n, D), float
        Overwritten with the result.

    Returns
    -------
    ndarray of shape (n, D)
        ``log_x`` itself, every row summing to zero.
    """
    log_x -= log_x.mean(axis=1, keepdims=True)
    return log_x


def clr_with_pseudocount(X, pseudocount):
    r"""The clr of the counts plus a pseudocount, :math:`\operatorname{clr}(X + c)`.

    .. math::

        \operatorname{clr}(x + c)_j = \log(x_j + c) - \frac1D \sum_{d=1}^{D} \log(x_d + c)

    Parameters
    ----------
    X : array_like or scipy.sparse matrix of shape (n, D)
        Counts (samples x features), non-negative; validated by :func:`dense_counts`.
    pseudocount : float
        :math:`c \ge 0`; 0 only when ``X`` has no zeros.

    Returns
    -------
    ndarray of shape (n, D)
        Dense float64, rows summing to zero.
    """
    c = float(pseudocount)
    if not np.isfinite(c) or c < 0:
        raise InputError(f"pseudocount must be a finite number >= 0; got {pseudocount!r}.")
    x = dense_counts(X)
    x += c
    if np.any(x <= 0):
        i, j = np.argwhere(x <= 0)[0]
        raise InputError(
            f"X + pseudocount is 0 at sample {i}, feature {j}; the log of 0 is undefined. "
            "Use pseudocount > 0 or multiplicative_replacement."
        )
    return centre_log_rows(np.log(x, out=x))  # x is this function's own copy


def check_n_components(n_components, n: int, d: int) -> int:
    """k as an int, refused unless ``1 <= k <= min(n - 1, d - 1)`` for an (n, d) table."""
    k = int(n_components)
    if not 1 <= k <= min(n - 1, d - 1):
        raise InputError(
            f"n_components must be between 1 and min(n_samples - 1, n_features - 1) = "
            f"{min(n - 1, d - 1)}; got {n_components}."
        )
    return k


def ppca(y, n_components, *, top_only: bool = False) -> PCAResult:
    r"""Probabilistic PCA of a table in clr coordinates (module docstring for the maths).

    Parameters
    ----------
    y : ndarray of shape (n, D)
        A clr table: every row sums to zero (:func:`centre_log_rows`). Not modified.
    n_components : int
        Number of components k, ``1 <= k <= min(n - 1, D - 1)``.
    top_only : bool
        Compute only the k leading singular triplets (``scipy.sparse.linalg.svds``, ARPACK, a
        fixed start) and the discarded variance as the total minus theirs, instead of the full
        SVD: what the count model's PCA start needs, ~30x faster on a 5,000 x 2,000 table
        (benchmarks/results/fixed_costs/). The noise variance then carries the rounding of
        ``trace - top.sum()`` (~1e-16 x trace), so near-exact low-rank tables should use the
        full route. A table without variance, or one where ARPACK fails, takes the full route.

    Returns
    -------
    PCAResult
    """
    mean = y.mean(axis=0)
    return _ppca_centred(y - mean, n_components, mean, top_only)


def _ppca_centred(yc, n_components, mean, top_only: bool) -> PCAResult:
    """:func:`ppca` of ``yc``, the clr table less its column means ``mean`` (used, not copied)."""
    n, d = yc.shape
    k = check_n_components(n_components, n, d)
    if top_only and k < min(n, d) - 1 and np.any(yc):
        from scipy.sparse.linalg import ArpackError

        try:
            return _ppca_top(yc, k, mean)
        except ArpackError:  # e.g. no convergence: the full route below
            pass
    if n < d:
        # wide table: eigendecompose the n x n Gram matrix, O(n² D), instead of an SVD of the
        # n x D matrix, which costs far more when n << D (wide microbiome tables)
        evals, evecs = scipy.linalg.eigh(yc @ yc.T)  # ascending
        evals, evecs = np.clip(evals[::-1], 0.0, None), evecs[:, ::-1]
        s = np.sqrt(evals)
        keep = s > s[0] * 1e-12 if s[0] > 0 else np.zeros_like(s, dtype=bool)
        u = evecs
        vt = np.zeros((n, d))
        vt[keep] = (yc.T @ evecs[:, keep] / s[keep]).T  # right singular vectors
    else:
        u, s, vt = scipy.linalg.svd(yc, full_matrices=False)  # yc = u diag(s) vt
    eig = s**2 / (n - 1)  # eigenvalues of the sample covariance, descending
    top = eig[:k]
    n_discarded = (d - 1) - k
    # the discarded variance is the sum of the eigenvalues after the k-th: the SVD / Gram route
    # returns every non-zero one (the rank is at most min(n, D) - 1). Summing them directly
    # avoids the cancellation of trace - top.sum(), which left ~1e-16 x trace of noise
    noise = max(0.0, float(eig[k:].sum()) / n_discarded) if n_discarded > 0 else 0.0
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


def _ppca_top(yc, k: int, mean) -> PCAResult:
    """:func:`ppca` from the k leading singular triplets of the centred table ``yc`` (n, D)."""
    import scipy.sparse.linalg

    n, d = yc.shape
    u, s, vt = scipy.sparse.linalg.svds(yc, k=k, solver="arpack", random_state=0)
    order = np.argsort(s)[::-1]  # svds returns them ascending
    u, s, vt = u[:, order], s[order], vt[order]
    top = s**2 / (n - 1)
    total = float(np.einsum("ij,ij->", yc, yc)) / (n - 1)  # the sum of every eigenvalue
    noise = max(0.0, (total - float(top.sum())) / ((d - 1) - k))
    v = vt.T  # (D, k)
    signs = np.sign(v[np.argmax(np.abs(v), axis=0), np.arange(k)])
    signs[signs == 0] = 1.0
    v = v * signs
    return PCAResult(
        embeddings=(u * s) * signs,
        loadings_clr=v * np.sqrt(np.clip(top - noise, 0.0, None)),
        noise_variance=float(noise),
        explained_variance=top.copy(),
        mean_clr=mean,
    )


# --------------------------------------------------------------------------- public
def clr_pca(X, n_components, pseudocount=1.0, *, top_only: bool = False) -> PCAResult:
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

    top_only : bool
        Only the k leading components (see :func:`ppca`).

    Returns
    -------
    PCAResult
    """
    y = clr_with_pseudocount(X, pseudocount)  # (n, D), a new array: centred in place below
    mean = y.mean(axis=0)
    y -= mean
    return _ppca_centred(y, n_components, mean, top_only)
