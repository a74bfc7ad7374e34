"""The score early stopping watches: validation −ELBO with refined, warm-started posteriors.

Scoring the validation samples with the encoder's posterior (what :func:`mvae.training.loop.evaluate`
does) measures the encoder as much as the decoder. On real tables the encoder fits its training
samples and generalises poorly, so that score turns upward while the decoder is still improving,
and the restored epoch is chosen by the encoder's overfitting (docs/model.md, "Refined
posteriors"). :class:`RefinedValidation` scores the decoder instead: each validation sample keeps
a posterior of its own, started from the encoder's at the first epoch and refined by a few Adam
steps after every epoch against the current decoder (frozen during those steps), so the posteriors
follow the decoder as it changes. The reported score uses the same fixed draws at every epoch, so
consecutive epochs are compared without fresh Monte Carlo noise.

The posteriors cost memory (four (n, D) arrays with Adam's moments): at most
``MAX_ENTRIES`` entries are kept, i.e. the first ``MAX_ENTRIES // D`` validation samples
(the validation split is already a random subset of the table).
"""

from __future__ import annotations

import torch

from .refine import PosteriorSet, dense_loss_terms, frozen_prior

__all__ = ["RefinedValidation", "VALIDATION_STEPS", "VALIDATION_LEARNING_RATE", "MAX_ENTRIES"]

#: Adam steps per epoch on the validation posteriors, and their (constant) step size
#: (benchmarks/results/selection/).
VALIDATION_STEPS = 5
VALIDATION_LEARNING_RATE = 0.03
#: Entries (samples x features) of validation posteriors kept: 2²² float32 values, four arrays.
MAX_ENTRIES = 2**22
#: Rows per chunk of the validation posteriors.
CHUNK_ROWS = 256


class RefinedValidation:
    """Mean validation −ELBO per sample under refined, warm-started posteriors.

    Parameters
    ----------
    data
        The validation samples: anything with ``len()``, ``n_features`` and ``chunks(rows)``
        yielding :class:`~mvae.training.batches.CountBatch` (in order, the same every call).
    seed : int
        Seeds the refinement's draws and the fixed draws of the score.
    steps, learning_rate : int, float
        Adam steps per call and their step size.
    """

    def __init__(self, data, seed: int, steps: int = VALIDATION_STEPS,
                 learning_rate: float = VALIDATION_LEARNING_RATE, max_entries: int = MAX_ENTRIES):
        self.data, self.steps, self.learning_rate = data, int(steps), float(learning_rate)
        self.n = min(len(data), max(1, max_entries // max(1, data.n_features)))
        self.generator = torch.Generator(device=getattr(data, "device", "cpu")).manual_seed(seed)
        self._score_seed = seed + 1
        self.sets: list[PosteriorSet] | None = None
        self._eps: list[torch.Tensor] = []

    def __len__(self) -> int:
        """The number of samples scored."""
        return self.n

    def _batches(self):
        left = self.n
        for batch in self.data.chunks(min(CHUNK_ROWS, self.n)):
            if left <= 0:
                return
            counts = batch.counts.to_dense() if batch.counts.is_sparse else batch.counts
            counts, log_const = counts[:left], batch.log_const[:left]
            left -= counts.shape[0]
            yield counts, log_const

    def __call__(self, module) -> float:
        """Refine every kept validation posterior ``steps`` steps under the module's current
        decoder and return their mean −ELBO (nats per sample)."""
        was_training = module.training
        module.eval()
        prior = frozen_prior(module)
        if self.sets is None:
            self._build(module)
        total = 0.0
        for posteriors, eps in zip(self.sets, self._eps):
            posteriors.step(prior, self.steps, self.generator)
            with torch.no_grad():
                terms = dense_loss_terms(posteriors.mean, posteriors.log_var, prior,
                                         posteriors.counts, eps, posteriors.log_const)
            total += float(terms.negative_elbo().sum())
        module.train(was_training)
        return total / self.n

    def state_dict(self) -> dict:
        """The posteriors, their optimisers and the draws' generator (for checkpoints)."""
        return {"generator": self.generator.get_state(),
                "sets": [] if self.sets is None else [s.state_dict() for s in self.sets]}

    def load_state_dict(self, module, state: dict) -> None:
        """Restore :meth:`state_dict` (``module`` builds the sets' shapes first)."""
        if not state["sets"]:
            return
        self._build(module)
        for posteriors, s in zip(self.sets, state["sets"]):
            posteriors.load_state_dict(s)
        self.generator.set_state(state["generator"])

    def _build(self, module) -> None:
        """One posterior set per chunk, started at the encoder's output (in eval mode: no
        dropout, so the global random state that dropout draws from is untouched), and the
        score's draws."""
        self.sets, self._eps = [], []
        gen = torch.Generator(device=self.generator.device).manual_seed(self._score_seed)
        was_training = module.training
        module.eval()
        for counts, log_const in self._batches():
            with torch.no_grad():
                start = module.encode(counts)
            self.sets.append(PosteriorSet(counts, start, self.learning_rate, log_const))
            self._eps.append(torch.randn((1, *counts.shape), dtype=start.mean.dtype,
                                         device=counts.device, generator=gen))
        module.train(was_training)
