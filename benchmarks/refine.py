"""How many refinement steps, at what step size: the curves behind ``mvae.training.refine``.

For each shipped table and seed: a seeded 80/20 split of the samples, a default fit on the 80 %
(``MultinomialVAE(random_state=seed, threads=1)``), then each sample's posterior refined from the
encoder's output with the decoder frozen (:func:`mvae.training.refine.refine_posterior`) at several
step sizes: Adam at a constant 0.03 for 400 steps, recorded along the way (the reference for
"converged"), and the package's cosine-decayed schedule at several initial step sizes and numbers
of steps. The mean −ELBO per sample (nats; 16 draws with noise fixed by the seed, the same draws
for every run) is recorded for the held-out 20 % and for the training 80 %, so the rows show how
much of the train/held-out gap each choice closes, with CPU milliseconds per sample (one thread).

    python benchmarks/refine.py --tables wirbel moving_pictures pbmc --seeds 0 1 2 \\
        -o benchmarks/results/refine/curves.tsv
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

STEPS = (0, 10, 25, 50, 100, 150, 200, 300, 400)
#: (initial step size, steps) of the cosine-decayed runs; a constant step size of 0.03 over 400
#: steps, recorded along the way, is the reference for "converged".
COSINE = [(lr, steps) for lr in (0.1, 0.2) for steps in (25, 50, 100, 200)]


def split(n: int, seed: int, fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) row indices of a seeded split, held-out about ``fraction`` of n."""
    perm = np.random.default_rng(seed).permutation(n)
    n_out = max(1, int(round(fraction * n)))
    return np.sort(perm[n_out:]), np.sort(perm[:n_out])


def _refine_constant(module, batch, start, lr, steps, generator, on_step):
    """The reference: Adam at a constant step size (the package's refinement decays it)."""
    import torch

    from mvae.training.optim import Adam
    from mvae.training.refine import dense_loss_terms

    with torch.no_grad():
        prior = module.prior()
    mean = start.mean.clone().requires_grad_(True)
    log_var = start.log_var.clone().requires_grad_(True)
    optimiser = Adam([mean, log_var], lr=lr)
    for step in range(steps):
        eps = torch.randn((1, *mean.shape), generator=generator)
        loss = dense_loss_terms(mean, log_var, prior, batch.counts, eps,
                                batch.log_const).negative_elbo().sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        on_step(step + 1, mean.detach(), log_var.detach())


def curves(model, M, seed: int, emit) -> None:
    import torch

    from mvae.training.refine import dense_loss_terms, refine_posterior
    from mvae.training.batches import CountBatch, CountData

    module = model.module_
    batch = CountData(M, "cpu").batch(torch.arange(M.shape[0]))
    counts = batch.counts.to_dense() if batch.counts.is_sparse else batch.counts
    dense = CountBatch(counts, batch.log_const)
    with torch.no_grad():
        prior = module.prior()
        eps = torch.randn((16, *counts.shape), generator=torch.Generator().manual_seed(seed + 11),
                          dtype=torch.float32)

    def score(mean, log_var) -> float:  # 16 draws, the same at every call
        with torch.no_grad():
            return float(dense_loss_terms(mean, log_var, prior, counts, eps.to(mean.dtype),
                                          batch.log_const).negative_elbo().mean())
    with torch.no_grad():
        start = module.encode(dense)
    record = {0: score(start.mean, start.log_var)}

    def on_step(step, mean, log_var):
        if step in STEPS:
            record[step] = score(mean, log_var)
    t0 = time.process_time()
    _refine_constant(module, dense, start, 0.03, max(STEPS),
                     torch.Generator().manual_seed(seed + 5), on_step)
    cpu = time.process_time() - t0  # includes the scoring at the recorded steps
    for step in STEPS:
        emit({"schedule": "constant", "learning_rate": 0.03, "steps": step,
              "nelbo": round(record[step], 3), "cpu_ms_per_sample": ""})
    for lr, steps in COSINE:
        t0 = time.process_time()
        post = refine_posterior(module, dense, steps=steps, learning_rate=lr, start=start,
                                generator=torch.Generator().manual_seed(seed + 5))
        cpu = time.process_time() - t0
        emit({"schedule": "cosine", "learning_rate": lr, "steps": steps,
              "nelbo": round(score(post.mean, post.log_var), 3),
              "cpu_ms_per_sample": round(1e3 * cpu / M.shape[0], 3)})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tables", nargs="+", default=["wirbel", "moving_pictures", "pbmc"],
                        choices=list(TABLES))
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    import torch

    import mvae

    torch.set_num_threads(1)
    out = TsvRows(args.output)
    for name in args.tables:
        adata = mvae.read_counts(TABLES[name])
        for seed in args.seeds:
            train, held = split(adata.n_obs, seed)
            model = mvae.MultinomialVAE(random_state=seed, threads=1, progress=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(adata[train].copy())
            for label, idx in (("held_out", held), ("train", train)):
                M, _ = model._aligned(adata[idx].copy(), None, warn=False)

                def emit(row, label=label, n=len(idx)):
                    row = {"table": name, "seed": seed, "samples": label, "n": n, **row}
                    out.append(row)
                    print("\t".join(str(v) for v in row.values()), flush=True)
                curves(model, M, seed, emit)
    out.close()
    print(f"mvae from {mvae.__file__}")


if __name__ == "__main__":
    main()
