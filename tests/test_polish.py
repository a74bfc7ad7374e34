"""The end-of-fit polish (mvae.training.polish): its M-step against a numerical optimum, its guard."""

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.stats
import torch

import mvae
from mvae.counts import MultinomialVAEModule, MVAEConfig
from mvae.training.polish import polish_decoder, variance_m_step


def _expected_log_density(means, variances, W, b, s2):
    """Σᵢ E_qᵢ[log N(ℓ; b, WWᵀ + s2 I)] on the clr subspace, written independently: every term in
    ILR coordinates from scipy's Helmert basis and scipy's multivariate normal density."""
    D = means.shape[1]
    psi = scipy.linalg.helmert(D)  # (D - 1, D), orthonormal rows ⊥ 1
    cov = psi @ (W @ W.T + s2 * np.eye(D)) @ psi.T
    inv = np.linalg.inv(cov)
    total = 0.0
    for m, v in zip(means, variances):
        total += scipy.stats.multivariate_normal(psi @ b, cov).logpdf(psi @ m)
        total -= 0.5 * np.trace(inv @ psi @ np.diag(v) @ psi.T)
    return total


def test_variance_m_step_is_the_maximum_over_scales_and_sigma():
    """With the loadings' directions kept, the closed form matches scipy's numerical maximum of
    the expected log-density over the k scales and σ²."""
    rng = np.random.default_rng(0)
    n, D, k = 40, 7, 2
    W0 = rng.normal(size=(D, k))
    W0 -= W0.mean(axis=0)
    b = rng.normal(size=D)
    b -= b.mean()
    means = b + rng.normal(size=(n, k)) @ W0.T * 1.7 + 0.4 * rng.normal(size=(n, D)) + 3.0
    variances = rng.uniform(0.05, 0.5, size=(n, D))
    # in uneven chunks, as the polish gives them: only sums over the samples are kept
    chunks = [(torch.tensor(means[i:j]), torch.tensor(np.log(variances[i:j])))
              for i, j in [(0, 13), (13, 14), (14, n)]]
    W, s2 = variance_m_step(chunks, torch.tensor(W0), torch.tensor(b))
    U, _, Vt = np.linalg.svd(W0, full_matrices=False)

    def negative(p):
        scales, sigma2 = np.exp(0.5 * p[:k]), np.exp(p[k])
        return -_expected_log_density(means, variances, (U * scales) @ Vt, b, sigma2)

    best = scipy.optimize.minimize(negative, np.zeros(k + 1), method="BFGS",
                                   options={"gtol": 1e-9})
    np.testing.assert_allclose(s2, np.exp(best.x[k]), rtol=1e-4)
    np.testing.assert_allclose(np.linalg.svd(W.numpy(), compute_uv=False),
                               np.exp(0.5 * best.x[:k]), rtol=1e-4)
    assert -negative(best.x) <= _expected_log_density(means, variances, W.numpy(), b, s2) + 1e-6
    # the directions and the latent axes are the old ones
    U1, _, Vt1 = np.linalg.svd(W.numpy(), full_matrices=False)
    np.testing.assert_allclose(np.abs(U1.T @ U), np.eye(k), atol=1e-8)
    np.testing.assert_allclose(np.abs(Vt1 @ Vt.T), np.eye(k), atol=1e-8)


def _module(D=12, k=2):
    torch.manual_seed(0)
    return MultinomialVAEModule(MVAEConfig(n_features=D, n_latent=k, n_hidden=8,
                                           posterior_rank=2)).eval()


def _rows(X):
    import scipy.sparse as sp

    return lambda idx: sp.csr_matrix(X[idx])


def test_the_guard_keeps_the_iterate_with_the_lowest_validation_score():
    X = mvae.simulate(30, 12, 2, depth=500, random_state=1).counts.toarray()
    module = _module()
    before = (module.loadings_raw.detach().clone(), module.log_sigma.detach().clone())
    worse = iter(range(100))  # every iterate scores worse than the trained decoder
    out = polish_decoder(module, _rows(X), 30, lambda m: float(next(worse)), seed=0, iterations=3)
    assert out["kept"] == 0 and out["scores"] == [0.0, 2.0, 3.0, 4.0]  # 1: settled at once
    torch.testing.assert_close(module.loadings_raw, before[0], rtol=0, atol=0)
    torch.testing.assert_close(module.log_sigma, before[1], rtol=0, atol=0)

    better = iter(range(100, 0, -1))  # every iterate better: the last is kept, with its σ²
    out = polish_decoder(module, _rows(X), 30, lambda m: float(next(better)), seed=0, iterations=3)
    assert out["kept"] == 3 and len(out["sigma2"]) == 4
    np.testing.assert_allclose(float(module.noise_variance.detach()), out["sigma2"][3], rtol=1e-6)


def test_polish_uses_a_subset_when_the_table_is_large():
    X = mvae.simulate(30, 12, 2, depth=500, random_state=1).counts.toarray()
    seen = []

    def rows(idx):
        seen.append(np.asarray(idx))
        return _rows(X)(idx)

    out = polish_decoder(_module(), rows, 30, lambda m: 0.0, seed=0, iterations=1,
                         max_entries=12 * 10)
    assert out["samples"] == 10 and len(seen[0]) == 10 and len(set(seen[0])) == 10
    assert np.all(np.diff(seen[0]) > 0)


def test_a_fit_records_its_polish_and_stays_deterministic():
    X = mvae.simulate(80, 15, 2, depth=3000, random_state=2).counts
    fits = [mvae.MultinomialVAE(2, random_state=0, threads=1, max_epochs=30, progress=False)
            .fit(X) for _ in range(2)]
    p = fits[0].polish_
    assert p is not None and p["kept"] == int(np.argmin(p["scores"]))
    np.testing.assert_allclose(fits[0].noise_variance_, p["sigma2"][p["kept"]], rtol=1e-6)
    np.testing.assert_array_equal(fits[0].components_, fits[1].components_)
    # without a validation split there is nothing to judge the polish: it does not run
    none = mvae.MultinomialVAE(2, random_state=0, threads=1, max_epochs=5, progress=False,
                               validation_fraction=0.0).fit(X)
    assert none.polish_ is None
