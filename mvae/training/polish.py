"""The end of a fit: the decoder's variances re-estimated from refined posteriors (variational EM).

Stochastic training leaves the decoder where the *amortised* bound is best: the encoder's
posteriors are not each sample's best, and the noise scale σ absorbs part of what they get wrong
(on simulations with 10,000 reads per sample σ̂ ends 6–14 % above the truth, while a fit with
each posterior optimised directly recovers it; ``benchmarks/results/sigma/``). The polish
alternates, on the training samples:

* E-step: each sample's posterior q(ℓ | x) = N(m, diag v) refined with the decoder frozen
  (:mod:`mvae.training.refine`; warm-started from the previous E-step after the first), and
* M-step: the decoder's variances that maximise the ELBO given those posteriors. The ELBO depends
  on the decoder only through E_q[log N(ℓ; b̃, W̃W̃ᵀ + σ²I)] on the clr subspace, i.e. through the
  expected scatter S = (1/n) Σᵢ (mᵢ − b̃)(mᵢ − b̃)ᵀ + P diag(v̄) P (P the centring projection, v̄
  the mean posterior variance). With the loadings' directions U (W̃ = U diag(√λ) Vᵀ) and b̃ kept,
  the maximum is in closed form and costs O(n D k):

  .. math:: λ_j + σ² = u_jᵀ S u_j, \\qquad σ² = \\frac{\\operatorname{tr} S - Σ_j u_jᵀ S u_j}{D - 1 - k}.

The directions and b̃ stay as training left them: they are learnt from every sample, while the
polish sees at most ``MAX_ENTRIES`` entries (a random subset of the training samples on large
tables, and at most ``MAX_SAMPLES``), enough for k + 1 variances but not for new directions. Each M-step is accepted only as
far as the validation score (the same refined, warm-started score early stopping watches) says:
the decoder kept is the iterate with the lowest validation −ELBO, the trained one included (scored
after its validation posteriors have settled on it: training leaves them fitted to the last
epoch's decoder, not the restored one). On a
table with 24 training samples (moving pictures) the unguarded polish made held-out samples
worse; on larger ones it improves them (benchmarks/results/sigma/README.md, "The polish").
"""

from __future__ import annotations

import numpy as np
import torch

from .refine import REFINE_LEARNING_RATE, REFINE_STEPS, PosteriorSet, frozen_prior, refine_posterior

__all__ = ["POLISH_ITERATIONS", "POLISH_STEPS", "POLISH_LEARNING_RATE", "MAX_ENTRIES", "MAX_SAMPLES",
           "variance_m_step", "polish_decoder"]

#: EM iterations, and the E-step's warm-started Adam steps and step size (small: the posteriors
#: only follow a small change of the decoder; a large step size adds Monte Carlo jitter that costs
#: more ELBO than the M-step gains). Measured in benchmarks/em_polish.py.
POLISH_ITERATIONS = 10
POLISH_STEPS = 20
POLISH_LEARNING_RATE = 0.003
#: Entries (samples x features) of training posteriors kept: 2²³ float32 values, four arrays;
#: and at most this many samples: k + 1 variances need no more (a variance from 1,000 samples is
#: within ±4.5 %), and the polish's cost grows with them (a 5,000 x 2,000 table: 41 CPU-s with
#: 4,194 samples; benchmarks/results/fixed_costs/). Every table measured had fewer.
MAX_ENTRIES = 2**23
MAX_SAMPLES = 1000
#: Calls of the validation score (each a few refinement steps) that may settle the validation
#: posteriors on the restored decoder before the polish, and the relative change that ends them.
SETTLE_CALLS = 40
SETTLE_TOLERANCE = 1e-4
#: Rows per chunk of the posteriors.
CHUNK_ROWS = 256


def variance_m_step(posteriors, loadings: torch.Tensor,
                    bias: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The loadings (D, k) and σ² that maximise Σᵢ E_qᵢ[log N(ℓ; b̃, W̃W̃ᵀ + σ²I)] on the clr
    subspace with the directions of ``loadings`` and ``bias`` kept.

    Parameters
    ----------
    posteriors : iterable of (means, log_vars)
        The posteriors in chunks, each a pair of (rows, D) tensors (the component along 1 is
        ignored). Only sums over the samples are kept, so no chunk is copied into a whole.
    loadings : torch.Tensor, shape (D, k)
        W̃ (columns summing to zero): its left singular vectors are kept, its singular values
        replaced; its right singular vectors too, so the module's latent axes do not turn.
    bias : torch.Tensor, shape (D,)
        b̃ (summing to zero).

    Returns
    -------
    (torch.Tensor, float)
        The new W̃ (float64) and σ².
    """
    U, _, Vt = torch.linalg.svd(loadings.double(), full_matrices=False)  # U (D, k), ⊥ 1
    D, k = U.shape
    n, along, scatter, var_sum = 0, torch.zeros(k, dtype=torch.float64), 0.0, 0.0
    for means, log_vars in posteriors:
        m = means.double()
        centred = m - m.mean(dim=1, keepdim=True) - bias.double()
        n += centred.shape[0]
        along += ((centred @ U) ** 2).sum(dim=0)
        scatter += float((centred**2).sum())
        var_sum = var_sum + log_vars.double().exp().sum(dim=0)  # (D,)
    mean_var = var_sum / n
    along = along / n + (U**2 * mean_var[:, None]).sum(dim=0)  # u_jᵀ S u_j
    # tr S on the clr subspace: the scatter (rows already centred) and tr(P diag(v̄) P)
    trace = scatter / n + float(mean_var.sum()) * (1.0 - 1.0 / D)
    sigma2 = float((trace - along.sum()) / (D - 1 - k))
    scales = torch.sqrt(torch.clamp(along - sigma2, min=0.0))
    return (U * scales) @ Vt, sigma2


def _set_variances(module, loadings: torch.Tensor, sigma2: float) -> None:
    with torch.no_grad():
        module.loadings_raw.copy_(loadings.to(module.loadings_raw.dtype))
        module.log_sigma.fill_(0.5 * float(np.log(sigma2)))


def polish_decoder(module, read_rows, n_train: int, validate, *, seed: int,
                   iterations: int = POLISH_ITERATIONS, steps: int = POLISH_STEPS,
                   learning_rate: float = POLISH_LEARNING_RATE,
                   max_entries: int = MAX_ENTRIES) -> dict:
    """Run the polish on a fitted ``marginal`` module in place and return what it did.

    Parameters
    ----------
    module : mvae.counts.MultinomialVAEModule
    read_rows : callable
        ``read_rows(index)`` -> those training rows as a CSR matrix (in memory or streamed).
    n_train : int
        The number of training samples ``read_rows`` can read.
    validate : callable
        ``validate(module)`` -> the validation −ELBO the kept iterate is chosen by.
    seed : int
        Seeds the subset of samples and the refinement's draws (the same result on every rank).

    Returns
    -------
    dict
        ``scores`` (validation −ELBO of each iterate, the trained decoder first), ``sigma2``
        (σ² of each iterate), ``kept`` (the index of the iterate kept) and ``samples``.
    """
    from .batches import CountData

    module.eval()  # the encoder's starting posteriors without dropout
    device = module.loadings_raw.device
    D = module.config.n_features
    rows = int(min(n_train, MAX_SAMPLES, max(1, max_entries // D)))
    subset = (np.sort(np.random.default_rng(seed).choice(n_train, size=rows, replace=False))
              if rows < n_train else np.arange(n_train))
    generator = torch.Generator(device=device).manual_seed(seed)
    sets = []
    for batch in CountData(read_rows(subset), device, sparse=False).chunks(CHUNK_ROWS):
        start = refine_posterior(module, batch, steps=REFINE_STEPS,
                                 learning_rate=REFINE_LEARNING_RATE, generator=generator)
        sets.append(PosteriorSet(batch.counts, start, learning_rate, batch.log_const))
    trained = (module.loadings_raw.detach().clone(), module.log_sigma.detach().clone())
    # the validation posteriors were last refined for the final epoch's decoder, not the
    # restored one: let them settle first, so the trained decoder is not judged at a handicap
    score = float(validate(module))
    for _ in range(SETTLE_CALLS):
        again = float(validate(module))
        settled = again > score * (1.0 - SETTLE_TOLERANCE)
        score = min(score, again)
        if settled:
            break
    scores, sigma2 = [score], [float(module.noise_variance.detach())]
    best_state, kept = trained, 0
    for it in range(1, int(iterations) + 1):
        with torch.no_grad():
            loadings, s2 = variance_m_step(((s.mean, s.log_var) for s in sets),
                                           module.loadings, module.bias)
        _set_variances(module, loadings, s2)
        scores.append(float(validate(module)))
        sigma2.append(s2)
        if scores[-1] < scores[kept]:
            kept = it
            best_state = (module.loadings_raw.detach().clone(), module.log_sigma.detach().clone())
        if it < iterations:
            prior = frozen_prior(module)
            for s in sets:
                s.step(prior, int(steps), generator)
    with torch.no_grad():
        module.loadings_raw.copy_(best_state[0])
        module.log_sigma.copy_(best_state[1])
    return {"scores": scores, "sigma2": sigma2, "kept": kept, "samples": rows}
