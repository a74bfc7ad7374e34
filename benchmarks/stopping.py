"""When should the automatic budget stop? Default fits of the shipped tables with a relative
improvement threshold for early stopping (``min_delta``), several seeds.

For each fit: the epochs run, the restored (best) epoch, the epochs to come within 1 % of the
best validation −ELBO, the validation −ELBO at the restored epoch and the fit's CPU seconds.

    python benchmarks/stopping.py --min-delta 0 0.001 0.003 -o benchmarks/results/stopping/stopping.tsv
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

try:
    from benchmarks.shipped import TABLES, TsvRows
except ImportError:  # run as a script: benchmarks/ itself is on the path
    from shipped import TABLES, TsvRows

CHILD = r"""
import dataclasses, json, sys, time, warnings
import numpy as np
import mvae
import mvae.training.loop as loop
min_delta, seed = float(sys.argv[2]), int(sys.argv[3])
original = loop.train_module
def with_threshold(module, train, valid, config, **kw):
    return original(module, train, valid, dataclasses.replace(config, min_delta=min_delta), **kw)
loop.train_module = with_threshold
adata = mvae.read_counts(sys.argv[1])
t = time.process_time()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model = mvae.MultinomialVAE(random_state=seed, threads=1).fit(adata)
cpu = time.process_time() - t
h = model.history_
v = h.validation_loss.to_numpy()
best = int(model.best_epoch_)
within = int(h.epoch.to_numpy()[np.flatnonzero(v <= v[best - 1] * 1.01)[0]])
print(json.dumps(dict(epochs=int(h.epoch.max()), best_epoch=best, within_1pct=within,
                      validation_nelbo=float(v[best - 1]), cpu_s=round(cpu, 1))))
"""


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--min-delta", type=float, nargs="+", default=[0.0, 0.001])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    p.add_argument("-o", "--output")
    args = p.parse_args(argv)
    rows, out_file = [], TsvRows(args.output)
    for name in args.tables:
        for seed in args.seeds:
            for md in args.min_delta:
                r = subprocess.run([sys.executable, "-c", CHILD, TABLES[name], str(md), str(seed)],
                                   capture_output=True, text=True, check=True)
                row = {"table": name, "seed": seed, "min_delta": md,
                       **json.loads(r.stdout.strip().splitlines()[-1])}
                rows.append(row)
                out_file.append(row)
                print(json.dumps(row), flush=True)
    out_file.close()
    return rows


if __name__ == "__main__":
    main()
