r"""Low-rank-plus-isotropic covariance of log-ratios, without forming D x D.

A fitted (or simulated) multinomial VAE implies a covariance of the log-ratios of the
features (docs/model.md, "What a fit reports")

.. math::

    \Sigma = F F^\top + \sigma^2 P, \qquad
    P = \begin{cases} H = I_D - \tfrac{1}{D} \mathbf{1}\mathbf{1}^\top & \text{clr coordinates} \\
                      I_{D-1} & \text{ilr coordinates} \end{cases}

with a ``(D, k)`` factor :math:`F = \tilde W = \Psi W` whose columns sum to zero (clr) or a
``(D - 1, k)`` factor :math:`W` (ilr). Everything a user asks of it -- the diagonal, products
with vectors, the (pseudo-)inverse, the log-determinant and the strongest feature-feature
correlations -- costs :math:`O(D k^2)` memory-light operations, except the edge list, which is
inherently :math:`O(D^2 k)` time (every pair is looked at) but :math:`O(\text{chunk} \cdot D)`
memory. A dense ``(D, D)`` matrix is built only by :meth:`LowRankCovariance.dense` and
:meth:`LowRankCovariance.correlation_dense`, and only under a memory limit.

In clr coordinates :math:`\Sigma` is singular (:math:`\Sigma \mathbf{1} = 0`); its inverse and
determinant are taken on the :math:`(D-1)`-dimensional subspace :math:`\mathbf{1}^\perp`, where
they equal those of the ilr covariance :math:`\Psi^\top \Sigma \Psi` for every orthonormal
basis :math:`\Psi`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mvae.errors import InputError

__all__ = ["LowRankCovariance"]

_SPACES = ("clr", "ilr")


class LowRankCovariance:
    r"""Covariance :math:`\Sigma = F F^\top + \sigma^2 P` kept in factored form.

    Parameters
    ----------
    factor : array_like of shape (D, k) or (D - 1, k)
        The low-rank factor :math:`F`. In clr space its columns are centred here (they must
        sum to zero for :math:`F F^\top` to be a clr covariance; centring is :math:`H F`).
    noise_variance : float
        Isotropic noise variance :math:`\sigma^2 \ge 0`.
    space : {"clr", "ilr"}, default "clr"
        ``"clr"``: :math:`P = H = I - \mathbf{1}\mathbf{1}^\top / D` on ``D`` features.
        ``"ilr"``: :math:`P = I` on ``D - 1`` balances (``factor`` has ``D - 1`` rows).
    feature_ids : sequence of str, optional
        One name per row of ``factor``; defaults to ``"f0", "f1", ...``.

    Attributes
    ----------
    factor : ndarray of shape (n_features, k)
        Read-only copy of :math:`F` (centred in clr space).
    noise_variance : float
    space : str
    n_features : int
        Number of rows of ``factor`` (D in clr space, D - 1 in ilr space).
    feature_ids : ndarray of str, shape (n_features,)

    Examples
    --------
    >>> import numpy as np
    >>> cov = LowRankCovariance(np.array([[1.0], [-1.0], [0.0]]), 0.5)
    >>> cov.diagonal()
    array([1.33333333, 1.33333333, 0.33333333])
    >>> np.allclose(cov.matvec(cov.precision_matvec(np.array([1.0, 0.0, -1.0]))),
    ...             [1.0, 0.0, -1.0])
    True
    """

    def __init__(self, factor, noise_variance, space="clr", feature_ids=None):
        factor = np.array(factor, dtype=np.float64, copy=True)
        if factor.ndim != 2:
            raise InputError(
                f"factor must be a 2-D array of shape (n_features, k); got shape {factor.shape}."
            )
        if not np.all(np.isfinite(factor)):
            raise InputError("factor contains NaN or infinite values; pass finite loadings.")
        if space not in _SPACES:
            raise InputError(f"space must be one of {_SPACES}; got {space!r}.")
        noise_variance = float(noise_variance)
        if not np.isfinite(noise_variance) or noise_variance < 0:
            raise InputError(
                f"noise_variance must be a finite number >= 0; got {noise_variance!r}."
            )
        if space == "clr":
            if factor.shape[0] < 2:
                raise InputError(
                    "a clr covariance needs at least 2 features; factor has "
                    f"{factor.shape[0]} rows."
                )
            factor -= factor.mean(axis=0, keepdims=True)  # H F: columns sum to zero
        n_features = factor.shape[0]
        if feature_ids is None:
            feature_ids = np.array([f"f{i}" for i in range(n_features)])
        else:
            feature_ids = np.asarray(feature_ids).astype(str)
            if feature_ids.shape != (n_features,):
                raise InputError(
                    f"feature_ids has {feature_ids.size} entries but factor has {n_features} rows;"
                    " give one id per feature."
                )
        factor.setflags(write=False)
        feature_ids.setflags(write=False)
        self.factor = factor
        self.noise_variance = noise_variance
        self.space = space
        self.n_features = n_features
        self.feature_ids = feature_ids

    # ------------------------------------------------------------------ helpers
    @property
    def n_latent(self) -> int:
        """Number of columns ``k`` of the factor."""
        return self.factor.shape[1]

    @property
    def _subspace_dim(self) -> int:
        """Rank of :math:`P`: ``D - 1`` in clr space, ``n_features`` in ilr space."""
        return self.n_features - 1 if self.space == "clr" else self.n_features

    def _project(self, v):
        """:math:`P v` along axis 0 (centring for clr, identity for ilr)."""
        if self.space == "clr":
            return v - v.mean(axis=0, keepdims=True)
        return v

    def _check_vector(self, v, name="v"):
        v = np.asarray(v, dtype=np.float64)
        if v.ndim not in (1, 2) or v.shape[0] != self.n_features:
            raise InputError(
                f"{name} must have shape ({self.n_features},) or ({self.n_features}, m); "
                f"got {v.shape}."
            )
        return v

    def _capacitance_cholesky(self):
        r"""Cholesky factor of :math:`C = \sigma^2 I_k + F^\top F`, shape (k, k)."""
        if self.noise_variance <= 0:
            raise InputError(
                "the precision and log-determinant need noise_variance > 0; this covariance "
                "has noise_variance = 0 and is singular on its subspace."
            )
        gram = self.factor.T @ self.factor  # (k, D) @ (D, k) -> (k, k)
        cap = gram + self.noise_variance * np.eye(self.n_latent)
        return np.linalg.cholesky(cap)

    def __repr__(self):
        return (
            f"LowRankCovariance(n_features={self.n_features}, k={self.n_latent}, "
            f"noise_variance={self.noise_variance:.4g}, space={self.space!r})"
        )

    # ------------------------------------------------------------------ O(D k) methods
    def diagonal(self):
        r"""Variances :math:`\Sigma_{ii} = \lVert F_{i\cdot} \rVert^2 + \sigma^2 P_{ii}`.

        Returns
        -------
        ndarray of shape (n_features,)
            :math:`P_{ii} = 1 - 1/D` in clr space and 1 in ilr space.
        """
        p_ii = 1.0 - 1.0 / self.n_features if self.space == "clr" else 1.0
        return np.einsum("ik,ik->i", self.factor, self.factor) + self.noise_variance * p_ii

    def matvec(self, v):
        r"""Product :math:`\Sigma v = F (F^\top v) + \sigma^2 P v` in :math:`O(D k m)`.

        Parameters
        ----------
        v : array_like of shape (n_features,) or (n_features, m)

        Returns
        -------
        ndarray of the same shape as ``v``
        """
        v = self._check_vector(v)
        return self.factor @ (self.factor.T @ v) + self.noise_variance * self._project(v)

    def precision_matvec(self, v):
        r"""Product with the (pseudo-)inverse, by the Woodbury identity.

        .. math::

            \Sigma^{+} v = \sigma^{-2} \left( P v - F (\sigma^2 I_k + F^\top F)^{-1} F^\top v
            \right)

        In clr space this is the Moore-Penrose pseudo-inverse: the inverse of :math:`\Sigma`
        on :math:`\mathbf{1}^\perp`, and zero along :math:`\mathbf{1}`. Cost :math:`O(D k m + k^3)`.

        Parameters
        ----------
        v : array_like of shape (n_features,) or (n_features, m)

        Returns
        -------
        ndarray of the same shape as ``v``

        Raises
        ------
        InputError
            If ``noise_variance`` is 0 (then :math:`\Sigma` is singular on the subspace).
        """
        v = self._check_vector(v)
        chol = self._capacitance_cholesky()
        ftv = self.factor.T @ v  # (k, D) @ (D, m) -> (k, m)
        y = np.linalg.solve(chol.T, np.linalg.solve(chol, ftv))  # C^{-1} F^T v, (k, m)
        return (self._project(v) - self.factor @ y) / self.noise_variance

    def logdet(self):
        r"""Log-(pseudo-)determinant by the matrix determinant lemma.

        .. math::

            \log\lvert \Sigma \rvert_{+} = m \log \sigma^2
            + \log\lvert I_k + F^\top F / \sigma^2 \rvert,

        with :math:`m` the rank of :math:`P`: ``D - 1`` in both spaces (``n_features - 1`` in
        clr space, ``n_features`` in ilr space). Cost :math:`O(D k^2)`.

        In clr space this is the log of the product of the ``D - 1`` non-zero eigenvalues,
        which equals :math:`\log\lvert \Psi^\top \Sigma \Psi \rvert` for any orthonormal ILR
        basis :math:`\Psi`.

        Returns
        -------
        float

        Examples
        --------
        >>> from mvae.maths.compositions import HelmertBasis
        >>> cov = LowRankCovariance(np.array([[1.0], [-1.0], [0.0]]), 0.5)
        >>> ilr = cov.to_ilr(HelmertBasis(3))
        >>> bool(np.isclose(cov.logdet(), np.linalg.slogdet(ilr.dense())[1]))
        True
        """
        chol = self._capacitance_cholesky()  # chol chol^T = sigma^2 I + F^T F
        # |I + F^T F / s2| = |s2 I + F^T F| / s2^k
        logdet_cap = 2.0 * np.sum(np.log(np.diag(chol))) - self.n_latent * np.log(
            self.noise_variance
        )
        return float(self._subspace_dim * np.log(self.noise_variance) + logdet_cap)

    def to_ilr(self, basis):
        r"""The same covariance in ILR coordinates, :math:`\Psi^\top \Sigma \Psi`.

        Since :math:`\Psi^\top H \Psi = I_{D-1}`, the result is
        :math:`(\Psi^\top F)(\Psi^\top F)^\top + \sigma^2 I_{D-1}`.

        Parameters
        ----------
        basis : object
            An ILR basis with ``forward(v)`` computing :math:`\Psi^\top v` along the last axis,
            ``(..., D) -> (..., D - 1)`` (e.g. ``mvae.maths.compositions.HelmertBasis``).

        Returns
        -------
        LowRankCovariance
            With ``space="ilr"`` and a ``(D - 1, k)`` factor.
        """
        if self.space != "clr":
            raise InputError("to_ilr needs a clr covariance; this one is already in ilr space.")
        factor_ilr = np.asarray(basis.forward(self.factor.T)).T  # (k, D) -> (k, D-1) -> (D-1, k)
        if factor_ilr.shape != (self.n_features - 1, self.n_latent):
            raise InputError(
                f"basis.forward mapped a (k, {self.n_features}) array to shape "
                f"{factor_ilr.T.shape}; expected (k, {self.n_features - 1}). Is the basis built "
                "for the same features?"
            )
        return LowRankCovariance(factor_ilr, self.noise_variance, space="ilr")

    # ------------------------------------------------------------------ dense, on request
    def _check_dense_size(self, max_bytes):
        n_bytes = self.n_features * self.n_features * 8
        if n_bytes > max_bytes:
            raise InputError(
                f"a dense {self.n_features} x {self.n_features} float64 matrix needs "
                f"{n_bytes:,} bytes, above max_bytes={int(max_bytes):,}. Use diagonal(), matvec(), "
                "precision_matvec() or top_correlations() instead, or raise max_bytes."
            )

    def dense(self, max_bytes=2**30):
        r"""The dense matrix :math:`F F^\top + \sigma^2 P`.

        Parameters
        ----------
        max_bytes : int, default 2**30
            Refuse (``InputError``, a ``ValueError``) when ``8 * D**2`` exceeds this.

        Returns
        -------
        ndarray of shape (n_features, n_features)
        """
        self._check_dense_size(max_bytes)
        d = self.n_features
        out = self.factor @ self.factor.T  # (D, k) @ (k, D) -> (D, D)
        if self.space == "clr":
            out -= self.noise_variance / d
        out[np.diag_indices(d)] += self.noise_variance
        return out

    def correlation_dense(self, max_bytes=2**30):
        r"""Dense correlation :math:`\Sigma_{ij} / \sqrt{\Sigma_{ii} \Sigma_{jj}}`.

        Parameters
        ----------
        max_bytes : int, default 2**30
            As in :meth:`dense`.

        Returns
        -------
        ndarray of shape (n_features, n_features)
            Features with zero variance get NaN rows and columns.
        """
        cov = self.dense(max_bytes=max_bytes)
        sd = np.sqrt(np.diag(cov))
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = cov / np.outer(sd, sd)
        np.clip(corr, -1.0, 1.0, out=corr)
        corr[np.diag_indices_from(corr)] = np.where(sd > 0, 1.0, np.nan)
        return corr

    # ------------------------------------------------------------------ edge list
    def _correlation_factors(self):
        r"""Two ``(D, k')`` arrays ``a``, ``b`` with :math:`\rho_{ij} = a_i \cdot b_j` for i != j.

        Off the diagonal :math:`\Sigma_{ij} = F_i \cdot F_j - \sigma^2 / D` (clr; no constant
        in ilr), so with :math:`s_i = \Sigma_{ii}^{-1/2}`,
        :math:`\rho_{ij} = (s_i F_i) \cdot (s_j F_j) - (\sigma^2/D) s_i s_j`: an inner product
        of rank ``k + 1`` with one negative sign. Every row has norm at most 1.
        """
        diag = self.diagonal()
        with np.errstate(divide="ignore"):
            s = np.where(diag > 0, 1.0 / np.sqrt(diag), 0.0)  # zero-variance features -> 0
        g = self.factor * s[:, None]  # (D, k)
        if self.space == "clr" and self.noise_variance > 0:
            col = np.sqrt(self.noise_variance / self.n_features) * s[:, None]  # (D, 1)
            return np.hstack([g, col]), np.hstack([g, -col])
        return g, g

    def top_correlations(self, n=1000, *, chunk_size=None, min_abs=0.0):
        r"""The ``n`` strongest feature-feature correlations, without forming D x D.

        Pairs ``i < j`` are ranked by :math:`\lvert \rho_{ij} \rvert`, with

        .. math::

            \rho_{ij} = \frac{\Sigma_{ij}}{\sqrt{\Sigma_{ii}\Sigma_{jj}}}, \qquad
            \Sigma_{ij} = F_{i\cdot} \cdot F_{j\cdot} + \sigma^2 P_{ij}.

        The upper triangle is scanned in tiles of ``chunk_size`` rows by
        ``max(256, 2**15 // chunk_size)`` columns. Each tile is one float32 matrix product; a
        tile whose entries all lie below the running n-th best magnitude (less a margin that
        bounds float32 round-off) is skipped after two reductions; otherwise its candidates are
        recomputed in float64 and merged into a running top-n with ``np.argpartition``, so the
        result is exact in float64. Cost: :math:`O(D^2 k)` time -- every pair is looked at;
        there is no way round that for an exact answer -- and
        :math:`O(\text{chunk\_size} \cdot D)` memory at most (a tile plus the top-n). The
        small tiles run single-threaded: threaded BLAS on large tiles was far slower on shared
        cores (figures: benchmarks/results/throughput/code_choices.md).

        Parameters
        ----------
        n : int, default 1000
            Number of pairs to return (fewer if there are fewer pairs with
            :math:`\lvert\rho\rvert` >= ``min_abs``).
        chunk_size : int, optional
            Rows per tile; default 64.
        min_abs : float, default 0.0
            Only pairs with :math:`\lvert \rho_{ij} \rvert \ge` ``min_abs`` are returned.

        Returns
        -------
        pandas.DataFrame
            Columns ``feature_a``, ``feature_b`` (ids, ``feature_a`` before ``feature_b`` in the
            feature order), ``correlation``, ``covariance``; sorted by ``|correlation|``
            descending (ties by position). Features with zero variance have correlation 0.

        Examples
        --------
        >>> cov = LowRankCovariance(np.array([[1.0], [-1.0], [0.0]]), 0.5)
        >>> cov.top_correlations(2)
          feature_a feature_b  correlation  covariance
        0        f0        f1       -0.875   -1.166667
        1        f0        f2       -0.250   -0.166667
        """
        n = int(n)
        if n < 0:
            raise InputError(f"n must be >= 0; got {n}.")
        if chunk_size is None:
            chunk_size = 64
        chunk_size = int(chunk_size)
        if chunk_size < 1:
            raise InputError(f"chunk_size must be a positive integer; got {chunk_size}.")
        min_abs = float(min_abs)
        d = self.n_features
        # Small tiles (~128 KB) stay in cache and below OpenBLAS's threading threshold: on
        # shared cores, threaded GEMM on big tiles was far slower than this.
        width = max(256, 2**15 // chunk_size)

        a, b = self._correlation_factors()  # (D, k'), (D, k'); rho_ij = a_i . b_j
        a32 = a.astype(np.float32)
        bt32 = np.ascontiguousarray(b.T, dtype=np.float32)  # (k', D)
        # |fl32(a.b) - a.b| <= (k' + 2) u |a||b| with |a|, |b| <= 1; 4x that for safety
        margin = 4.0 * (a.shape[1] + 3) * float(np.finfo(np.float32).eps)
        buf = np.empty((chunk_size, min(width, d)), dtype=np.float32)

        top_val = np.empty(0)  # |rho| of the current best pairs
        top_i = np.empty(0, dtype=np.int64)
        top_j = np.empty(0, dtype=np.int64)
        thr = min_abs  # a pair must reach this (strictly beat it once the top-n is full)
        full = False

        if n > 0:
            for r0 in range(0, d - 1, chunk_size):
                r1 = min(r0 + chunk_size, d)
                rows = a32[r0:r1]  # (c, k')
                for c0 in range(r0, d, width):
                    c1 = min(c0 + width, d)
                    tile = buf[: r1 - r0, : c1 - c0]
                    np.matmul(rows, bt32[:, c0:c1], out=tile)  # (c, k') @ (k', w) -> (c, w)
                    screen = thr - margin
                    if screen > 0 and tile.max() <= screen and tile.min() >= -screen:
                        continue
                    np.abs(tile, out=tile)
                    flat = np.flatnonzero(tile >= screen)
                    gi = flat // (c1 - c0) + r0
                    gj = flat % (c1 - c0) + c0
                    upper = gj > gi
                    gi, gj = gi[upper], gj[upper]
                    if gi.size == 0:
                        continue
                    val = np.abs(np.einsum("ij,ij->i", a[gi], b[gj]))  # exact, float64
                    keep = val > thr if full else val >= thr
                    if not keep.any():
                        continue
                    top_val = np.concatenate([top_val, val[keep]])
                    top_i = np.concatenate([top_i, gi[keep]])
                    top_j = np.concatenate([top_j, gj[keep]])
                    if top_val.size >= n:
                        if top_val.size > n:
                            best = np.argpartition(-top_val, n - 1)[:n]
                            top_val, top_i, top_j = top_val[best], top_i[best], top_j[best]
                        full = True
                        thr = max(min_abs, float(top_val.min()))

        corr = np.einsum("ij,ij->i", a[top_i], b[top_j])
        cov = np.einsum("ij,ij->i", self.factor[top_i], self.factor[top_j])
        if self.space == "clr":
            cov -= self.noise_variance / d
        order = np.lexsort((top_j, top_i, -np.abs(corr)))
        top_i, top_j = top_i[order], top_j[order]
        return pd.DataFrame(
            {
                "feature_a": self.feature_ids[top_i],
                "feature_b": self.feature_ids[top_j],
                "correlation": np.clip(corr[order], -1.0, 1.0),
                "covariance": cov[order],
            }
        )
