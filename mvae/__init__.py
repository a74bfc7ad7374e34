"""mvae: multinomial variational autoencoders for compositional count data.

Fit a multinomial VAE with an isometric log-ratio (ILR) basis to a count table (samples x features)
and get sample embeddings, feature loadings, a low-rank feature-feature covariance (co-occurrence)
estimate, denoised compositions, anomaly scores and synthetic samples.

Heavy dependencies (torch, anndata, scikit-bio, biom-format) are imported on first use, so that
``import mvae`` and ``mvae --help`` stay fast.
"""

from importlib import import_module

__version__ = "0.2.0"

# public name -> module that defines it; resolved lazily by __getattr__
_LAZY = {
    "MultinomialVAE": "mvae.model",
    "read_counts": "mvae.io.tables",
    "simulate": "mvae.evaluation.simulate",
    "Simulation": "mvae.evaluation.simulate",
    "HelmertBasis": "mvae.maths.compositions",
    "TreeBasis": "mvae.maths.trees",
    "LowRankCovariance": "mvae.maths.covariance",
    "InputError": "mvae.errors",
    "ModelFileError": "mvae.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'mvae' has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
