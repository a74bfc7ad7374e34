"""The fused, chunked likelihood of mvae.factored against the unfused estimators of
mvae.likelihoods on the materialised posterior (themselves checked against scipy), for both
estimators, both layouts, several draws and every block size; plus finite differences."""

import numpy as np
import pytest
import torch

from mvae.factored import factored_multinomial_log_prob
from mvae.likelihoods import gaussian_multinomial_log_prob, multinomial_log_prob_bound

NAMES = ("left", "right", "base", "skip", "t", "f", "g")


def _case(seed, B=5, D=13, r=3, zero_frac=0.6):
    rng = np.random.default_rng(seed)
    X = rng.poisson(4.0, size=(B, D)) * (rng.random((B, D)) >= zero_frac)
    X[:, 0] += 1  # no empty rows
    parts = dict(left=rng.normal(size=(B, r)), right=rng.normal(size=(D, r)) / 2,
                 base=rng.normal(size=D), skip=rng.normal(size=D) * 0.5,
                 t=rng.normal(size=B) * 0.3, f=rng.normal(size=D) * 0.3,
                 g=rng.normal(size=D) * 0.3)
    return (torch.tensor(X, dtype=torch.float64),
            {n: torch.tensor(v, requires_grad=True) for n, v in parts.items()}, rng)


def _dense_posterior(p, y):
    mean = p["base"] + p["left"] @ p["right"].T + p["skip"] * y
    log_var = p["t"][:, None] + p["f"] + p["g"] * y
    return mean, log_var


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("estimator,S", [("mc", 1), ("mc", 3), ("bound", 1)])
@pytest.mark.parametrize("chunk_rows", [1, 2, 5, None])
def test_fused_equals_unfused_value_and_gradients(layout, estimator, S, chunk_rows):
    X, p, rng = _case(S + 10 * (layout == "sparse"))
    y = torch.log1p(X / 0.5)
    eps = torch.tensor(rng.normal(size=(S, *X.shape))) if estimator == "mc" else None
    weights = torch.tensor(rng.normal(size=(S, X.shape[0]) if eps is not None else X.shape[0]))
    xs, ys = (X.to_sparse(), y.to_sparse()) if layout == "sparse" else (X, y)
    got = factored_multinomial_log_prob(*p.values(), ys, xs, eps, chunk_rows=chunk_rows)
    mean, log_var = _dense_posterior(p, y)
    if eps is None:
        want = multinomial_log_prob_bound(mean, log_var.exp(), X)
    else:
        want = gaussian_multinomial_log_prob(mean, torch.exp(0.5 * log_var), eps, X)
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-10)
    g_got = torch.autograd.grad((got * weights).sum(), list(p.values()))
    g_want = torch.autograd.grad((want * weights).sum(), list(p.values()))
    for name, a, b in zip(NAMES, g_got, g_want):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("estimator", ["mc", "bound"])
def test_fused_gradcheck(estimator):
    X, p, rng = _case(3, B=3, D=6, r=2)
    y = torch.log1p(X)
    eps = torch.tensor(rng.normal(size=(2, 3, 6))) if estimator == "mc" else None

    def f(*args):
        return factored_multinomial_log_prob(*args, y.to_sparse(), X.to_sparse(), eps,
                                             chunk_rows=2)

    assert torch.autograd.gradcheck(f, tuple(p.values()))


def test_fused_refuses_mismatched_layouts():
    X, p, _ = _case(0)
    with pytest.raises(ValueError, match="layout"):
        factored_multinomial_log_prob(*p.values(), torch.log1p(X).to_sparse(), X)
    with pytest.raises(ValueError, match="non-zeros"):
        factored_multinomial_log_prob(*p.values(), torch.log1p(X[:, 1:].sum() + X).to_sparse(),
                                      X.to_sparse())
