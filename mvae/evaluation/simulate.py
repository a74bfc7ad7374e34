r"""Seeded simulation of compositional count tables from the MVAE generative model.

The model (docs/model.md), written in clr coordinates so that nothing depends on an ILR basis:

.. math::

    z_i &\sim \mathcal N(0, I_k), \\
    \ell_i &= \tilde W z_i + \tilde b + \sigma H \varepsilon_i,
        \qquad \varepsilon_i \sim \mathcal N(0, I_D),
        \; H = I_D - \tfrac1D \mathbf 1 \mathbf 1^\top, \\
    x_i &\sim \operatorname{Multinomial}(N_i, \operatorname{softmax}(\ell_i)),
        \qquad N_i = \max(1, \operatorname{round}(\operatorname{LogNormal}(\log \bar N, s_N))).

:math:`\tilde W = \Psi W` (``(D, k)``, columns summing to zero) and :math:`\tilde b = \Psi b` are
the clr images of the ILR decoder weights of any orthonormal basis :math:`\Psi`; the clr logits have
covariance :math:`\Sigma_{clr} = \tilde W \tilde W^\top + \sigma^2 H` (``Simulation.covariance``).

:func:`simulate` returns a frozen :class:`Simulation` holding the table and its ground truth.
Samples are generated in chunks, so D = 100,000 features never needs a D x D (or even n x D
float) array; the result depends only on the seed, not on the chunk size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mvae.maths.covariance import LowRankCovariance
from mvae.errors import InputError

__all__ = ["Simulation", "simulate"]

_ETA_MAX_ENTRIES = 5e7  # keep eta_clr (n, D) float64 only up to 400 MB


@dataclass(frozen=True, eq=False)
class Simulation:
    r"""A simulated count table with the truth that generated it.

    Attributes
    ----------
    counts : scipy.sparse.csr_matrix of shape (n, D), int64
        Samples x features counts; row ``i`` sums to ``depths[i]``. Always CSR (one return type,
        whatever the sparsity); call ``.toarray()`` for a dense table.
    z : ndarray of shape (n, k)
        True latent coordinates :math:`z_i`.
    eta_clr : ndarray of shape (n, D) or None
        True clr logits :math:`H \ell_i = \tilde W z_i + \tilde b + \sigma H \varepsilon_i` (rows
        sum to zero); None when ``n * D > 5e7``.
    loadings_clr : ndarray of shape (D, k)
        :math:`\tilde W = Q \operatorname{diag}(\sqrt\lambda)`, ``Q`` orthonormal with columns
        summing to zero.
    bias_clr : ndarray of shape (D,)
        :math:`\tilde b`, summing to zero.
    sigma : float
        Noise scale :math:`\sigma`.
    depths : ndarray of shape (n,), int64
        Sequencing depths :math:`N_i`.
    eigenvalues : ndarray of shape (k,)
        :math:`\lambda`, the non-zero eigenvalues of :math:`\tilde W \tilde W^\top`.
    sample_ids, feature_ids : ndarray of str
        ``"s0", "s1", ...`` and ``"f0", "f1", ...``.
    random_state : int or None
        The seed that reproduces this simulation (the fresh entropy when ``simulate`` was given
        None; None only when it was given a ``numpy.random.Generator``).
    """

    counts: sp.csr_matrix
    z: np.ndarray
    eta_clr: np.ndarray | None
    loadings_clr: np.ndarray
    bias_clr: np.ndarray
    sigma: float
    depths: np.ndarray
    eigenvalues: np.ndarray
    sample_ids: np.ndarray
    feature_ids: np.ndarray
    random_state: int | None

    @property
    def n_samples(self) -> int:
        return self.counts.shape[0]

    @property
    def n_features(self) -> int:
        return self.counts.shape[1]

    @property
    def n_latent(self) -> int:
        return self.loadings_clr.shape[1]

    @property
    def covariance(self) -> LowRankCovariance:
        r"""True clr covariance :math:`\tilde W \tilde W^\top + \sigma^2 H`, in factored form."""
        return LowRankCovariance(
            self.loadings_clr, self.sigma**2, space="clr", feature_ids=self.feature_ids
        )

    def covariance_clr(self, max_bytes=2**30):
        r"""Dense true clr covariance, shape (D, D); refused above ``max_bytes``."""
        return self.covariance.dense(max_bytes=max_bytes)

    def correlation_clr(self, max_bytes=2**30):
        r"""Dense true clr correlation, shape (D, D); refused above ``max_bytes``."""
        return self.covariance.correlation_dense(max_bytes=max_bytes)

    @property
    def density(self) -> float:
        """Fraction of non-zero entries of ``counts``."""
        n, d = self.counts.shape
        return self.counts.count_nonzero() / float(n * d)

    def loadings_ilr(self, basis):
        r"""True loadings in ILR coordinates, :math:`W = \Psi^\top \tilde W`.

        Parameters
        ----------
        basis : object
            ILR basis with ``forward(v)`` = :math:`\Psi^\top v` along the last axis,
            ``(..., D) -> (..., D - 1)``.

        Returns
        -------
        ndarray of shape (D - 1, k)
        """
        return np.asarray(basis.forward(self.loadings_clr.T)).T  # (k, D) -> (k, D-1) -> (D-1, k)

    def to_anndata(self):
        """The table as an AnnData object (anndata is imported here, not at module import).

        Returns
        -------
        anndata.AnnData
            ``X``: CSR int64 counts (samples x features); ``obs["depth"]``;
            ``var["bias_clr_true"]``; ``obsm["z_true"]``; ``varm["loadings_clr_true"]``;
            ``uns["simulation"]``: sigma, noise_variance, eigenvalues, n_latent, density and
            random_state (as a string, since the entropy of an unseeded run exceeds int64).
        """
        import anndata

        obs = pd.DataFrame({"depth": self.depths}, index=pd.Index(self.sample_ids.tolist()))
        var = pd.DataFrame(
            {"bias_clr_true": self.bias_clr}, index=pd.Index(self.feature_ids.tolist())
        )
        adata = anndata.AnnData(X=self.counts.copy(), obs=obs, var=var)
        adata.obsm["z_true"] = np.array(self.z)
        adata.varm["loadings_clr_true"] = np.array(self.loadings_clr)
        adata.uns["simulation"] = {
            "sigma": float(self.sigma),
            "noise_variance": float(self.sigma**2),
            "eigenvalues": np.array(self.eigenvalues),
            "n_latent": int(self.n_latent),
            "density": float(self.density),
            "random_state": "" if self.random_state is None else str(self.random_state),
        }
        return adata


def _seed_sequences(random_state):
    """Four independent streams (parameters, latents, noise, counts) and the seed to record."""
    if isinstance(random_state, np.random.Generator):
        return random_state.spawn(4), None
    if random_state is not None and not isinstance(random_state, (int, np.integer)):
        raise InputError(
            "random_state must be an int, None or a numpy.random.Generator; "
            f"got {type(random_state).__name__}."
        )
    if random_state is not None and random_state < 0:
        raise InputError(f"random_state must be >= 0; got {random_state}.")
    seq = np.random.SeedSequence(None if random_state is None else int(random_state))
    return [np.random.default_rng(s) for s in seq.spawn(4)], int(seq.entropy)


def simulate(
    n_samples=1000,
    n_features=200,
    n_latent=10,
    *,
    depth=10_000,
    depth_sd=0.5,
    sigma=0.316,
    eigenvalues=None,
    abundance_spread=1.0,
    random_state=None,
    chunk_size=None,
) -> Simulation:
    r"""Draw a count table from the multinomial VAE generative model.

    .. math::

        z_i \sim \mathcal N(0, I_k), \quad
        \ell_i = \tilde W z_i + \tilde b + \sigma H \varepsilon_i, \quad
        x_i \sim \operatorname{Multinomial}(N_i, \operatorname{softmax}(\ell_i))

    with :math:`\tilde W = Q \operatorname{diag}(\sqrt{\lambda})`, ``Q`` (D, k) the Q factor of a
    column-centred Gaussian matrix (a uniformly random orthonormal basis of a k-dimensional
    subspace of :math:`\mathbf 1^\perp`), :math:`\tilde b = H b_0`,
    :math:`b_0 \sim \mathcal N(0, s_b^2 I_D)` and
    :math:`N_i = \max(1, \operatorname{round}(e^{\log \bar N + s_N u_i}))`, :math:`u_i \sim
    \mathcal N(0, 1)`.

    Parameters
    ----------
    n_samples : int, default 1000
        Number of samples ``n``.
    n_features : int, default 200
        Number of features ``D`` (>= 2).
    n_latent : int, default 10
        Latent dimension ``k`` (1 <= k <= D - 1).
    depth : float, default 10_000
        Median sequencing depth :math:`\bar N`.
    depth_sd : float, default 0.5
        Standard deviation :math:`s_N` of log-depth (0 gives every sample ``depth`` reads).
    sigma : float, default 0.316
        Noise scale :math:`\sigma` (:math:`\sigma^2 \approx 0.1`); 0 gives noise-free logits.
    eigenvalues : array_like of shape (k,), optional
        Non-zero eigenvalues :math:`\lambda` of :math:`\tilde W \tilde W^\top`. Default:
        geometric from 0.2 D down to 0.02 D (``np.geomspace(0.2 * D, 0.02 * D, k)``; 40 to 4 at
        D = 200), all well above :math:`\sigma^2 \approx 0.1`, so that every direction is
        detectable -- a component with eigenvalue near :math:`\sigma^2` is not, and would floor
        every method. The scaling with D keeps the variance per feature fixed as D grows
        (:math:`\sum_j \lambda_j / D \approx 0.7` for k = 10, a clr standard deviation near 0.9,
        the order seen in real tables); a fixed λ would spread ever less signal over each feature.
    abundance_spread : float, default 1.0
        :math:`s_b`, the spread of the mean clr abundances. It controls sparsity: the larger it
        is, the more features are rare and the more zeros at a given depth.
    random_state : int, None or numpy.random.Generator
        Seed. The same int gives an identical simulation whatever ``chunk_size``.
    chunk_size : int, optional
        Samples generated at a time; default keeps a chunk near 2**21 floats (16 MB).

    Returns
    -------
    Simulation

    Notes
    -----
    Density (fraction of non-zero counts) for D = 200, k = 10, n = 1000, depth_sd = 0.5,
    measured with seed 0 (seeds 1 and 2 differ by about 0.01):

    ======== =============================================
    depth    abundance_spread 0.5 / 1.0 / 2.0 / 3.0
    ======== =============================================
    10,000   0.991 / 0.969 / 0.809 / 0.536
    1,000    0.832 / 0.742 / 0.482 / 0.276
    100      0.327 / 0.283 / 0.178 / 0.107
    50       0.204 / 0.180 / 0.120 / 0.077
    ======== =============================================

    At a fixed depth the density falls as D grows (the reads are spread over more features):
    with depth 100 and spread 3, D = 1000 gives 0.047 and D = 2000 gives 0.020; depth 50 and
    spread 3 at D = 1000 gives 0.030 -- the 95-98% zeros of real 16S tables (density 0.01-0.33).

    Examples
    --------
    >>> sim = simulate(50, 20, 3, depth=500, random_state=0)
    >>> sim.counts.shape, sim.z.shape, sim.loadings_clr.shape
    ((50, 20), (50, 3), (20, 3))
    >>> bool(np.all(sim.counts.sum(axis=1).A1 == sim.depths))
    True
    """
    n, d, k = int(n_samples), int(n_features), int(n_latent)
    if n < 1:
        raise InputError(f"n_samples must be >= 1; got {n_samples}.")
    if d < 2:
        raise InputError(f"n_features must be >= 2; got {n_features}.")
    if not 1 <= k <= d - 1:
        raise InputError(
            f"n_latent must be between 1 and n_features - 1 = {d - 1}; got {n_latent}."
        )
    if not (np.isfinite(depth) and depth > 0):
        raise InputError(f"depth must be a positive number; got {depth!r}.")
    if not (np.isfinite(depth_sd) and depth_sd >= 0):
        raise InputError(f"depth_sd must be >= 0; got {depth_sd!r}.")
    if not (np.isfinite(sigma) and sigma >= 0):
        raise InputError(f"sigma must be >= 0; got {sigma!r}.")
    if not (np.isfinite(abundance_spread) and abundance_spread >= 0):
        raise InputError(f"abundance_spread must be >= 0; got {abundance_spread!r}.")
    if eigenvalues is None:
        eigenvalues = np.geomspace(0.2 * d, 0.02 * d, k)
    eigenvalues = np.array(eigenvalues, dtype=np.float64).reshape(-1)
    if eigenvalues.shape != (k,) or not np.all(np.isfinite(eigenvalues) & (eigenvalues > 0)):
        raise InputError(
            f"eigenvalues must be {k} positive numbers (one per latent dimension); "
            f"got {eigenvalues.tolist()}."
        )
    if chunk_size is None:
        chunk_size = max(1, 2**21 // d)
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer; got {chunk_size}.")

    (rng_par, rng_lat, rng_noise, rng_counts), seed = _seed_sequences(random_state)

    # Truth: W~ = Q diag(sqrt(lambda)), Q orthonormal in 1-perp; b~ centred.
    g = rng_par.standard_normal((d, k))
    g -= g.mean(axis=0, keepdims=True)  # columns in 1-perp
    q, r = np.linalg.qr(g)  # (D, k)
    q *= np.sign(np.diag(r))  # fix the QR sign ambiguity
    loadings = q * np.sqrt(eigenvalues)  # (D, k) * (k,) -> (D, k)
    bias = rng_par.normal(0.0, abundance_spread, size=d)
    bias -= bias.mean()

    z = rng_lat.standard_normal((n, k))
    raw = np.exp(np.log(depth) + depth_sd * rng_lat.standard_normal(n))
    depths = np.maximum(1, np.rint(raw)).astype(np.int64)

    keep_eta = n * d <= _ETA_MAX_ENTRIES
    eta_all = np.empty((n, d)) if keep_eta else None
    blocks = []
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        eps = rng_noise.standard_normal((stop - start, d))  # (c, D)
        eps -= eps.mean(axis=1, keepdims=True)  # H eps
        eta = z[start:stop] @ loadings.T  # (c, k) @ (k, D) -> (c, D)
        eta += bias
        eta += sigma * eps
        if keep_eta:
            eta_all[start:stop] = eta
        eta -= eta.max(axis=1, keepdims=True)  # softmax, stably
        np.exp(eta, out=eta)
        eta /= eta.sum(axis=1, keepdims=True)
        block = rng_counts.multinomial(depths[start:stop], eta)  # (c, D) int64
        blocks.append(sp.csr_matrix(block.astype(np.int64, copy=False)))
    counts = sp.vstack(blocks, format="csr")
    counts.sort_indices()

    for arr in (z, eta_all, loadings, bias, depths, eigenvalues):
        if arr is not None:
            arr.setflags(write=False)
    return Simulation(
        counts=counts,
        z=z,
        eta_clr=eta_all,
        loadings_clr=loadings,
        bias_clr=bias,
        sigma=float(sigma),
        depths=depths,
        eigenvalues=eigenvalues,
        sample_ids=np.array([f"s{i}" for i in range(n)]),
        feature_ids=np.array([f"f{j}" for j in range(d)]),
        random_state=seed,
    )

