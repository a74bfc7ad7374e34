"""Recovery metrics against scipy and dense computations."""

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial
import scipy.stats

from mvae.maths.covariance import LowRankCovariance
from mvae.errors import InputError
from mvae.evaluation.metrics import (
    CorrelationAgreement,
    correlation_agreement,
    covariance_to_correlation,
    embedding_r2,
    principal_angles,
    procrustes_disparity,
    relative_frobenius,
    subspace_distance,
)


def _projector(a):
    q = scipy.linalg.orth(a)
    return q @ q.T


# ----------------------------------------------------------------------------- subspaces
def _pair_at_angles(theta, extra_a=0, extra_b=0, d=30, seed=0):
    """Column spaces whose principal angles are exactly ``theta``, with mixed-up bases.

    A spans q_1..q_k, B spans cos(theta_i) q_i + sin(theta_i) q_{k+i}; ``extra_a`` / ``extra_b``
    more columns along directions orthogonal to both (they add dimensions, not angles).
    """
    rng = np.random.default_rng(seed)
    theta = np.asarray(theta, dtype=np.float64)
    k = len(theta)
    q, _ = np.linalg.qr(rng.standard_normal((d, 2 * k + extra_a + extra_b)))
    a = np.hstack([q[:, :k], q[:, 2 * k : 2 * k + extra_a]])
    b = np.hstack([q[:, :k] * np.cos(theta) + q[:, k : 2 * k] * np.sin(theta),
                   q[:, 2 * k + extra_a :]])
    # any basis of the same spaces: mix the columns with random invertible matrices
    return (a @ rng.standard_normal((a.shape[1],) * 2), b @ rng.standard_normal((b.shape[1],) * 2))


@pytest.mark.parametrize("theta,extra_a,extra_b", [
    ([0.2, 0.7, 1.1], 0, 0),
    ([0.1, 0.4, 0.9, 1.5], 0, 2),  # ka = 4, kb = 6
    ([0.3, 1.2], 4, 0),  # ka = 6, kb = 2
    ([0.6], 0, 0),
    ([0.0, np.pi / 2], 0, 0),  # a shared direction and an orthogonal one
])
def test_principal_angles_of_constructed_subspaces(theta, extra_a, extra_b):
    a, b = _pair_at_angles(theta, extra_a, extra_b, seed=len(theta) + extra_a)
    got = principal_angles(a, b)
    assert got.shape == (len(theta),)
    np.testing.assert_allclose(got, np.sort(theta), atol=1e-12)
    assert np.all(np.diff(got) >= 0)
    np.testing.assert_allclose(principal_angles(b, a), got, atol=1e-12)  # symmetric


def test_principal_angles_small_angles_are_accurate():
    theta = np.array([1e-12, 1e-10, 1e-9, 1e-6, 0.3])  # all below 45°: taken from the sines
    got = principal_angles(*_pair_at_angles(theta, seed=3))
    np.testing.assert_allclose(got, theta, rtol=1e-4)
    # beside an angle above 45° a tiny one is resolved only to a few sqrt(eps) (docstring)
    got = principal_angles(*_pair_at_angles([1e-9, np.radians(80)], seed=4))
    np.testing.assert_allclose(got, [1e-9, np.radians(80)], atol=1e-7)


def test_principal_angles_invariant_to_column_mixing_and_rank_deficient_input():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((20, 3))
    b = rng.standard_normal((20, 3))
    mix = rng.standard_normal((3, 3))
    np.testing.assert_allclose(principal_angles(a @ mix, b), principal_angles(a, b), atol=1e-10)
    # a duplicated column does not add a dimension
    a_dup = np.hstack([a, a[:, :1]])
    np.testing.assert_allclose(principal_angles(a_dup, b), principal_angles(a, b), atol=1e-10)


def test_subspace_distance_against_projectors():
    rng = np.random.default_rng(2)
    for ka, kb in [(3, 3), (2, 5), (5, 2)]:
        a = rng.standard_normal((25, ka))
        b = rng.standard_normal((25, kb))
        k = max(ka, kb)
        expected = np.linalg.norm(_projector(a) - _projector(b)) ** 2 / (2 * k)
        got = subspace_distance(a, b)
        np.testing.assert_allclose(got, expected, rtol=1e-10)
        assert 0.0 <= got <= 1.0
    a = rng.standard_normal((25, 3))
    theta = principal_angles(a, rng.standard_normal((25, 3)))
    np.testing.assert_allclose(
        subspace_distance(a, a @ rng.standard_normal((3, 3))), 0.0, atol=1e-20
    )
    b = rng.standard_normal((25, 3))
    np.testing.assert_allclose(
        subspace_distance(a, b), np.mean(np.sin(principal_angles(a, b)) ** 2), rtol=1e-12
    )
    assert theta.shape == (3,)


def test_subspace_distance_extremes():
    e = np.eye(6)
    assert subspace_distance(e[:, :3], e[:, 3:]) == pytest.approx(1.0)
    assert subspace_distance(e[:, :2], e[:, :2]) == pytest.approx(0.0)
    # rank 1 inside rank 2: the unmatched direction adds 1/2 -> (0 + 0.5) / 2
    assert subspace_distance(e[:, :1], e[:, :2]) == pytest.approx(0.25)


def test_subspace_errors():
    with pytest.raises(InputError, match="same number of rows"):
        principal_angles(np.ones((5, 2)), np.ones((6, 2)))
    with pytest.raises(InputError, match="zero"):
        subspace_distance(np.zeros((5, 2)), np.ones((5, 1)))


# ----------------------------------------------------------------------------- covariances
def _low_rank(space, d, k, s2, seed):
    rng = np.random.default_rng(seed)
    return LowRankCovariance(rng.standard_normal((d, k)), s2, space=space)


@pytest.mark.parametrize("space", ["clr", "ilr"])
def test_relative_frobenius_low_rank_path_equals_dense(space):
    a = _low_rank(space, 40, 3, 0.2, 0)
    b = _low_rank(space, 40, 5, 0.7, 1)
    da, db = a.dense(), b.dense()
    expected = np.linalg.norm(da - db) / np.linalg.norm(db)
    np.testing.assert_allclose(relative_frobenius(a, b), expected, rtol=1e-10)
    np.testing.assert_allclose(relative_frobenius(da, b), expected, rtol=1e-10)
    np.testing.assert_allclose(relative_frobenius(a, db), expected, rtol=1e-10)
    np.testing.assert_allclose(relative_frobenius(da, db), expected, rtol=1e-12)
    assert relative_frobenius(a, a) < 1e-6
    # a dense matrix that is not a clr covariance (rows do not sum to zero)
    rng = np.random.default_rng(3)
    m = rng.standard_normal((40, 40))
    m = m + m.T
    np.testing.assert_allclose(
        relative_frobenius(m, b), np.linalg.norm(m - db) / np.linalg.norm(db), rtol=1e-10
    )


def test_relative_frobenius_errors():
    with pytest.raises(InputError, match="same number of features"):
        relative_frobenius(np.eye(3), np.eye(4))
    with pytest.raises(InputError, match="to_ilr"):
        relative_frobenius(_low_rank("clr", 5, 1, 0.1, 0), _low_rank("ilr", 5, 1, 0.1, 0))
    with pytest.raises(InputError, match="zero matrix"):
        relative_frobenius(np.eye(3), np.zeros((3, 3)))


def test_covariance_to_correlation_hand_worked():
    s = np.array([[4.0, 2.0, 0.0], [2.0, 9.0, -3.0], [0.0, -3.0, 1.0]])
    expected = np.array([[1.0, 1 / 3, 0.0], [1 / 3, 1.0, -1.0], [0.0, -1.0, 1.0]])
    np.testing.assert_allclose(covariance_to_correlation(s), expected, atol=1e-15)
    out = covariance_to_correlation(np.diag([1.0, 0.0]))
    assert np.isnan(out[1, 1]) and out[0, 0] == 1.0


# ----------------------------------------------------------------------------- correlations
def _random_corr(d, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4 * d, d)) @ rng.standard_normal((d, d))
    return np.corrcoef(x, rowvar=False)


def test_correlation_agreement_matches_scipy():
    est, true = _random_corr(12, 0), _random_corr(12, 1)
    iu = np.triu_indices(12, k=1)
    got = correlation_agreement(est, true)
    assert isinstance(got, CorrelationAgreement)
    np.testing.assert_allclose(got.pearson, scipy.stats.pearsonr(est[iu], true[iu])[0], rtol=1e-12)
    np.testing.assert_allclose(
        got.spearman, scipy.stats.spearmanr(est[iu], true[iu])[0], rtol=1e-12
    )
    np.testing.assert_allclose(got.rmse, np.sqrt(np.mean((est[iu] - true[iu]) ** 2)), rtol=1e-12)
    # ties get average ranks, as in scipy
    est_r = np.round(est, 1)
    np.testing.assert_allclose(
        correlation_agreement(est_r, true).spearman,
        scipy.stats.spearmanr(est_r[iu], true[iu])[0],
        rtol=1e-12,
    )


def test_correlation_agreement_hand_worked_and_low_rank():
    true = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, -0.1], [0.2, -0.1, 1.0]])
    est = true.copy()
    est[0, 1] = est[1, 0] = 0.8  # one pair off by 0.3
    got = correlation_agreement(est, true)
    assert got.rmse == pytest.approx(np.sqrt(0.09 / 3))
    assert got.spearman == pytest.approx(1.0)  # the order is unchanged
    cov = _low_rank("clr", 10, 2, 0.3, 4)
    same = correlation_agreement(cov, cov.correlation_dense())
    assert same.pearson == pytest.approx(1.0) and same.rmse == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(InputError, match="shape"):
        correlation_agreement(np.eye(3), np.eye(4))


# ----------------------------------------------------------------------------- embeddings
def test_embedding_r2_single_column_is_squared_pearson():
    rng = np.random.default_rng(5)
    z = rng.standard_normal(200)
    est = 2.0 * z + rng.standard_normal(200) + 3.0
    np.testing.assert_allclose(
        embedding_r2(z, est), scipy.stats.pearsonr(z, est)[0] ** 2, rtol=1e-10
    )


def test_embedding_r2_multi_column_against_lstsq_with_intercept():
    rng = np.random.default_rng(6)
    n = 300
    z = rng.standard_normal((n, 3)) * np.array([1.0, 2.0, 0.5])
    est = z @ rng.standard_normal((3, 4)) + rng.standard_normal((n, 4))
    design = np.hstack([np.ones((n, 1)), est])
    beta, *_ = scipy.linalg.lstsq(design, z)
    resid = z - design @ beta
    expected = 1 - np.sum(resid**2) / np.sum((z - z.mean(axis=0)) ** 2)
    np.testing.assert_allclose(embedding_r2(z, est), expected, rtol=1e-10)
    # invariant to rotation, scaling and shift of the estimate
    rot, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    np.testing.assert_allclose(embedding_r2(z, 5.0 * est @ rot - 7.0), expected, rtol=1e-10)
    assert embedding_r2(z, z) == pytest.approx(1.0)
    assert embedding_r2(z, rng.standard_normal((n, 3))) < 0.05


def test_procrustes_disparity_matches_scipy():
    rng = np.random.default_rng(7)
    z = rng.standard_normal((100, 3))
    est = z @ rng.standard_normal((3, 3)) + 0.3 * rng.standard_normal((100, 3))
    np.testing.assert_allclose(
        procrustes_disparity(z, est), scipy.spatial.procrustes(z, est)[2], rtol=1e-12
    )
    rot, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    assert procrustes_disparity(z, 4.0 * z @ rot + 1.0) < 1e-20
    # narrower estimate: padded with a zero column
    padded = np.hstack([est[:, :2], np.zeros((100, 1))])
    np.testing.assert_allclose(
        procrustes_disparity(z, est[:, :2]), scipy.spatial.procrustes(z, padded)[2], rtol=1e-12
    )
    with pytest.raises(InputError, match="same number of samples"):
        procrustes_disparity(z, est[:50])
