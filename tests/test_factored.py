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


def _assert_same(got, want, p, weights):
    """Values equal, and the gradients of every part of the weighted sum."""
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-10)
    g_got = torch.autograd.grad((got * weights).sum(), list(p.values()))
    g_want = torch.autograd.grad((want * weights).sum(), list(p.values()))
    for name, a, b in zip(NAMES, g_got, g_want):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)


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
    _assert_same(got, want, p, weights)


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("chunk_rows", [4, 16, None])
def test_blocks_of_16_rows_or_more(layout, chunk_rows):
    """Blocks of at least 16 rows accumulate Q's gradient in the transposed layout: value and
    gradients against the unfused Monte Carlo estimate, for blocks on either side of that."""
    X, p, rng = _case(40, B=37, D=11, r=4)
    y = torch.log1p(X / 0.5)
    eps = torch.tensor(rng.normal(size=(2, *X.shape)))
    weights = torch.tensor(rng.normal(size=(2, X.shape[0])))
    xs, ys = (X.to_sparse(), y.to_sparse()) if layout == "sparse" else (X, y)
    got = factored_multinomial_log_prob(*p.values(), ys, xs, eps, chunk_rows=chunk_rows)
    mean, log_var = _dense_posterior(p, y)
    want = gaussian_multinomial_log_prob(mean, torch.exp(0.5 * log_var), eps, X)
    _assert_same(got, want, p, weights)


@pytest.mark.parametrize("estimator", ["mc", "bound", "mixed"])
@pytest.mark.parametrize("chunk_rows", [1, 2, None])
def test_sparse_layout_with_a_row_without_counts(estimator, chunk_rows):
    """A sample with no counts is an empty segment of the sparse layout's non-zeros: value and
    gradients equal to the dense layout's (a separate code path, checked against the unfused
    estimators above), for blocks where that row is alone, shared, or the whole batch."""
    X, p, rng = _case(30)
    X[2] = 0.0
    y = torch.log1p(X / 0.5)
    S = 2
    eps = torch.tensor(rng.normal(size=(S, *X.shape))) if estimator != "bound" else None
    eps_sparse = eps
    if estimator == "mixed":
        rows, cols = torch.nonzero(X > 0, as_tuple=True)  # the coalesced order
        eps_sparse = eps[:, rows, cols]
    weights = torch.tensor(rng.normal(size=(S, X.shape[0]) if eps is not None else X.shape[0]))
    got = factored_multinomial_log_prob(*p.values(), y.to_sparse(), X.to_sparse(), eps_sparse,
                                        chunk_rows=chunk_rows)
    want = factored_multinomial_log_prob(*p.values(), y, X, eps, chunk_rows=chunk_rows,
                                         mixed=estimator == "mixed")
    assert torch.all(torch.isfinite(got))
    _assert_same(got, want, p, weights)


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


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("S", [1, 3])
@pytest.mark.parametrize("chunk_rows", [1, 2, None])
def test_mixed_estimator_equals_its_formula(layout, S, chunk_rows):
    """Draws at the non-zeros, the Jensen bound at the zeros: value and gradients against the
    formula written out densely here, ℓ = m + [x > 0](ε ⊙ √v) + [x = 0] v / 2, with autograd."""
    X, p, rng = _case(20 + S, zero_frac=0.6)
    y = torch.log1p(X / 0.5)
    nnz = int((X > 0).sum())
    eps_nz = torch.tensor(rng.normal(size=(S, nnz)))
    weights = torch.tensor(rng.normal(size=(S, X.shape[0])))
    observed = X > 0
    rows, cols = torch.nonzero(observed, as_tuple=True)  # row-major: the coalesced order
    eps = torch.tensor(rng.normal(size=(S, *X.shape)))  # dense layout: draws everywhere
    if layout == "sparse":
        eps[:, rows, cols] = eps_nz
        got = factored_multinomial_log_prob(*p.values(), y.to_sparse(), X.to_sparse(), eps_nz,
                                            chunk_rows=chunk_rows)
    else:
        got = factored_multinomial_log_prob(*p.values(), y, X, eps, chunk_rows=chunk_rows,
                                            mixed=True)
    mean, log_var = _dense_posterior(p, y)
    ell = mean + torch.where(observed, eps * torch.exp(0.5 * log_var), 0.5 * log_var.exp())
    want = (X * ell).sum(-1) - X.sum(-1) * torch.logsumexp(ell, -1) + (
        torch.lgamma(X.sum(-1) + 1) - torch.lgamma(X + 1).sum(-1))
    _assert_same(got, want, p, weights)


def test_mixed_estimator_lies_between_the_bound_and_monte_carlo():
    """Jensen in two steps: bound ≤ E[mixed] ≤ E[Monte Carlo]. Checked with 20,000 draws shared
    by the two estimators at the non-zeros, each inequality up to 4 standard errors."""
    X, p, rng = _case(5, B=4, D=30, zero_frac=0.7)
    xs, ys = X.to_sparse(), torch.log1p(X).to_sparse()
    rows, cols = xs.indices()
    eps = torch.tensor(rng.normal(size=(20_000, 4, 30)))
    with torch.no_grad():
        bound = factored_multinomial_log_prob(*p.values(), ys, xs)
        mixed = factored_multinomial_log_prob(*p.values(), ys, xs, eps[:, rows, cols])
        mc = factored_multinomial_log_prob(*p.values(), ys, xs, eps)

    def mean_se(t):
        return t.mean(0), t.std(0) / len(t) ** 0.5

    m, se = mean_se(mixed)
    assert torch.all(m - bound > -4 * se)
    d, se_d = mean_se(mc - mixed)
    assert torch.all(d > -4 * se_d)
    assert torch.all(d > 0.2)  # and the zeros' noise matters here (70% zeros, 30 features)


def test_default_blocks_have_at_least_min_chunk_rows(monkeypatch):
    """With a cache budget below one row per block, the default blocks still hold
    MIN_CHUNK_ROWS rows (the last one the rest), and the value is unchanged."""
    import mvae.factored as fm

    X, p, rng = _case(50, B=37, D=11, r=4)
    y = torch.log1p(X / 0.5)
    eps = torch.tensor(rng.normal(size=(1, *X.shape)))
    want = factored_multinomial_log_prob(*p.values(), y, X, eps, chunk_rows=1)
    sizes = []
    blocks = fm._blocks
    monkeypatch.setattr(fm, "_blocks", lambda *a: [sizes.append(b.i1 - b.i0) or b
                                                   for b in blocks(*a)])
    monkeypatch.setattr(fm, "CHUNK_ELEMENTS", 1)
    got = factored_multinomial_log_prob(*p.values(), y, X, eps)
    assert sizes == [fm.MIN_CHUNK_ROWS, fm.MIN_CHUNK_ROWS, 37 - 2 * fm.MIN_CHUNK_ROWS]
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-12)
