"""Accuracy of the posterior parametrisations of the ``marginal`` objective.

Usage::

    python benchmarks/posteriors.py -o benchmarks/results/posteriors [--jobs 2]

``full`` (H → D heads for mean and variance), ``hybrid`` (the H → D mean head; the variance is
a per-sample scalar plus per-feature terms), ``lowrank`` (mean through W̃), ``factored`` (mean
through a (D, r) factor of its own, the ``hybrid`` variance), ``factored+bound`` (the same
with the Jensen bound in place of Monte Carlo draws) and ``factored+mixed`` (draws at the
non-zero counts, the bound over the zeros) and ``factored-r16`` (``factored`` with a
rank-16 mean factor instead of 32) are fitted with otherwise default settings
(one torch thread each) to

- simulations ``simulate(1000, 200, 10)`` in three sparsity regimes (10,000 reads, spread 0.5;
  100 reads, spread 1; 50 reads, spread 2) and ``simulate(1000, 2000, 10)`` kept sparse (100
  reads, spread 2: 3.4% non-zero), seeds 0-2, scored against the truth with
  ``mvae.evaluation.metrics`` (subspace distance, relative Frobenius error of Σ_clr, Spearman of the
  off-diagonal clr correlations, R² of the embeddings);
- the real tables in ``data/`` (moving pictures 16S, Wirbel CRC shotgun, PBMC 68k reduced,
  ECAM 16S, the one sparse enough to be kept sparse),
  scored by the validation −ELBO at the best epoch (the 10% of samples held out for early
  stopping), with the training −ELBO beside it.

Writes ``posteriors.csv`` (one row per fit) and ``posteriors.md`` (means over seeds) into the
output directory. Speed is measured separately by ``benchmarks/throughput.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# (posterior, reconstruction) pairs (docs/model.md §4-5)
VARIANTS = {"full": ("full", "mc"), "hybrid": ("hybrid", "mc"), "lowrank": ("lowrank", "mc"),
            "factored": ("factored", "mc"), "factored+bound": ("factored", "bound"),
            "factored+mixed": ("factored", "mixed"), "factored-r16": ("factored", "mc", 16)}
# regime -> (features, reads per sample, abundance spread); "sparse" is kept sparse (3.4% density)
REGIMES = {"deep": (200, 10_000, 0.5), "moderate": (200, 100, 1.0), "high": (200, 50, 2.0),
           "sparse": (2_000, 100, 2.0)}
SEEDS = (0, 1, 2)
TABLES = ("moving_pictures_16s_table.biom", "wirbel_crc_shotgun_motus_table.biom",
          "pbmc68k_reduced_counts.h5ad", "ecam_16s_table.biom")  # the last one sparse (1.9%)
DATA = Path(__file__).resolve().parent.parent / "data"
K = 10


def run_one(task: dict) -> dict:
    """Fit one (posterior, table) pair and return its row."""
    import warnings

    import numpy as np
    import torch

    from mvae import MultinomialVAE

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    posterior, reconstruction, *rank = VARIANTS[task["posterior"]]
    model = MultinomialVAE(n_latent=K, random_state=0, threads=1, posterior=posterior,
                           reconstruction=reconstruction, posterior_rank=rank[0] if rank else 32)
    row = dict(task)
    if task["kind"] == "simulation":
        from mvae.covariance import LowRankCovariance
        from mvae.evaluation.metrics import (correlation_agreement, embedding_r2, relative_frobenius,
                                  subspace_distance)
        from mvae.evaluation.simulate import simulate

        n_features, depth, spread = REGIMES[task["table"]]
        sim = simulate(1000, n_features, K, depth=depth, abundance_spread=spread,
                       random_state=task["seed"])
        c0 = time.process_time()
        model.fit(sim.counts)
        row["fit_cpu_s"] = time.process_time() - c0
        kept = np.asarray(sim.counts.sum(axis=0)).ravel() > 0
        loadings = np.zeros((sim.counts.shape[1], K))
        loadings[kept] = model.components_  # all-zero features carry no loading
        est = LowRankCovariance(loadings, model.noise_variance_, space="clr")
        row.update(
            subspace=subspace_distance(sim.loadings_clr, loadings),
            cov_rel_frobenius=relative_frobenius(est.dense(), sim.covariance_clr()),
            corr_spearman=correlation_agreement(est.correlation_dense(),
                                                sim.correlation_clr()).spearman,
            embedding_r2=embedding_r2(sim.z, model.transform(sim.counts)))
    else:
        from mvae.io import read_counts

        adata = read_counts(DATA / task["table"])
        c0 = time.process_time()
        model.fit(adata)
        row["fit_cpu_s"] = time.process_time() - c0
    if task["kind"] == "real":  # the held-out −ELBO by Monte Carlo for every variant alike
        held_out = adata[model.validation_samples_]
        row["valid_nelbo_mc"] = float(np.mean(model.score_samples(held_out)))
    h, best = model.history_, model.best_epoch_ - 1
    row.update(train_nelbo=float(h.train_loss.iloc[best]),
               valid_nelbo=float(h.validation_loss.iloc[best]), epochs=len(h))
    return row


def _markdown(frame) -> str:
    """A pipe table of a DataFrame with a (multi-)index, without the tabulate package."""
    names = [str(n) for n in frame.index.names] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for idx, row in frame.iterrows():
        idx = idx if isinstance(idx, tuple) else (idx,)
        lines.append("| " + " | ".join([str(i) for i in idx] + [f"{v:g}" for v in row]) + " |")
    return "\n".join(lines)


def tasks(variants=None, tables=None) -> list[dict]:
    """Every (table or regime, seed, variant), or those of the named variants and tables."""
    variants = list(variants or VARIANTS)
    out = [dict(kind="simulation", table=r, seed=s, posterior=p)
           for r in REGIMES for s in SEEDS for p in variants]
    out += [dict(kind="real", table=t, seed=0, posterior=p) for t in TABLES for p in variants]
    return [t for t in out if not tables or t["table"] in tables]


def main(out_dir, jobs: int = 1, only=None, tables=None):
    """Run every variant and table, or with ``only`` / ``tables`` just those, keeping the other
    rows of an existing ``posteriors.csv`` (the table is then written from all of them)."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo = tasks(only, tables)
    if jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs) as pool:
            rows = []
            for row in pool.imap_unordered(run_one, todo):
                rows.append(row)
                print(json.dumps(row), flush=True)
    else:
        rows = []
        for t in todo:
            rows.append(run_one(t))
            print(json.dumps(rows[-1]), flush=True)
    df = pd.DataFrame(rows)
    if (only or tables) and (out / "posteriors.csv").is_file():
        kept = pd.read_csv(out / "posteriors.csv")
        key = ["kind", "table", "seed", "posterior"]
        rerun = kept.set_index(key).index.isin(df.set_index(key).index)
        df = pd.concat([kept[~rerun], df], ignore_index=True)
    df.to_csv(out / "posteriors.csv", index=False)
    sims = df[df.kind == "simulation"]
    metrics = ["subspace", "cov_rel_frobenius", "corr_spearman", "embedding_r2", "valid_nelbo",
               "fit_cpu_s"]
    mean = sims.groupby(["table", "posterior"], sort=False)[metrics].mean()
    real = df[df.kind == "real"].set_index(["table", "posterior"])[
        ["train_nelbo", "valid_nelbo", "valid_nelbo_mc", "epochs", "fit_cpu_s"]]
    lines = ["# Posterior parametrisations of the marginal objective", "",
             "Command: `python benchmarks/posteriors.py -o benchmarks/results/posteriors --jobs 2`",
             "", "## Simulations: means over seeds 0-2 (`simulate(1000, D, 10)`, D = 200, "
             "or 2,000 in the sparse regime)", "",
             _markdown(mean.round(4)), "", "## Real tables (−ELBO, nats/sample, at the best epoch)",
             "", _markdown(real.round(1)), ""]
    (out / "posteriors.md").write_text("\n".join(lines))
    return df


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--out-dir", default="benchmarks/results/posteriors")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--only", nargs="+", choices=list(VARIANTS), default=None,
                   help="run just these variants; the other rows of posteriors.csv are kept")
    p.add_argument("--tables", nargs="+", choices=[*REGIMES, *TABLES], default=None,
                   help="run just these regimes and tables; the other rows are kept")
    a = p.parse_args()
    main(a.out_dir, a.jobs, a.only, a.tables)
    sys.exit(0)
