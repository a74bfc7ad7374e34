"""torch modules: each owns its maths (inference, generative model, loss terms), nothing else."""

from .encoder import ClrLinear, Encoder, log_ratio_input
from .mvae import LossTerms, MultinomialVAEModule, MVAEConfig, Posterior

__all__ = [
    "ClrLinear",
    "Encoder",
    "log_ratio_input",
    "LossTerms",
    "MultinomialVAEModule",
    "MVAEConfig",
    "Posterior",
]
