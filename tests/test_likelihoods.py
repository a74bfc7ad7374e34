"""Likelihoods and KL terms against independent references (scipy, dense linear algebra)."""

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats
import torch

from mvae.maths.likelihoods import (
    LowRankPrior,
    factored_gram,
    gaussian_multinomial_log_prob,
    kl_diag_to_lowrank,
    kl_factored_to_lowrank,
    kl_normal_standard,
    multinomial_log_prob,
    softmax_log_normaliser,
)


def _counts(rng, B, D, depth, zero_frac=0.5):
    p = rng.dirichlet(np.ones(D) * 0.3, size=B)
    X = np.stack([rng.multinomial(depth, pi) for pi in p]).astype(float)
    X[rng.random(X.shape) < zero_frac] = 0.0
    X[:, 0] += 1  # no empty rows
    return X


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("B,D,depth", [(1, 2, 5), (4, 3, 10), (6, 20, 50), (3, 50, 1000)])
def test_multinomial_matches_scipy(layout, B, D, depth):
    rng = np.random.default_rng(B * 100 + D)
    X = _counts(rng, B, D, depth)
    logits = rng.normal(size=(B, D)) * 2
    counts = torch.tensor(X)
    if layout == "sparse":
        counts = counts.to_sparse()
    got = multinomial_log_prob(torch.tensor(logits), counts).numpy()
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = [scipy.stats.multinomial.logpmf(X[i], n=X[i].sum(), p=p[i]) for i in range(B)]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-9)


def test_multinomial_monte_carlo_axis_and_shift_invariance():
    rng = np.random.default_rng(1)
    X = torch.tensor(_counts(rng, 5, 8, 30))
    logits = torch.tensor(rng.normal(size=(3, 5, 8)))
    got = multinomial_log_prob(logits, X)
    assert got.shape == (3, 5)
    for s in range(3):
        np.testing.assert_allclose(got[s], multinomial_log_prob(logits[s], X), rtol=1e-12)
    # adding a per-sample constant to every logit changes nothing (clr class)
    shifted = logits + torch.tensor(rng.normal(size=(3, 5, 1)))
    np.testing.assert_allclose(multinomial_log_prob(shifted, X), got, rtol=1e-10)
    np.testing.assert_allclose(multinomial_log_prob(logits, X.to_sparse()), got, rtol=1e-10)


def test_multinomial_gradcheck_sparse_and_dense():
    rng = np.random.default_rng(2)
    X = torch.tensor(_counts(rng, 3, 6, 20))
    logits = torch.tensor(rng.normal(size=(3, 6)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda l: multinomial_log_prob(l, X), (logits,))
    assert torch.autograd.gradcheck(lambda l: multinomial_log_prob(l, X.to_sparse()), (logits,))


def test_kl_standard_matches_closed_form_of_torch_distributions():
    rng = np.random.default_rng(3)
    mean = torch.tensor(rng.normal(size=(4, 5)))
    log_var = torch.tensor(rng.normal(size=(4, 5)))
    q = torch.distributions.Normal(mean, torch.exp(0.5 * log_var))
    p = torch.distributions.Normal(torch.zeros(4, 5), torch.ones(4, 5))
    want = torch.distributions.kl_divergence(q, p).sum(-1)
    np.testing.assert_allclose(kl_normal_standard(mean, log_var), want, rtol=1e-12)


def _dense_kl(m, v, b, Sigma):
    """KL(N(m, diag v) || N(b, Sigma)) on the ILR subspace 1^⊥, with dense numpy linear algebra in
    the coordinates of scipy's Helmert basis Ψ (D, D − 1): KL(N(Ψᵀm, ΨᵀVΨ) || N(Ψᵀb, ΨᵀΣΨ))."""
    D = len(m)
    Psi = scipy.linalg.helmert(D).T
    S_q, S_p = Psi.T @ np.diag(v) @ Psi, Psi.T @ Sigma @ Psi
    P = np.linalg.inv(S_p)
    d = Psi.T @ (m - b)
    return 0.5 * (np.trace(P @ S_q) + d @ P @ d - (D - 1) + np.linalg.slogdet(S_p)[1]
                  - np.linalg.slogdet(S_q)[1])


@pytest.mark.parametrize("D,k", [(3, 1), (10, 3), (40, 10)])
def test_woodbury_kl_equals_dense(D, k):
    rng = np.random.default_rng(D + k)
    W = rng.normal(size=(D, k))
    W -= W.mean(0)  # columns summing to zero, as the module's W̃ (the ILR KL needs it)
    b = rng.normal(size=D)
    s2 = 0.3
    mean = rng.normal(size=(5, D))
    log_var = rng.normal(size=(5, D)) * 0.5
    prior = LowRankPrior(torch.tensor(W), torch.tensor(b), torch.tensor(s2, dtype=torch.float64))
    got = kl_diag_to_lowrank(torch.tensor(mean), torch.tensor(log_var), prior).numpy()
    Sigma = W @ W.T + s2 * np.eye(D)
    want = [_dense_kl(mean[i], np.exp(log_var[i]), b, Sigma) for i in range(5)]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    _, logdet = np.linalg.slogdet(Sigma)  # the D-dimensional prior's log-determinant
    np.testing.assert_allclose(float(prior.logdet()), logdet, rtol=1e-10)


def test_woodbury_kl_gradcheck():
    rng = np.random.default_rng(5)
    D, k = 7, 2
    args = [torch.tensor(rng.normal(size=s), requires_grad=True)
            for s in [(3, D), (3, D), (D, k), (D,)]]
    log_s2 = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)

    def f(mean, log_var, W, b, log_s2):
        return kl_diag_to_lowrank(mean, log_var, LowRankPrior(W, b, log_s2.exp()))

    assert torch.autograd.gradcheck(f, (*args, log_s2))


def _factored_case(rng, B, D, m, k, zero_frac):
    """Parts of a factored posterior, its prior, and y with about ``zero_frac`` zeros."""
    y = np.log1p(rng.poisson(3.0, size=(B, D)) * (rng.random((B, D)) >= zero_frac))
    parts = dict(shift=rng.normal(size=D), left=rng.normal(size=(B, m)),
                 right=rng.normal(size=(D, m)) / np.sqrt(D), skip=rng.normal(size=D),
                 log_scale=rng.normal(size=B) * 0.3, feature_log_var=rng.normal(size=D) * 0.3,
                 skip_log_var=rng.normal(size=D) * 0.3)
    W = rng.normal(size=(D, k))
    prior = dict(W=W - W.mean(0), b=rng.normal(size=D), s2=0.4)  # columns of W sum to zero
    return y, parts, prior


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("B,D,m,k,zero_frac,empty", [(4, 6, 2, 1, 0.0, None),
                                                     (5, 30, 4, 3, 0.7, None),
                                                     (3, 50, 11, 10, 0.95, None),
                                                     (5, 30, 4, 3, 0.7, [1, 4]),
                                                     (3, 8, 2, 1, 0.5, [0, 1, 2])])
def test_factored_kl_equals_dense(layout, B, D, m, k, zero_frac, empty):
    """The factored KL equals the dense Gaussian KL (numpy, explicit inverse and slogdet) of
    the materialised posterior mean b + s + PQᵀ + a ⊙ y and variance exp(t + f + g ⊙ y);
    ``empty``: samples without counts (rows of y without non-zeros; all of them in the last)."""
    rng = np.random.default_rng(B * D + m)
    y, p, pr = _factored_case(rng, B, D, m, k, zero_frac)
    if empty is not None:
        y[empty] = 0.0
    mean = pr["b"] + p["shift"] + p["left"] @ p["right"].T + p["skip"] * y
    var = np.exp(p["log_scale"][:, None] + p["feature_log_var"] + p["skip_log_var"] * y)
    Sigma = pr["W"] @ pr["W"].T + pr["s2"] * np.eye(D)
    want = [_dense_kl(mean[i], var[i], pr["b"], Sigma) for i in range(B)]
    prior = LowRankPrior(torch.tensor(pr["W"]), torch.tensor(pr["b"]),
                         torch.tensor(pr["s2"], dtype=torch.float64))
    yt = torch.tensor(y)
    yt = yt.to_sparse() if layout == "sparse" else yt
    got = kl_factored_to_lowrank(y=yt, prior=prior, **{n: torch.tensor(v) for n, v in p.items()})
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)


@pytest.mark.parametrize("shared_gram", [False, True])
@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_factored_kl_gradients_equal_dense_form(layout, shared_gram):
    """Gradients for every part and the prior equal autograd's through the dense-form KL of the
    materialised posterior (itself checked against numpy above and by gradcheck below); also
    when the prior's WᵀW is taken from the KL's Gram matrix, as the module does."""
    rng = np.random.default_rng(7)
    y, p, pr = _factored_case(rng, 4, 25, 3, 2, 0.8)
    names = list(p)
    parts = {n: torch.tensor(v, requires_grad=True) for n, v in p.items()}
    W, b = (torch.tensor(pr[n], requires_grad=True) for n in ("W", "b"))
    s2 = torch.tensor(pr["s2"], dtype=torch.float64, requires_grad=True)
    yt = torch.tensor(y)
    inputs = [*parts.values(), W, s2]  # b cancels: the mean is b + δ, the KL depends on δ only
    gram = None
    if shared_gram:
        gram = factored_gram(parts["right"], W, parts["shift"])
        m, k = parts["right"].shape[1], W.shape[1]
        prior = LowRankPrior(W, b, s2, gram=gram[1][m:m + k, m:m + k])
    else:
        prior = LowRankPrior(W, b, s2)
    got = torch.autograd.grad(kl_factored_to_lowrank(
        y=yt.to_sparse() if layout == "sparse" else yt, prior=prior, gram=gram,
        **parts).sum(), inputs)
    mean = b + parts["shift"] + parts["left"] @ parts["right"].T + parts["skip"] * yt
    log_var = (parts["log_scale"][:, None] + parts["feature_log_var"]
               + parts["skip_log_var"] * yt)
    want = torch.autograd.grad(kl_diag_to_lowrank(mean, log_var, LowRankPrior(W, b, s2)).sum(),
                               inputs)
    for name, g, w in zip(names + ["W", "s2"], got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-8, atol=1e-10, err_msg=name)


def test_leverages_are_the_diagonal_of_the_hat_matrix():
    """λ_d = w_dᵀ (σ²I + WᵀW)⁻¹ w_d against numpy's explicit inverse, and its hand-written
    gradient by gradcheck."""
    rng = np.random.default_rng(11)
    W = rng.normal(size=(9, 3))
    want = np.diag(W @ np.linalg.inv(0.3 * np.eye(3) + W.T @ W) @ W.T)
    Wt = torch.tensor(W, requires_grad=True)
    s2 = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    np.testing.assert_allclose(LowRankPrior(Wt, torch.zeros(9, dtype=torch.float64),
                                            s2).leverages.detach().numpy(), want, rtol=1e-12)
    assert torch.autograd.gradcheck(
        lambda W, s2: LowRankPrior(W, torch.zeros(9, dtype=torch.float64), s2).leverages,
        (Wt, s2))


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_factored_kl_gradcheck(layout):
    rng = np.random.default_rng(9)
    y, p, pr = _factored_case(rng, 3, 8, 2, 1, 0.6)
    yt = torch.tensor(y).to_sparse() if layout == "sparse" else torch.tensor(y)
    inputs = [torch.tensor(v, requires_grad=True) for v in p.values()]
    W = torch.tensor(pr["W"], requires_grad=True)

    def f(*args):
        parts = dict(zip(p, args[:-1]))
        prior = LowRankPrior(args[-1], torch.tensor(pr["b"]), torch.tensor(0.4, dtype=torch.float64))
        return kl_factored_to_lowrank(y=yt, prior=prior, **parts)

    assert torch.autograd.gradcheck(f, (*inputs, W))


def test_count_data_constants_equal_scipy():
    """CountData's cached log N! - Σ log x! equals the multinomial pmf constant from scipy."""
    import scipy.sparse as sp
    from scipy.special import gammaln

    from mvae.training.batches import CountData

    rng = np.random.default_rng(7)
    X = _counts(rng, 9, 30, 40)
    X[4] = 0  # an empty row
    for sparse in (False, True):
        batch = CountData(sp.csr_matrix(X), sparse=sparse, dtype=torch.float64).batch(
            torch.arange(9))
        want = gammaln(X.sum(1) + 1) - gammaln(X + 1).sum(1)
        np.testing.assert_allclose(batch.log_const.numpy(), want, rtol=1e-12)
        got = batch.counts.to_dense() if batch.counts.is_sparse else batch.counts
        np.testing.assert_array_equal(got.numpy(), X)


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("std_shape", ["full", "column", "scalar"])
def test_gaussian_multinomial_value_matches_scipy(layout, std_shape):
    """The fused likelihood at ℓ = m + ε s equals scipy's multinomial pmf at softmax(ℓ)."""
    rng = np.random.default_rng(7)
    S, B, D = 2, 4, 12
    X = _counts(rng, B, D, 40)
    mean = rng.normal(size=(B, D))
    std = {"full": np.exp(rng.normal(size=(B, D)) * 0.3),
           "column": np.exp(rng.normal(size=(B, 1)) * 0.3), "scalar": np.array(0.7)}[std_shape]
    eps = rng.normal(size=(S, B, D))
    counts = torch.tensor(X).to_sparse() if layout == "sparse" else torch.tensor(X)
    got = gaussian_multinomial_log_prob(torch.tensor(mean), torch.tensor(std), torch.tensor(eps),
                                        counts).numpy()
    logits = mean + eps * std
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = [[scipy.stats.multinomial.logpmf(X[b], n=X[b].sum(), p=p[s_, b]) for b in range(B)]
            for s_ in range(S)]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("mean_shape,std_shape", [((3, 7), (3, 7)), ((3, 7), (3, 1)),
                                                  ((2, 3, 7), ()), ((2, 3, 7), (3, 7))])
def test_gaussian_multinomial_gradcheck(layout, mean_shape, std_shape):
    """The hand-written gradient against finite differences, for every broadcast the module uses."""
    rng = np.random.default_rng(3)
    X = _counts(rng, 3, 7, 20)
    counts = torch.tensor(X).to_sparse() if layout == "sparse" else torch.tensor(X)
    mean = torch.tensor(rng.normal(size=mean_shape), requires_grad=True)
    std = torch.tensor(np.exp(rng.normal(size=std_shape) * 0.3), requires_grad=True)
    eps = torch.tensor(rng.normal(size=(2, 3, 7)))
    weights = torch.tensor(rng.normal(size=(2, 3)))  # a non-uniform upstream gradient

    def f(m, s):
        return (gaussian_multinomial_log_prob(m, s, eps, counts) * weights).sum()

    assert torch.autograd.gradcheck(f, (mean, std))


def test_gaussian_multinomial_without_grad_keeps_nothing():
    """Under no_grad the value is the same and no gradient buffer is built."""
    rng = np.random.default_rng(5)
    X = torch.tensor(_counts(rng, 3, 6, 20))
    mean, eps = torch.tensor(rng.normal(size=(3, 6))), torch.tensor(rng.normal(size=(1, 3, 6)))
    with torch.no_grad():
        a = gaussian_multinomial_log_prob(mean, torch.tensor(0.5), eps, X)
    b = multinomial_log_prob(mean + eps * 0.5, X)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)


@pytest.mark.parametrize("dtype,rtol_z,rtol_p", [(torch.float64, 1e-14, 1e-12),
                                                (torch.float32, 2e-7, 2e-5)])
@pytest.mark.parametrize("S,B,D,scale", [(1, 1, 1, 1.0), (1, 5, 2, 30.0), (2, 4, 2_000, 3.0),
                                         (1, 3, 20_000, 10.0)])
def test_softmax_log_normaliser_matches_scipy(dtype, rtol_z, rtol_p, S, B, D, scale):
    """Probabilities and log-normaliser against scipy in float64, in float32 to its precision
    (torch's fused softmax uses a faster exponential than ``torch.exp``), logits far from 0."""
    rng = np.random.default_rng(D + B)
    logits = torch.tensor(rng.normal(size=(S, B, D)) * scale + rng.normal(size=(S, B, 1)) * 1e3,
                          dtype=dtype)
    prob, log_z = softmax_log_normaliser(logits)
    logits = logits.double().numpy()  # the reference sees the same (rounded) inputs
    want_z = scipy.special.logsumexp(logits, axis=-1)
    np.testing.assert_allclose(log_z.double().numpy(), want_z, rtol=rtol_z, atol=0)
    want_p = scipy.special.softmax(logits, axis=-1)
    np.testing.assert_allclose(prob.double().numpy(), want_p, rtol=rtol_p, atol=1e-30)
