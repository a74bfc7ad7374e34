"""Counts far above float32's exact range score exact log-probabilities (issue 20, item 2).

Deep shotgun and bulk RNA tables hold single counts of 2·10⁷ and more. In float32 the sums x·ℓ
and N log Σ exp ℓ (each of order N |ℓ|) and the constant log N! − Σ log x! lose more than the
difference between them: a sample of 10⁹ reads scored −1,326 nats, a probability above one.
Each case is checked against ``scipy.stats.multinomial.logpmf`` (float64).
"""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.special import softmax
from scipy.stats import multinomial

from mvae import MultinomialVAE
from mvae.training.batches import CountData
from mvae.maths.factored import factored_multinomial_log_prob
from mvae.maths.likelihoods import gaussian_multinomial_log_prob, multinomial_log_prob

BIG = (2e7, 1e9, 1e12)


def _rows(big: float, D: int = 6) -> np.ndarray:
    """Three samples: one huge count among small ones, all counts huge, a near-pure sample."""
    X = np.array([[big, 3, 0, 7, 1, 0][:D],
                  [big, big * 0.5 + 1, big * 0.25 + 3, 1, big, 2][:D],
                  [big, 0, 0, 0, 0, 1][:D]], dtype=np.float64)
    return X


def _reference(logits: np.ndarray, X: np.ndarray) -> np.ndarray:
    p = softmax(logits.astype(np.float64), axis=-1)
    return np.array([multinomial.logpmf(x, n=x.sum(), p=q) for x, q in zip(X, p)])


@pytest.mark.parametrize("big", BIG)
@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_multinomial_log_prob_of_deep_samples_matches_scipy(big, layout):
    rng = np.random.default_rng(0)
    X = _rows(big)
    logits = torch.as_tensor(rng.normal(size=X.shape), dtype=torch.float32)
    logits[:, 0] += 4.0  # the model expects the big feature
    batch = CountData(X, sparse=layout == "sparse").all()
    assert batch.counts.dtype == torch.float64  # deep rows keep exact counts
    got = multinomial_log_prob(logits, batch.counts, batch.log_const).numpy()
    ref = _reference(logits.numpy(), X)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-3 * max(1.0, big / 1e9))
    assert (got <= 0).all()


@pytest.mark.parametrize("big", BIG)
@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_fused_factored_likelihood_of_deep_samples_matches_scipy(big, layout):
    """The training and scoring path: at zero variance the estimator of either layout (Monte
    Carlo for dense counts, draws at the non-zeros and the bound at the zeros for sparse ones)
    is log p(x | m)."""
    rng = np.random.default_rng(1)
    X = _rows(big)
    B, D = X.shape
    batch = CountData(X, sparse=layout == "sparse").all()
    counts = batch.counts
    y = (counts.coalesce() if counts.is_sparse else counts)
    y = torch.sparse_coo_tensor(y.indices(), torch.log1p(y.values()).float(), y.shape,
                                is_coalesced=True) if counts.is_sparse else torch.log1p(y).float()
    r = 3
    left = torch.tensor(rng.normal(size=(B, r)), dtype=torch.float32, requires_grad=True)
    right = torch.as_tensor(rng.normal(size=(D, r)), dtype=torch.float32)
    base = torch.as_tensor(rng.normal(size=D), dtype=torch.float32)
    base[0] += 4.0
    skip = torch.zeros(D)
    log_scale = torch.full((B,), -60.0)  # v = e^-60: the draws do not move ℓ
    f, g = torch.zeros(D), torch.zeros(D)
    eps = torch.randn(2, counts._nnz()) if counts.is_sparse else torch.randn(2, B, D)
    got = factored_multinomial_log_prob(left, right, base, skip, log_scale, f, g, y, counts,
                                        eps, batch.log_const)
    assert got.dtype == torch.float64
    m = (left.detach() @ right.T + base).numpy()
    ref = _reference(m, X)
    vals = got.detach().numpy().reshape(-1, B)
    for row in vals:
        np.testing.assert_allclose(row, ref, rtol=1e-7, atol=1e-2 * max(1.0, big / 1e9))
    assert (vals <= 0).all()
    got.sum().backward()  # the gradient comes back in the parameters' dtype
    assert left.grad.dtype == torch.float32 and torch.isfinite(left.grad).all()


@pytest.mark.parametrize("big", BIG)
def test_gaussian_multinomial_of_deep_samples_matches_scipy(big):
    rng = np.random.default_rng(2)
    X = _rows(big)
    batch = CountData(X, sparse=False).all()
    mean = torch.tensor(rng.normal(size=X.shape), dtype=torch.float32, requires_grad=True)
    got = gaussian_multinomial_log_prob(mean, torch.zeros(()), torch.zeros(1, *X.shape),
                                        batch.counts, batch.log_const)
    ref = _reference(mean.detach().numpy(), X)
    np.testing.assert_allclose(got[0].detach().numpy(), ref, rtol=1e-9,
                               atol=1e-3 * max(1.0, big / 1e9))
    got.sum().backward()
    assert mean.grad.dtype == torch.float32


def test_shallow_batches_of_a_deep_table_stay_float32():
    X = np.array([[5.0, 3.0], [4e9, 1.0], [2.0, 2.0], [1.0, 9.0]])
    data = CountData(X, sparse=True)
    assert data.batch(torch.tensor([0, 2])).counts.dtype == torch.float32
    assert data.batch(torch.tensor([0, 1])).counts.dtype == torch.float64
    ordinary = CountData(np.array([[5.0, 3.0], [4.0, 1.0]]))
    assert ordinary.all().counts.dtype == torch.float32


@pytest.mark.parametrize("big", BIG)
def test_scores_and_training_loss_of_deep_tables_are_never_negative(big):
    """A negative ELBO is a probability above one; `mvae score` would rank such samples first."""
    rng = np.random.default_rng(3)
    n, D = 40, 8
    X = rng.poisson(50, size=(n, D)).astype(np.float64)
    X[:5, 0] = big  # five deep samples dominated by one feature
    X[5:8] = big  # three with every count huge
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MultinomialVAE(n_latent=2, max_epochs=3, random_state=0, threads=1).fit(X)
    assert (model.history_["train_loss"] >= 0).all()
    scores = model.score_samples(X, n_samples=4)
    assert np.isfinite(scores).all() and (scores >= 0).all()
