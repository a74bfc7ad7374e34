"""Where a short default fit spends its CPU time outside the optimiser's steps.

A fresh process fits ``MultinomialVAE(random_state=0, threads=1, max_epochs=3)`` to a simulated
5,000 x 2,000 dense table (``throughput.py``'s) under cProfile and reports the CPU seconds of the
whole fit and the cumulative time of its parts: the table scan, the input statistics, the PCA
start, torch's import, the optimiser's construction (which imports ``torch._dynamo``) and the
training epochs. ``--full-svd`` starts from the full SVD the PCA start used before (for the
comparison in results/fixed_costs/README.md).

    python benchmarks/fixed_costs.py [--full-svd]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PARTS = {  # label -> (file suffix, function name) in the profile
    "scan": ("mvae/io/sources.py", "scan"),  # the outermost call of each name is taken
    "input statistics": ("mvae/io/sources.py", "input_statistics"),
    "PCA start": ("mvae/model.py", "_pca_initialise"),
    "optimiser (imports torch._dynamo)": ("torch/optim/optimizer.py", "__init__"),
    "training loop (epochs)": ("mvae/training/loop.py", "train_module"),
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full-svd", action="store_true")
    args = p.parse_args(argv)
    from throughput import make_counts

    X = make_counts(5000, 2000, None)
    import mvae
    import mvae.model

    if args.full_svd:
        from mvae.maths import pca

        original = pca.clr_pca
        mvae.model_clr_pca = original
        pca.clr_pca = lambda X, k, pseudocount=1.0, top_only=False: original(X, k, pseudocount)
    model = mvae.MultinomialVAE(random_state=0, threads=1, max_epochs=3)
    profile = cProfile.Profile()
    t0 = time.process_time()
    t_import = time.process_time()
    import torch  # noqa: F401  (timed: the fit would import it)
    t_import = time.process_time() - t_import
    profile.enable()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X)
    profile.disable()
    total = time.process_time() - t0
    stats = pstats.Stats(profile).stats
    row = {"full_svd": args.full_svd, "fit_cpu_s": round(total, 2),
           "torch import": round(t_import, 2)}
    for label, (suffix, name) in PARTS.items():
        row[label] = round(max((v[3] for (f, _, fn), v in stats.items()
                                if f.endswith(suffix) and fn == name), default=0.0), 2)
    row["outside the epochs"] = round(total - row["training loop (epochs)"]
                                      + row["optimiser (imports torch._dynamo)"], 2)
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
