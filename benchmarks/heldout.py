"""Held-out −ELBO of default fits on the shipped tables, several seeds: a before/after check for
changes that must not move the model (refactors), through the public API only.

Each seed fits ``MultinomialVAE(random_state=seed)`` with every other setting at its default; the
fit's own validation split (``validation_fraction``, seeded) is the held-out set. Reported per fit:
the restored (best) epoch, epochs run, the validation −ELBO at the restored epoch (mean nats per
sample, the fit's own estimate), the training −ELBO there, and CPU seconds (one torch thread).

    python benchmarks/heldout.py --seeds 0 1 2 -o benchmarks/results/consolidation/after.tsv

Run it with ``PYTHONPATH`` pointing at another checkout to measure that code with the same script.
"""

from __future__ import annotations

import argparse
import time
import warnings

try:
    from benchmarks.shipped import TABLES, TsvRows
except ImportError:  # run as a script: benchmarks/ itself is on the path
    from shipped import TABLES, TsvRows


def fit_one(path: str, seed: int) -> dict:
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
    return {"best_epoch": best, "epochs": int(h["epoch"].max()),
            "validation_nelbo": float(row["validation_loss"]),
            "train_nelbo": float(row["train_loss"]), "cpu_s": round(cpu, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    import mvae

    out = TsvRows(args.output)
    for name in args.tables:
        for seed in args.seeds:
            row = {"table": name, "seed": seed, **fit_one(TABLES[name], seed)}
            out.append(row)
            print("\t".join(str(v) for v in row.values()), flush=True)
    out.close()
    print(f"mvae from {mvae.__file__}")


if __name__ == "__main__":
    main()
