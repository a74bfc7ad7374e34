"""The non-amortised reference: the MVAE's decoder with per-sample posteriors and no encoder.

The MVAE's encoder maps the pseudocount-distorted input log(x + c) to an approximate posterior. Two
things can then go wrong: the encoder family may be too poor to reach each sample's best posterior
(the *amortisation gap*), and whatever the encoder gets wrong feeds back into the decoder through
training. This module removes the encoder altogether. Every training sample i owns its own
Gaussian posterior over the per-feature logits,

.. math::

    q(\\ell_i) = N(m_i, \\operatorname{diag} v_i), \\qquad m_i, \\log v_i \\in \\mathbb R^D
    \\text{ free parameters,}

and the decoder is the MVAE's ``marginal`` prior
:math:`\\ell \\sim N(\\tilde b, \\tilde W\\tilde W^\\top + \\sigma^2 I_D)` (same parametrisation, same
KL in O(D k²) by Woodbury, same multinomial likelihood). The ELBO per sample is the MVAE's,

.. math::

    \\mathrm{ELBO}_i = E_{q(\\ell_i)}[\\log \\operatorname{Mult}(x_i \\mid
        \\operatorname{softmax} \\ell_i)]
        - \\mathrm{KL}(q(\\ell_i) \\,\\|\\, N(\\tilde b, \\tilde W\\tilde W^\\top + \\sigma^2 I)),

so the fit never sees log(x + c): the pseudocount enters only the starting point of m_i, which the
optimiser forgets (for a fixed decoder the per-sample problem is concave in m_i). What is left of
the error is what the model and the data allow, not what the encoder adds; comparing an MVAE with
this reference measures how much bias the encoder still causes.

Training uses the one loop of :func:`mvae.training.loop.train_module`. The loop hands ``loss`` whatever
``data.batch(index)`` returns, so :class:`IndexedCountData` returns an :class:`IndexedCounts` that
carries the sample indices with the counts, and ``loss`` picks those samples' posteriors.

Two practical choices, both documented where they are made:

- Step size. Adam moves every parameter by about ``learning_rate`` per step, and a sample's local
  parameters receive a gradient only when the sample is in the minibatch (once per epoch), whereas
  the decoder is updated at every step. The local parameters are therefore stored divided by
  ``local_step_scale`` (m_i = s · raw_i), which multiplies their step by s without a second
  optimiser (the loop builds one Adam for all parameters).
- Held-out samples have no posterior parameters. :func:`heldout_negative_elbo` gives them fresh
  ones and optimises those alone, full batch, with the decoder frozen; the result is the held-out
  ELBO with optimised (not amortised) posteriors. Applied to a fitted MVAE's decoder it separates
  the quality of the decoder from that of the encoder: the difference to the MVAE's own held-out
  ELBO is the amortisation gap on those samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..counts.module import LossTerms, LowRankDecoder
from ..maths.likelihoods import gaussian_multinomial_log_prob, kl_diag_to_lowrank

__all__ = [
    "IndexedCounts",
    "IndexedCountData",
    "NonAmortisedConfig",
    "NonAmortisedModule",
    "heldout_negative_elbo",
]


@dataclass(frozen=True)
class IndexedCounts:
    """A minibatch of counts together with the rows of the table they came from.

    Attributes
    ----------
    counts : torch.Tensor, shape (B, D), dense or sparse COO
    index : torch.Tensor, shape (B,), int64
        Row of each sample in the table (and so in the local posterior parameters).
    log_const : torch.Tensor of shape (B,) or None
        :math:`\\log N! - \\sum_d \\log x_d!` when the data source provides it (as
        :class:`mvae.training.batches.CountBatch` does), else None (computed from the counts).
    """

    counts: torch.Tensor
    index: torch.Tensor
    log_const: torch.Tensor | None = None


class IndexedCountData:
    """A :class:`mvae.training.batches.CountData` whose batches carry their sample indices.

    Has the interface :func:`mvae.training.loop.train_module` expects: ``len()``, ``device``,
    ``batch(index)`` and ``chunks(size)``, the batches being :class:`IndexedCounts`.

    Parameters
    ----------
    X : scipy.sparse matrix or numpy.ndarray, shape (n, D)
        Validated counts.
    device, dtype, sparse
        As for :class:`mvae.training.batches.CountData`.
    """

    def __init__(self, X, device="cpu", dtype: torch.dtype = torch.float32, sparse=None):
        from ..training.batches import CountData

        self.data = CountData(X, device, dtype=dtype, sparse=sparse)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def device(self) -> torch.device:
        return self.data.device

    def batch(self, index: torch.Tensor) -> IndexedCounts:
        """Rows ``index`` (LongTensor, shape (B,)) with their indices."""
        index = index.to(self.device)
        rows = self.data.batch(index)
        if isinstance(rows, torch.Tensor):
            return IndexedCounts(rows, index)
        return IndexedCounts(rows.counts, index, getattr(rows, "log_const", None))

    def chunks(self, size: int):
        """Consecutive batches of at most ``size`` rows, in order."""
        for start in range(0, len(self), size):
            yield self.batch(torch.arange(start, min(start + size, len(self))))


@dataclass(frozen=True)
class NonAmortisedConfig:
    """Shapes of a :class:`NonAmortisedModule`.

    Attributes
    ----------
    n_samples : int
        Samples with their own posterior (the training table's rows).
    n_features : int
        D.
    n_latent : int
        k.
    n_mc_samples : int
        Reparameterised draws per sample and step.
    local_step_scale : float
        s in m_i = s · raw_i (and log v_i = s · raw'_i): multiplies Adam's step on the local
        parameters by s (see the module docstring).
    """

    n_samples: int
    n_features: int
    n_latent: int = 10
    n_mc_samples: int = 1
    local_step_scale: float = 10.0


class NonAmortisedModule(LowRankDecoder):
    """The MVAE decoder (``marginal`` form) with one free Gaussian posterior per sample.

    Parameters
    ----------
    config : NonAmortisedConfig

    Notes
    -----
    The decoder parameters have the names and meaning of
    :class:`mvae.counts.MultinomialVAEModule`'s (``loadings_raw``, ``bias_raw``, ``log_sigma``;
    ``loadings`` and ``bias`` are their centred versions), so a fitted MVAE's decoder can be copied
    in with :meth:`copy_decoder`.
    """

    def __init__(self, config: NonAmortisedConfig):
        super().__init__()
        if config.local_step_scale <= 0:
            raise ValueError(f"local_step_scale={config.local_step_scale!r}; need a number > 0")
        self.config = config
        n, D, k = config.n_samples, config.n_features, config.n_latent
        self._init_decoder(D, k)
        s = config.local_step_scale
        self.local_mean_raw = nn.Parameter(torch.zeros(n, D))
        self.local_log_var_raw = nn.Parameter(torch.full((n, D), -2.0 / s))

    # ---- generative parameters (as in MultinomialVAEModule) ------------------------------------
    @torch.no_grad()
    def copy_decoder(self, source: nn.Module) -> None:
        """Take W̃, b̃ and σ from a module with ``loadings``, ``bias`` and ``noise_variance``
        (a fitted :class:`~mvae.counts.MultinomialVAEModule`, or another of these)."""
        self.loadings_raw.copy_(source.loadings.detach().to(self.loadings_raw))
        self.bias_raw.copy_(source.bias.detach().to(self.bias_raw))
        self.log_sigma.fill_(0.5 * math.log(float(source.noise_variance)))

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [self.loadings_raw, self.bias_raw, self.log_sigma]

    def freeze_decoder(self) -> None:
        """Stop gradients to W̃, b̃, σ (used to fit held-out posteriors under a fixed decoder)."""
        for p in self.decoder_parameters():
            p.requires_grad_(False)

    # ---- local posteriors ------------------------------------------------------------------------
    @torch.no_grad()
    def initialise_posteriors(self, counts, pseudocount: float = 0.5) -> None:
        """Start m_i at the clr of x_i + c and v_i near the Poisson variance 1 / (x_i + c).

        Only a starting point: for a fixed decoder the per-sample objective is concave in m_i, and
        training moves m_i away from the pseudocount. Also sets the bias to the pooled log
        composition (as the MVAE does).

        Parameters
        ----------
        counts : scipy.sparse matrix or ndarray, shape (n_samples, D)
        pseudocount : float
        """
        import scipy.sparse as sp

        x = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
        x = x.astype(np.float64)
        if x.shape != (self.config.n_samples, self.config.n_features):
            raise ValueError(f"counts has shape {x.shape}; this module holds posteriors for "
                             f"{(self.config.n_samples, self.config.n_features)}")
        logx = np.log(x + pseudocount)
        mean = logx - logx.mean(axis=1, keepdims=True)  # (n, D) clr(x + c)
        log_var = -np.log(x + 1.0)
        s = self.config.local_step_scale
        self.local_mean_raw.copy_(torch.as_tensor(mean / s, dtype=self.local_mean_raw.dtype))
        self.local_log_var_raw.copy_(torch.as_tensor(log_var / s,
                                                     dtype=self.local_log_var_raw.dtype))

    @torch.no_grad()
    def initialise_decoder(self, counts, n_latent_init=None, pseudocount: float = 0.5) -> None:
        """Decoder start as the MVAE's: bias at the pooled log composition, W̃ and σ at PPCA of
        clr(x + c) (:func:`mvae.maths.pca.clr_pca`)."""
        from ..maths.pca import clr_pca

        pooled = np.log(np.asarray(counts.sum(axis=0)).ravel() + pseudocount)
        self.bias_raw.copy_(torch.as_tensor(pooled - pooled.mean(), dtype=self.bias_raw.dtype))
        pca = clr_pca(counts, self.config.n_latent, pseudocount=pseudocount)
        self.loadings_raw.copy_(torch.as_tensor(pca.loadings_clr, dtype=self.loadings_raw.dtype))
        self.log_sigma.fill_(0.5 * math.log(max(float(pca.noise_variance), 1e-4)))

    def local_posterior(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_var) of q(ℓ_i) for the samples ``index``, each of shape (B, D)."""
        s = self.config.local_step_scale
        return s * self.local_mean_raw[index], s * self.local_log_var_raw[index]

    def latent_mean(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """E[z | x_i] under q: the PPCA map (σ²I + W̃ᵀW̃)⁻¹W̃ᵀ(m_i − b̃), shape (B, k)."""
        if index is None:
            index = torch.arange(self.config.n_samples, device=self.local_mean_raw.device)
        mean, _ = self.local_posterior(index)
        prior = self.prior()
        rhs = (mean - prior.bias) @ prior.whitened  # (B, D) @ (D, k) -> (B, k)
        return torch.linalg.solve_triangular(prior.chol.T, rhs.T, upper=True).T

    # ---- loss --------------------------------------------------------------------------------
    def loss(self, batch: IndexedCounts, generator: torch.Generator | None = None,
             n_samples: int | None = None) -> LossTerms:
        """Per-sample ELBO terms for the samples of ``batch``, reparameterised draws."""
        S = n_samples or self.config.n_mc_samples
        mean, log_var = self.local_posterior(batch.index)  # (B, D) each
        eps = torch.randn((S, *mean.shape), dtype=mean.dtype, device=mean.device,
                          generator=generator)
        kl = kl_diag_to_lowrank(mean, log_var, self.prior())  # (B,)
        recon = gaussian_multinomial_log_prob(mean, torch.exp(0.5 * log_var), eps, batch.counts,
                                              batch.log_const).mean(0)  # (S, B) -> (B,)
        return LossTerms(reconstruction=recon, kl=kl)

    def forward(self, batch: IndexedCounts, generator: torch.Generator | None = None) -> LossTerms:
        """Per-sample ELBO terms (:meth:`loss`); the training loop calls this."""
        return self.loss(batch, generator=generator)


def heldout_negative_elbo(decoder: nn.Module, counts, *, max_steps: int = 1500,
                          patience: int = 100, learning_rate: float = 3e-3,
                          local_step_scale: float = 10.0, n_samples: int = 16,
                          pseudocount: float = 0.5, seed: int = 0,
                          return_module: bool = False):
    """Per-sample negative ELBO of new samples under a fixed decoder, posteriors optimised.

    Each sample gets a fresh q(ℓ_i) = N(m_i, diag v_i), started at clr(x_i + c); the posteriors
    alone are fitted (full batch, decoder frozen) with :func:`mvae.training.loop.train_module`, stopping
    when the loss has not improved for ``patience`` steps. The returned value uses ``n_samples``
    Monte Carlo draws with seeded noise.

    Parameters
    ----------
    decoder : torch.nn.Module
        Has ``loadings`` (D, k), ``bias`` (D,) and ``noise_variance`` (a fitted MVAE's
        ``module_``, a :class:`NonAmortisedModule`, or any object with those tensors).
    counts : scipy.sparse matrix or ndarray, shape (n, D)
    max_steps, patience, learning_rate, local_step_scale
        Optimisation of the posteriors (one step = one full-batch Adam update).
    n_samples : int
        Monte Carlo draws for the final estimate.
    pseudocount : float
        Only for the starting point.
    seed : int
    return_module : bool
        Also return the fitted module (for its ``latent_mean``).

    Returns
    -------
    ndarray of shape (n,)
        −ELBO per sample (nats); with ``return_module``, a tuple (values, module).
    """
    from ..training.loop import TrainConfig, train_module

    n, D = counts.shape
    k = int(decoder.loadings.shape[1])
    module = NonAmortisedModule(NonAmortisedConfig(n_samples=n, n_features=D, n_latent=k,
                                                   local_step_scale=local_step_scale))
    module.copy_decoder(decoder)
    module.freeze_decoder()
    module.initialise_posteriors(counts, pseudocount=pseudocount)
    data = IndexedCountData(counts)
    config = TrainConfig(max_epochs=int(max_steps), batch_size=n, learning_rate=learning_rate,
                         early_stopping=True, patience=int(patience), seed=seed)
    train_module(module, data, None, config, handle_signals=False)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        values = torch.cat([module.loss(b, generator=gen, n_samples=n_samples).negative_elbo()
                            for b in data.chunks(1024)]).double().numpy()
    return (values, module) if return_module else values
