"""The simulator: shapes, seeds, and that the table follows the stated generative model."""

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
import scipy.special

import mvae.evaluation.simulate as simulate_module
from mvae.maths.covariance import LowRankCovariance
from mvae.errors import InputError
from mvae.evaluation.simulate import Simulation, simulate


class DenseHelmert:
    """Test double for an ILR basis: forward(v) = Psi^T v with Psi^T = scipy.linalg.helmert(D)."""

    def __init__(self, d):
        self.psi_t = scipy.linalg.helmert(d)  # (D - 1, D)

    def forward(self, v):
        return np.asarray(v) @ self.psi_t.T


@pytest.fixture(scope="module")
def small():
    return simulate(60, 25, 4, depth=2000, random_state=11)


def test_shapes_and_types(small):
    sim = small
    assert isinstance(sim, Simulation)
    assert sp.isspmatrix_csr(sim.counts) and sim.counts.dtype == np.int64
    assert sim.counts.shape == (60, 25)
    assert sim.z.shape == (60, 4)
    assert sim.eta_clr.shape == (60, 25)
    assert sim.loadings_clr.shape == (25, 4)
    assert sim.bias_clr.shape == (25,)
    assert sim.depths.shape == (60,) and sim.depths.dtype == np.int64
    assert sim.eigenvalues.shape == (4,)
    assert sim.sample_ids[0] == "s0" and sim.sample_ids[-1] == "s59"
    assert sim.feature_ids[0] == "f0" and sim.feature_ids[-1] == "f24"
    assert sim.random_state == 11
    np.testing.assert_array_equal(np.asarray(sim.counts.sum(axis=1)).ravel(), sim.depths)
    assert sim.counts.min() >= 0
    assert sim.n_samples == 60 and sim.n_features == 25 and sim.n_latent == 4


def test_truth_is_in_clr_coordinates(small):
    sim = small
    lam = sim.eigenvalues
    np.testing.assert_allclose(lam, np.geomspace(0.2 * 25, 0.02 * 25, 4))  # default scales with D
    np.testing.assert_allclose(sim.loadings_clr.sum(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(sim.bias_clr.sum(), 0.0, atol=1e-12)
    np.testing.assert_allclose(sim.eta_clr.sum(axis=1), 0.0, atol=1e-10)
    q = sim.loadings_clr / np.sqrt(lam)
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-12)  # Q orthonormal
    # eigenvalues of W W^T are lambda
    eig = np.sort(np.linalg.eigvalsh(sim.loadings_clr @ sim.loadings_clr.T))[::-1]
    np.testing.assert_allclose(eig[:4], lam, rtol=1e-10)


def test_seeded_reproducibility():
    a = simulate(40, 30, 3, depth=300, random_state=5)
    b = simulate(40, 30, 3, depth=300, random_state=5)
    c = simulate(40, 30, 3, depth=300, random_state=6)
    assert (a.counts != b.counts).nnz == 0
    np.testing.assert_array_equal(a.z, b.z)
    np.testing.assert_array_equal(a.eta_clr, b.eta_clr)
    np.testing.assert_array_equal(a.loadings_clr, b.loadings_clr)
    assert (a.counts != c.counts).nnz > 0
    assert not np.allclose(a.loadings_clr, c.loadings_clr)
    # the chunk size is a memory setting; it must not change the draw
    d = simulate(40, 30, 3, depth=300, random_state=5, chunk_size=7)
    assert (a.counts != d.counts).nnz == 0
    np.testing.assert_array_equal(a.eta_clr, d.eta_clr)
    # an unseeded run records the entropy that reproduces it
    e = simulate(10, 8, 2, depth=100)
    f = simulate(10, 8, 2, depth=100, random_state=e.random_state)
    assert (e.counts != f.counts).nnz == 0


def test_empirical_clr_covariance_approaches_truth():
    """n = 20000, D = 20: the sample covariance of eta_clr is within 5% (relative Frobenius).

    The standard error of each entry is about sqrt((S_ii S_jj + S_ij^2) / n), which gives an
    expected relative Frobenius error of ~2% here; 5% leaves room for the seed.
    """
    sim = simulate(20_000, 20, 3, depth=100, random_state=0)
    emp = np.cov(sim.eta_clr, rowvar=False)
    true = sim.covariance_clr()
    d = 20
    expected = (
        sim.loadings_clr @ sim.loadings_clr.T + sim.sigma**2 * (np.eye(d) - np.ones((d, d)) / d)
    )
    np.testing.assert_allclose(true, expected, atol=1e-12)
    assert np.linalg.norm(emp - true) / np.linalg.norm(true) < 0.05
    # the latents are standard normal
    np.testing.assert_allclose(np.cov(sim.z, rowvar=False), np.eye(3), atol=0.05)


def test_counts_follow_softmax_of_eta():
    """With 10^6 reads per sample, x / N is within 6 binomial sd of softmax(eta)."""
    sim = simulate(30, 10, 2, depth=1_000_000, depth_sd=0.0, random_state=1)
    p = scipy.special.softmax(sim.eta_clr, axis=1)
    x = sim.counts.toarray() / 1_000_000
    sd = np.sqrt(p * (1 - p) / 1_000_000)
    assert np.all(np.abs(x - p) <= 6 * sd + 1e-12)
    assert np.all(sim.depths == 1_000_000)


def test_depth_distribution():
    sim = simulate(4000, 5, 1, depth=500, depth_sd=0.4, random_state=2)
    log_n = np.log(sim.depths)
    assert abs(np.median(sim.depths) - 500) / 500 < 0.05
    assert abs(log_n.std() - 0.4) < 0.02
    tiny = simulate(200, 5, 1, depth=1, depth_sd=2.0, random_state=3)
    assert tiny.depths.min() >= 1  # rounding never gives an empty sample


def test_density_falls_with_lower_depth_and_wider_spread():
    def density(depth, spread):
        return simulate(
            200, 100, 3, depth=depth, abundance_spread=spread, random_state=4
        ).density

    by_depth = [density(dp, 1.0) for dp in (10_000, 1000, 100, 20)]
    by_spread = [density(300, s) for s in (0.5, 1.0, 2.0, 3.0)]
    assert all(a > b for a, b in zip(by_depth, by_depth[1:]))
    assert all(a > b for a, b in zip(by_spread, by_spread[1:]))
    assert by_depth[0] > 0.99  # deep sequencing, modest spread: (almost) no zeros
    sparse = simulate(200, 1000, 3, depth=50, abundance_spread=3.0, random_state=4)
    assert sparse.density < 0.05  # the 95%+ zeros of real 16S tables
    nz = sparse.counts.toarray() != 0
    assert sparse.density == pytest.approx(nz.mean())


def test_large_d_runs_in_chunks_without_dense_matrices(monkeypatch):
    """D = 100,000: a dense D x D would be 80 GB; the simulation stays far below 1 GB."""
    import tracemalloc

    tracemalloc.start()
    try:
        sim = simulate(12, 100_000, 5, depth=5000, random_state=7)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 300e6
    assert sim.counts.shape == (12, 100_000)
    assert sim.covariance.diagonal().shape == (100_000,)
    with pytest.raises(ValueError, match="max_bytes"):
        sim.covariance_clr()
    # eta_clr is dropped when n * D exceeds the limit (lowered here to keep the test small)
    monkeypatch.setattr(simulate_module, "_ETA_MAX_ENTRIES", 100)
    assert simulate(10, 20, 2, random_state=0).eta_clr is None
    assert simulate(5, 20, 2, random_state=0).eta_clr is not None


def test_covariance_and_correlation(small):
    cov = small.covariance
    assert isinstance(cov, LowRankCovariance)
    assert cov.noise_variance == pytest.approx(0.316**2)
    dense = small.covariance_clr()
    sd = np.sqrt(np.diag(dense))
    np.testing.assert_allclose(small.correlation_clr(), dense / np.outer(sd, sd), atol=1e-12)
    assert list(cov.feature_ids[:2]) == ["f0", "f1"]


def test_loadings_ilr_with_a_dense_basis(small):
    basis = DenseHelmert(25)
    w = small.loadings_ilr(basis)
    assert w.shape == (24, 4)
    np.testing.assert_allclose(w, basis.psi_t @ small.loadings_clr, atol=1e-12)
    np.testing.assert_allclose(w.T @ w, small.loadings_clr.T @ small.loadings_clr, atol=1e-12)


def test_to_anndata(small):
    adata = small.to_anndata()
    assert adata.shape == (60, 25)
    assert sp.issparse(adata.X)
    np.testing.assert_array_equal(adata.X.toarray(), small.counts.toarray())
    np.testing.assert_array_equal(adata.obs["depth"].to_numpy(), small.depths)
    assert list(adata.obs_names[:2]) == ["s0", "s1"]
    assert list(adata.var_names[:2]) == ["f0", "f1"]
    np.testing.assert_array_equal(adata.obsm["z_true"], small.z)
    np.testing.assert_array_equal(adata.varm["loadings_clr_true"], small.loadings_clr)
    assert adata.uns["simulation"]["sigma"] == pytest.approx(0.316)
    assert adata.uns["simulation"]["random_state"] == "11"


def test_custom_eigenvalues_and_noise_free():
    sim = simulate(50, 12, 2, eigenvalues=[9.0, 0.5], sigma=0.0, random_state=8)
    gram = sim.loadings_clr.T @ sim.loadings_clr
    np.testing.assert_allclose(gram, np.diag([9.0, 0.5]), atol=1e-12)
    expected = sim.z @ sim.loadings_clr.T + sim.bias_clr  # no noise at all
    np.testing.assert_allclose(sim.eta_clr, expected, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n_latent=10, n_features=10), "n_latent"),
        (dict(eigenvalues=[1.0, 2.0]), "eigenvalues"),
        (dict(eigenvalues=[1.0, -1.0, 1.0]), "eigenvalues"),
        (dict(sigma=-0.1), "sigma"),
        (dict(depth=0), "depth"),
        (dict(n_samples=0), "n_samples"),
        (dict(random_state="seed"), "random_state"),
    ],
)
def test_invalid_arguments(kwargs, match):
    args = dict(n_samples=5, n_features=10, n_latent=3)
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        simulate(**args)


def test_frozen():
    sim = simulate(5, 6, 2, random_state=0)
    with pytest.raises(AttributeError):
        sim.sigma = 1.0
    with pytest.raises(ValueError):
        sim.z[0, 0] = 1.0


def test_package_level_simulate_is_the_function_even_after_submodule_import():
    import mvae
    import mvae.evaluation.simulate  # noqa: F401  (binds mvae.evaluation.simulate, not mvae.simulate)

    assert mvae.simulate is simulate and mvae.Simulation is Simulation
    a = mvae.simulate(20, 5, 2, random_state=1)
    b = simulate(20, 5, 2, random_state=1)
    np.testing.assert_array_equal(a.counts.toarray(), b.counts.toarray())
