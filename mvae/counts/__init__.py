"""The count model: encoder, posterior, prior/decoder and loss, as torch modules.

Reads like the ELBO of docs/model.md: :class:`~mvae.counts.encoder.Encoder` maps the log-ratio
input to a hidden representation, :class:`~mvae.counts.module.MultinomialVAEModule` turns it into
the approximate posterior, and its ``loss`` is the expected log-likelihood minus the KL to the
low-rank prior, per sample. The maths it calls lives in :mod:`mvae.maths`; data handling and
training are the estimator's (:mod:`mvae.model`) and the loop's (:mod:`mvae.training`).
"""

from .encoder import ClrLinear, Encoder, log_ratio_input
from .module import LossTerms, MultinomialVAEModule, MVAEConfig, Posterior

__all__ = [
    "ClrLinear",
    "Encoder",
    "log_ratio_input",
    "LossTerms",
    "MultinomialVAEModule",
    "MVAEConfig",
    "Posterior",
]
