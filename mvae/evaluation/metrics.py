r"""Recovery metrics: how close an estimate is to the truth of a simulation.

Shared by the tests and the benchmarks (docs/benchmarks.md). Every metric is invariant to what the
model cannot identify: loadings are compared as subspaces (``W`` is identified only up to a
rotation ``W R``), covariances as matrices, embeddings up to a linear map.

- :func:`principal_angles`, :func:`subspace_distance` -- loadings ``(D, k)``;
- :func:`relative_frobenius` -- covariances, dense or :class:`~mvae.maths.covariance.LowRankCovariance`
  (the low-rank path never forms D x D);
- :func:`correlation_agreement` -- off-diagonal correlations (Pearson, Spearman, RMSE);
- :func:`embedding_r2`, :func:`procrustes_disparity` -- embeddings ``(n, k)`` against true ``z``;
- :func:`covariance_to_correlation` -- dense helper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.stats

from mvae.maths.covariance import LowRankCovariance
from mvae.errors import InputError

__all__ = [
    "CorrelationAgreement",
    "correlation_agreement",
    "covariance_to_correlation",
    "embedding_r2",
    "principal_angles",
    "procrustes_disparity",
    "relative_frobenius",
    "subspace_distance",
]


# --------------------------------------------------------------------------- subspaces
def _checked(a, name):
    """``a`` as a finite, non-empty float64 matrix (D, k); a vector is one column."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{name} must be a non-empty 2-D array (D, k); got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name} contains NaN or infinite values.")
    return a


def _angles_and_ranks(A, B):
    """Principal angles (ascending) and the numerical ranks of ``A`` and ``B``."""
    a = _checked(A, "A")
    b = _checked(B, "B")
    if a.shape[0] != b.shape[0]:
        raise InputError(
            f"A and B must have the same number of rows (features); got {a.shape[0]} and "
            f"{b.shape[0]}."
        )
    # orthonormal bases from the SVD, rank = singular values above max(D, k) eps s_max: the
    # ranks subspace_distance needs, and the bases subspace_angles would compute itself
    qa, qb = scipy.linalg.orth(a), scipy.linalg.orth(b)
    for q, name in ((qa, "A"), (qb, "B")):
        if q.shape[1] == 0:
            raise InputError(f"{name} is zero: it spans no subspace.")
    angles = np.sort(scipy.linalg.subspace_angles(qa, qb))  # scipy returns the largest first
    return angles, (qa.shape[1], qb.shape[1])


def principal_angles(A, B):
    r"""Principal angles between the column spaces of ``A`` and ``B``, in radians, ascending.

    ``scipy.linalg.subspace_angles`` sorted smallest first: with orthonormal bases
    :math:`Q_A, Q_B`, the cosines are the singular values of :math:`Q_A^\top Q_B` and the sines
    those of the part of one basis outside the other's span; angles whose cosine is at least
    :math:`1/\sqrt 2` are taken from the sines (Björck & Golub 1973; Knyazev & Argentati 2002).
    Small angles are resolved to near machine precision when every angle is below 45° (and
    large ones when every angle is above). When some lie on either side, scipy takes the small
    ones from their cosines, which resolves them only to a few times
    :math:`\sqrt{\epsilon} \approx 1.5 \times 10^{-8}` rad (1e-9 rad next to 80° comes out as
    about 3e-8): far below what the recovery metrics report.

    Parameters
    ----------
    A : array_like of shape (D, ka)
    B : array_like of shape (D, kb)

    Returns
    -------
    ndarray of shape (min(rank A, rank B),)
        Angles in :math:`[0, \pi/2]`, smallest first.

    Raises
    ------
    InputError
        If ``A`` or ``B`` is empty, not finite or zero, or their numbers of rows differ.

    Examples
    --------
    The (x, y) and (x, z) planes share the x axis and are orthogonal otherwise:

    >>> A = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    >>> B = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    >>> principal_angles(A, B)
    array([0.        , 1.57079633])
    """
    angles, _ = _angles_and_ranks(A, B)
    return angles


def subspace_distance(A, B):
    r"""Normalised squared distance between the projectors on two column spaces.

    .. math::

        d(A, B) = \frac{\lVert P_A - P_B \rVert_F^2}{2k}
                = \frac{1}{k}\Big(\sum_{i=1}^{k_{\min}} \sin^2\theta_i
                  + \tfrac12 (k - k_{\min})\Big),
        \qquad k = \max(\operatorname{rank} A, \operatorname{rank} B),

    in :math:`[0, 1]`: 0 for the same subspace, 1 for orthogonal subspaces of equal rank. For
    equal ranks it is the mean of :math:`\sin^2` of the k principal angles; when the ranks
    differ, each unmatched direction adds 1/2.

    Parameters
    ----------
    A : array_like of shape (D, ka)
    B : array_like of shape (D, kb)

    Returns
    -------
    float

    Examples
    --------
    >>> A = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    >>> B = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    >>> subspace_distance(A, B)                        # (sin² 0 + sin² 90°) / 2
    0.5
    >>> subspace_distance(A, A @ np.array([[0.6, -0.8], [0.8, 0.6]]))   # a rotation: same subspace
    0.0
    """
    angles, (ka, kb) = _angles_and_ranks(A, B)
    k = max(ka, kb)
    return float((np.sum(np.sin(angles) ** 2) + 0.5 * abs(ka - kb)) / k)


# --------------------------------------------------------------------------- covariances
def _as_covariance(x, name):
    if isinstance(x, LowRankCovariance):
        return x
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise InputError(
            f"{name} must be a square (D, D) matrix or a LowRankCovariance; got {x.shape}."
        )
    return x


def _size(x):
    return x.n_features if isinstance(x, LowRankCovariance) else x.shape[0]


def _trace_p(a, space):
    r"""Trace :math:`\operatorname{tr}(A P)`; in clr space
    :math:`\operatorname{tr} A - \mathbf 1^\top A \mathbf 1 / D`."""
    if space == "clr":
        return np.trace(a) - a.sum() / a.shape[0]
    return np.trace(a)


def _inner(a, b):
    r"""Frobenius inner product :math:`\operatorname{tr}(A B)` of two symmetric matrices.

    For :math:`B = F F^\top + \sigma^2 P` (F centred in clr, so :math:`P F = F`):
    :math:`\operatorname{tr}(A B) = \langle F, A F \rangle + \sigma^2 \operatorname{tr}(A P)`; for
    two low-rank matrices
    :math:`\lVert F_1^\top F_2 \rVert^2 + \sigma_2^2 \lVert F_1 \rVert^2 + \sigma_1^2 \lVert F_2
    \rVert^2 + \sigma_1^2 \sigma_2^2 \operatorname{tr}(P^2)`, with
    :math:`\operatorname{tr}(H^2) = \operatorname{tr} H = D - 1`.
    """
    a_low = isinstance(a, LowRankCovariance)
    b_low = isinstance(b, LowRankCovariance)
    if not a_low and not b_low:
        return float(np.vdot(a, b))
    if a_low and not b_low:
        a, b = b, a
        a_low, b_low = False, True
    if not a_low:  # dense a, low-rank b
        f = b.factor
        return float(np.vdot(f, a @ f) + b.noise_variance * _trace_p(a, b.space))
    if a.space != b.space:
        raise InputError(
            f"cannot compare a {a.space!r} covariance with a {b.space!r} one; convert one with "
            "to_ilr(basis) first."
        )
    f1, f2 = a.factor, b.factor
    s1, s2 = a.noise_variance, b.noise_variance
    trace_pp = a.n_features - 1 if a.space == "clr" else a.n_features
    return float(
        np.sum((f1.T @ f2) ** 2)  # (k1, D) @ (D, k2)
        + s2 * np.sum(f1**2)
        + s1 * np.sum(f2**2)
        + s1 * s2 * trace_pp
    )


def relative_frobenius(est, true):
    r"""Relative Frobenius error :math:`\lVert\hat\Sigma - \Sigma\rVert_F / \lVert\Sigma\rVert_F`.

    Parameters
    ----------
    est, true : ndarray of shape (D, D) or LowRankCovariance
        Symmetric matrices of the same size. When either is a
        :class:`~mvae.maths.covariance.LowRankCovariance` the norm is expanded as
        :math:`\lVert A - B \rVert_F^2 = \operatorname{tr}(AA) - 2\operatorname{tr}(AB) +
        \operatorname{tr}(BB)` and each trace is computed in factored form, so two low-rank
        covariances cost :math:`O(D k^2)` and never form D x D. (The expansion loses accuracy
        for near-identical matrices: errors below ~1e-7 are not resolved.)

    Returns
    -------
    float

    Examples
    --------
    >>> from mvae.maths.covariance import LowRankCovariance
    >>> true = LowRankCovariance(np.array([[1.0], [-1.0], [0.0]]), 0.5)
    >>> round(relative_frobenius(1.1 * true.dense(), true), 6)    # dense against low rank
    0.1
    """
    est = _as_covariance(est, "est")
    true = _as_covariance(true, "true")
    if _size(est) != _size(true):
        raise InputError(
            f"est and true must describe the same number of features; got {_size(est)} and "
            f"{_size(true)}."
        )
    if not isinstance(est, LowRankCovariance) and not isinstance(true, LowRankCovariance):
        denom = np.linalg.norm(true)
        if denom == 0:
            raise InputError("true is the zero matrix; the relative error is undefined.")
        return float(np.linalg.norm(est - true) / denom)
    tt = _inner(true, true)
    if tt <= 0:
        raise InputError("true is the zero matrix; the relative error is undefined.")
    sq = _inner(est, est) - 2.0 * _inner(est, true) + tt
    return float(np.sqrt(max(sq, 0.0) / tt))


def covariance_to_correlation(S):
    r"""Correlation matrix :math:`R_{ij} = S_{ij} / \sqrt{S_{ii} S_{jj}}`.

    Parameters
    ----------
    S : array_like of shape (D, D)
        Symmetric covariance.

    Returns
    -------
    ndarray of shape (D, D)
        Unit diagonal, entries clipped to [-1, 1]; rows and columns of features with zero
        variance are NaN.

    Examples
    --------
    >>> covariance_to_correlation(np.array([[4.0, 2.0], [2.0, 9.0]]))   # 2 / (2 * 3)
    array([[1.        , 0.33333333],
           [0.33333333, 1.        ]])
    """
    s = np.asarray(S, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise InputError(f"S must be a square (D, D) matrix; got shape {s.shape}.")
    sd = np.sqrt(np.clip(np.diag(s), 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = s / np.outer(sd, sd)
    np.clip(corr, -1.0, 1.0, out=corr)
    corr[np.diag_indices_from(corr)] = np.where(sd > 0, 1.0, np.nan)
    return corr


# --------------------------------------------------------------------------- correlations
@dataclass(frozen=True)
class CorrelationAgreement:
    """Agreement of estimated with true off-diagonal correlations.

    Attributes
    ----------
    pearson : float
        Pearson correlation of the ``D (D - 1) / 2`` strictly upper-triangular entries.
    spearman : float
        Spearman rank correlation of the same entries (ties get average ranks).
    rmse : float
        Root mean squared difference of the same entries.
    """

    pearson: float
    spearman: float
    rmse: float


def _pearson(x, y):
    xc = x - x.mean()
    yc = y - y.mean()
    denom = np.sqrt(np.dot(xc, xc) * np.dot(yc, yc))
    return float(np.dot(xc, yc) / denom) if denom > 0 else float("nan")


def _as_correlation(x, name):
    if isinstance(x, LowRankCovariance):
        return x.correlation_dense()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise InputError(f"{name} must be a square (D, D) matrix; got shape {x.shape}.")
    return x


def correlation_agreement(est_corr, true_corr) -> CorrelationAgreement:
    r"""Pearson, Spearman and RMSE between two correlation matrices, off the diagonal.

    Only the strictly upper-triangular entries :math:`\{\rho_{ij} : i < j\}` enter (the
    diagonal is 1 in both and the lower triangle repeats the upper).

    Parameters
    ----------
    est_corr, true_corr : ndarray of shape (D, D) or LowRankCovariance
        Correlation matrices (a LowRankCovariance is turned into its dense correlation).

    Returns
    -------
    CorrelationAgreement

    Examples
    --------
    >>> true = np.array([[1.0, 0.5, -0.2], [0.5, 1.0, 0.1], [-0.2, 0.1, 1.0]])
    >>> agreement = correlation_agreement(true, true)
    >>> agreement.pearson, agreement.spearman, agreement.rmse
    (1.0, 1.0, 0.0)
    """
    est = _as_correlation(est_corr, "est_corr")
    true = _as_correlation(true_corr, "true_corr")
    if est.shape != true.shape:
        raise InputError(f"est_corr and true_corr differ in shape: {est.shape} vs {true.shape}.")
    if est.shape[0] < 3:
        raise InputError(
            f"need at least 3 features (3 off-diagonal pairs) to correlate; got {est.shape[0]}."
        )
    iu = np.triu_indices(est.shape[0], k=1)
    e, t = est[iu], true[iu]
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(t))):
        raise InputError(
            "correlations contain NaN (a feature with zero variance?); drop such features first."
        )
    return CorrelationAgreement(
        pearson=_pearson(e, t),
        spearman=_pearson(scipy.stats.rankdata(e), scipy.stats.rankdata(t)),
        rmse=float(np.sqrt(np.mean((e - t) ** 2))),
    )


# --------------------------------------------------------------------------- embeddings
def _check_embeddings(z_true, z_est):
    zt = np.asarray(z_true, dtype=np.float64)
    ze = np.asarray(z_est, dtype=np.float64)
    zt = zt[:, None] if zt.ndim == 1 else zt
    ze = ze[:, None] if ze.ndim == 1 else ze
    if zt.ndim != 2 or ze.ndim != 2 or zt.shape[0] != ze.shape[0]:
        raise InputError(
            f"z_true and z_est must be (n, k) arrays with the same number of samples; got "
            f"{np.shape(z_true)} and {np.shape(z_est)}."
        )
    if zt.shape[0] < 2:
        raise InputError("need at least 2 samples to compare embeddings.")
    return zt, ze


def embedding_r2(z_true, z_est):
    r"""Variance of the true latents explained linearly by the estimated embedding.

    Regress every column of ``z_true`` on ``z_est`` by least squares with an intercept:

    .. math::

        R^2 = 1 - \frac{\sum_j \lVert z_{\cdot j} - \hat z_{\cdot j} \rVert^2}
                       {\sum_j \lVert z_{\cdot j} - \bar z_j \rVert^2},
        \qquad \hat z = [\mathbf 1, Z_{est}] \hat\beta,

    i.e. the per-column :math:`R^2` averaged with weights proportional to each column's
    variance. Invariant to any invertible affine map of ``z_est`` (rotation, scaling, shift).

    Parameters
    ----------
    z_true : array_like of shape (n, k)
    z_est : array_like of shape (n, m)

    Returns
    -------
    float
        At most 1; 1 when ``z_true`` is an affine function of ``z_est``.

    Examples
    --------
    >>> z = np.random.default_rng(0).normal(size=(50, 2))
    >>> embedding_r2(z, z @ np.array([[2.0, 1.0], [0.0, 1.0]]) + 3.0)   # an affine map of z
    1.0
    """
    zt, ze = _check_embeddings(z_true, z_est)
    zt_c = zt - zt.mean(axis=0)  # the intercept absorbs the means
    ze_c = ze - ze.mean(axis=0)
    beta, *_ = np.linalg.lstsq(ze_c, zt_c, rcond=None)  # (m, k)
    resid = zt_c - ze_c @ beta  # (n, m) @ (m, k) -> (n, k)
    ss_tot = np.sum(zt_c**2)
    if ss_tot == 0:
        raise InputError("z_true is constant; R^2 is undefined.")
    return float(1.0 - np.sum(resid**2) / ss_tot)


def procrustes_disparity(z_true, z_est):
    r"""Procrustes disparity between true and estimated embeddings (``scipy.spatial.procrustes``).

    Both are centred and scaled to unit Frobenius norm, ``z_est`` is rotated/reflected and scaled
    to best match ``z_true``, and the disparity is the remaining sum of squared differences
    :math:`\min_{R, s} \lVert \tilde Z_{true} - s \tilde Z_{est} R \rVert_F^2` in [0, 1].
    When the two have different numbers of columns the narrower is padded with zero columns.

    Parameters
    ----------
    z_true : array_like of shape (n, k)
    z_est : array_like of shape (n, m)

    Returns
    -------
    float

    Examples
    --------
    >>> z = np.random.default_rng(0).normal(size=(50, 2))
    >>> round(procrustes_disparity(z, -2.0 * z), 12)   # a reflection and a scaling
    0.0
    """
    from scipy.spatial import procrustes

    zt, ze = _check_embeddings(z_true, z_est)
    k = max(zt.shape[1], ze.shape[1])
    zt = np.pad(zt, ((0, 0), (0, k - zt.shape[1])))
    ze = np.pad(ze, ((0, 0), (0, k - ze.shape[1])))
    _, _, disparity = procrustes(zt, ze)
    return float(disparity)
