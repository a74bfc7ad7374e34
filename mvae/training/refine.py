"""Semi-amortised inference: each sample's posterior refined from the encoder's output.

The encoder is a fast but imperfect map from counts to q(ℓ | x). On real tables it fits its
training samples better than new ones, so a sample the model was not trained on gets a worse ELBO
for a reason that has nothing to do with how unusual it is (docs/model.md, "Refined posteriors").
Refinement closes that gap: with the decoder frozen, each sample's posterior
q(ℓ | x) = N(m, diag v) — D means and D log-variances of its own — is optimised on the model's
own objective, starting from the encoder's output:

.. math::

    \\max_{m, \\log v}\\; E_q[\\log \\operatorname{Mult}(x \\mid \\operatorname{softmax}\\ell)]
        - \\mathrm{KL}(q \\,\\|\\, N(\\tilde b, \\tilde W\\tilde W^\\top + \\sigma^2 I)).

The samples of a batch are independent problems; Adam, whose update is elementwise, treats them
so while they share one optimiser, and the draws of a step are shared by the samples of the
batch, so a sample's trajectory does not depend on its batch-mates. The step size starts large and decays to zero on a cosine. The expected log-likelihood is the Monte Carlo estimate with
``n_samples`` draws per step, as in training on dense batches; the noise comes from the caller's
generator, so the result is deterministic for a seed. The number of steps and the step size are
the package's choice, made from the curves in ``benchmarks/results/refine/``.
"""

from __future__ import annotations

import math

import torch

from ..counts.module import LossTerms, Posterior, _unpack
from ..maths.likelihoods import (LowRankPrior, gaussian_multinomial_log_prob, kl_diag_to_lowrank,
                                 multinomial_log_const)
from .optim import Adam

__all__ = ["REFINE_STEPS", "REFINE_LEARNING_RATE", "PosteriorSet", "dense_loss_terms", "frozen_prior",
           "refine_posterior"]

#: Adam steps of the refinement and their initial step size, decayed to zero on a cosine over the
#: steps (benchmarks/results/refine/).
REFINE_STEPS = 100
REFINE_LEARNING_RATE = 0.2


def dense_loss_terms(mean: torch.Tensor, log_var: torch.Tensor, prior: LowRankPrior,
                     counts: torch.Tensor, eps: torch.Tensor,
                     log_const: torch.Tensor | None = None) -> LossTerms:
    """ELBO terms of a diagonal Gaussian q(ℓ) = N(mean, diag exp(log_var)) given as dense (B, D)
    arrays: the Monte Carlo expected log-likelihood over the draws ``eps`` ((S, B, D), or
    (S, 1, D) for draws shared by the samples) and the KL to ``prior``, each of shape (B,)."""
    recon = gaussian_multinomial_log_prob(mean, torch.exp(0.5 * log_var), eps, counts,
                                          log_const).mean(0)  # (S, B) -> (B,)
    return LossTerms(reconstruction=recon, kl=kl_diag_to_lowrank(mean, log_var, prior))


def refine_posterior(module, counts, *, steps: int = REFINE_STEPS,
                     learning_rate: float = REFINE_LEARNING_RATE, n_samples: int = 1,
                     generator: torch.Generator | None = None,
                     start: Posterior | None = None, on_step=None) -> Posterior:
    """Optimise each sample's q(ℓ | x) with the decoder of ``module`` frozen.

    Parameters
    ----------
    module : mvae.counts.MultinomialVAEModule
        A fitted module with the ``marginal`` objective (its parameters are not changed).
    counts : torch.Tensor, shape (B, D), dense or sparse COO, or a CountBatch
    steps, learning_rate : int, float
        Adam steps on the per-sample means and log-variances, and their initial step size
        (decayed to zero on a cosine over the steps: large moves first, then the Monte Carlo
        noise of the late steps averages out instead of leaving the posterior jittering).
    n_samples : int
        Monte Carlo draws of the expected log-likelihood per step.
    generator : torch.Generator, optional
        Source of the draws (seed it for a deterministic result).
    start : Posterior, optional
        Where to start (dense (B, D) mean and log-variance); default the encoder's posterior.
    on_step : callable, optional
        Called as ``on_step(step, mean, log_var)`` after each step (for the benchmark's curves).

    Returns
    -------
    Posterior
        The refined dense mean and log-variance, (B, D) each, without gradients.
    """
    counts, log_const = _unpack(counts)
    with torch.no_grad():
        if start is None:
            _check_marginal(module)
            start = module.encode(counts)
    posteriors = PosteriorSet(counts, start, learning_rate, log_const)
    if steps > 0:
        done = [0]

        def cosine():  # the step size after step t of T: lr (1 + cos(π t / T)) / 2
            done[0] += 1
            posteriors.optimiser.lr = learning_rate * 0.5 * (1 + math.cos(math.pi * done[0] / steps))
        posteriors.step(frozen_prior(module), int(steps), generator, n_samples=n_samples,
                        after_step=cosine, on_step=on_step)
    return posteriors.posterior()


def _check_marginal(module) -> None:
    if module.config.objective != "marginal":
        raise ValueError("refinement needs the 'marginal' objective (a posterior over the logits)")


def frozen_prior(module) -> LowRankPrior:
    """The module's prior N(b̃, W̃W̃ᵀ + σ²I) with its tensors detached (the decoder frozen)."""
    _check_marginal(module)
    with torch.no_grad():
        prior = module.prior()
        prior = LowRankPrior(prior.loadings.detach(), prior.bias.detach(),
                             prior.noise_variance.detach())
        prior.whitened  # formed once, outside the steps (a cached property)
    return prior


class PosteriorSet:
    """The dense posteriors of a fixed batch of samples with their own Adam, refined a few steps
    at a time: :func:`refine_posterior` runs one to the end; the training loop's refined
    validation score keeps one across epochs, so each epoch continues from the last.

    Parameters
    ----------
    counts : torch.Tensor, shape (B, D)
    start : Posterior
        Initial dense mean and log-variance (copied).
    learning_rate : float
    log_const : torch.Tensor, shape (B,), optional
        The multinomial constant of ``counts`` (computed if not given).
    """

    def __init__(self, counts: torch.Tensor, start: Posterior, learning_rate: float,
                 log_const: torch.Tensor | None = None):
        self.counts = counts
        self.log_const = multinomial_log_const(counts) if log_const is None else log_const
        self.mean = start.mean.detach().clone().requires_grad_(True)
        self.log_var = start.log_var.detach().clone().requires_grad_(True)
        self.optimiser = Adam([self.mean, self.log_var], lr=learning_rate)

    def step(self, prior: LowRankPrior, steps: int, generator: torch.Generator | None, *,
             n_samples: int = 1, after_step=None, on_step=None) -> None:
        """``steps`` Adam steps on the −ELBO under ``prior`` (detached: :func:`frozen_prior`)."""
        # one draw per feature and step shared by the batch's samples: each sample's problem is
        # its own, so sharing costs it nothing, and its result then does not depend on which
        # samples it was batched with (the same sample gets the same posterior in any table)
        shape = (n_samples, 1, self.mean.shape[1])
        with torch.enable_grad():
            for step in range(steps):
                eps = torch.randn(shape, dtype=self.mean.dtype, device=self.mean.device,
                                  generator=generator)
                loss = dense_loss_terms(self.mean, self.log_var, prior, self.counts, eps,
                                        self.log_const).negative_elbo().sum()
                self.optimiser.zero_grad(set_to_none=True)
                loss.backward()
                self.optimiser.step()
                if after_step is not None:
                    after_step()
                if on_step is not None:
                    on_step(step + 1, self.mean.detach(), self.log_var.detach())

    def posterior(self) -> Posterior:
        """The current mean and log-variance, (B, D) each, without gradients."""
        return Posterior(self.mean.detach().clone(), self.log_var.detach().clone())

    def state_dict(self) -> dict:
        return {"mean": self.mean.detach().clone(), "log_var": self.log_var.detach().clone(),
                "optimiser": self.optimiser.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.mean.copy_(state["mean"])
            self.log_var.copy_(state["log_var"])
        self.optimiser.load_state_dict(state["optimiser"])
