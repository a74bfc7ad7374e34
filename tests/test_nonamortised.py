"""The non-amortised reference module (mvae.evaluation.nonamortised).

Its loss is checked against independent references: scipy's multinomial log-pmf for the
reconstruction term and a dense numpy KL between Gaussians for the KL term. Training goes through
the shared loop (mvae.training.loop.train_module); held-out posteriors are optimised under a frozen decoder.
"""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from mvae.counts import MultinomialVAEModule, MVAEConfig
from mvae.evaluation.nonamortised import (
    IndexedCountData,
    IndexedCounts,
    NonAmortisedConfig,
    NonAmortisedModule,
    heldout_negative_elbo,
)
from mvae.training.loop import TrainConfig, train_module


def _module(n=6, D=5, k=2, seed=0):
    torch.manual_seed(seed)
    m = NonAmortisedModule(NonAmortisedConfig(n_samples=n, n_features=D, n_latent=k,
                                              local_step_scale=3.0)).double()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        m.loadings_raw.copy_(torch.tensor(rng.normal(size=(D, k))))
        m.bias_raw.copy_(torch.tensor(rng.normal(size=D)))
        m.log_sigma.fill_(-0.4)
        m.local_mean_raw.copy_(torch.tensor(rng.normal(size=(n, D))))
        m.local_log_var_raw.copy_(torch.tensor(rng.normal(size=(n, D)) * 0.3 - 0.5))
    return m


def _counts(n=6, D=5, seed=0):
    return np.random.default_rng(seed).poisson(4.0, size=(n, D)).astype(np.float64) + \
        np.eye(n, D)  # no empty rows


def _dense_kl(m, v, b, cov):
    """KL(N(m, diag v) || N(b, cov)) in numpy, on 1^⊥ (the KL of the model's bound): in the ILR
    coordinates of scipy's Helmert basis Ψ, KL(N(Ψᵀm, ΨᵀVΨ) || N(Ψᵀb, ΨᵀcovΨ))."""
    Psi = scipy.linalg.helmert(m.size).T
    cov_q, cov_p = Psi.T @ np.diag(v) @ Psi, Psi.T @ cov @ Psi
    inv = np.linalg.inv(cov_p)
    d = Psi.T @ (m - b)
    return 0.5 * (np.trace(inv @ cov_q) + d @ inv @ d - (m.size - 1) + np.linalg.slogdet(cov_p)[1]
                  - np.linalg.slogdet(cov_q)[1])


@pytest.mark.parametrize("sparse", [False, True])
def test_indexed_data_serves_rows_with_their_indices(sparse):
    X = _counts(7, 4)
    data = IndexedCountData(X, sparse=sparse)
    assert len(data) == 7 and data.device.type == "cpu"
    batch = data.batch(torch.tensor([5, 1]))
    assert isinstance(batch, IndexedCounts)
    dense = batch.counts.to_dense() if batch.counts.is_sparse else batch.counts
    np.testing.assert_array_equal(dense.numpy(), X[[5, 1]])
    np.testing.assert_array_equal(batch.index.numpy(), [5, 1])
    chunks = list(data.chunks(3))
    assert [c.index.tolist() for c in chunks] == [[0, 1, 2], [3, 4, 5], [6]]


def test_loss_terms_match_scipy_and_a_dense_kl():
    n, D, k = 6, 5, 2
    m = _module(n, D, k)
    X = _counts(n, D)
    idx = torch.tensor([4, 0, 2])
    batch = IndexedCountData(X, dtype=torch.float64).batch(idx)
    with torch.no_grad():
        m.local_log_var_raw[idx] = -40.0 / 3.0  # v = e^-40: the draw equals the mean
        terms = m.loss(batch, generator=torch.Generator().manual_seed(0))
        mean, log_var = m.local_posterior(idx)
        W, b, s2 = m.loadings.numpy(), m.bias.numpy(), float(m.noise_variance)
    cov = W @ W.T + s2 * np.eye(D)
    for r, i in enumerate(idx.tolist()):
        p = scipy.special.softmax(mean[r].numpy())
        expected = scipy.stats.multinomial.logpmf(X[i], X[i].sum(), p)
        assert terms.reconstruction[r].item() == pytest.approx(expected, rel=1e-8)
        kl = _dense_kl(mean[r].numpy(), np.exp(log_var[r].numpy()), b, cov)
        assert terms.kl[r].item() == pytest.approx(kl, rel=1e-8)


def test_loss_kl_with_a_spread_posterior_matches_the_dense_kl():
    m = _module()
    X = _counts()
    batch = IndexedCountData(X, dtype=torch.float64).batch(torch.arange(6))
    with torch.no_grad():
        terms = m.loss(batch)
        mean, log_var = m.local_posterior(torch.arange(6))
        cov = (m.loadings @ m.loadings.T).numpy() + float(m.noise_variance) * np.eye(5)
        b = m.bias.numpy()
    for i in range(6):
        assert terms.kl[i].item() == pytest.approx(
            _dense_kl(mean[i].numpy(), np.exp(log_var[i].numpy()), b, cov), rel=1e-8)


def test_latent_mean_is_the_ppca_map_of_the_posterior_means():
    m = _module()
    with torch.no_grad():
        z = m.latent_mean().numpy()
        W, b, s2 = m.loadings.numpy(), m.bias.numpy(), float(m.noise_variance)
        mean, _ = m.local_posterior(torch.arange(6))
    expected = np.linalg.solve(s2 * np.eye(2) + W.T @ W, W.T @ (mean.numpy() - b).T).T
    np.testing.assert_allclose(z, expected, rtol=1e-8, atol=1e-10)


def test_copy_decoder_takes_the_mvae_decoder():
    torch.manual_seed(1)
    mvae = MultinomialVAEModule(MVAEConfig(n_features=5, n_latent=2, n_hidden=4))
    with torch.no_grad():
        mvae.loadings_raw.normal_()
        mvae.bias_raw.normal_()
        mvae.log_sigma.fill_(-0.9)
    m = NonAmortisedModule(NonAmortisedConfig(n_samples=3, n_features=5, n_latent=2))
    m.copy_decoder(mvae)
    for a, b in [(m.loadings, mvae.loadings), (m.bias, mvae.bias),
                 (m.noise_variance, mvae.noise_variance)]:
        torch.testing.assert_close(a, b)


@pytest.fixture(scope="module")
def fitted():
    from mvae.evaluation.baselines import clr_pca
    from mvae.evaluation.simulate import simulate

    sim = simulate(260, 30, 3, depth=60, abundance_spread=1.0, random_state=0)
    X = sim.counts[:200]
    torch.manual_seed(0)
    m = NonAmortisedModule(NonAmortisedConfig(n_samples=200, n_features=30, n_latent=3))
    m.initialise_decoder(X, pseudocount=1.0)
    m.initialise_posteriors(X, pseudocount=1.0)
    with torch.no_grad():
        start = m.loss(IndexedCountData(X).batch(torch.arange(200)),
                       torch.Generator().manual_seed(0), n_samples=8).negative_elbo().mean()
    history = train_module(m, IndexedCountData(X), None,
                           TrainConfig(max_epochs=800, batch_size=200, learning_rate=1e-2,
                                       patience=100, seed=0), handle_signals=False)
    return sim, m, float(start), history, clr_pca(X, 3, pseudocount=1.0)


def test_training_with_the_shared_loop_improves_the_elbo_and_the_subspace(fitted):
    from mvae.evaluation.metrics import subspace_distance

    sim, m, start, history, pca = fitted
    X = sim.counts[:200]
    with torch.no_grad():
        end = m.loss(IndexedCountData(X).batch(torch.arange(200)),
                     torch.Generator().manual_seed(0), n_samples=8).negative_elbo().mean()
    assert float(end) < start - 1.0
    ours = subspace_distance(sim.loadings_clr, m.loadings.detach().double().numpy())
    theirs = subspace_distance(sim.loadings_clr, pca.loadings_clr)
    # measured: 0.08 vs 0.19 (sparse table, ~60 reads over 30 features)
    assert ours < theirs


def test_heldout_posteriors_leave_the_decoder_alone_and_are_finite(fitted):
    sim, m, *_ = fitted
    before = {k: v.clone() for k, v in m.state_dict().items()}
    values, fitted_module = heldout_negative_elbo(m, sim.counts[200:], max_steps=200,
                                                  return_module=True)
    assert values.shape == (60,) and np.all(np.isfinite(values))
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, before[k])
    torch.testing.assert_close(fitted_module.loadings, m.loadings)
    assert not fitted_module.loadings_raw.requires_grad


@pytest.mark.filterwarnings("ignore:.*fewer than 50 reads")  # shallow by design
def test_optimised_posteriors_beat_the_encoder_on_held_out_samples():
    """The amortisation gap is >= 0: the encoder's posterior is one member of the family the
    held-out optimisation searches (diagonal Gaussians over the logits, marginal objective)."""
    from mvae import MultinomialVAE
    from mvae.evaluation.simulate import simulate

    sim = simulate(300, 25, 2, depth=80, random_state=1)
    model = MultinomialVAE(2, encoder_depth=1, max_epochs=40, random_state=0, threads=1)
    model.fit(sim.counts[:240])
    test = sim.counts[240:]
    amortised = model.score_samples(test, n_samples=64).mean()
    optimised = heldout_negative_elbo(model.module_, test, max_steps=600, n_samples=64).mean()
    assert optimised <= amortised + 0.05
