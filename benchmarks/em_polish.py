"""A variational-EM polish of a fitted model's decoder (issue 18, item 4: σ's bias), measured.

After a default fit, alternate

* E-step: every training sample's posterior q(ℓ | x) = N(m, diag v) refined with the decoder
  frozen (:func:`mvae.training.refine.refine_posterior`, warm-started from the last E-step), and
* M-step: the decoder that maximises the ELBO given those posteriors, in closed form (the ELBO
  depends on the decoder only through E_q[log N(ℓ; b̃, W̃W̃ᵀ + σ²I)] on the clr subspace, i.e. on
  the expected scatter S = (1/n) Σ (m_i − b̃)(m_i − b̃)ᵀ + P diag(v̄) P). Three M-steps compared
  (``--mode``): ``full`` — probabilistic PCA of S (b̃, W̃ and σ²; a dense D × D eigenproblem);
  ``scales`` — W̃'s directions and b̃ kept, its k scales and σ² re-estimated, O(n D k)
  (:func:`mvae.training.polish.variance_m_step`, adopted); ``sigma`` — σ² alone.

Simulations (``simulate(1000, 200, 10)``, σ² = 0.1, 10,000 and 100 reads, 5 seeds): σ̂ per
iteration, training and validation −ELBO, and Σ_clr / correlation recovery before and after 10
unguarded iterations:

    python benchmarks/em_polish.py --mode full -o benchmarks/results/sigma/em_polish_full.tsv
    python benchmarks/em_polish.py --mode scales -o benchmarks/results/sigma/em_polish_scales.tsv
    python benchmarks/em_polish.py --mode sigma -o benchmarks/results/sigma/em_polish_sigma.tsv

Shipped tables (``--tables``): the package's own polish as a default fit runs it (validation
guard included), held-out samples of a seeded 80/20 split scored with and without it:

    python benchmarks/em_polish.py --tables moving_pictures pbmc wirbel ecam --seeds 0 1 2 \
        -o benchmarks/results/sigma/polish_tables.tsv
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

try:
    from benchmarks.shipped import TABLES, TsvRows
except ImportError:  # run as a script
    from shipped import TABLES, TsvRows


def ppca_m_step(means, log_vars, k: int):
    """The closed-form decoder (W̃ (D, k), b̃ (D,), σ²) given dense posteriors (n, D) each."""
    import torch

    m = means.double()
    m = m - m.mean(dim=1, keepdim=True)  # the softmax ignores the component along 1
    b = m.mean(dim=0)
    mc = m - b
    n, D = mc.shape
    vbar = log_vars.double().exp().mean(dim=0)
    P = torch.eye(D, dtype=torch.float64) - 1.0 / D
    S = mc.T @ mc / n + P @ torch.diag(vbar) @ P
    lam, U = torch.linalg.eigh(S)  # ascending; one zero eigenvalue (the ones direction)
    top, Uk = lam[-k:], U[:, -k:]
    sigma2 = (torch.trace(S) - top.sum()) / (D - 1 - k)
    W = Uk * torch.sqrt(torch.clamp(top - sigma2, min=0.0))
    return W, b, float(sigma2)


def sigma_m_step(means, log_vars, W_old, b_old):
    """σ² alone, W̃ and b̃ kept: the 1-D maximum of E_q[log N(ℓ; b̃, W̃W̃ᵀ + σ²I)] on the clr
    subspace, in the eigenbasis of W̃W̃ᵀ."""
    import torch
    from scipy.optimize import minimize_scalar

    m = means.double()
    m = m - m.mean(dim=1, keepdim=True)
    mc = m - b_old.double()
    n, D = mc.shape
    k = W_old.shape[1]
    U, sv, _ = torch.linalg.svd(W_old.double(), full_matrices=False)
    lam = (sv**2).numpy()
    vbar = log_vars.double().exp().mean(dim=0)
    a = ((mc @ U)**2).mean(dim=0) + (U**2 * vbar[:, None]).sum(dim=0)
    trace = (mc**2).sum() / n + vbar.sum() * (1.0 - 1.0 / D)
    a, r = a.numpy(), float(trace - a.sum())

    def f(t):
        s2 = np.exp(t)
        return float(np.sum(a / (lam + s2) + np.log(lam + s2)) + r / s2 + (D - 1 - k) * t)
    t = minimize_scalar(f, bounds=(np.log(1e-6), np.log(1e3)), method="bounded",
                        options={"xatol": 1e-8}).x
    return W_old.double(), b_old.double(), float(np.exp(t))


def set_decoder(module, W, b, sigma2: float) -> None:
    """Write (W̃, b̃, σ²) into the module, W̃ rotated onto its current loadings (Procrustes)."""
    import torch

    with torch.no_grad():
        old = module.loadings.double()
        u, _, vt = torch.linalg.svd(W.T @ old)
        W = W @ (u @ vt)
        module.loadings_raw.copy_(W.to(module.loadings_raw.dtype))
        module.bias_raw.copy_(b.to(module.bias_raw.dtype))
        module.log_sigma.fill_(0.5 * np.log(sigma2))


def _nelbo(module, posts, chunks) -> float:
    """Mean −ELBO of the chunks' posteriors under the module's decoder (16 fixed draws)."""
    import torch

    from mvae.training.refine import dense_loss_terms, frozen_prior

    prior = frozen_prior(module)
    eps = torch.randn((16, 1, posts[0].mean.shape[1]), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return float(np.mean(np.concatenate([
            dense_loss_terms(p.mean, p.log_var, prior, b.counts, eps, b.log_const)
            .negative_elbo().numpy() for p, b in zip(posts, chunks)])))


def polish(model, counts, iterations: int, steps: int, learning_rate: float, emit=None,
           mode: str = "full"):
    """Run the polish on ``counts`` (the training table, CSR), returning σ² per iteration."""
    import torch

    from mvae.model import _dense_batch
    from mvae.training.polish import variance_m_step
    from mvae.training.refine import refine_posterior

    module = model.module_
    M, _ = model._aligned(counts, None, warn=False)
    chunks = [_dense_batch(c) for c in model._batches(M, copies=16)]
    posts = [None] * len(chunks)
    k = module.config.n_latent
    for it in range(iterations + 1):
        t0 = time.process_time()
        for c, batch in enumerate(chunks):
            gen = torch.Generator().manual_seed(1000 * it + c)
            posts[c] = refine_posterior(module, batch, generator=gen, start=posts[c],
                                        **({} if posts[c] is None else
                                           {"steps": steps, "learning_rate": learning_rate}))
        nelbo = _nelbo(module, posts, chunks)
        s2_before = float(module.noise_variance.detach())
        if it == iterations:
            if emit is not None:
                emit(it, s2_before, nelbo, float("nan"), time.process_time() - t0)
            break
        means, log_vars = torch.cat([p.mean for p in posts]), torch.cat([p.log_var for p in posts])
        if mode == "full":
            W, b, s2 = ppca_m_step(means, log_vars, k)
        elif mode == "scales":  # the package's M-step (mvae.training.polish)
            W, s2 = variance_m_step([(means, log_vars)], module.loadings.detach(),
                                    module.bias.detach())
            b = module.bias.detach().double()
        else:
            W, b, s2 = sigma_m_step(means, log_vars, module.loadings.detach(), module.bias.detach())
        set_decoder(module, W, b, s2)
        if emit is not None:
            emit(it, s2_before, nelbo, _nelbo(module, posts, chunks), time.process_time() - t0)
    model._set_ordered_form()


def recovery(model, sim) -> str:
    """Σ_clr relative Frobenius error, correlation Spearman and RMSE against the truth."""
    from mvae.evaluation.metrics import correlation_agreement, relative_frobenius
    from mvae.maths.covariance import LowRankCovariance

    kept = np.asarray(model.kept_feature_index_)
    Wt = sim.loadings_clr[kept] - sim.loadings_clr[kept].mean(axis=0)
    true = LowRankCovariance(Wt, sim.sigma**2, space="clr")
    est = LowRankCovariance(model.components_, model.noise_variance_, space="clr")
    agree = correlation_agreement(est.correlation_dense(), true.correlation_dense())
    return (f"frob={relative_frobenius(est, true.dense()):.4f};spearman={agree.spearman:.4f};"
            f"rmse={agree.rmse:.4f}")


def run(depth: int, seed: int, iterations: int, steps: int, learning_rate: float, emit,
        mode: str = "full") -> None:
    import mvae
    from mvae.evaluation.simulate import simulate

    sim = simulate(1000, 200, 10, depth=depth, random_state=seed)
    model = mvae.MultinomialVAE(n_latent=10, random_state=seed, threads=1, progress=False)
    t0 = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(sim.counts)
    fit_cpu = time.process_time() - t0
    held = set(model.validation_samples_)
    ids = [f"sample{i}" for i in range(sim.counts.shape[0])]  # the model's names for CSR rows
    train = [i for i, s in enumerate(ids) if s not in held]
    valid = [i for i, s in enumerate(ids) if s in held]
    before = float(np.mean(model.score_samples(sim.counts[valid])))

    def row(it, s2, nelbo, nelbo_m, cpu):
        emit({"depth": depth, "seed": seed, "iteration": it, "sigma2_hat": s2,
              "sigma_rel_err": float(np.sqrt(s2) / sim.sigma - 1.0), "train_nelbo": nelbo, "after_m_step": nelbo_m,
              "cpu_s": round(cpu, 2), "fit_cpu_s": round(fit_cpu, 1),
              "steps": steps, "learning_rate": learning_rate})
    truth = recovery(model, sim)
    polish(model, sim.counts[train], iterations, steps, learning_rate, row, mode)
    after = recovery(model, sim)
    emit({"depth": depth, "seed": seed, "iteration": "recovery", "sigma2_hat": truth,
          "sigma_rel_err": after, "train_nelbo": "", "after_m_step": "", "cpu_s": "",
          "fit_cpu_s": "", "steps": steps, "learning_rate": learning_rate, "mode": mode})
    emit({"depth": depth, "seed": seed, "iteration": "validation", "sigma2_hat": before,
          "sigma_rel_err": float(np.mean(model.score_samples(sim.counts[valid]))),
          "train_nelbo": "", "after_m_step": "", "cpu_s": "", "fit_cpu_s": "", "steps": steps,
          "learning_rate": learning_rate, "mode": mode})


def run_table(name: str, seed: int, emit) -> None:
    """A shipped table with the package's own polish: a default fit on a seeded 80 %, the other
    20 % scored (refined posteriors) with the polished decoder and with the decoder training left
    (saved by a wrapper around the fit's polish), and the polish's CPU seconds."""
    import torch

    import mvae
    import mvae.model as model_module

    try:
        from benchmarks.refine import split
    except ImportError:
        from refine import split
    adata = mvae.read_counts(Path(__file__).resolve().parents[1] / TABLES[name])
    train, held = split(adata.n_obs, seed)
    saved, original = {}, model_module._polish

    def timed(module, *args, **kwargs):
        saved["state"] = (module.loadings_raw.detach().clone(), module.log_sigma.detach().clone())
        t0 = time.process_time()
        out = original(module, *args, **kwargs)
        saved["cpu"] = time.process_time() - t0
        return out

    model = mvae.MultinomialVAE(random_state=seed, threads=1, progress=False)
    model_module._polish = timed
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.process_time()
            model.fit(adata[train].copy())
            fit_cpu = time.process_time() - t0
    finally:
        model_module._polish = original
    after = float(np.mean(model.score_samples(adata[held].copy())))
    polished = model.noise_variance_
    with torch.no_grad():
        model.module_.loadings_raw.copy_(saved["state"][0])
        model.module_.log_sigma.copy_(saved["state"][1])
    model._set_ordered_form()
    before = float(np.mean(model.score_samples(adata[held].copy())))
    p = model.polish_
    emit({"table": name, "seed": seed, "heldout_trained": round(before, 2),
          "heldout_polished": round(after, 2),
          "change_pct": round(100 * (after - before) / before, 2), "kept": p["kept"],
          "sigma2_trained": round(p["sigma2"][0], 5), "sigma2_polished": round(polished, 5),
          "validation_trained": round(p["scores"][0], 2),
          "validation_kept": round(p["scores"][p["kept"]], 2),
          "polish_cpu_s": round(saved["cpu"], 2), "fit_cpu_s": round(fit_cpu, 1),
          "polish_samples": p["samples"], "n_features": len(model.feature_ids_)})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", type=int, nargs="+", default=[10000, 100])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--learning-rate", type=float, default=0.003)
    p.add_argument("--tables", nargs="*", default=None,
                   help="shipped tables instead of simulations (held-out −ELBO before/after)")
    p.add_argument("--mode", choices=["full", "scales", "sigma"], default="full")
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = TsvRows(a.output)
    for name in a.tables or []:
        for seed in a.seeds:
            run_table(name, seed, out.append)
    for depth in ([] if a.tables else a.depths):
        for seed in a.seeds:
            run(depth, seed, a.iterations, a.steps, a.learning_rate, out.append, a.mode)


if __name__ == "__main__":
    main()
