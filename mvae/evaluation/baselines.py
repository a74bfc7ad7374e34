r"""The methods users reach for without mvae, as baselines for the benchmarks.

All start from a count table ``X`` (samples x features, numpy or scipy sparse) and work on a
dense ``(n, D)`` copy, so they suit small and moderate D. Each returns the same kind of result
(:class:`~mvae.maths.pca.PCAResult`: embeddings, clr loadings, noise variance) or a covariance,
so that :mod:`mvae.evaluation.metrics` scores them all alike (docs/benchmarks.md).

- :func:`clr_pca` -- clr of ``X + c`` (a pseudocount, default 1), then probabilistic PCA (the
  function of :mod:`mvae.maths.pca`, where the PPCA maths is written out; the count model starts
  from it too);
- :func:`multiplicative_replacement`, :func:`mr_pca` -- zeros replaced multiplicatively
  (Martín-Fernández et al. 2003), then clr and PPCA;
- :func:`sample_clr_covariance` -- the dense sample covariance of clr(``X + c``);
- :func:`clr_table_pca`, :func:`sparcc`, :func:`rclr_pca`, :func:`pln_pca` -- below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvae.errors import InputError
from mvae.maths.pca import (PCAResult, centre_log_rows, check_n_components, clr_pca,
                             clr_with_pseudocount, dense_counts, ppca)

__all__ = [
    "PCAResult",
    "SparCCResult",
    "clr_pca",
    "clr_table_pca",
    "mr_pca",
    "multiplicative_replacement",
    "pln_pca",
    "rclr_pca",
    "sample_clr_covariance",
    "sparcc",
]


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
    x = dense_counts(X, min_samples=1)
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
    return ppca(centre_log_rows(np.log(comp)), n_components)


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
    y = clr_with_pseudocount(X, pseudocount)
    y -= y.mean(axis=0)
    return y.T @ y / (y.shape[0] - 1)  # (D, n) @ (n, D) -> (D, D)


# =========================================================================== more baselines
# Added for the encoder-depth benchmark:
#
# - :func:`clr_table_pca` -- PPCA of a given clr/log table (used for the "floor": PCA of the true
#   logits of a simulation);
# - :func:`sparcc` -- SparCC (Friedman & Alm 2012), written here;
# - :func:`rclr_pca` -- robust Aitchison PCA in the style of DEICODE/gemelli (rclr, zeros as
#   missing, rank-k matrix completion), written here because gemelli does not install;
# - :func:`pln_pca` -- Poisson log-normal PCA through the optional package pyPLNmodels.


def clr_table_pca(log_table, n_components) -> PCAResult:
    r"""Probabilistic PCA of a table that is already on the log scale.

    Each row is centred (clr) first, so any log-abundance table (or the true clr logits of a
    simulation) can be given. This is the "floor" of the benchmarks: the error left when the
    logits themselves, not counts, are observed.

    Parameters
    ----------
    log_table : array_like of shape (n, D)
        Finite log abundances (samples x features).
    n_components : int

    Returns
    -------
    PCAResult
    """
    y = np.array(log_table, dtype=np.float64, copy=True)
    if y.ndim != 2 or not np.all(np.isfinite(y)):
        raise InputError(
            f"log_table must be a finite 2-D array (samples x features); got shape {y.shape}."
        )
    return ppca(centre_log_rows(y), n_components)


@dataclass(frozen=True, eq=False)
class SparCCResult:
    r"""Output of :func:`sparcc`.

    Attributes
    ----------
    correlation : ndarray of shape (D, D)
        Estimated correlations of the log basis abundances, clipped to [-1, 1], unit diagonal.
    covariance : ndarray of shape (D, D)
        :math:`\rho_{ij}\,\omega_i\omega_j`.
    variances : ndarray of shape (D,)
        Basis variances :math:`\omega_i^2`.
    excluded : list of tuple(int, int)
        Pairs excluded as strongly correlated, in the order excluded (from the first draw; the
        set can differ between draws).
    """

    correlation: np.ndarray
    covariance: np.ndarray
    variances: np.ndarray
    excluded: list


def _variation_matrix(log_frac):
    r""":math:`t_{ij} = \operatorname{Var}(\log x_i - \log x_j)` over samples (``ddof=0``)."""
    yc = log_frac - log_frac.mean(axis=0)
    s = yc.T @ yc / yc.shape[0]  # (D, n) @ (n, D) -> (D, D)
    d = np.diag(s)
    return d[:, None] + d[None, :] - 2.0 * s


def _sparcc_basis(t, n_iterations, threshold, min_variance):
    """SparCC's basis variances and correlations from a variation matrix (one draw)."""
    d = t.shape[0]
    excluded = np.zeros((d, d), dtype=bool)
    order = []
    iu = np.triu_indices(d, k=1)
    for it in range(n_iterations + 1):
        # t'_i = sum over kept pairs (i, j) of t_ij = (D - 1 - e_i) w_i + sum_{kept j} w_j
        keep = ~excluded
        np.fill_diagonal(keep, False)
        m = keep.astype(np.float64)
        np.fill_diagonal(m, keep.sum(axis=1))  # D - 1 - e_i
        rhs = np.where(keep, t, 0.0).sum(axis=1)
        # least squares: once many pairs are excluded at small D the system can be singular
        omega2 = np.clip(np.linalg.lstsq(m, rhs, rcond=None)[0], min_variance, None)
        omega = np.sqrt(omega2)
        rho = (omega2[:, None] + omega2[None, :] - t) / (2.0 * np.outer(omega, omega))
        np.clip(rho, -1.0, 1.0, out=rho)
        np.fill_diagonal(rho, 1.0)
        if it == n_iterations:
            break
        strength = np.abs(rho[iu])
        strength[excluded[iu]] = -1.0
        best = int(np.argmax(strength))
        if strength[best] <= threshold:
            break
        i, j = iu[0][best], iu[1][best]
        excluded[i, j] = excluded[j, i] = True
        order.append((int(i), int(j)))
    return omega2, rho, order


def sparcc(X, *, n_draws=20, n_iterations=10, threshold=0.1, min_variance=1e-4,
           random_state=None) -> SparCCResult:
    r"""SparCC correlations of log basis abundances (Friedman & Alm 2012), written here.

    The variation matrix :math:`t_{ij} = \operatorname{Var}(\log(x_i / x_j))` does not depend on
    the unknown totals. With basis variances :math:`\omega_i^2` and correlations
    :math:`\rho_{ij}`, :math:`t_{ij} = \omega_i^2 + \omega_j^2 - 2\rho_{ij}\omega_i\omega_j`.
    Assuming the basis is sparsely correlated, the covariance terms are dropped from the row sums,

    .. math::

        t_i = \sum_{j \ne i} t_{ij} \approx (D - 2)\,\omega_i^2 + \sum_j \omega_j^2,

    a linear system for :math:`\omega^2`, and then
    :math:`\rho_{ij} = (\omega_i^2 + \omega_j^2 - t_{ij}) / (2\omega_i\omega_j)`. Iteratively, the
    most strongly correlated pair (:math:`|\rho_{ij}| >` ``threshold``) is excluded -- its
    :math:`t_{ij}` leaves the row sums of i and j and the system is rebuilt without it -- and the
    variances and correlations are recomputed, at most ``n_iterations`` times.

    Fractions are drawn from the Dirichlet posterior Dir(x + 1) of each sample (``n_draws``
    times) and the results are summarised by the median over draws, as in the authors' code.

    Simplifications (against the authors' ``SparCC.py``): one pair is excluded per iteration and
    no component is dropped for having too many excluded pairs (with at most ``n_iterations``
    exclusions among D features the system stays regular); correlations are clipped to [-1, 1];
    there is no bootstrap p-value. Note that SparCC estimates correlations of the log *basis*
    (absolute) abundances, not clr correlations; the two agree to O(1/D) when the basis
    covariance sums to about zero over each row (true of clr covariances).

    Parameters
    ----------
    X : array_like or scipy.sparse matrix of shape (n, D)
        Counts (samples x features). With ``n_draws=None``, strictly positive compositions (or
        counts without zeros) used as they are, closed to proportions.
    n_draws : int or None, default 20
        Dirichlet draws of the fractions; None uses ``X`` directly.
    n_iterations : int, default 10
        Most pairs excluded (the authors' ``xiter``).
    threshold : float, default 0.1
        Exclusion threshold on :math:`|\rho|` (the authors' ``th``).
    min_variance : float, default 1e-4
        Floor on the basis variances.
    random_state : int, numpy Generator or None

    Returns
    -------
    SparCCResult

    References
    ----------
    Friedman J, Alm EJ (2012) Inferring correlation networks from genomic survey data.
    PLoS Comput Biol 8(9): e1002687.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> counts = rng.poisson(50, size=(30, 5))
    >>> res = sparcc(counts, n_draws=5, random_state=0)
    >>> res.correlation.shape, bool(np.allclose(np.diag(res.correlation), 1))
    ((5, 5), True)
    """
    x = dense_counts(X)
    n, d = x.shape
    if d < 3:
        raise InputError(f"SparCC needs at least 3 features; got {d}.")
    if not (isinstance(n_iterations, (int, np.integer)) and n_iterations >= 0):
        raise InputError(f"n_iterations must be an integer >= 0; got {n_iterations!r}.")
    if n_draws is None:
        if np.any(x <= 0):
            i, j = np.argwhere(x <= 0)[0]
            raise InputError(
                f"with n_draws=None every entry must be > 0 (sample {i}, feature {j} is "
                f"{x[i, j]}); use Dirichlet draws (n_draws=20) for counts with zeros."
            )
        omega2, rho, order = _sparcc_basis(_variation_matrix(np.log(x)), n_iterations,
                                           threshold, min_variance)
        return SparCCResult(rho, rho * np.outer(np.sqrt(omega2), np.sqrt(omega2)), omega2, order)
    if not (isinstance(n_draws, (int, np.integer)) and n_draws >= 1):
        raise InputError(f"n_draws must be an integer >= 1 or None; got {n_draws!r}.")
    rng = np.random.default_rng(random_state)
    variances, correlations, first_order = [], [], None
    for _ in range(int(n_draws)):
        g = rng.standard_gamma(x + 1.0)  # Dir(x + 1) draw per row, up to the row total
        t = _variation_matrix(np.log(g))  # closure cancels in log-ratios
        omega2, rho, order = _sparcc_basis(t, n_iterations, threshold, min_variance)
        variances.append(omega2)
        correlations.append(rho)
        first_order = order if first_order is None else first_order
    omega2 = np.median(np.stack(variances), axis=0)
    rho = np.median(np.stack(correlations), axis=0)
    sd = np.sqrt(omega2)
    return SparCCResult(rho, rho * np.outer(sd, sd), omega2, first_order)


def rclr_pca(X, n_components, *, n_iterations=30, ridge=1e-3, random_state=0) -> PCAResult:
    r"""Robust Aitchison PCA in the style of DEICODE / gemelli (Martino et al. 2019), written here.

    The robust clr keeps zeros out: :math:`y_{ij} = \log x_{ij} - \frac{1}{|\Omega_i|}
    \sum_{j' \in \Omega_i} \log x_{ij'}` on the observed (non-zero) entries :math:`\Omega_i` of
    sample i, missing elsewhere. A rank-k completion

    .. math:: y_{ij} \approx a_i + \mu_j + u_i^\top v_j, \qquad (i, j) \in \Omega,

    is fitted by alternating ridge least squares (the row offset :math:`a_i` absorbs that each
    sample was centred over a different set of features), the completed table is clr-centred
    and probabilistic PCA gives loadings, embeddings and the covariance.

    Simplification: gemelli fits the completion with OptSpace (a Grassmann-manifold method) and
    reports the completed matrix's SVD; alternating least squares with a small ridge is a
    standard substitute for the same rank-k objective on the observed entries. Features that
    are never observed keep a zero loading.

    Parameters
    ----------
    X : array_like or scipy.sparse matrix of shape (n, D)
        Counts (samples x features); every sample needs at least one non-zero count.
    n_components : int
        Rank k.
    n_iterations : int, default 30
        Alternating sweeps.
    ridge : float, default 1e-3
        Ridge on each small least-squares problem (keeps rows with few observations regular).
    random_state : int or None

    Returns
    -------
    PCAResult

    References
    ----------
    Martino C, et al. (2019) A novel sparse compositional technique reveals microbial
    perturbations. mSystems 4: e00016-19.
    """
    x = dense_counts(X)
    n, d = x.shape
    k = check_n_components(n_components, n, d)
    obs = x > 0
    empty = ~obs.any(axis=1)
    if empty.any():
        raise InputError(f"sample {int(np.flatnonzero(empty)[0])} has no counts; drop empty "
                         "samples first.")
    logx = np.where(obs, np.log(np.where(obs, x, 1.0)), 0.0)
    y = logx - (logx.sum(axis=1) / obs.sum(axis=1))[:, None]
    y = np.where(obs, y, 0.0)
    w = obs.astype(np.float64)
    rng = np.random.default_rng(random_state)
    u = rng.normal(scale=0.1, size=(n, k))
    v = rng.normal(scale=0.1, size=(d, k))
    a = np.zeros(n)
    mu = (y * w).sum(axis=0) / np.maximum(w.sum(axis=0), 1.0)
    eye = ridge * np.eye(k + 1)

    def solve(weights, design, target):
        # per row r: (Σ_j w_rj f_j f_jᵀ + λI)⁻¹ Σ_j w_rj f_j t_rj, f_j = design[j]  (k+1 wide)
        gram = np.einsum("rj,jp,jq->rpq", weights, design, design) + eye  # (R, k+1, k+1)
        rhs = (weights * target) @ design  # (R, J) @ (J, k+1) -> (R, k+1)
        return np.linalg.solve(gram, rhs[..., None])[..., 0]

    for _ in range(int(n_iterations)):
        coef = solve(w, np.hstack([v, np.ones((d, 1))]), y - mu[None, :])  # (n, k+1)
        u, a = coef[:, :k], coef[:, k]
        coef = solve(w.T, np.hstack([u, np.ones((n, 1))]), (y - a[:, None]).T)  # (D, k+1)
        v, mu = coef[:, :k], coef[:, k]
    never = ~obs.any(axis=0)
    v[never] = 0.0
    mu[never] = 0.0
    completed = u @ v.T + mu[None, :]  # (n, k) @ (k, D); row offsets a_i vanish under clr
    return ppca(centre_log_rows(completed), k)


def _import_pyplnmodels():
    """Import pyPLNmodels, tolerating a setuptools without ``pkg_resources``.

    pyPLNmodels 1.0.x imports ``pkg_resources`` (removed from recent setuptools) only to read its
    bundled example data; a stand-in with ``resource_stream`` on ``importlib.resources`` is put in
    place while pyPLNmodels is imported, and taken out of ``sys.modules`` again afterwards so that
    the user's process is left as it was. Nothing else of setuptools is used.
    """
    import importlib.resources
    import importlib.util
    import sys
    import types

    shim = None
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")
        shim.resource_stream = (
            lambda package, path: importlib.resources.files(package).joinpath(path).open("rb"))
        sys.modules["pkg_resources"] = shim
    try:
        import pyPLNmodels
    except ImportError as exc:
        raise ImportError("pln_pca needs the optional package pyPLNmodels "
                          "(pip install pyPLNmodels)") from exc
    finally:
        if shim is not None and sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]
    return pyPLNmodels


def pln_pca(X, n_components, *, max_iterations=400, random_state=0) -> PCAResult:
    r"""Poisson log-normal PCA (Chiquet, Mariadassou & Robin 2018) through pyPLNmodels.

    .. math::

        z_i \sim N(0, I_k), \quad \ell_i = \mu + C z_i, \quad
        x_{ij} \sim \operatorname{Poisson}(e^{o_i + \ell_{ij}}), \quad o_i = \log \textstyle\sum_j x_{ij}

    fitted by variational inference (``pyPLNmodels.PlnPCA``, offsets "logsum"). Poisson counts
    with a free per-sample offset are the multinomial conditional on the depth, so this is the
    MVAE's generative model without the isotropic noise term and with an amortisation-free
    posterior. Its covariance of log abundances is :math:`CC^\top`; the clr covariance is
    :math:`HCC^\top H` (returned with ``noise_variance = 0``). Features with no counts are
    removed before the fit and get zero loadings.

    Parameters
    ----------
    X : array_like or scipy.sparse matrix of shape (n, D)
    n_components : int
    max_iterations : int, default 400
        pyPLNmodels' ``maxiter``.
    random_state : int
        Seeds torch for the fit.

    Returns
    -------
    PCAResult
        ``embeddings`` are the posterior means of the k latent coordinates (pyPLNmodels'
        ``latent_mean``); ``mean_clr`` the clr of the intercept.

    Raises
    ------
    ImportError
        When pyPLNmodels is not installed.
    """
    import contextlib
    import io

    import torch

    pyplnmodels = _import_pyplnmodels()
    x = dense_counts(X)
    n, d = x.shape
    k = int(n_components)
    keep = x.sum(axis=0) > 0
    sink = io.StringIO()
    # pyPLNmodels draws from torch's global generator: seed it inside fork_rng, which restores
    # the caller's random state afterwards
    with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink):
        torch.manual_seed(int(random_state))
        model = pyplnmodels.PlnPCA(x[:, keep], rank=k, compute_offsets_method="logsum")
        model.fit(maxiter=int(max_iterations))
    comp = np.asarray(model.components.detach().cpu().double())  # (D_kept, k)
    loadings = np.zeros((d, k))
    loadings[keep] = comp
    loadings -= loadings.mean(axis=0)  # H C
    coef = np.zeros(d)
    coef_kept = model.coef
    if coef_kept is not None:
        coef[keep] = np.asarray(coef_kept.detach().cpu().double()).reshape(-1)[: keep.sum()]
    latent = np.asarray(model.latent_mean.detach().cpu().double())  # (n, k) posterior means
    u, s, vt = np.linalg.svd(loadings, full_matrices=False)
    return PCAResult(embeddings=latent, loadings_clr=loadings, noise_variance=0.0,
                     explained_variance=s**2, mean_clr=coef - coef.mean())

