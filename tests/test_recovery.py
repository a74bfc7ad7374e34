"""Does a fit recover the truth of a simulation, compared with clr + PCA on the same table?

Thresholds are the numbers measured when these tests were written (seed 0, one thread), with a
margin for platform differences in floating point; they are stated beside each assertion. The
comparison with clr(x + 1) + PCA (probabilistic PCA on clr(x + 1), Tipping & Bishop) uses the same
metrics on the same table.
"""

import numpy as np
import pytest

from mvae import MultinomialVAE
from mvae.evaluation.baselines import clr_pca
from mvae.evaluation.metrics import (correlation_agreement, embedding_r2, relative_frobenius,
                                     subspace_distance)
from mvae.evaluation.simulate import simulate

K = 10


def _evaluate(sim, loadings, noise_variance):
    from mvae.maths.covariance import LowRankCovariance

    est = LowRankCovariance(loadings, noise_variance, space="clr")
    return dict(
        subspace=subspace_distance(sim.loadings_clr, loadings),
        frobenius=relative_frobenius(est.dense(), sim.covariance_clr()),
        corr=correlation_agreement(est.correlation_dense(), sim.correlation_clr()).pearson,
    )


def _fit_and_compare(sim):
    model = MultinomialVAE(n_latent=K, random_state=0, threads=1).fit(sim.counts)
    mvae_m = _evaluate(sim, model.components_, model.noise_variance_)
    pca = clr_pca(sim.counts, K, pseudocount=1.0)
    pca_m = _evaluate(sim, pca.loadings_clr, pca.noise_variance)
    return model, mvae_m, pca_m


@pytest.fixture(scope="module")
def deep():
    sim = simulate(1000, 200, K, depth=10_000, abundance_spread=0.5, random_state=0)
    assert sim.density > 0.98  # "no zeros" regime
    return sim, *_fit_and_compare(sim)


@pytest.fixture(scope="module")
def sparse():
    sim = simulate(1000, 200, K, depth=100, abundance_spread=1.0, random_state=0)
    assert sim.density < 0.35
    return sim, *_fit_and_compare(sim)


def test_deep_sequencing_at_least_as_good_as_clr_pca(deep):
    # measured: subspace 0.0039 vs 0.0040, Frobenius 0.116 vs 0.156, correlation r 0.9947 vs
    # 0.9953 (mvae vs clr + PCA; subspace 0.0037 without the encoder's dropout): better subspace and covariance, correlations within 0.001.
    sim, model, m, p = deep
    assert m["subspace"] <= p["subspace"]
    assert m["frobenius"] <= p["frobenius"]
    assert m["corr"] >= p["corr"] - 0.002
    assert m["subspace"] < 0.01 and m["corr"] > 0.99


def test_marginal_objective_recovers_sigma_when_deep(deep):
    # measured σ̂ = 0.321 for σ = 0.316 (+1.5%; +15-19% before the end-of-fit polish). The
    # issue's target, 5%, is the tolerance: on simulate(1000, 200, 10) with 10,000 reads the
    # package reaches +2.8 to +5.2% over seeds 0-4 (benchmarks/results/sigma/README.md)
    sim, model, _, _ = deep
    sigma_hat = np.sqrt(model.noise_variance_)
    assert abs(sigma_hat - sim.sigma) / sim.sigma < 0.05


def test_deep_embeddings_recover_z(deep):
    sim, model, _, _ = deep
    assert embedding_r2(sim.z, model.transform(sim.counts)) > 0.95


@pytest.mark.filterwarnings("ignore:.*fewer than 50 reads")  # shallow by design
def test_sparse_clearly_better_than_clr_pca(sparse):
    # measured (density 0.28, ~100 reads over 200 features): subspace 0.22 vs 0.44, Frobenius
    # 0.48 vs 0.95, correlation r 0.90 vs 0.73 (mvae vs clr(x + 1) + PCA; Frobenius was 0.65
    # before the end-of-fit polish)
    sim, model, m, p = sparse
    assert m["corr"] > p["corr"] + 0.12
    assert m["subspace"] < p["subspace"] - 0.15
    assert m["frobenius"] < p["frobenius"] - 0.2
