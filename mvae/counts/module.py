"""The multinomial VAE as a torch module: inference, generative model and per-sample loss terms.

Generative model (docs/model.md), written in clr coordinates:

.. math::

    z \\sim N(0, I_k), \\qquad
    \\ell \\mid z \\sim N(\\tilde W z + \\tilde b, \\sigma^2 I_D), \\qquad
    x \\mid \\ell \\sim \\operatorname{Multinomial}(N, \\operatorname{softmax}(\\ell))

with :math:`\\tilde W = \\Psi W` (columns summing to zero) and :math:`\\tilde b = \\Psi b`. The
softmax ignores the component of ℓ along 1 and :math:`H\\ell` has exactly the law of
:math:`\\Psi\\eta`, :math:`\\eta \\sim N(Wz + b, \\sigma^2 I_{D-1})`, so this is the ILR model for any
orthonormal basis Ψ; Ψ is needed only to report results in ILR/balance coordinates. Lifting η to
per-feature logits ℓ also makes a diagonal (mean-field) posterior basis-free: it is diagonal over
the D features, not over balances that depend on the basis chosen.

Two objectives:

``marginal`` (default)
    z is integrated out: :math:`\\ell \\sim N(\\tilde b, \\tilde W\\tilde W^\\top + \\sigma^2 I_D)`. The
    encoder gives :math:`q(\\ell\\mid x) = N(m_\\phi, \\operatorname{diag} v_\\phi)` and

    .. math:: \\mathrm{ELBO} = E_q[\\log \\operatorname{Mult}(x \\mid \\operatorname{softmax}\\ell)]
              - \\mathrm{KL}(q \\,\\|\\, N(\\tilde b, \\tilde W \\tilde W^\\top + \\sigma^2 I))

    with the KL in O(D k²) by Woodbury. The latent posterior follows from the PPCA formula,
    :math:`E[z \\mid x] = (\\sigma^2 I + \\tilde W^\\top\\tilde W)^{-1}\\tilde W^\\top(m_\\phi - \\tilde b)`.
``sampled`` (catvae's form)
    :math:`q(z\\mid x) = N(\\mu_\\phi, \\operatorname{diag} s^2_\\phi)`, ℓ drawn from p(ℓ | z), KL to N(0, I).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..maths.factored import factored_multinomial_log_prob
from ..maths.likelihoods import (
    LowRankPrior,
    factored_gram,
    gaussian_multinomial_log_prob,
    kl_factored_to_lowrank,
    kl_normal_standard,
)
from ..maths.sparse_ops import row_sums
from .encoder import Encoder, log_ratio_input

__all__ = ["LowRankDecoder", "MVAEConfig", "LossTerms", "Posterior", "FactoredPosterior",
           "MultinomialVAEModule", "OBJECTIVES"]

OBJECTIVES = ("marginal", "sampled")


@dataclass(frozen=True)
class MVAEConfig:
    """Shapes and choices of a :class:`MultinomialVAEModule` (everything needed to rebuild it)."""

    n_features: int
    n_latent: int = 10
    n_hidden: int = 128
    encoder_depth: int = 2
    pseudocount: float = 1.0
    objective: str = "marginal"
    activation: str = "gelu"
    dropout: float = 0.0
    n_mc_samples: int = 1
    posterior_rank: int = 32


@dataclass(frozen=True)
class LossTerms:
    """Per-sample terms of the ELBO, each of shape (B,).

    Attributes
    ----------
    reconstruction : torch.Tensor
        Estimate of :math:`E_q[\\log p(x \\mid \\cdot)]` (nats).
    kl : torch.Tensor
        KL divergence of the approximate posterior from the prior (nats).
    """

    reconstruction: torch.Tensor
    kl: torch.Tensor

    def negative_elbo(self, kl_weight: float = 1.0) -> torch.Tensor:
        """:math:`-(\\text{reconstruction} - w\\,\\mathrm{KL})` per sample, shape (B,)."""
        return kl_weight * self.kl - self.reconstruction


@dataclass(frozen=True)
class Posterior:
    """A diagonal Gaussian: the ``sampled`` objective's q(z | x) (k wide), or the ``marginal``
    objective's q(ℓ | x) materialised (D wide, see :meth:`FactoredPosterior.dense`)."""

    mean: torch.Tensor
    log_var: torch.Tensor


@dataclass(frozen=True)
class FactoredPosterior:
    """q(ℓ | x) = N(m, diag v) of the ``marginal`` objective, kept in parts:

    .. math::

        m = \\tilde b + s + P Q^\\top + a \\odot y, \\qquad
        \\log v = t 1^\\top + f + g \\odot y

    with y the (B, D) log-ratio input (dense or sparse), P (B, r) from the encoder, Q (D, r)
    and s, a, f, g per feature, t (B,) per sample. Neither m nor v is formed as a (B, D) array
    in training: the likelihood is fused over blocks of rows and the KL needs only D-wide sums.
    """

    bias: torch.Tensor  # b̃, (D,)
    shift: torch.Tensor  # s, (D,)
    left: torch.Tensor  # P, (B, r)
    right: torch.Tensor  # Q, (D, r)
    skip: torch.Tensor  # a, (D,)
    y: torch.Tensor  # (B, D), dense or sparse COO
    log_scale: torch.Tensor  # t, (B,)
    feature_log_var: torch.Tensor  # f, (D,)
    skip_log_var: torch.Tensor  # g, (D,)

    def dense(self) -> Posterior:
        """The (B, D) mean and log-variance, with the y-terms added at the non-zeros only."""
        mean = torch.addmm(self.bias + self.shift, self.left, self.right.T)  # (B, D)
        log_var = self.log_scale[:, None] + self.feature_log_var  # (B, 1) + (D,) -> (B, D)
        return Posterior(_add_per_feature(mean, self.y, self.skip),
                         _add_per_feature(log_var, self.y, self.skip_log_var))

    def expected_log_likelihood(self, counts: torch.Tensor, n_samples: int,
                                generator: torch.Generator | None = None,
                                log_const: torch.Tensor | None = None) -> torch.Tensor:
        """:math:`E_q[\\log \\operatorname{Mult}(x \\mid \\operatorname{softmax}\\ell)]`, (B,),
        averaged over ``n_samples`` reparameterised draws. The estimator follows the layout of
        ``counts``: Monte Carlo for dense counts, draws at the non-zeros and the Jensen bound at
        the zeros for sparse ones (docs/model.md, "Estimators")."""
        shape = (n_samples, counts._nnz()) if counts.is_sparse else (n_samples, *counts.shape)
        eps = _randn(shape, self.left, generator)
        return factored_multinomial_log_prob(
            self.left, self.right, self.bias + self.shift, self.skip, self.log_scale,
            self.feature_log_var, self.skip_log_var, self.y, counts, eps, log_const).mean(0)

    def kl(self, prior: LowRankPrior, gram=None) -> torch.Tensor:
        """KL(q ‖ prior) on the ILR subspace 1^⊥ per sample, (B,), from the parts (the
        likelihood ignores ℓ's component along 1: docs/model.md, "The slack"). ``prior.bias``
        must be ``bias``; ``gram``: :func:`mvae.maths.likelihoods.factored_gram` of the parts, if
        already formed."""
        return kl_factored_to_lowrank(self.shift, self.left, self.right, self.skip, self.y,
                                      self.log_scale, self.feature_log_var, self.skip_log_var,
                                      prior, gram)


class LowRankDecoder(nn.Module):
    """The generative parameters shared by the count modules: W̃ (D, k), b̃ (D,) and σ.

    Stored raw; columns of W̃ and b̃ are centred when used, so they always lie in the clr subspace.
    """

    def _init_decoder(self, n_features: int, n_latent: int) -> None:
        D, k = n_features, n_latent
        self.loadings_raw = nn.Parameter(torch.randn(D, k) * (0.5 / D**0.5))
        self.bias_raw = nn.Parameter(torch.zeros(D))
        self.log_sigma = nn.Parameter(torch.tensor(0.5).log())

    @property
    def loadings(self) -> torch.Tensor:
        """W̃ = ΨW, shape (D, k), columns summing to zero."""
        return self.loadings_raw - self.loadings_raw.mean(dim=0, keepdim=True)

    @property
    def bias(self) -> torch.Tensor:
        """b̃ = Ψb, shape (D,), summing to zero."""
        return self.bias_raw - self.bias_raw.mean()

    @property
    def noise_variance(self) -> torch.Tensor:
        """σ², a scalar tensor."""
        return torch.exp(2.0 * self.log_sigma)

    def prior(self, loadings: torch.Tensor | None = None,
              gram: torch.Tensor | None = None) -> LowRankPrior:
        """The marginal prior of the logits, N(b̃, W̃W̃ᵀ + σ²I), kept factored (``loadings`` and
        ``gram``: W̃ and W̃ᵀW̃ when already formed)."""
        return LowRankPrior(self.loadings if loadings is None else loadings, self.bias,
                            self.noise_variance, gram)


class MultinomialVAEModule(LowRankDecoder):
    """The MVAE in clr coordinates (see the module docstring for the maths).

    Parameters
    ----------
    config : MVAEConfig
    """

    def __init__(self, config: MVAEConfig):
        super().__init__()
        if config.objective not in OBJECTIVES:
            raise ValueError(f"objective={config.objective!r}; choose one of {OBJECTIVES}")
        if config.posterior_rank < 1:
            raise ValueError(f"posterior_rank={config.posterior_rank}; need an integer >= 1")
        self.config = config
        D, k, H = config.n_features, config.n_latent, config.n_hidden
        marginal = config.objective == "marginal"
        self.encoder = Encoder(D, H, config.encoder_depth, config.activation, config.dropout)
        if marginal:
            # q(ℓ | x): mean through a (D, r) factor of the posterior's own, variance one scalar
            # per sample beside per-feature terms. Tying the factor to the decoder's W̃ lets the
            # encoder's gradient pull on the decoder and was less accurate on the simulations
            # (benchmarks/results/posteriors/).
            r = config.posterior_rank
            self.mean_head = nn.Linear(H, r)
            self.log_var_head = nn.Linear(H, 1)
            self.mean_factor = nn.Parameter(torch.randn(D, r) * (0.5 / D**0.5))
            self.feature_log_var = nn.Parameter(torch.zeros(D))
            # Per-feature skip from the centred log-ratio input to the posterior of ℓ: with deep
            # sequencing the posterior mean of ℓ_d is close to log(x_d + c) and its variance falls
            # with x_d, which a width-H bottleneck cannot carry for D > H features. O(B D) extra.
            self.skip_mean = nn.Parameter(torch.full((D,), 0.5))
            self.skip_log_var = nn.Parameter(torch.full((D,), -0.5))
        else:  # q(z | x) over the k latent coordinates
            self.mean_head = nn.Linear(H, k)
            self.log_var_head = nn.Linear(H, k)
        # Decoder. Columns of loadings and the bias are centred when used (see `loadings`).
        self._init_decoder(D, k)
        with torch.no_grad():
            # Start the posterior near the prior mean with a moderate spread.
            self.mean_head.weight.mul_(0.1)
            self.mean_head.bias.zero_()
            self.log_var_head.weight.mul_(0.1)
            self.log_var_head.bias.fill_(-2.0)

    # ---- generative parameters -----------------------------------------------------------
    @torch.no_grad()
    def initialise_from_data(self, pooled_log: torch.Tensor, input_centre: torch.Tensor,
                             input_scale: float) -> None:
        """Set the decoder bias and the encoder's input conditioning from the training data.

        Parameters
        ----------
        pooled_log : torch.Tensor, shape (D,)
            log of the pooled composition with the pseudocount, log(Σ_n x_n + c); centred here.
        input_centre : torch.Tensor, shape (D,)
            Mean of the centred log-ratio inputs over the training samples.
        input_scale : float
            Their overall standard deviation (> 0).
        """
        self.bias_raw.copy_(pooled_log - pooled_log.mean())
        self.encoder.input_layer.centre.copy_(input_centre)
        self.encoder.input_layer.scale.fill_(float(input_scale))

    # ---- inference -------------------------------------------------------------------------
    def posterior(self, counts) -> Posterior | FactoredPosterior:
        """The encoder's approximate posterior for counts (B, D): q(ℓ | x) in parts (marginal)
        or q(z | x) (sampled)."""
        counts, _ = _unpack(counts)
        y = log_ratio_input(counts, self.config.pseudocount,  # (B, D), zeros stay zero
                            dtype=self.bias_raw.dtype)
        h = self.encoder(y)  # (B, H)
        if self.config.objective == "sampled":
            return Posterior(self.mean_head(h), self.log_var_head(h))  # over z, (B, k) each
        return self._logit_posterior(y, h)

    def encode(self, counts) -> Posterior:
        """The approximate posterior with dense (B, D) or (B, k) mean and log-variance."""
        post = self.posterior(counts)
        return post.dense() if isinstance(post, FactoredPosterior) else post

    def _logit_posterior(self, y: torch.Tensor, h: torch.Tensor) -> FactoredPosterior:
        """q(ℓ | x): mean b̃ + R head(h) + skip ⊙ H(y − m), log-variance head(h) + f + skip' ⊙ y.

        Built without any dense copy of y: with c̃ = Hm and ȳ the row mean of y,
        H(y − m) = y − c̃ − ȳ1ᵀ, so the dense part of the mean is one product
        [head(h), −ȳ] @ [R, skip]ᵀ plus a constant row, and the y-terms of both the mean and the
        log-variance touch only the non-zeros of a sparse y.
        """
        D = self.config.n_features
        centre = self.encoder.input_layer.centre
        skip = self.skip_mean
        shift = -skip * (centre - centre.mean())  # (D,)
        if y.is_sparse:  # coalesced COO from log_ratio_input
            y_bar = row_sums(y, y.values()) / D  # (B,)
        else:
            y_bar = y.sum(-1) / D
        return FactoredPosterior(
            bias=self.bias, shift=shift,
            left=torch.cat([self.mean_head(h), -y_bar[:, None]], dim=1),  # (B, r + 1)
            right=torch.cat([self.mean_factor, skip[:, None]], dim=1),  # (D, r + 1)
            skip=skip, y=y, log_scale=self.log_var_head(h)[:, 0],
            feature_log_var=self.feature_log_var, skip_log_var=self.skip_log_var)

    def latent_mean(self, counts) -> torch.Tensor:
        """E[z | x] under the approximate posterior, shape (B, k)."""
        post = self.encode(counts)
        if self.config.objective == "sampled":
            return post.mean
        return self.latent_from_logits(post.mean)

    def latent_from_logits(self, mean: torch.Tensor) -> torch.Tensor:
        """E[z | x] for a posterior of the logits with mean ``mean`` (B, D): the PPCA map
        (σ²I + W̃ᵀW̃)⁻¹W̃ᵀ(m − b̃), shape (B, k)."""
        prior = self.prior()
        delta = mean - prior.bias  # (B, D)
        # (σ²I + W̃ᵀW̃)⁻¹ W̃ᵀ δ = L⁻ᵀ Uᵀ δ with U = W̃ L⁻ᵀ
        rhs = delta @ prior.whitened  # (B, D) @ (D, k) -> (B, k)
        return torch.linalg.solve_triangular(prior.chol.T, rhs.T, upper=True).T

    # ---- loss --------------------------------------------------------------------------------
    def loss(self, counts, generator: torch.Generator | None = None,
             n_samples: int | None = None) -> LossTerms:
        """Per-sample ELBO terms for a batch of counts (B, D): encoder → posterior → expected
        log-likelihood and KL to the prior.

        ``counts`` is a (B, D) tensor, dense or sparse COO, or a :class:`mvae.training.batches.CountBatch`
        (which carries the multinomial constant so it is not recomputed at every step). The
        expected log-likelihood is averaged over ``n_samples`` reparameterised draws (default
        ``config.n_mc_samples``); its estimator follows the layout of the counts (see
        :meth:`FactoredPosterior.expected_log_likelihood`).
        """
        counts, log_const = _unpack(counts)
        S = n_samples or self.config.n_mc_samples
        if self.config.objective == "sampled":
            return self._sampled_loss(counts, log_const, S, generator)
        q = self.posterior(counts)
        prior, gram = self._prior_with_gram(q)
        return LossTerms(reconstruction=q.expected_log_likelihood(counts, S, generator, log_const),
                         kl=q.kl(prior, gram))

    def _prior_with_gram(self, q: FactoredPosterior) -> tuple[LowRankPrior, tuple]:
        """The prior N(b̃, W̃W̃ᵀ + σ²I) and the Gram matrix of [Q, W̃, s] that the KL needs; the
        prior's W̃ᵀW̃ is a block of it, so it is formed once."""
        W, r = self.loadings, q.right.shape[1]
        gram = factored_gram(q.right, W, q.shift)
        k = W.shape[1]
        return self.prior(W, gram[1][r:r + k, r:r + k]), gram

    def _sampled_loss(self, counts, log_const, S, generator) -> LossTerms:
        """catvae's form: z ~ q(z | x), ℓ ~ p(ℓ | z) = N(W̃z + b̃, σ²I), KL to N(0, I)."""
        post = self.posterior(counts)
        eps = _randn((S, *post.mean.shape), post.mean, generator)
        z = post.mean + eps * torch.exp(0.5 * post.log_var)  # (S, B, k)
        eps = _randn((S, post.mean.shape[0], self.config.n_features), post.mean, generator)
        mean, std = z @ self.loadings.T + self.bias, self.log_sigma.exp()  # (S, B, D), scalar
        recon = gaussian_multinomial_log_prob(mean, std, eps, counts, log_const).mean(0)  # (B,)
        return LossTerms(reconstruction=recon, kl=kl_normal_standard(post.mean, post.log_var))

    def forward(self, counts, generator: torch.Generator | None = None) -> LossTerms:
        """Per-sample ELBO terms of a batch: :meth:`loss` with the configured estimator.

        The training loop calls the module (this method), so that DistributedDataParallel,
        which synchronises gradients only for what goes through ``forward``, sees every step;
        ``.negative_elbo(kl_weight)`` of the result is the per-sample loss, shape (B,).
        """
        return self.loss(counts, generator=generator)


def _add_per_feature(out: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """out + y ⊙ weight (weight per feature, (D,)) for y dense or sparse COO; for a sparse y
    in place on ``out`` (a fresh buffer) at the non-zeros only, without a flattened view (an
    in-place op on a view makes autograd copy the whole (B, D) gradient)."""
    if not y.is_sparse:
        return out.addcmul(y, weight)
    rows, cols = y.indices()
    return out.index_put_((rows, cols), weight[cols] * y.values(), accumulate=True)


def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(counts, log_const or None) from a tensor or a CountBatch-like object."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    return batch.counts, batch.log_const


def _randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)
