"""The noise scale σ̂ of default fits on simulations, and what the ILR KL (no mean-field slack)
changes; a prototype importance-weighted bound for the shallow-depth bias (issue 18, item 4).

Modes (each writes one TSV row per fit, flushed as it goes):

``sigma``
    σ̂² of ``MultinomialVAE(n_latent=10, random_state=seed, threads=1)`` on
    ``simulate(1000, 200, 10, depth=depth, random_state=seed)`` (σ² = 0.1), per depth and seed.
``heldout``
    The fits of ``benchmarks/heldout.py`` on the shipped tables, plus the validation samples'
    −ELBO (``score_samples``, 16 draws) both under the code's own objective and under the ILR
    KL (the D-dimensional KL minus the slack, computed here from the encoder's dense posterior):
    only the latter is comparable across the change of objective.
``iwae``
    σ̂² of the same fits trained on an importance-weighted bound with K draws (see
    :class:`IWAEModule`), with the gradient estimator ``--estimator`` (``reparam`` or ``dreg``).

    python benchmarks/sigma_bias.py sigma --depths 10000 100 --seeds 0 1 2 3 4 -o out.tsv

Run it with ``PYTHONPATH`` pointing at another checkout to measure that code with the same script.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

try:
    from benchmarks.shipped import TABLES, TsvRows
except ImportError:  # run as a script: benchmarks/ itself is on the path
    from shipped import TABLES, TsvRows

SIGMA2 = 0.316**2  # simulate's default σ


def slack(mean, log_var):
    """The mean-field slack KL_D − KL_ILR per sample, from dense (B, D) m − b̃ and log v:
    ½[(mean(v) + (Σδ)²/D)/σ² − 1 − log(hmean(v)/σ²)] needs σ², so this returns the parts
    (mean(v) + (Σδ)²/D, log hmean(v)) and :func:`slack_value` combines them."""
    import torch

    D = mean.shape[1]
    second = log_var.exp().mean(1) + mean.sum(1).pow(2) / D
    log_hmean = np.log(D) - torch.logsumexp(-log_var, dim=1)
    return second, log_hmean


def slack_value(module, counts):
    """Slack per sample (nats) of the encoder's posterior for dense counts (B, D)."""
    import torch

    with torch.no_grad():
        post = module.encode(counts)
        s2 = module.noise_variance
        second, log_hmean = slack(post.mean.double() - module.bias.double(), post.log_var.double())
        return (0.5 * (second / s2 - 1.0 - log_hmean + torch.log(s2))).numpy()


def _kl_is_ilr() -> bool:
    """Whether this checkout's KL is the ILR one (invariant to shifting the mean along 1)."""
    import torch

    from mvae.maths.likelihoods import LowRankPrior, kl_diag_to_lowrank

    W = torch.tensor([[1.0], [-1.0], [0.0]], dtype=torch.float64)
    prior = LowRankPrior(W, torch.zeros(3, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64))
    m, lv = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64)
    return bool(torch.isclose(kl_diag_to_lowrank(m, lv, prior), kl_diag_to_lowrank(m + 1, lv, prior)))


def fit_sigma(depth: int, seed: int, module_factory=None) -> dict:
    import mvae
    from mvae.evaluation.simulate import simulate

    sim = simulate(1000, 200, 10, depth=depth, random_state=seed)
    model = mvae.MultinomialVAE(n_latent=10, random_state=seed, threads=1)
    t0 = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if module_factory is None:
            model.fit(sim.counts)
        else:
            with module_factory():
                model.fit(sim.counts)
    cpu = time.process_time() - t0
    s2 = float(model.noise_variance_)
    epochs = int(model.history_["epoch"].max())
    return {"sigma2_hat": s2, "sigma_rel_err": float(np.sqrt(s2 / sim.sigma**2) - 1.0),
            "best_epoch": int(model.best_epoch_), "epochs": epochs, "cpu_s": round(cpu, 1),
            "cpu_s_per_epoch": round(cpu / max(epochs, 1), 4)}


def fit_heldout(path: str, seed: int) -> dict:
    import torch

    import mvae

    adata = mvae.read_counts(path)
    model = mvae.MultinomialVAE(random_state=seed, threads=1)
    t0 = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(adata)
    cpu = time.process_time() - t0
    h = model.history_
    best = int(model.best_epoch_)
    row = h.loc[h["epoch"] == best].iloc[0]
    valid = adata[model.validation_samples_, model.feature_ids_]
    X = valid.X.toarray() if hasattr(valid.X, "toarray") else np.asarray(valid.X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        own = model.score_samples(valid)
    with torch.no_grad():
        sl = slack_value(model.module_.double(), torch.tensor(X, dtype=torch.float64))
    ilr = own if _kl_is_ilr() else own - sl
    return {"best_epoch": best, "epochs": int(h["epoch"].max()),
            "validation_nelbo": float(row["validation_loss"]),
            "train_nelbo": float(row["train_loss"]),
            "heldout_own_objective": float(own.mean()), "heldout_ilr": float(ilr.mean()),
            "heldout_slack": float(sl.mean()), "cpu_s": round(cpu, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["sigma", "heldout", "iwae"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--depths", type=int, nargs="+", default=[10_000, 100])
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    parser.add_argument("--draws", type=int, nargs="+", default=[1, 5, 20],
                        help="iwae: the numbers K of importance draws")
    parser.add_argument("--estimator", choices=["reparam", "dreg"], default="reparam")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    import mvae

    out = TsvRows(args.output)
    if args.mode == "heldout":
        jobs = [({"table": t, "seed": s}, lambda t=t, s=s: fit_heldout(TABLES[t], s))
                for t in args.tables for s in args.seeds]
    elif args.mode == "sigma":
        jobs = [({"depth": d, "seed": s}, lambda d=d, s=s: fit_sigma(d, s))
                for d in args.depths for s in args.seeds]
    else:
        jobs = [({"depth": d, "K": K, "estimator": args.estimator, "seed": s},
                 lambda d=d, s=s, K=K: fit_sigma(d, s, iwae_factory(K, args.estimator)))
                for d in args.depths for K in args.draws for s in args.seeds]
    for key, job in jobs:
        row = {**key, **job()}
        out.append(row)
        print("\t".join(str(v) for v in row.values()), flush=True)
    out.close()
    print(f"mvae from {mvae.__file__}")


def iwae_module_class(K: int, estimator: str):
    """A :class:`mvae.counts.MultinomialVAEModule` whose loss is the importance-weighted bound
    with K draws, in ILR coordinates (consistent with the KL on 1^⊥ of the default bound).

    With ℓ_k = m + √v ⊙ ε_k, η_k = Ψᵀℓ_k (never formed: everything below is in clr terms),

    .. math::

        \\mathcal L_K = \\log \\tfrac1K \\sum_k \\exp\\big[\\log p(x \\mid \\ell_k)
            + \\log p(\\eta_k) - \\log q(\\eta_k)\\big]

    where log p(η) = log p_D(ℓ) − log N(u; 0, σ²) (u = 1ᵀℓ/√D, independent of η under the
    lifted prior) and log q(η) = log q_D(ℓ) − log q(u | η), q(u | η) = N(·, hmean(v)): with
    P = Σ_d v_d⁻¹, log q(u | η) = −½[log 2π + log D − log P + (Σ_d ε_d v_d^{-1/2})² / P].
    K = 1 is the default bound (its KL term estimated by one draw instead of in closed form).

    ``estimator``: ``reparam`` differentiates the bound through the draws (the plain IWAE
    gradient); ``dreg`` uses the doubly reparameterised gradient (Tucker et al. 2019) for the
    encoder's side: Σ_k w̃_k² ∂log w_k/∂ℓ_k · ∂ℓ_k/∂φ with q's density parameters held fixed,
    and Σ_k w̃_k ∂log w_k/∂θ for the prior's parameters. The decoder bias b̃ is on both sides
    (it is the posterior mean's offset and the prior mean); it gets both parts.

    Only dense count batches (the simulations here are dense).
    """
    import math

    import torch

    from mvae.counts import LossTerms, MultinomialVAEModule
    from mvae.maths.likelihoods import gaussian_multinomial_log_prob

    class IWAEModule(MultinomialVAEModule):
        def loss(self, counts, generator=None, n_samples=None):
            from mvae.counts.module import _unpack

            counts, log_const = _unpack(counts)
            if counts.is_sparse:
                counts = counts.to_dense()
            post = self.posterior(counts).dense()
            m, log_v = post.mean, post.log_var  # (B, D)
            B, D = m.shape
            eps = torch.randn((K, B, D), dtype=m.dtype, generator=generator)
            std = torch.exp(0.5 * log_v)
            recon = gaussian_multinomial_log_prob(m, std, eps, counts, log_const)  # (K, B)
            ell = m + std * eps  # (K, B, D), for the prior and q terms
            prior = self.prior()
            s2 = prior.noise_variance

            def log_ratio(ell, m_q, log_v_q, W_side):
                """log p(η) − log q(η) per draw, (K, B), without the 2π terms (they cancel)."""
                pr = prior if W_side else _detached(prior)
                delta = (ell - pr.bias).reshape(K * B, D)
                maha = pr.mahalanobis(delta).reshape(K, B)
                tot = delta.sum(-1).reshape(K, B)
                log_p = -0.5 * (pr.logdet() - torch.log(pr.noise_variance) + maha
                                - tot.pow(2) / (D * pr.noise_variance))
                inv_std = torch.exp(-0.5 * log_v_q)  # (B, D)
                e = (ell - m_q) * inv_std  # ε, with the gradient through ℓ only when m_q fixed
                P = torch.exp(-log_v_q).sum(-1)  # (B,)
                log_q = -0.5 * (log_v_q.sum(-1) + e.pow(2).sum(-1) - math.log(D) + torch.log(P)
                                - (e * inv_std).sum(-1).pow(2) / P)
                return log_p - log_q

            if estimator == "reparam":
                log_w = recon + log_ratio(ell, m, log_v, True)
                bound = torch.logsumexp(log_w, 0) - math.log(K)
            else:  # DReG
                lw_phi = recon + log_ratio(ell, m.detach(), log_v.detach(), False)
                lw_theta = recon.detach() + log_ratio(ell.detach(), m.detach(), log_v.detach(), True)
                w = torch.softmax(lw_phi.detach(), 0)  # (K, B) normalised weights
                bound_value = torch.logsumexp(lw_phi.detach(), 0) - math.log(K)
                phi_part = (w.pow(2) * lw_phi).sum(0)
                theta_part = torch.logsumexp(lw_theta, 0)
                bound = (bound_value + (phi_part - phi_part.detach())
                         + (theta_part - theta_part.detach()))
            # reported as reconstruction − KL = the bound; the split is nominal (KL := mean
            # reconstruction − bound, per sample)
            rec = recon.mean(0)
            return LossTerms(reconstruction=rec, kl=rec - bound)

    def _detached(prior):
        from mvae.maths.likelihoods import LowRankPrior

        return LowRankPrior(prior.loadings.detach(), prior.bias.detach(),
                            prior.noise_variance.detach())

    return IWAEModule


def iwae_factory(K: int, estimator: str):
    """A context manager under which ``MultinomialVAE.fit`` builds the IWAE module."""
    import contextlib

    import mvae.counts

    cls = iwae_module_class(K, estimator)

    @contextlib.contextmanager
    def patched():
        old = mvae.counts.MultinomialVAEModule
        mvae.counts.MultinomialVAEModule = cls
        try:
            yield
        finally:
            mvae.counts.MultinomialVAEModule = old

    return patched


if __name__ == "__main__":
    main()
