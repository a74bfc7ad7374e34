"""SparCC, robust Aitchison PCA, PLN-PCA and the PCA of a log table (mvae.evaluation.baselines).

SparCC is checked against values worked out by hand from its equations (Friedman & Alm 2012):
with no exclusions the basis variances have the closed form

    ω_i² = (t_i − T / (2(D − 1))) / (D − 2),   t_i = Σ_j t_ij,  T = Σ_i t_i,

(sum the D equations (D − 2)ω_i² + Σ_j ω_j² = t_i), and on a basis whose log abundances are
exactly uncorrelated except for one pair, excluding that pair makes the remaining equations exact,
so SparCC must return the constructed variances and correlation to rounding error.
"""

import numpy as np
import pytest

from mvae.evaluation.baselines import clr_pca, clr_table_pca, rclr_pca, sparcc
from mvae.errors import InputError
from mvae.evaluation.metrics import subspace_distance


def _orthogonal_columns(n, d, seed):
    """n x d matrix with centred, exactly orthonormal columns (sample covariance = I / n)."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n, d))
    g -= g.mean(axis=0)
    q, _ = np.linalg.qr(g)
    return q


def _compositions(log_basis):
    x = np.exp(log_basis)
    return x / x.sum(axis=1, keepdims=True)


def _variation_by_loops(logx):
    d = logx.shape[1]
    t = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            t[i, j] = np.var(logx[:, i] - logx[:, j])
    return t


def test_sparcc_variances_match_the_closed_form_without_exclusions():
    rng = np.random.default_rng(1)
    x = _compositions(rng.normal(size=(40, 6)) * np.array([1.0, 1.5, 0.8, 2.0, 1.2, 1.1]))
    res = sparcc(x, n_draws=None, n_iterations=0, min_variance=0.0)
    t = _variation_by_loops(np.log(x))
    d = t.shape[0]
    ti = t.sum(axis=1)
    expected = (ti - ti.sum() / (2 * (d - 1))) / (d - 2)
    assert np.all(expected > 0.1)
    np.testing.assert_allclose(res.variances, expected, rtol=1e-10)
    i, j = 0, 3  # one pair by hand: ρ = (ω_i² + ω_j² − t_ij) / (2 ω_i ω_j)
    rho = (expected[i] + expected[j] - t[i, j]) / (2 * np.sqrt(expected[i] * expected[j]))
    assert res.correlation[i, j] == pytest.approx(np.clip(rho, -1, 1), abs=1e-10)


def test_sparcc_independent_basis_gives_its_variances_and_zero_correlations():
    n, d = 50, 8
    s = np.linspace(0.5, 2.0, d)
    y = _orthogonal_columns(n, d, 0) * np.sqrt(s * n)  # column variances (ddof=0) exactly s
    res = sparcc(_compositions(y), n_draws=None)
    np.testing.assert_allclose(res.variances, s, rtol=1e-9)
    np.testing.assert_allclose(res.correlation, np.eye(d), atol=1e-9)
    assert res.excluded == []


def test_sparcc_exclusion_recovers_a_strong_pair_exactly():
    n, d, r = 60, 8, 0.8
    s = np.linspace(0.6, 1.8, d)
    q = _orthogonal_columns(n, d, 3) * np.sqrt(n)  # unit-variance, uncorrelated columns
    y = q * np.sqrt(s)
    y[:, 1] = np.sqrt(s[1]) * (r * q[:, 0] + np.sqrt(1 - r**2) * q[:, 1])  # corr(y0, y1) = r
    x = _compositions(y)
    naive = sparcc(x, n_draws=None, n_iterations=0)
    res = sparcc(x, n_draws=None, n_iterations=10)
    assert (0, 1) in res.excluded
    assert res.correlation[0, 1] == pytest.approx(r, abs=1e-9)
    np.testing.assert_allclose(res.variances, s, rtol=1e-9)
    off = res.correlation - np.eye(d)
    off[0, 1] = off[1, 0] = 0
    np.testing.assert_allclose(off, 0, atol=1e-9)
    assert abs(naive.correlation[0, 1] - r) > 0.01  # without exclusion the pair is biased


def test_sparcc_draws_are_reproducible_and_close_to_the_fractions_at_high_depth():
    rng = np.random.default_rng(4)
    p = _compositions(rng.normal(size=(30, 5)))
    counts = np.rint(p * 1e7)
    before = counts.copy()
    a = sparcc(counts, n_draws=5, random_state=0)
    b = sparcc(counts, n_draws=5, random_state=0)
    np.testing.assert_array_equal(a.correlation, b.correlation)
    np.testing.assert_array_equal(counts, before)  # input not modified
    exact = sparcc(p, n_draws=None)
    np.testing.assert_allclose(a.correlation, exact.correlation, atol=1e-2)
    np.testing.assert_allclose(a.correlation, a.correlation.T)
    np.testing.assert_allclose(np.diag(a.correlation), 1.0)
    np.testing.assert_allclose(a.covariance, a.correlation * np.outer(*[np.sqrt(a.variances)] * 2))


def test_sparcc_errors_name_the_problem():
    with pytest.raises(InputError, match="n_draws=None"):
        sparcc(np.array([[1, 0, 3], [2, 2, 2]]), n_draws=None)
    with pytest.raises(InputError, match="at least 3 features"):
        sparcc(np.ones((5, 2)))
    with pytest.raises(InputError, match="n_draws"):
        sparcc(np.ones((5, 4)), n_draws=0)


def _low_rank_log_table(n, d, k, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, k)) @ rng.normal(size=(k, d)) + rng.normal(size=d)


def test_clr_table_pca_matches_an_svd_of_the_clr_table():
    y = _low_rank_log_table(50, 9, 3, 0) + 0.1 * np.random.default_rng(1).normal(size=(50, 9))
    res = clr_table_pca(y, 3)
    c = y - y.mean(axis=1, keepdims=True)
    c -= c.mean(axis=0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    assert subspace_distance(vt[:3].T, res.loadings_clr) < 1e-12
    np.testing.assert_allclose(res.loadings_clr.sum(axis=0), 0, atol=1e-10)


def test_rclr_pca_equals_clr_pca_on_a_complete_low_rank_table():
    y = _low_rank_log_table(60, 12, 2, 2)
    x = np.exp(y)
    a = rclr_pca(x, 2, n_iterations=50)
    b = clr_pca(x, 2, pseudocount=0.0)
    assert subspace_distance(a.loadings_clr, b.loadings_clr) < 1e-8


def test_rclr_pca_completes_missing_entries_of_a_low_rank_table():
    y = _low_rank_log_table(80, 12, 2, 5)
    x = np.exp(y)
    full = clr_pca(x, 2, pseudocount=0.0)
    rng = np.random.default_rng(0)
    x[rng.random(x.shape) < 0.3] = 0.0  # zeros are missing values to the robust clr
    res = rclr_pca(x, 2, n_iterations=300, ridge=1e-9)
    assert subspace_distance(res.loadings_clr, full.loadings_clr) < 1e-4
    naive = clr_pca(x, 2, pseudocount=1e-3)
    assert subspace_distance(naive.loadings_clr, full.loadings_clr) > 0.01


def test_rclr_pca_rejects_empty_samples():
    x = np.ones((5, 4))
    x[2] = 0
    with pytest.raises(InputError, match="sample 2 has no counts"):
        rclr_pca(x, 1)


@pytest.mark.slow  # importing pyPLNmodels (seaborn, scikit-learn) takes ~10 s
def test_pln_pca_when_installed():
    from mvae.evaluation.baselines import _import_pyplnmodels, pln_pca

    try:
        _import_pyplnmodels()
    except ImportError:
        pytest.skip("pyPLNmodels is not installed")
    from mvae.evaluation.simulate import simulate

    sim = simulate(80, 12, 2, depth=500, random_state=0)
    res = pln_pca(sim.counts, 2, max_iterations=50)
    assert res.loadings_clr.shape == (12, 2) and res.embeddings.shape == (80, 2)
    np.testing.assert_allclose(res.loadings_clr.sum(axis=0), 0, atol=1e-9)
    assert np.all(np.isfinite(res.loadings_clr))
