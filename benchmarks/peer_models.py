"""Adapters: mvae and what users would run instead, each fitted to a count table the same way.

Every method has a ``fit_<method>(counts, n_latent, seed)`` that returns a :class:`Fitted`:
``.embedding`` the ``(n, k)`` embedding of the samples it was fitted to, ``.embed(new)`` the
embedding of new samples placed among them (``None`` where the method has no way to). The
benchmarks use :func:`fit` / :func:`fit_embed` by name (``METHODS``); ``benchmarks/peers.py``
times them, a real-table benchmark of held-out samples can call ``fit(train).embed(test)``.

``counts`` is a samples x features table of counts, numpy or scipy sparse. Every method runs at
its own defaults except where the adapter says (the latent dimension is ``n_latent`` for all, and
the CPU is used even where a GPU is available, so that the figures compare like with like).

The peers are the optional extra ``pip install torch==2.13.0 -e ".[peers]"``; a method whose
package is missing raises ``ImportError`` when it is fitted (:func:`installed` tells beforehand).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse


@dataclass
class Fitted:
    """A fitted method: the training samples' embedding and, where possible, a map for new ones."""

    embedding: np.ndarray
    embed: Callable[[object], np.ndarray] | None = None
    epochs: int | None = None  # passes over the data the fit made, where the method says


def _csr(counts):
    return scipy.sparse.csr_matrix(counts, dtype=np.float64) if not scipy.sparse.issparse(counts) \
        else counts.tocsr().astype(np.float64)


def _quiet():
    """Silence a peer's prints and warnings (its progress output would swamp the benchmark's)."""
    stack = contextlib.ExitStack()
    sink = io.StringIO()
    stack.enter_context(contextlib.redirect_stdout(sink))
    stack.enter_context(contextlib.redirect_stderr(sink))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


# --------------------------------------------------------------------------- mvae
def fit_mvae(counts, n_latent: int, seed: int) -> Fitted:
    """``MultinomialVAE(n_latent=n_latent, random_state=seed, threads=1)``, every other setting
    at its default; embeddings from ``.transform``."""
    import mvae

    model = mvae.MultinomialVAE(n_latent=n_latent, random_state=seed, threads=1, progress=False)
    x = _csr(counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x)
    return Fitted(embedding=np.asarray(model.transform(x)),
                  embed=lambda new: np.asarray(model.transform(_csr(new))),
                  epochs=int(len(model.history_)))


# --------------------------------------------------------------------------- clr + PCA
def fit_clr_pca(counts, n_latent: int, seed: int) -> Fitted:
    """clr(X + 1) and PCA (``mvae.evaluation.baselines.clr_pca``); new samples are projected on
    the same axes after subtracting the training clr mean. Deterministic: ``seed`` is unused."""
    from mvae.evaluation.baselines import clr_pca
    from mvae.maths.pca import clr_with_pseudocount

    res = clr_pca(counts, n_latent)
    # loadings_clr = U_k (Lambda_k - sigma^2)^(1/2): its unit columns are the PCA axes U_k
    axes = res.loadings_clr / np.linalg.norm(res.loadings_clr, axis=0)

    def embed(new):
        return (clr_with_pseudocount(new, 1.0) - res.mean_clr) @ axes

    return Fitted(embedding=np.asarray(res.embeddings), embed=embed)


# --------------------------------------------------------------------------- scvi-tools
def _scvi_adata(counts):
    import anndata

    x = _csr(counts)
    return anndata.AnnData(X=x.astype(np.float32))


def _fit_scvi(model_name: str, counts, n_latent: int, seed: int) -> Fitted:
    import scvi

    with _quiet():
        scvi.settings.seed = int(seed)  # seeds torch, numpy and random: this is a benchmark child
        adata = _scvi_adata(counts)
        cls = getattr(scvi.model, model_name)
        cls.setup_anndata(adata)
        model = cls(adata, n_latent=n_latent)
        # the package's default epochs and every other training default; the CPU, no progress bar
        model.train(accelerator="cpu", devices=1, enable_progress_bar=False)
        emb = model.get_latent_representation(adata)
    epochs = len(model.history["elbo_train"]) if "elbo_train" in model.history else None

    def embed(new):
        with _quiet():
            return np.asarray(model.get_latent_representation(_scvi_adata(new)))

    return Fitted(embedding=np.asarray(emb), embed=embed, epochs=epochs)


def fit_linear_scvi(counts, n_latent: int, seed: int) -> Fitted:
    """scvi-tools' ``LinearSCVI`` (a linear decoder, negative binomial) at its defaults."""
    return _fit_scvi("LinearSCVI", counts, n_latent, seed)


def fit_scvi(counts, n_latent: int, seed: int) -> Fitted:
    """scvi-tools' ``SCVI`` (zero-inflated negative binomial, a one-layer decoder) at its
    defaults."""
    return _fit_scvi("SCVI", counts, n_latent, seed)


# --------------------------------------------------------------------------- PLN-PCA
def fit_pln_pca(counts, n_latent: int, seed: int) -> Fitted:
    """pyPLNmodels' ``PlnPCA(rank=n_latent, compute_offsets_method="logsum")`` with its default
    fit; the embedding is its documented low-dimensional ``transform(project=True)``.

    The offsets are the log depths (the package's default is zero offsets, which would leave
    sequencing depth to the latent axes). pyPLNmodels 1.0.10 cannot embed new samples
    (``transform`` takes none), so ``embed`` is ``None``.
    """
    import torch

    with _quiet():
        import pyPLNmodels

        x = np.asarray(_csr(counts).toarray())
        keep = x.sum(axis=0) > 0  # the package drops all-zero features with a warning anyway
        torch.manual_seed(int(seed))  # its initialisation draws from torch's global generator
        model = pyPLNmodels.PlnPCA(x[:, keep], rank=n_latent, compute_offsets_method="logsum")
        model.fit()
        emb = model.transform(project=True)
    emb = emb.detach().cpu().numpy() if hasattr(emb, "detach") else np.asarray(emb)
    return Fitted(embedding=emb.astype(np.float64), embed=None)


# --------------------------------------------------------------------------- gemelli RPCA
def fit_gemelli_rpca(counts, n_latent: int, seed: int) -> Fitted:
    """gemelli's robust Aitchison PCA (``gemelli.rpca.rpca``) with ``n_components=n_latent``,
    every other setting at its default; the embedding is the ordination's sample scores.

    gemelli filters nothing at its defaults (minimum counts 0), so every sample gets a row.
    Deterministic: ``seed`` is unused.
    """
    import biom

    with _quiet():
        from gemelli.rpca import rpca

        x = _csr(counts)
        n, d = x.shape
        sample_ids = [f"s{i}" for i in range(n)]
        table = biom.Table(x.T.tocsr(), [f"f{j}" for j in range(d)], sample_ids)
        ordination, _ = rpca(table, n_components=n_latent)
    samples = ordination.samples.loc[sample_ids]  # gemelli may reorder its rows
    return Fitted(embedding=samples.to_numpy(dtype=np.float64), embed=None)


#: Methods by name, in the order the benchmark runs them.
METHODS: dict[str, Callable[..., Fitted]] = {
    "mvae": fit_mvae,
    "clr_pca": fit_clr_pca,
    "linear_scvi": fit_linear_scvi,
    "scvi": fit_scvi,
    "pln_pca": fit_pln_pca,
    "gemelli_rpca": fit_gemelli_rpca,
}

#: The package each method needs beyond mvae's own dependencies.
PACKAGES = {"linear_scvi": "scvi", "scvi": "scvi", "pln_pca": "pyPLNmodels",
            "gemelli_rpca": "gemelli"}


def installed(method: str) -> bool:
    """Whether the package ``method`` needs can be imported here (without importing it)."""
    package = PACKAGES.get(method)
    return package is None or importlib.util.find_spec(package) is not None


def fit(method: str, counts, n_latent: int = 10, seed: int = 0) -> Fitted:
    """Fit ``method`` (a key of :data:`METHODS`) to ``counts``."""
    return METHODS[method](counts, n_latent, seed)


def fit_embed(method: str, counts, n_latent: int = 10, seed: int = 0) -> np.ndarray:
    """The ``(n, n_latent)`` embedding of ``counts`` by ``method``."""
    return fit(method, counts, n_latent, seed).embedding
