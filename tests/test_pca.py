"""clr + probabilistic PCA (mvae.maths.pca) against dense eigendecompositions, scipy's SVD and values
worked out by hand; and the count model's PCA start, which uses it."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp

from tests.helpers import clr, counts, ppca_reference
from mvae.maths.covariance import LowRankCovariance
from mvae.errors import InputError
from mvae.maths.pca import PCAResult, centre_log_rows, clr_pca, clr_with_pseudocount, ppca


def test_hand_worked_two_and_three_samples():
    # x + 1 = (1, 2, 4) and (4, 2, 1): with a = log 2 the clr rows are (-a, 0, a) and (a, 0, -a)
    a = np.log(2.0)
    x = np.array([[0, 1, 3], [3, 1, 0]])
    np.testing.assert_allclose(clr_with_pseudocount(x, 1.0), [[-a, 0, a], [a, 0, -a]], atol=1e-15)
    # n = 2 < D = 3 (the Gram route): one direction (1, 0, -1)/sqrt(2) with variance
    # 2 * |(-a, 0, a)|^2 / (n - 1) = 4a^2, nothing left for the noise (D - 1 - k = 1 eigenvalue 0).
    # The two largest entries tie in magnitude, so the axis's sign is checked only for consistency
    # between loadings and embeddings
    res = clr_pca(x, 1)
    np.testing.assert_allclose(res.explained_variance, [4 * a**2], rtol=1e-12)
    assert res.noise_variance == pytest.approx(0.0, abs=1e-15)
    sign = np.sign(res.loadings_clr[0, 0])
    np.testing.assert_allclose(sign * res.loadings_clr[:, 0], [np.sqrt(2) * a, 0, -np.sqrt(2) * a],
                               atol=1e-12)
    np.testing.assert_allclose(sign * res.embeddings[:, 0], [-np.sqrt(2) * a, np.sqrt(2) * a],
                               atol=1e-12)
    np.testing.assert_allclose(res.mean_clr, 0.0, atol=1e-15)
    # a third sample with clr 0 (n = D = 3, the SVD route): the variance becomes 4a^2 / 2
    res3 = clr_pca(np.vstack([x, [[1, 1, 1]]]), 1)
    np.testing.assert_allclose(res3.explained_variance, [2 * a**2], rtol=1e-12)
    sign = np.sign(res3.loadings_clr[0, 0])
    np.testing.assert_allclose(sign * res3.loadings_clr[:, 0], [a, 0, -a], atol=1e-12)
    np.testing.assert_allclose(sign * res3.embeddings[:, 0], [-np.sqrt(2) * a, np.sqrt(2) * a, 0],
                               atol=1e-12)


@pytest.mark.parametrize("top_only", [False, True])
@pytest.mark.parametrize("n,d,k", [(80, 15, 3), (12, 40, 4), (30, 6, 5), (200, 60, 2)])
def test_clr_pca_is_ppca_of_clr_covariance(n, d, k, top_only):
    """Full SVD (or the Gram route for wide tables) and the k leading triplets alone (the
    count model's start) against PPCA from a dense eigendecomposition of the covariance."""
    x = counts(n, d, seed=n + d)
    y = clr(x + 1.0)
    c, top, sigma2, low, vec = ppca_reference(y, k)
    res = clr_pca(x, k, top_only=top_only)
    assert isinstance(res, PCAResult)
    assert res.embeddings.shape == (n, k) and res.loadings_clr.shape == (d, k)
    np.testing.assert_allclose(res.explained_variance, top, rtol=1e-9)
    np.testing.assert_allclose(res.noise_variance, sigma2, rtol=1e-9, atol=1e-14)
    w = res.loadings_clr
    np.testing.assert_allclose(w @ w.T, low, atol=1e-9)
    np.testing.assert_allclose(w.sum(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(res.mean_clr, y.mean(axis=0), atol=1e-12)
    # embeddings are the PCA scores, up to the sign of each axis
    scores = (y - y.mean(axis=0)) @ vec
    np.testing.assert_allclose(np.abs(res.embeddings), np.abs(scores), atol=1e-8)
    # the covariance object is the PPCA covariance W W^T + sigma^2 H
    cov = res.covariance
    assert isinstance(cov, LowRankCovariance) and cov.space == "clr"
    h = np.eye(d) - np.ones((d, d)) / d
    np.testing.assert_allclose(cov.dense(), low + sigma2 * h, atol=1e-9)
    # and it keeps the total clr variance: trace(W W^T + sigma^2 H) = trace(C)
    np.testing.assert_allclose(np.trace(cov.dense()), np.trace(c), rtol=1e-9)


def test_ppca_of_a_clr_table_leaves_it_unmodified():
    y = centre_log_rows(np.log(counts(30, 8, seed=5) + 0.5))
    before = y.copy()
    _, top, sigma2, low, _ = ppca_reference(y, 2)
    res = ppca(y, 2)
    np.testing.assert_array_equal(y, before)
    np.testing.assert_allclose(res.explained_variance, top, rtol=1e-9)
    np.testing.assert_allclose(res.noise_variance, sigma2, rtol=1e-9)
    np.testing.assert_allclose(res.loadings_clr @ res.loadings_clr.T, low, atol=1e-9)


def test_clr_pca_recovers_noise_free_low_rank_subspace_exactly():
    rng = np.random.default_rng(0)
    n, d, k = 100, 30, 4
    w, _ = np.linalg.qr(rng.standard_normal((d, k)) - rng.standard_normal((1, k)))
    w = w - w.mean(axis=0)  # clr loadings (columns sum to zero)
    z = rng.standard_normal((n, k))
    logits = z @ w.T + rng.normal(0, 1, size=d)  # exactly rank k after centring
    x = 1000.0 * np.exp(logits)  # positive "counts": the clr of x is H logits
    res = clr_pca(x, k, pseudocount=0.0)
    assert np.max(scipy.linalg.subspace_angles(res.loadings_clr, w)) < 1e-6
    assert res.noise_variance < 1e-20
    # the embeddings are an invertible linear map of z
    beta, *_ = scipy.linalg.lstsq(res.embeddings, z - z.mean(axis=0))
    np.testing.assert_allclose(res.embeddings @ beta, z - z.mean(axis=0), atol=1e-8)


def test_sparse_input_equals_dense_input_and_is_not_modified():
    x = counts(40, 20, seed=1, rate=0.5)
    assert (x == 0).mean() > 0.2
    xs = sp.csr_matrix(x)
    a = clr_pca(x, 3)
    b = clr_pca(xs, 3)
    np.testing.assert_allclose(a.loadings_clr, b.loadings_clr, atol=1e-12)
    np.testing.assert_array_equal(xs.toarray(), x)
    assert x.dtype.kind == "i"  # the dense input too: a float copy is made


def test_wide_table_gram_path_equals_svd():
    """n < D uses the n x n Gram matrix; it must give the SVD's PPCA (independent: scipy.svd)."""
    rng = np.random.default_rng(11)
    X = rng.poisson(rng.gamma(2.0, 3.0, size=(25, 60)))
    got = clr_pca(X, 4)
    y = np.log(X + 1.0)
    y = y - y.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=0)
    _, s, vt = scipy.linalg.svd(yc, full_matrices=False)
    eig = s**2 / (len(X) - 1)
    np.testing.assert_allclose(got.explained_variance, eig[:4], rtol=1e-9)
    noise = (eig.sum() - eig[:4].sum()) / (60 - 1 - 4)
    np.testing.assert_allclose(got.noise_variance, noise, rtol=1e-9)
    want = vt[:4].T * np.sqrt(eig[:4] - noise)
    np.testing.assert_allclose(np.abs(got.loadings_clr), np.abs(want), atol=1e-9)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: clr_pca(np.array([[1, -1], [2, 3]]), 1), "negative value -1.0 at sample 0"),
        (lambda: clr_pca(np.array([[1, np.nan], [2, 3]]), 1), "non-finite value at sample 0"),
        (lambda: clr_pca(np.ones((5, 4)), 4), "n_components"),
        (lambda: clr_pca(np.ones((5, 4)), 1, pseudocount=-1), "pseudocount"),
        (lambda: clr_pca(np.array([[0, 1], [1, 1]]), 1, pseudocount=0), "sample 0, feature 0"),
        (lambda: clr_pca(np.ones(5), 1), "2-D"),
    ],
)
def test_errors_name_the_problem(call, match):
    with pytest.raises(InputError, match=match):
        call()


def test_model_pca_start_is_the_ppca_of_clr_counts():
    """The count model's start (W̃ and σ) is PPCA of clr(x + c), against a dense reference."""
    import torch

    from mvae.model import _pca_initialise

    x = counts(50, 12, seed=7, rate=2.0)
    k, c = 3, 0.5
    module = SimpleNamespace(
        config=SimpleNamespace(n_features=12, n_latent=k, pseudocount=c),
        loadings_raw=torch.zeros(12, k), log_sigma=torch.zeros(()))
    _pca_initialise(module, 50, lambda rows: sp.csr_matrix(x[rows]), np.random.default_rng(0))
    _, _, sigma2, low, _ = ppca_reference(clr(x + c), k)
    w = module.loadings_raw.double().numpy()
    np.testing.assert_allclose(w @ w.T, low, atol=1e-5)  # float32 parameters
    np.testing.assert_allclose(float(torch.exp(2 * module.log_sigma)), sigma2, rtol=1e-5)


def test_importing_mvae_pca_does_not_import_torch():
    code = "import sys, mvae.maths.pca; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_top_only_of_a_table_without_variance_equals_the_full_route():
    """Every sample the same composition: nothing to decompose (ARPACK cannot start from a zero
    matrix, or decomposes rounding); both routes give zero loadings and noise and the common clr
    as the mean."""
    x = np.tile(np.array([[50, 20, 5, 1, 9]]), (30, 1))
    full, top = clr_pca(x, 2), clr_pca(x, 2, top_only=True)
    for res in (full, top):
        np.testing.assert_allclose(res.loadings_clr, 0.0, atol=1e-12)
        assert abs(res.noise_variance) < 1e-20
        np.testing.assert_allclose(res.mean_clr, clr(x[:1] + 1.0)[0], atol=1e-12)
