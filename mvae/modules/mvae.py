"""The multinomial VAE as a torch module: inference, generative model and per-sample loss terms.

Generative model (DESIGN.md §1), written in clr coordinates:

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

from ..likelihoods import (
    LowRankPrior,
    kl_diag_to_lowrank,
    gaussian_multinomial_log_prob,
    kl_normal_standard,
)
from .encoder import Encoder, log_ratio_input

__all__ = ["LowRankDecoder", "MVAEConfig", "LossTerms", "Posterior", "MultinomialVAEModule",
           "OBJECTIVES"]

OBJECTIVES = ("marginal", "sampled")
POSTERIORS = ("lowrank", "full", "hybrid")


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
    posterior: str = "full"


@dataclass(frozen=True)
class LossTerms:
    """Per-sample terms of the ELBO, each of shape (B,).

    Attributes
    ----------
    reconstruction : torch.Tensor
        Monte Carlo estimate of :math:`E_q[\\log p(x \\mid \\cdot)]` (nats).
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
    """A diagonal Gaussian returned by the encoder: over ℓ (marginal, D wide) or z (sampled, k)."""

    mean: torch.Tensor
    log_var: torch.Tensor


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

    def prior(self) -> LowRankPrior:
        """The marginal prior of the logits, N(b̃, W̃W̃ᵀ + σ²I), kept factored."""
        return LowRankPrior(self.loadings, self.bias, self.noise_variance)


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
        self.config = config
        D, k, H = config.n_features, config.n_latent, config.n_hidden
        self.encoder = Encoder(D, H, config.encoder_depth, config.activation, config.dropout)
        if config.posterior not in POSTERIORS:
            raise ValueError(f"posterior={config.posterior!r}; choose one of {POSTERIORS}")
        lowrank = config.objective == "marginal" and config.posterior == "lowrank"
        # marginal + "full": H -> D heads for the mean and the variance; "hybrid": the H -> D
        # mean head and, for the variance, one scalar per sample (a depth-like term) beside the
        # per-feature terms below, which saves a third of the D-wide matrix work; "lowrank": the
        # mean head gives k coordinates mapped through W̃ and the variance is as in "hybrid", so
        # the encoder costs O(B D (H + k)) like a plain VAE; "sampled": heads over z.
        out_mean = k if lowrank or config.objective == "sampled" else D
        out_var = 1 if config.objective == "marginal" and config.posterior != "full" else out_mean
        self.mean_head = nn.Linear(H, out_mean)
        self.log_var_head = nn.Linear(H, out_var)
        if config.objective == "marginal":
            self.feature_log_var = nn.Parameter(torch.zeros(D))
            # Per-feature skip from the centred log-ratio input to the posterior of ℓ: with deep
            # sequencing the posterior mean of ℓ_d is close to log(x_d + c) and its variance falls
            # with x_d, which a width-H bottleneck cannot carry for D > H features. O(B D) extra.
            self.skip_mean = nn.Parameter(torch.full((D,), 0.5))
            self.skip_log_var = nn.Parameter(torch.full((D,), -0.5))
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
    def encode(self, counts) -> Posterior:
        """Approximate posterior from counts (B, D): over ℓ (marginal) or z (sampled)."""
        counts, _ = _unpack(counts)
        y = log_ratio_input(counts, self.config.pseudocount)  # (B, D), zeros stay zero
        h = self.encoder(y)  # (B, H)
        if self.config.objective == "sampled":
            return Posterior(self.mean_head(h), self.log_var_head(h))  # over z, (B, k) each
        return self._logit_posterior(y, h)

    def _logit_posterior(self, y: torch.Tensor, h: torch.Tensor) -> Posterior:
        """q(ℓ | x): mean b̃ + head(h) + skip ⊙ H(y − m), log-variance head(h) + f + skip' ⊙ y.

        Built without any dense copy of y: with c̃ = Hm and ȳ the row mean of y,
        H(y − m) = y − c̃ − ȳ1ᵀ, so the dense part of the mean is one product
        [head input, −ȳ] @ [head weight, skip]ᵀ plus a constant row, and the y-terms of both
        the mean and the log-variance touch only the non-zeros of a sparse y (measured at D =
        20,000: nine passes over (B, D) buffers become two).
        """
        D = self.config.n_features
        centre = self.encoder.input_layer.centre
        skip = self.skip_mean
        const = self.bias - skip * (centre - centre.mean())  # (D,)
        if y.is_sparse:  # coalesced COO from log_ratio_input
            rows, cols = y.indices()
            vals = y.values()
            y_bar = vals.new_zeros(y.shape[0]).index_add_(0, rows, vals) / D  # (B,)
        else:
            y_bar = y.sum(-1) / D
        if self.config.posterior == "lowrank":
            g = self.mean_head(h)  # (B, k) coordinates, mapped through W̃
            left = torch.cat([g, -y_bar[:, None]], dim=1)  # (B, k + 1)
            right = torch.cat([self.loadings, skip[:, None]], dim=1)  # (D, k + 1)
            mean = torch.addmm(const, left, right.T)  # (B, D)
        else:
            mean = torch.addmm(const + self.mean_head.bias, h, self.mean_head.weight.T)
            mean = mean.addr(-y_bar, skip)  # − ȳ skipᵀ
        if self.config.posterior == "full":
            log_var = torch.addmm(self.log_var_head.bias + self.feature_log_var, h,
                                  self.log_var_head.weight.T)  # (B, D)
        else:
            log_var = self.log_var_head(h) + self.feature_log_var  # (B, 1) + (D,) -> (B, D)
        if y.is_sparse:  # in place on fresh buffers: the non-zeros only
            flat = rows * D + cols
            mean.view(-1).index_add_(0, flat, skip[cols] * vals)
            log_var.view(-1).index_add_(0, flat, self.skip_log_var[cols] * vals)
        else:
            mean = mean.addcmul(y, skip)
            log_var = log_var.addcmul(y, self.skip_log_var)
        return Posterior(mean, log_var)

    def latent_mean(self, counts) -> torch.Tensor:
        """E[z | x] under the approximate posterior, shape (B, k)."""
        post = self.encode(counts)
        if self.config.objective == "sampled":
            return post.mean
        prior = self.prior()
        delta = post.mean - prior.bias  # (B, D)
        # (σ²I + W̃ᵀW̃)⁻¹ W̃ᵀ δ = L⁻ᵀ Uᵀ δ with U = W̃ L⁻ᵀ
        rhs = delta @ prior.whitened  # (B, D) @ (D, k) -> (B, k)
        return torch.linalg.solve_triangular(prior.chol.T, rhs.T, upper=True).T

    # ---- loss --------------------------------------------------------------------------------
    def loss(self, counts, generator: torch.Generator | None = None,
             n_samples: int | None = None) -> LossTerms:
        """Per-sample ELBO terms for a batch of counts (B, D), reparameterised draws throughout.

        ``counts`` is a (B, D) tensor or a :class:`mvae.data.CountBatch` (which carries the
        multinomial constant so it is not recomputed at every step).
        """
        counts, log_const = _unpack(counts)
        S = n_samples or self.config.n_mc_samples
        post = self.encode(counts)
        # logits ℓ = mean + ε·std; the likelihood and its gradient in one hand-written function
        if self.config.objective == "marginal":
            eps = _randn((S, *post.mean.shape), post.mean, generator)
            mean, std = post.mean, torch.exp(0.5 * post.log_var)  # (B, D) each
            kl = kl_diag_to_lowrank(post.mean, post.log_var, self.prior())
        else:
            eps = _randn((S, *post.mean.shape), post.mean, generator)
            z = post.mean + eps * torch.exp(0.5 * post.log_var)  # (S, B, k)
            eps = _randn((S, post.mean.shape[0], self.config.n_features), post.mean, generator)
            mean, std = z @ self.loadings.T + self.bias, self.log_sigma.exp()  # (S, B, D), scalar
            kl = kl_normal_standard(post.mean, post.log_var)
        recon = gaussian_multinomial_log_prob(mean, std, eps, counts, log_const).mean(0)  # (B,)
        return LossTerms(reconstruction=recon, kl=kl)


    def forward(self, counts: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-sample negative ELBO (nats), shape (B,)."""
        return self.loss(counts, generator=generator).negative_elbo()


def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(counts, log_const or None) from a tensor or a CountBatch-like object."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    return batch.counts, batch.log_const


def _randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)
