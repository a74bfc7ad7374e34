"""What early stopping should watch (issue 18, item 2).

For each shipped table and seed: a seeded 80/20 outer split (``benchmarks/refine.py``'s), a fit on
the 80 % under each variant, and the outer 20 % scored with ``score_samples`` defaults (refined
posteriors, so the number judges the decoder the fit restored, not its encoder). Variants:

- ``encoder``: the validation −ELBO under the encoder's posterior (before this change), 10 % split;
- ``refined`` (the package's default): validation posteriors refined 5 Adam steps per epoch,
  warm-started across epochs (:class:`mvae.training.selection.RefinedValidation`), 10 % split;
- encoder settings (issue 18, item 3), each with the default selection: ``dropout0.1``,
  ``dropout0.3`` (dropout in the encoder's hidden layers), ``hidden32`` (32 hidden units instead
  of 128), ``depth1`` (one hidden layer instead of two):

      python benchmarks/selection.py --variants refined dropout0.1 dropout0.3 hidden32 depth1 \
          -o benchmarks/results/selection/encoder_settings.tsv

(A floor of min(20, n // 4) validation samples on small tables was measured on moving pictures
and not adopted: ``benchmarks/results/selection/README.md``.)

Also recorded: the restored epoch, epochs run, CPU seconds of the fit (one torch thread), and
each fit's per-epoch history (``histories/``).

    python benchmarks/selection.py --seeds 0 1 2 -o benchmarks/results/selection/selection.tsv
    python benchmarks/selection.py --stopping benchmarks/results/selection/histories \
        -o benchmarks/results/selection/stopping.tsv

The second command replays the refined-validation histories under convergence rules: stop at the
first epoch after which ``window`` epochs passed without the validation score improving on its
reference by more than ``tolerance`` (relative), restore the lowest score so far; it reports the
epochs run and how far the restored score is from the full run's best (%). With the package's
patience (300 optimiser steps: 100 epochs on Wirbel and PBMC, 300 on moving pictures) as the window.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings
from pathlib import Path

try:
    from benchmarks.refine import split
    from benchmarks.shipped import TABLES, TsvRows
except ImportError:  # run as a script: benchmarks/ itself is on the path
    from refine import split
    from shipped import TABLES, TsvRows

#: Encoder settings compared by the same held-out score (issue 18, item 3: encoder
#: regularisation for small tables); every other setting at its default, selection ``refined``.
SETTINGS = {"dropout0.1": {"dropout": 0.1}, "dropout0.3": {"dropout": 0.3},
            "hidden32": {"n_hidden": 32}, "depth1": {"encoder_depth": 1}}
VARIANTS = ("encoder", "refined", *SETTINGS)


@contextlib.contextmanager
def variant(name: str):
    """Patch the package into ``name`` for the duration (the default needs no patch)."""
    import mvae.training.selection as selection

    saved = selection.RefinedValidation
    if name == "encoder":
        selection.RefinedValidation = lambda *args, **kwargs: None  # -> loop.evaluate
    try:
        yield
    finally:
        selection.RefinedValidation = saved


def fit_one(adata, seed: int, name: str, history_path=None) -> dict:
    import mvae

    train, held = split(adata.n_obs, seed)
    model = mvae.MultinomialVAE(random_state=seed, threads=1, progress=False,
                                **SETTINGS.get(name, {}))
    with variant(name), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.process_time()
        model.fit(adata[train].copy())
        cpu = time.process_time() - t0
    if history_path is not None:  # per-epoch losses, for the stopping rules (benchmarks/stopping.py)
        Path(history_path).parent.mkdir(parents=True, exist_ok=True)
        model.history_.to_csv(history_path, sep="\t", index=False)
    scores = model.score_samples(adata[held].copy())
    train_scores = model.score_samples(adata[train].copy())
    return {"n_validation": len(model.validation_samples_), "best_epoch": int(model.best_epoch_),
            "epochs": int(model.history_["epoch"].max()), "fit_cpu_s": round(cpu, 1),
            "heldout_nelbo": round(float(scores.mean()), 2),
            "train_nelbo": round(float(train_scores.mean()), 2)}


def replay(scores, window: int, tolerance: float) -> int:
    """Epochs a fit with validation ``scores`` (per epoch) runs under the rule of
    :func:`mvae.training.loop.train_module` with ``patience=window``, ``min_delta=tolerance``."""
    reference, since = float("inf"), 0
    for epoch, v in enumerate(scores, 1):
        if v < reference - tolerance * (abs(reference) if reference != float("inf") else 1):
            reference, since = v, 0
        else:
            since += 1
            if since >= window:
                return epoch
    return len(scores)


def stopping(histories: Path, output) -> None:
    import pandas as pd

    out = TsvRows(output)
    for path in sorted(Path(histories).glob("*_refined.tsv")):
        table, seed = path.name.rsplit("_", 2)[:2]
        scores = pd.read_csv(path, sep="\t")["validation_loss"].to_numpy()
        # optimiser steps per epoch of these splits (the 80 % less the fit's 10 % validation, batch 128)
        steps = {"moving_pictures": 1, "ecam": 4}.get(table, 3)
        best = scores.min()
        for window in (300 // steps // 2, 300 // steps):
            for tol in (0.0, 1e-4, 3e-4, 1e-3, 3e-3):
                stop = replay(scores, window, tol)
                within = int((scores <= best * 1.01).argmax()) + 1
                row = {"table": table, "seed": seed, "window": window, "tolerance": tol,
                       "epochs": stop, "full_run_epochs": len(scores),
                       "first_within_1pct": within,
                       "restored_vs_best_pct": round(100 * (scores[:stop].min() - best) / best, 3)}
                out.append(row)
                print("\t".join(str(v) for v in row.values()), flush=True)
    out.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--stopping", type=Path, metavar="HISTORIES",
                        help="replay the histories under stopping rules instead of fitting")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    if args.stopping is not None:
        return stopping(args.stopping, args.output)
    import torch

    import mvae

    torch.set_num_threads(1)
    out = TsvRows(args.output)
    for table in args.tables:
        adata = mvae.read_counts(TABLES[table])
        for seed in args.seeds:
            for name in args.variants:
                history = Path(args.output).parent / "histories" / f"{table}_{seed}_{name}.tsv"
                row = {"table": table, "seed": seed, "variant": name,
                       **fit_one(adata, seed, name, history)}
                out.append(row)
                print("\t".join(str(v) for v in row.values()), flush=True)
    out.close()
    print(f"mvae from {mvae.__file__}")


if __name__ == "__main__":
    main()
