"""Adapters: mvae and what users would run instead, each fitted to a count table the same way.

Every method has a ``fit_<method>(counts, n_latent, seed)`` that returns a :class:`Fitted`:
``.embedding`` the ``(n, k)`` embedding of the samples it was fitted to, ``.embed(new)`` the
embedding of new samples placed among them (``None`` where the method has no way to), and
``.score(new)`` the held-out −ELBO of new samples where the method has a count likelihood. The
benchmarks use :func:`fit` / :func:`fit_embed` by name (``METHODS``); ``benchmarks/peers.py``
times them, ``benchmarks/real_tables.py`` calls ``fit(train).embed(test)`` and ``.score(test)``.

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
    #: ``score(new)``: per-sample −ELBO in nats of new samples under the fitted model, as a dict
    #: of arrays by variant (``"optimised"``: each sample's own posterior optimised with the model
    #: frozen; ``"encoder"``: an amortised encoder's posterior). The count likelihood is the
    #: multinomial given the sample's depth over the features kept at fit (those with a non-zero
    #: training total), with its coefficient log N! − Σ log x_d!, as in mvae's loss.
    #: ``None`` where the method has no likelihood.
    score: Callable[[object], dict] | None = None


def _last(f):
    """``f`` remembering its last call: ``.embed(new)`` and ``.score(new)`` of one table share
    one (costly) posterior optimisation."""
    last = []

    def g(new):
        if not last or last[0] is not new:
            last[:] = [new, f(new)]
        return last[1]
    return g


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
    at its default; embeddings from ``.transform`` (refined posteriors, the default), scores from
    ``.score_samples`` with refined posteriors (``"optimised"``) and with the encoder's
    (``"encoder"``, ``refine=False``)."""
    import mvae

    model = mvae.MultinomialVAE(n_latent=n_latent, random_state=seed, threads=1, progress=False)
    x = _csr(counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x)
    # transform and score_samples of the same samples: one refinement (embed_and_score)
    refined = _last(lambda new: model.embed_and_score(_csr(new)))

    def score(new):
        return {"optimised": np.asarray(refined(new)[1]),
                "encoder": np.asarray(model.score_samples(_csr(new), refine=False))}

    return Fitted(embedding=np.asarray(model.transform(x)),
                  embed=lambda new: np.asarray(refined(new)[0]),
                  epochs=int(len(model.history_)), score=score)


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
#: Newton steps to the posterior mode; Adam steps from there, initial step size (cosine-decayed
#: to zero), Monte Carlo draws per step; draws of the final estimate.
#: (:func:`multinomial_lowrank_posterior`; tests/test_real_tables_script.py checks convergence.)
MULT_NEWTON, MULT_STEPS, MULT_LEARNING_RATE, MULT_STEP_DRAWS, MULT_FINAL_DRAWS = \
    50, 300, 0.02, 4, 256


@dataclass
class LowRankPosterior:
    """Per-sample Gaussian posteriors q(w) = N(mean, diag exp(log_var)) and their ELBO (nats)."""

    mean: np.ndarray
    log_var: np.ndarray
    elbo: np.ndarray


def _mode_and_curvature(x, N, b, C, newton: int):
    """Posterior mode of w (prior N(0, I)) under Multinomial(x | N, softmax(b + C w)) by damped
    Newton steps (the log-posterior is concave), and the diagonal of its negative Hessian."""
    import torch

    def objective(w):
        logits = b + w @ C.T
        return (x * logits).sum(1) - N * torch.logsumexp(logits, 1) - 0.5 * (w**2).sum(1)

    w = torch.zeros((x.shape[0], C.shape[1]), dtype=torch.float64)
    current = objective(w)
    eye = torch.eye(C.shape[1], dtype=torch.float64)
    for _ in range(newton):
        p = torch.softmax(b + w @ C.T, 1)  # (B, D)
        grad = x @ C - N[:, None] * (p @ C) - w
        pc = p @ C  # (B, k)
        hess = N[:, None, None] * (torch.einsum("bd,dj,dl->bjl", p, C, C)
                                   - pc[:, :, None] * pc[:, None, :]) + eye
        step = torch.linalg.solve(hess, grad[:, :, None])[..., 0]
        t = torch.ones(x.shape[0], dtype=torch.float64)
        for _ in range(30):  # halve the step of the samples it does not improve
            trial = objective(w + t[:, None] * step)
            worse = trial < current
            if not worse.any():
                break
            t = torch.where(worse, t / 2, t)
        accept = trial >= current
        w = torch.where(accept[:, None], w + t[:, None] * step, w)
        current = torch.where(accept, trial, current)
        if float((grad**2).sum(1).max()) < 1e-16:
            break
    p = torch.softmax(b + w @ C.T, 1)
    pc = p @ C
    curvature = N[:, None] * (p @ C**2 - pc**2) + 1.0
    return w, curvature


def multinomial_lowrank_posterior(counts, bias, components, *, seed: int = 0,
                                  newton: int = MULT_NEWTON, steps: int = MULT_STEPS,
                                  learning_rate: float = MULT_LEARNING_RATE,
                                  step_draws: int = MULT_STEP_DRAWS,
                                  final_draws: int = MULT_FINAL_DRAWS,
                                  rows: int = 256) -> LowRankPosterior:
    r"""The multinomial ELBO of each sample under a frozen low-rank logit model.

    Model: w ~ N(0, I_k), x | w ~ Multinomial(N, softmax(b + C w)) with N = Σ_d x_d observed.
    (A Poisson log-normal PCA, log λ = o + b + C w with o = log depth, conditioned on its total
    N is this model: a Poisson vector is Poisson(N | Σλ) × Multinomial(x | N, λ / Σλ), and the
    offset drops out of the softmax.) For each sample a Gaussian q(w) = N(m, diag v) maximises

    .. math::

        \mathrm{ELBO}(x) = E_q[\log \mathrm{Mult}(x \mid N, \mathrm{softmax}(b + C w))]
            - \mathrm{KL}(q \,\|\, N(0, I_k)),

    the log-likelihood with its coefficient log N! − Σ log x_d! (``mvae.maths.likelihoods.
    multinomial_log_prob``, the function of mvae's own loss). q starts at the Laplace mean-field
    point (m the posterior mode by damped Newton steps, v the inverse diagonal of the negative
    Hessian there); Adam on (m, log v) then maximises the ELBO with reparameterised draws
    (``step_draws`` per step, from a generator seeded with ``seed`` and shared by the samples,
    so a sample's result does not depend on the others given with it), the step size decayed
    to zero on a cosine over ``steps``. The returned ELBO is estimated at the end with
    ``final_draws`` draws, in float64.

    Parameters
    ----------
    counts : array_like, shape (n, D)
    bias : array_like, shape (D,)
    components : array_like, shape (D, k)
    rows : int
        Samples optimised together (independent problems; Adam's update is elementwise).

    Returns
    -------
    LowRankPosterior
        ``mean`` and ``log_var`` (n, k), ``elbo`` (n,).
    """
    import torch

    from mvae.maths.likelihoods import multinomial_log_const, multinomial_log_prob

    x_all = np.asarray(_csr(counts).toarray())
    b64 = torch.as_tensor(np.asarray(bias, dtype=np.float64))
    C64 = torch.as_tensor(np.asarray(components, dtype=np.float64))
    b32, C32 = b64.float(), C64.float()
    D = C64.shape[0]
    means, log_vars, elbos = [], [], []
    for start in range(0, x_all.shape[0], rows):
        generator = torch.Generator().manual_seed(int(seed))  # the same draws for every chunk
        x64 = torch.as_tensor(x_all[start:start + rows])
        x32 = x64.float()
        const = multinomial_log_const(x64)
        mode, curvature = _mode_and_curvature(x64, x64.sum(1), b64, C64, newton)
        m = mode.float().clone().requires_grad_(True)
        s = (-torch.log(curvature)).float().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([m, s], lr=learning_rate)
        for t in range(steps):
            eps = torch.randn((step_draws, 1, m.shape[1]), generator=generator)
            logits = b32 + (m + torch.exp(0.5 * s) * eps) @ C32.T  # (S, B, D)
            ll = multinomial_log_prob(logits, x32, const.float()).mean(0)
            kl = 0.5 * (m**2 + torch.exp(s) - 1.0 - s).sum(1)
            optimiser.zero_grad(set_to_none=True)
            (kl - ll).sum().backward()
            optimiser.step()
            for group in optimiser.param_groups:
                group["lr"] = learning_rate * 0.5 * (1 + np.cos(np.pi * (t + 1) / steps))
        with torch.no_grad():
            m64, s64 = m.detach().double(), s.detach().double()
            ll = torch.zeros(x64.shape[0], dtype=torch.float64)
            per = max(1, min(final_draws, 2**24 // max(1, x64.shape[0] * D)))
            for d0 in range(0, final_draws, per):
                eps = torch.randn((min(per, final_draws - d0), 1, m64.shape[1]),
                                  generator=generator, dtype=torch.float64)
                logits = b64 + (m64 + torch.exp(0.5 * s64) * eps) @ C64.T
                ll += multinomial_log_prob(logits, x64, const).sum(0)
            ll /= final_draws
            kl = 0.5 * (m64**2 + torch.exp(s64) - 1.0 - s64).sum(1)
        means.append(m64.numpy())
        log_vars.append(s64.numpy())
        elbos.append((ll - kl).numpy())
    return LowRankPosterior(np.concatenate(means), np.concatenate(log_vars),
                            np.concatenate(elbos))


def fit_pln_pca(counts, n_latent: int, seed: int) -> Fitted:
    """pyPLNmodels' ``PlnPCA(rank=n_latent, compute_offsets_method="logsum")`` with its default
    fit; the embedding is its documented low-dimensional ``transform(project=True)``: the PCA
    (scikit-learn) of its latent variables b + C m over the training samples.

    The offsets are the log depths (the package's default is zero offsets, which would leave
    sequencing depth to the latent axes). pyPLNmodels 1.0.10 cannot embed new samples
    (``transform`` takes none); here, with its fitted ``coef`` (b, the intercept) and
    ``components`` (C) frozen, each new sample gets the Gaussian q(w) of its multinomial ELBO
    given its depth (:func:`multinomial_lowrank_posterior`): ``embed(new)`` puts b + C m through
    the same PCA as the training samples, ``score(new)["optimised"]`` is the −ELBO.
    """
    import torch

    with _quiet():
        import pyPLNmodels
        from sklearn.decomposition import PCA

        x = np.asarray(_csr(counts).toarray())
        keep = x.sum(axis=0) > 0  # the package drops all-zero features with a warning anyway
        torch.manual_seed(int(seed))  # its initialisation draws from torch's global generator
        model = pyPLNmodels.PlnPCA(x[:, keep], rank=n_latent, compute_offsets_method="logsum")
        model.fit()
        # = model.transform(project=True), keeping the PCA to place new samples with
        pca = PCA(n_components=n_latent)
        emb = pca.fit_transform(model.latent_variables.detach().cpu().numpy())
    components = model.components.detach().cpu().numpy().astype(np.float64)
    coef = model.coef
    bias = (np.zeros(components.shape[0]) if coef is None
            else coef.detach().cpu().numpy().astype(np.float64)[0])  # exog: the constant only
    posterior = _last(lambda new: multinomial_lowrank_posterior(
        _csr(new)[:, np.flatnonzero(keep)], bias, components, seed=seed))

    def embed(new):
        return pca.transform(bias + posterior(new).mean @ components.T)

    return Fitted(embedding=np.asarray(emb, dtype=np.float64), embed=embed,
                  score=lambda new: {"optimised": -posterior(new).elbo})


# --------------------------------------------------------------------------- gemelli RPCA
def fit_gemelli_rpca(counts, n_latent: int, seed: int) -> Fitted:
    """gemelli's robust Aitchison PCA (``gemelli.rpca.rpca``) with ``n_components=n_latent``,
    every other setting at its default; the embedding is the ordination's sample scores.

    gemelli filters nothing at its defaults (minimum counts 0), so every sample gets a row.
    Deterministic: ``seed`` is unused.

    ``embed(new)`` is gemelli's own projection of new samples, ``gemelli.rpca.rpca_transform``:
    rclr of the new table, centred on its own samples and features, times the feature loadings,
    divided by the norm of the singular values. Note that its scale differs from the
    ordination's sample scores (unit-norm columns), so the training samples are to be projected
    with it too when new samples are placed among them.
    """
    import copy

    import biom

    with _quiet():
        from gemelli.rpca import rpca, rpca_transform

        x = _csr(counts)
        n, d = x.shape
        sample_ids = [f"s{i}" for i in range(n)]
        feature_ids = [f"f{j}" for j in range(d)]
        table = biom.Table(x.T.tocsr(), feature_ids, sample_ids)
        ordination, _ = rpca(table, n_components=n_latent)
    samples = ordination.samples.loc[sample_ids]  # gemelli may reorder its rows

    def embed(new):
        new = _csr(new)
        ids = [f"new{i}" for i in range(new.shape[0])]
        with _quiet():
            # it overwrites the ordination's samples: project with a copy
            projected = rpca_transform(copy.deepcopy(ordination),
                                       biom.Table(new.T.tocsr(), feature_ids, ids))
        return projected.samples.loc[ids].to_numpy(dtype=np.float64)

    return Fitted(embedding=samples.to_numpy(dtype=np.float64), embed=embed)


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
