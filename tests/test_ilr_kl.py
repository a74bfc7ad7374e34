"""The KL on the ILR subspace: the mean-field slack of the D-dimensional KL, checked by brute force.

The likelihood sees the lifted logits ℓ only through Hℓ, so the bound's KL is that of the
posterior's and the prior's marginals on 1^⊥. The reference here projects both Gaussians with an
orthonormal ILR basis (scikit-bio's default Gram–Schmidt basis, and a random orthonormal basis of
1^⊥ from numpy's QR) and takes torch's dense MultivariateNormal KL in D − 1 dimensions.
"""

import numpy as np
import pytest
import torch
from skbio.stats.composition import ilr as sk_ilr

from mvae.maths.likelihoods import LowRankPrior, kl_diag_to_lowrank, kl_factored_to_lowrank

MVN = torch.distributions.MultivariateNormal


def _skbio_basis(D):
    """scikit-bio's default ILR basis as a (D, D − 1) matrix with orthonormal columns: row i is
    ilr(closure(e^{e_i})) = Ψᵀ(e_i − 1/D) = Ψ_i."""
    return torch.tensor(np.asarray(sk_ilr(np.exp(np.eye(D)))))


def _random_basis(D, rng):
    """A random orthonormal basis of 1^⊥, (D, D − 1)."""
    A = np.column_stack([np.ones(D), rng.normal(size=(D, D - 1))])
    Q, _ = np.linalg.qr(A)
    return torch.tensor(Q[:, 1:])


def _case(rng, B, D, k, s2=0.37):
    W = rng.normal(size=(D, k))
    W -= W.mean(0)  # W̃ = ΨW: columns summing to zero
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    return (t(rng.normal(size=(B, D)) + rng.normal(size=(B, 1)) * 3.0),  # a mean off 1^⊥
            t(rng.normal(size=(B, D)) * 0.8 - 1.0), t(W), t(rng.normal(size=D)), t(s2))


def _ilr_kl(mean, log_var, W, b, s2, Psi):
    """Brute force: KL(N(Ψᵀm, ΨᵀVΨ) || N(Ψᵀb, Ψᵀ(WWᵀ + σ²I)Ψ)) per row, dense, in D − 1 dims."""
    D = W.shape[0]
    cov_p = Psi.T @ (W @ W.T + s2 * torch.eye(D, dtype=W.dtype)) @ Psi
    p = MVN(Psi.T @ b, cov_p)
    return torch.stack([torch.distributions.kl_divergence(
        MVN(Psi.T @ m, Psi.T @ torch.diag(lv.exp()) @ Psi), p) for m, lv in zip(mean, log_var)])


def _full_kl(mean, log_var, W, b, s2):
    D = W.shape[0]
    p = MVN(b, W @ W.T + s2 * torch.eye(D, dtype=W.dtype))
    return torch.stack([torch.distributions.kl_divergence(MVN(m, torch.diag(lv.exp())), p)
                        for m, lv in zip(mean, log_var)])


@pytest.mark.parametrize("D,k", [(5, 2), (40, 6)])
def test_slack_formula_is_the_gap_between_the_full_and_the_ilr_kl(D, k):
    """KL_D − KL_ILR = ½[(mean(v) + (Σδ)²/D)/σ² − 1 − log(hmean(v)/σ²)] to 10 digits."""
    rng = np.random.default_rng(D)
    mean, log_var, W, b, s2 = _case(rng, 4, D, k)
    v, delta = log_var.exp(), mean - b
    slack = 0.5 * ((v.mean(1) + delta.sum(1) ** 2 / D) / s2 - 1.0
                   - torch.log(D / (1.0 / v).sum(1) / s2))
    gap = _full_kl(mean, log_var, W, b, s2) - _ilr_kl(mean, log_var, W, b, s2, _skbio_basis(D))
    np.testing.assert_allclose(gap.numpy(), slack.numpy(), rtol=1e-10)
    assert (slack > 0).all()


@pytest.mark.parametrize("D,k", [(3, 1), (5, 2), (40, 6)])
def test_diag_kl_is_the_ilr_kl_in_any_basis(D, k):
    rng = np.random.default_rng(100 + D)
    mean, log_var, W, b, s2 = _case(rng, 5, D, k)
    got = kl_diag_to_lowrank(mean, log_var, LowRankPrior(W, b, s2))
    for Psi in (_skbio_basis(D), _random_basis(D, rng)):
        np.testing.assert_allclose(got.numpy(), _ilr_kl(mean, log_var, W, b, s2, Psi).numpy(),
                                   rtol=1e-10)
    # and it ignores the mean's component along 1 (a per-sample constant)
    shifted = kl_diag_to_lowrank(mean + torch.tensor(rng.normal(size=(5, 1))), log_var,
                                 LowRankPrior(W, b, s2))
    np.testing.assert_allclose(shifted.numpy(), got.numpy(), rtol=1e-12)


def _factored(rng, B, D, m, k, zero_frac, empty=None):
    y = np.log1p(rng.poisson(3.0, size=(B, D)) * (rng.random((B, D)) >= zero_frac))
    if empty is not None:
        y[empty] = 0.0
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    parts = dict(shift=t(rng.normal(size=D)), left=t(rng.normal(size=(B, m))),
                 right=t(rng.normal(size=(D, m)) / np.sqrt(D)), skip=t(rng.normal(size=D)),
                 log_scale=t(rng.normal(size=B) * 0.3),
                 feature_log_var=t(rng.normal(size=D) * 0.3),
                 skip_log_var=t(rng.normal(size=D) * 0.3))
    W = rng.normal(size=(D, k))
    return t(y), parts, t(W - W.mean(0)), t(rng.normal(size=D)), t(0.45)


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("B,D,m,k,zero_frac,empty", [(4, 5, 2, 1, 0.0, None),
                                                     (5, 40, 4, 3, 0.7, None),
                                                     (4, 12, 3, 2, 0.5, [0, 3])])
def test_factored_kl_is_the_ilr_kl(layout, B, D, m, k, zero_frac, empty):
    rng = np.random.default_rng(B * D + m)
    y, p, W, b, s2 = _factored(rng, B, D, m, k, zero_frac, empty)
    mean = b + p["shift"] + p["left"] @ p["right"].T + p["skip"] * y
    log_var = p["log_scale"][:, None] + p["feature_log_var"] + p["skip_log_var"] * y
    got = kl_factored_to_lowrank(y=y.to_sparse() if layout == "sparse" else y,
                                 prior=LowRankPrior(W, b, s2), **p)
    want = _ilr_kl(mean, log_var, W, b, s2, _random_basis(D, rng))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10)


def test_diag_kl_gradcheck_on_centred_loadings():
    rng = np.random.default_rng(5)
    mean, log_var, W, b, s2 = _case(rng, 3, 6, 2)
    args = [a.clone().requires_grad_() for a in (mean, log_var, W, b, s2.log())]

    def f(mean, log_var, W, b, log_s2):
        return kl_diag_to_lowrank(mean, log_var, LowRankPrior(W - W.mean(0), b, log_s2.exp()))

    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_factored_kl_gradcheck_on_centred_loadings(layout):
    rng = np.random.default_rng(9)
    y, p, W, b, s2 = _factored(rng, 3, 7, 2, 2, 0.5, empty=[1])
    yt = y.to_sparse() if layout == "sparse" else y
    inputs = [v.clone().requires_grad_() for v in p.values()]
    extra = [W.clone().requires_grad_(), s2.log().clone().requires_grad_()]

    def f(*args):
        parts = dict(zip(p, args[:-2]))
        W, log_s2 = args[-2:]
        return kl_factored_to_lowrank(y=yt, prior=LowRankPrior(W - W.mean(0), b, log_s2.exp()),
                                      **parts)

    assert torch.autograd.gradcheck(f, (*inputs, *extra))
