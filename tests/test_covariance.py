"""LowRankCovariance against dense numpy computations (pinv, slogdet, eigvalsh, sorting)."""

import numpy as np
import pandas as pd
import pytest
import scipy.linalg

from mvae.maths.covariance import LowRankCovariance
from mvae.errors import InputError

# (space, n_features, k, noise_variance)
CASES = [
    ("clr", 12, 3, 0.1),
    ("clr", 30, 1, 2.0),
    ("clr", 8, 7, 0.05),
    ("ilr", 11, 3, 0.1),
    ("ilr", 25, 4, 0.7),
]


class DenseHelmert:
    """Test double for an ILR basis: forward(v) = Psi^T v with Psi^T = scipy.linalg.helmert(D)."""

    def __init__(self, d):
        self.psi_t = scipy.linalg.helmert(d)  # (D - 1, D), orthonormal rows orthogonal to 1

    def forward(self, v):
        return np.asarray(v) @ self.psi_t.T


def _make(space, d, k, s2, seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((d, k))
    cov = LowRankCovariance(raw, s2, space=space)
    if space == "clr":
        f = raw - raw.mean(axis=0)
        dense = f @ f.T + s2 * (np.eye(d) - np.ones((d, d)) / d)
    else:
        dense = raw @ raw.T + s2 * np.eye(d)
    return cov, dense


@pytest.mark.parametrize("space,d,k,s2", CASES)
def test_dense_diagonal_matvec(space, d, k, s2):
    cov, ref = _make(space, d, k, s2)
    rng = np.random.default_rng(1)
    np.testing.assert_allclose(cov.dense(), ref, atol=1e-12)
    np.testing.assert_allclose(cov.diagonal(), np.diag(ref), atol=1e-12)
    v = rng.standard_normal(d)
    m = rng.standard_normal((d, 4))
    np.testing.assert_allclose(cov.matvec(v), ref @ v, atol=1e-12)
    np.testing.assert_allclose(cov.matvec(m), ref @ m, atol=1e-12)
    assert cov.n_features == d and cov.space == space


@pytest.mark.parametrize("space,d,k,s2", CASES)
def test_precision_matches_pseudo_inverse(space, d, k, s2):
    cov, ref = _make(space, d, k, s2)
    rng = np.random.default_rng(2)
    m = rng.standard_normal((d, 3))
    pinv = np.linalg.pinv(ref, rcond=1e-10, hermitian=True)
    np.testing.assert_allclose(cov.precision_matvec(m), pinv @ m, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(cov.precision_matvec(m[:, 0]), pinv @ m[:, 0], rtol=1e-8, atol=1e-9)
    # Sigma Sigma^+ is the projector P: H in clr space, I in ilr space
    proj = cov.matvec(cov.precision_matvec(np.eye(d)))
    expected = np.eye(d) - np.ones((d, d)) / d if space == "clr" else np.eye(d)
    np.testing.assert_allclose(proj, expected, atol=1e-9)


@pytest.mark.parametrize("space,d,k,s2", CASES)
def test_logdet_on_subspace(space, d, k, s2):
    cov, ref = _make(space, d, k, s2)
    if space == "clr":
        eig = np.sort(np.linalg.eigvalsh(ref))
        assert abs(eig[0]) < 1e-10  # the 1 direction
        expected = np.sum(np.log(eig[1:]))
        # the same number as the ilr covariance in any orthonormal basis
        psi_t = scipy.linalg.helmert(d)
        sign, ilr_logdet = np.linalg.slogdet(psi_t @ ref @ psi_t.T)
        assert sign > 0
        np.testing.assert_allclose(ilr_logdet, expected, rtol=1e-10)
    else:
        sign, expected = np.linalg.slogdet(ref)
        assert sign > 0
    np.testing.assert_allclose(cov.logdet(), expected, rtol=1e-10)


def test_factor_is_centred_in_clr_and_kept_in_ilr():
    raw = np.arange(12.0).reshape(4, 3)
    clr = LowRankCovariance(raw, 0.1)
    np.testing.assert_allclose(clr.factor.sum(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(clr.factor, raw - raw.mean(axis=0))
    np.testing.assert_array_equal(LowRankCovariance(raw, 0.1, space="ilr").factor, raw)
    assert raw[0, 0] == 0.0  # input not modified
    with pytest.raises(ValueError):
        clr.factor[0, 0] = 1.0  # read-only


def test_correlation_dense():
    cov, ref = _make("clr", 15, 2, 0.3)
    sd = np.sqrt(np.diag(ref))
    np.testing.assert_allclose(cov.correlation_dense(), ref / np.outer(sd, sd), atol=1e-12)


def test_to_ilr_matches_dense_change_of_basis():
    d = 10
    cov, ref = _make("clr", d, 3, 0.2)
    basis = DenseHelmert(d)
    ilr = cov.to_ilr(basis)
    assert ilr.space == "ilr" and ilr.n_features == d - 1
    np.testing.assert_allclose(ilr.dense(), basis.psi_t @ ref @ basis.psi_t.T, atol=1e-12)
    np.testing.assert_allclose(ilr.logdet(), cov.logdet(), rtol=1e-12)


def test_dense_refused_above_memory_limit():
    cov = LowRankCovariance(np.zeros((100_000, 2)), 0.1)
    with pytest.raises(ValueError, match=r"100000 x 100000.*80,000,000,000 bytes"):
        cov.dense()
    with pytest.raises(ValueError, match="max_bytes"):
        cov.correlation_dense()
    assert cov.diagonal().shape == (100_000,)  # the cheap methods still work
    small = LowRankCovariance(np.ones((10, 1)), 0.1)
    with pytest.raises(ValueError, match="800 bytes"):
        small.dense(max_bytes=100)


def test_invalid_arguments():
    with pytest.raises(InputError, match="noise_variance"):
        LowRankCovariance(np.ones((5, 2)), -1.0)
    with pytest.raises(InputError, match="space"):
        LowRankCovariance(np.ones((5, 2)), 0.1, space="alr")
    with pytest.raises(InputError, match="feature_ids has 3 entries"):
        LowRankCovariance(np.ones((5, 2)), 0.1, feature_ids=["a", "b", "c"])
    with pytest.raises(InputError, match="2-D"):
        LowRankCovariance(np.ones(5), 0.1)
    with pytest.raises(InputError, match=r"shape \(5,\)"):
        LowRankCovariance(np.ones((5, 2)), 0.1).matvec(np.ones(4))
    with pytest.raises(InputError, match="noise_variance > 0"):
        LowRankCovariance(np.ones((5, 2)), 0.0).precision_matvec(np.ones(5))


# ----------------------------------------------------------------------------- edge lists
def _brute_force(cov, names, n, min_abs=0.0):
    """Every pair i < j of the dense correlation matrix, sorted by |r| descending."""
    corr = cov.correlation_dense()
    dense = cov.dense()
    i, j = np.triu_indices(cov.n_features, k=1)
    r = corr[i, j]
    keep = np.abs(r) >= min_abs
    i, j, r = i[keep], j[keep], r[keep]
    order = np.argsort(-np.abs(r), kind="stable")[:n]
    return pd.DataFrame(
        {
            "feature_a": np.asarray(names)[i[order]],
            "feature_b": np.asarray(names)[j[order]],
            "correlation": r[order],
            "covariance": dense[i[order], j[order]],
        }
    )


@pytest.mark.parametrize("space", ["clr", "ilr"])
@pytest.mark.parametrize("chunk_size", [None, 1, 7, 50])
@pytest.mark.parametrize("n", [10, 1225, 5000])
def test_top_correlations_equal_brute_force(space, chunk_size, n):
    d = 50
    rng = np.random.default_rng(3)
    names = [f"otu_{i}" for i in range(d)]
    cov = LowRankCovariance(rng.standard_normal((d, 3)), 0.5, space=space, feature_ids=names)
    got = cov.top_correlations(n, chunk_size=chunk_size)
    expected = _brute_force(cov, names, n)
    assert list(got.columns) == ["feature_a", "feature_b", "correlation", "covariance"]
    assert len(got) == min(n, d * (d - 1) // 2)
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-10, atol=1e-12)


def test_top_correlations_min_abs_and_default_names():
    rng = np.random.default_rng(4)
    cov = LowRankCovariance(rng.standard_normal((40, 2)), 1.0)
    got = cov.top_correlations(10_000, min_abs=0.4, chunk_size=3)
    expected = _brute_force(cov, [f"f{i}" for i in range(40)], 10_000, min_abs=0.4)
    assert 0 < len(got) < 40 * 39 // 2
    assert got["feature_a"].str.startswith("f").all()
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-10, atol=1e-12)
    assert cov.top_correlations(0).shape == (0, 4)


def test_top_correlations_many_tiles_structured():
    """Blocks of strongly co-varying features, D large enough for several column tiles."""
    d, k = 1500, 5
    rng = np.random.default_rng(5)
    block = rng.integers(0, k, size=d)
    f = np.zeros((d, k))
    f[np.arange(d), block] = rng.gamma(1.0, 1.0, size=d)  # heavy-ish tail of loadings
    f += 0.05 * rng.standard_normal((d, k))
    cov = LowRankCovariance(f, 0.2)
    names = [f"f{i}" for i in range(d)]
    for chunk_size in (128, 1000):
        got = cov.top_correlations(3000, chunk_size=chunk_size)
        pd.testing.assert_frame_equal(
            got, _brute_force(cov, names, 3000), check_exact=False, rtol=1e-10, atol=1e-12
        )


def test_top_correlations_memory_is_not_quadratic():
    """D = 20,000 would need 3.2 GB dense; the scan stays within a few MB."""
    import tracemalloc

    rng = np.random.default_rng(6)
    cov = LowRankCovariance(rng.standard_normal((20_000, 3)), 0.1)
    tracemalloc.start()
    try:
        top = cov.top_correlations(100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(top) == 100
    assert peak < 50e6
    # spot-check the returned values against the definition
    f, d = cov.factor, cov.diagonal()
    ids = {name: i for i, name in enumerate(cov.feature_ids)}
    a = top["feature_a"].map(ids).to_numpy()
    b = top["feature_b"].map(ids).to_numpy()
    covab = np.sum(f[a] * f[b], axis=1) - 0.1 / 20_000
    np.testing.assert_allclose(top["covariance"], covab, rtol=1e-12)
    np.testing.assert_allclose(top["correlation"], covab / np.sqrt(d[a] * d[b]), rtol=1e-12)
    assert np.all(np.diff(np.abs(top["correlation"].to_numpy())) <= 0)


@pytest.mark.slow
def test_top_correlations_at_100k_features():
    """D = 100,000, k = 10, n = 1000: O(D^2 k) work, the sorted strongest pairs (its time is
    in benchmarks/results/throughput/code_choices.md, not asserted here)."""
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.standard_normal((100_000, 10)))
    cov = LowRankCovariance(q * np.sqrt(np.geomspace(4.0, 1.0, 10)), 0.1)
    top = cov.top_correlations(1000)
    assert len(top) == 1000
    assert np.all(np.diff(np.abs(top["correlation"].to_numpy())) <= 0)
