"""The clr-coordinate MVAE module against a dense-Ψ ILR implementation written here.

The module never applies Ψ: its first encoder layer acts on centred log counts and its decoder on
per-feature logits. The reference below follows docs/model.md literally in ILR coordinates with a
dense Ψ (u = Ψᵀ(log(x + c) − m), η = W z + b + σε, logits Ψη, dense Gaussian KL of the
posterior's marginal on η from torch.distributions), so agreement checks the equivalence claimed there, for two different bases.
"""

import numpy as np
import pytest
import torch

from mvae.maths.compositions import HelmertBasis
from mvae.maths.trees import TreeBasis
from mvae.counts import MultinomialVAEModule, MVAEConfig
from mvae.counts.encoder import ClrLinear, log_ratio_input

BASES = {
    "helmert": lambda D: HelmertBasis(D),
    "balanced": lambda D: TreeBasis.balanced(D),
}


def _module(D, k, objective, depth=2, seed=0, pseudocount=0.5):
    torch.manual_seed(seed)
    cfg = MVAEConfig(n_features=D, n_latent=k, n_hidden=6, encoder_depth=depth,
                     pseudocount=pseudocount, objective=objective, n_mc_samples=2,
                     posterior_rank=4)
    m = MultinomialVAEModule(cfg).double()
    rng = np.random.default_rng(seed)
    with torch.no_grad():  # move away from the symmetric initial state
        m.loadings_raw.copy_(torch.tensor(rng.normal(size=(D, k))))
        m.bias_raw.copy_(torch.tensor(rng.normal(size=D)))
        m.log_sigma.fill_(-0.7)
        m.encoder.input_layer.centre.copy_(torch.tensor(rng.normal(size=D) * 0.1))
        m.encoder.input_layer.scale.fill_(1.7)
    return m


def _counts(D, B=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.poisson(rng.gamma(0.5, 8.0, size=(B, D))).astype(float)
    X[:, 0] += 1
    return torch.tensor(X)


def _reference_loss(m, counts, Psi, seed, sparse=False):
    """Negative ELBO per sample, computed in ILR coordinates with a dense Ψ (D x (D-1)).

    The marginal objective's estimator for sparse counts (``sparse=True``) draws at the non-zero
    counts only (S x nnz numbers, row-major) and takes the Jensen bound m + v/2 at the zeros."""
    cfg = m.config
    Psi = torch.tensor(Psi)
    layer = m.encoder.input_layer
    y = torch.log(counts + cfg.pseudocount)  # the encoder's input, before centring
    u = (y - layer.centre) @ Psi  # u = Ψᵀ(log(x + c) − m): (B, D) @ (D, D-1)
    V = (layer.weight.detach() / layer.scale) @ Psi  # first layer in ILR coordinates: (H, D-1)
    h = m.encoder.body(u @ V.T + layer.bias)
    W = Psi.T @ m.loadings  # (D-1, k) loadings in ILR coordinates
    b = Psi.T @ m.bias  # (D-1,)
    sigma = m.log_sigma.exp()
    gen = torch.Generator().manual_seed(seed)
    S, B, D = cfg.n_mc_samples, counts.shape[0], cfg.n_features
    if cfg.objective == "marginal":
        # posterior over the D lifted logits, centred on Ψb, with the per-feature skip from Ψu;
        # r coordinates mapped through a factor of the posterior's own
        head = m.mean_head(h) @ m.mean_factor.T
        mean = head + Psi @ b + m.skip_mean * (u @ Psi.T)
        var = (m.log_var_head(h) + m.feature_log_var
               + m.skip_log_var * torch.log1p(counts / cfg.pseudocount)).exp()
        if sparse:
            observed = counts > 0
            eps = torch.zeros((S, B, D), dtype=counts.dtype)
            eps[:, observed] = torch.randn((S, int(observed.sum())), dtype=counts.dtype,
                                           generator=gen)
            logits = torch.where(observed, mean + eps * var.sqrt(), mean + 0.5 * var)
        else:
            eps = torch.randn((S, B, D), dtype=counts.dtype, generator=gen)
            logits = mean + eps * var.sqrt()
        # the KL in ILR coordinates: q's marginal on η = Ψᵀℓ against N(b, WWᵀ + σ²I_{D-1})
        Sigma = W @ W.T + sigma**2 * torch.eye(D - 1, dtype=counts.dtype)
        prior = torch.distributions.MultivariateNormal(b, covariance_matrix=Sigma)
        q = torch.distributions.MultivariateNormal(mean @ Psi, covariance_matrix=(
            Psi.T @ torch.diag_embed(var) @ Psi))
        kl = torch.distributions.kl_divergence(q, prior)
    else:
        mu, log_var = m.mean_head(h), m.log_var_head(h)
        eps = torch.randn((S, B, cfg.n_latent), dtype=counts.dtype, generator=gen)
        z = mu + eps * torch.exp(0.5 * log_var)
        noise_D = torch.randn((S, B, D), dtype=counts.dtype, generator=gen)
        eta = z @ W.T + b + sigma * (noise_D @ Psi)  # Ψᵀε ~ N(0, I_{D-1}): a valid ILR noise draw
        logits = eta @ Psi.T
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(mu, torch.exp(0.5 * log_var)),
            torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
    recon = torch.stack([
        torch.distributions.Multinomial(int(counts[i].sum()), logits=logits[:, i]).log_prob(counts[i])
        for i in range(B)], dim=1).mean(0)
    return kl - recon


@pytest.mark.parametrize("basis", sorted(BASES))
@pytest.mark.parametrize("objective", ["marginal", "sampled"])
@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_clr_module_equals_dense_psi_reference(basis, objective, layout):
    D, k = 9, 3
    m = _module(D, k, objective)
    counts = _counts(D)
    Psi = BASES[basis](D).dense()
    want = _reference_loss(m, counts, Psi, seed=11, sparse=layout == "sparse")
    x = counts.to_sparse() if layout == "sparse" else counts
    got = m.loss(x, generator=torch.Generator().manual_seed(11)).negative_elbo()
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-9)


@pytest.mark.parametrize("objective", ["marginal", "sampled"])
@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_clr_module_gradients_equal_dense_psi_reference(objective, layout):
    """Every parameter's gradient equals autograd's through the dense-Ψ reference (the module
    builds its posterior and likelihood with hand-written gradients and sparse updates)."""
    D, k = 9, 3
    m = _module(D, k, objective)
    counts = _counts(D)
    Psi = BASES["balanced"](D).dense()
    x = counts.to_sparse() if layout == "sparse" else counts
    names = [n for n, _ in m.named_parameters() if n != "encoder.input_layer.kernel"]
    want = torch.autograd.grad(_reference_loss(m, counts, Psi, seed=11,
                                               sparse=layout == "sparse").sum(),
                               [dict(m.named_parameters())[n] for n in names], allow_unused=True)
    got = torch.autograd.grad(
        m.loss(x, generator=torch.Generator().manual_seed(11)).negative_elbo().sum(),
        [dict(m.named_parameters())[n] for n in names], allow_unused=True)
    for name, g, w in zip(names, got, want):
        if w is None:
            assert g is None or torch.count_nonzero(g) == 0, name
            continue
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-8, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("objective", ["marginal", "sampled"])
@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_module_loss_gradcheck(objective, layout):
    m = _module(5, 2, objective, depth=2)
    counts = _counts(5, B=3)
    names = ["loadings_raw", "bias_raw", "log_sigma", "encoder.input_layer.kernel",
             "mean_head.weight", "log_var_head.weight"]
    if objective == "marginal":
        names += ["skip_mean", "skip_log_var", "feature_log_var", "mean_factor"]
    params = dict(m.named_parameters())

    def loss(*values):  # the loss as a function of the chosen parameters, noise fixed
        state = dict(zip(names, values))
        return torch.func.functional_call(
            m, state, (counts.to_sparse() if layout == "sparse" else counts,),
            {"generator": torch.Generator().manual_seed(3)}, strict=False).negative_elbo()

    inputs = tuple(params[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(loss, inputs)


def test_latent_mean_is_the_ppca_posterior_mean():
    D, k = 8, 3
    m = _module(D, k, "marginal")
    counts = _counts(D)
    post = m.encode(counts)
    W = m.loadings.detach().numpy()
    b = m.bias.detach().numpy()
    s2 = m.noise_variance.item()
    M = np.eye(k) + W.T @ W / s2
    want = np.linalg.solve(M, W.T @ (post.mean.detach().numpy() - b).T).T / s2
    np.testing.assert_allclose(m.latent_mean(counts).detach().numpy(), want, rtol=1e-9)


def test_clr_linear_ignores_constant_shifts_and_sparse_equals_dense():
    rng = np.random.default_rng(0)
    layer = ClrLinear(12, 4).double()
    with torch.no_grad():
        layer.centre.copy_(torch.tensor(rng.normal(size=12)))
    counts = _counts(12, B=4)
    y = log_ratio_input(counts, 1.0)
    out = layer(y)
    # log(x + c) and log(x + c) - log c differ by a constant: same output
    np.testing.assert_allclose(layer(y + 3.0).detach(), out.detach(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer(log_ratio_input(counts.to_sparse(), 1.0)).detach(),
                               out.detach(), rtol=1e-12)
    np.testing.assert_allclose(log_ratio_input(counts, 2.0).numpy(),
                               np.log(counts.numpy() + 2.0) - np.log(2.0), rtol=1e-12)


def test_clr_linear_sparse_gradients_equal_dense():
    """The sparse input path (a CSR product) gives the dense path's weight and bias gradients,
    and both equal the gradient of the plain formula (W − row means)(y − m)/s written here."""
    rng = np.random.default_rng(3)
    layer = ClrLinear(40, 6).double()
    with torch.no_grad():
        layer.centre.copy_(torch.tensor(rng.normal(size=40)))
        layer.scale.fill_(1.7)
    counts = torch.tensor(rng.poisson(0.3, size=(9, 40)), dtype=torch.float64)  # ~74% zeros
    g = torch.tensor(rng.normal(size=(9, 6)))
    grads = []
    for x in (counts, counts.to_sparse()):
        layer.zero_grad()
        (layer(log_ratio_input(x, 0.5)) * g).sum().backward()
        grads.append((layer.kernel.grad.T.clone(), layer.bias.grad.clone()))
    W = layer.weight.detach().clone().requires_grad_(True)
    y = torch.log1p(counts / 0.5)
    ref = ((y - layer.centre) @ (W - W.mean(1, keepdim=True)).T / 1.7 * g).sum()
    ref.backward()
    for w_grad, b_grad in grads:
        np.testing.assert_allclose(w_grad, W.grad, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(b_grad, g.sum(0), rtol=1e-12)


@pytest.mark.parametrize("depth,n_linear", [(1, 0), (2, 0), (3, 1), (4, 2)])
def test_encoder_depth_counts_linear_maps(depth, n_linear):
    m = _module(6, 2, "marginal", depth=depth)
    linears = [x for x in m.encoder.body if isinstance(x, torch.nn.Linear)]
    acts = [x for x in m.encoder.body if not isinstance(x, (torch.nn.Linear, torch.nn.Dropout))]
    assert len(linears) == n_linear and len(acts) == depth - 1


def test_linear_encoder_is_linear_in_the_log_ratio_input():
    m = _module(6, 2, "marginal", depth=1)
    a = log_ratio_input(_counts(6, B=1, seed=1), 1.0)
    b = log_ratio_input(_counts(6, B=1, seed=2), 1.0)
    f = lambda y: m.mean_head(m.encoder(y))  # noqa: E731
    lhs = f(0.3 * a + 0.7 * b)
    rhs = 0.3 * f(a) + 0.7 * f(b)
    np.testing.assert_allclose(lhs.detach(), rhs.detach(), rtol=1e-10, atol=1e-12)


def test_clr_linear_loads_the_earlier_weight_layout():
    """Model files from before the kernel (D, n_out) layout stored weight (n_out, D)."""
    rng = np.random.default_rng(5)
    old = ClrLinear(7, 3).double()
    state = {k: v.clone() for k, v in old.state_dict().items()}
    state["weight"] = state.pop("kernel").T.contiguous()  # the earlier layout
    new = ClrLinear(7, 3).double()
    new.load_state_dict(state)
    y = torch.tensor(rng.poisson(2.0, size=(4, 7)), dtype=torch.float64)
    np.testing.assert_array_equal(new(y).detach(), old(y).detach())


@pytest.mark.parametrize("objective", ["marginal", "sampled"])
def test_estimator_follows_the_batch_layout(objective):
    """Sparse and dense batches of the same counts: the same KL always; the same expected
    log-likelihood for the sampled objective (Monte Carlo either way), a different one for the
    marginal objective (draws at the non-zeros and the bound at the zeros for a sparse batch)."""
    m = _module(9, 3, objective)
    counts = _counts(9)
    dense, sparse = (m.loss(x, generator=torch.Generator().manual_seed(3))
                     for x in (counts, counts.to_sparse()))
    np.testing.assert_allclose(sparse.kl.detach(), dense.kl.detach(), rtol=1e-10)
    if objective == "sampled":
        np.testing.assert_allclose(sparse.reconstruction.detach(),
                                   dense.reconstruction.detach(), rtol=1e-10)
    else:
        assert not np.allclose(sparse.reconstruction.detach(), dense.reconstruction.detach())
