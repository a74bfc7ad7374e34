"""Baselines against dense eigendecompositions, scikit-bio and hand-worked values (clr_pca itself:
test_pca.py)."""

import numpy as np
import pytest
import scipy.sparse as sp

from tests.helpers import clr, counts, ppca_reference
from mvae.errors import InputError
from mvae.evaluation.baselines import (
    PCAResult,
    clr_pca,
    mr_pca,
    multiplicative_replacement,
    sample_clr_covariance,
)


def test_clr_pca_is_the_count_models_clr_pca():
    """The baseline and the count model's PCA start are one function (tested in test_pca.py)."""
    import mvae.maths.pca

    assert clr_pca is mvae.maths.pca.clr_pca and PCAResult is mvae.maths.pca.PCAResult


def test_sparse_input_equals_dense_input():
    x = counts(40, 20, seed=1, rate=0.5)
    assert (x == 0).mean() > 0.2
    np.testing.assert_allclose(
        sample_clr_covariance(x), sample_clr_covariance(sp.csc_matrix(x)), atol=1e-12
    )


def test_sample_clr_covariance_against_numpy():
    x = counts(50, 10, seed=2, rate=2.0)
    got = sample_clr_covariance(x, pseudocount=0.5)
    np.testing.assert_allclose(got, np.cov(clr(x + 0.5), rowvar=False), atol=1e-12)
    # the same as H cov(log(x + c)) H: clr is a linear map of the logs
    h = np.eye(10) - np.ones((10, 10)) / 10
    np.testing.assert_allclose(got, h @ np.cov(np.log(x + 0.5), rowvar=False) @ h, atol=1e-12)
    np.testing.assert_allclose(got.sum(axis=0), 0.0, atol=1e-12)


def test_multiplicative_replacement_hand_worked():
    # skbio's documented example, D = 4 so delta = 1/16
    x = np.array([[2, 4, 4, 0], [0, 5, 5, 0]])
    expected = np.array([[0.1875, 0.375, 0.375, 0.0625], [0.0625, 0.4375, 0.4375, 0.0625]])
    np.testing.assert_allclose(multiplicative_replacement(x), expected, atol=1e-15)
    got = multiplicative_replacement(np.array([[1.0, 3.0, 0.0]]), delta=0.1)
    np.testing.assert_allclose(got, [[0.225, 0.675, 0.1]], atol=1e-15)
    assert x[0, 3] == 0  # input not modified


def test_multiplicative_replacement_matches_scikit_bio():
    from skbio.stats.composition import multi_replace  # slow import: only here

    x = counts(30, 25, seed=3, rate=1.0)
    assert (x == 0).any()
    np.testing.assert_allclose(multiplicative_replacement(x), multi_replace(x), rtol=1e-12)
    np.testing.assert_allclose(
        multiplicative_replacement(x, delta=1e-4), multi_replace(x, delta=1e-4), rtol=1e-12
    )


def test_mr_pca_is_ppca_of_replaced_clr():
    x = counts(60, 12, seed=4, rate=1.0)
    y = clr(multiplicative_replacement(x))
    _, top, sigma2, low, _ = ppca_reference(y, 3)
    res = mr_pca(x, 3)
    np.testing.assert_allclose(res.explained_variance, top, rtol=1e-9)
    np.testing.assert_allclose(res.noise_variance, sigma2, rtol=1e-9)
    np.testing.assert_allclose(res.loadings_clr @ res.loadings_clr.T, low, atol=1e-9)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: mr_pca(np.array([[1, -1], [2, 3]]), 1), "negative value -1.0 at sample 0"),
        (lambda: mr_pca(np.ones((5, 4)), 4), "n_components"),
        (lambda: sample_clr_covariance(np.ones((5, 4)), pseudocount=-1), "pseudocount"),
        (lambda: sample_clr_covariance(np.array([[0, 1], [1, 1]]), pseudocount=0),
         "sample 0, feature 0"),
        (lambda: multiplicative_replacement(np.array([[0, 0], [1, 1]])), "sample 0 has no counts"),
        (lambda: multiplicative_replacement(np.array([[0, 0, 1]]), delta=0.5), "delta"),
        (lambda: sample_clr_covariance(np.ones(5)), "2-D"),
    ],
)
def test_errors_name_the_problem(call, match):
    with pytest.raises(InputError, match=match):
        call()
