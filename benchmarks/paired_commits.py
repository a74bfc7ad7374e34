"""Training-step time of the default model in two checkouts of mvae, in alternating processes.

``paired_steps.py`` compares configurations inside one process; code that has moved between
modules cannot be imported twice into one process, so this script runs each checkout in its own
short-lived process (``PYTHONPATH`` set to the checkout) and alternates them, round by round, in
an order reversed every round, so that a slow minute of the shared machine touches both. Each
process builds the default module (k = 10, H = 128, depth 2, batch 128) on the table of
``throughput.py``'s case, warms up, then times ``--steps`` training steps (forward, backward, Adam)
in CPU seconds on one torch thread. Reported per case: the median over rounds of the ratio
(second checkout / first) of the CPU time per step, with its range.

    python benchmarks/paired_commits.py OLD_CHECKOUT NEW_CHECKOUT --features 2000 20000 100000 \\
        -o benchmarks/results/consolidation/paired_steps.tsv
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

try:
    from benchmarks.shipped import TsvRows
except ImportError:  # run as a script: benchmarks/ itself is on the path
    from shipped import TsvRows

CHILD = r"""
import json, sys, time
import numpy as np
import torch
sys.path.insert(1, {bench!r})
from throughput import BATCH, HIDDEN, K, make_counts
torch.set_num_threads(1)
import mvae
try:  # the layout after the consolidation
    from mvae.counts import MultinomialVAEModule, MVAEConfig
    from mvae.io.sources import InMemoryCounts
    from mvae.training.batches import CountData
    def input_statistics(X, c):
        return InMemoryCounts(X, range(X.shape[0]), range(X.shape[1])).input_statistics(c)
except ImportError:  # mvae 0.1.0
    from mvae.modules import MultinomialVAEModule, MVAEConfig
    from mvae.data import CountData
    from mvae.model import _input_statistics as input_statistics
D, density, n, steps = {D}, {density}, {n}, {steps}
X = make_counts(n, D, density)
torch.manual_seed(0)
module = MultinomialVAEModule(MVAEConfig(n_features=D, n_latent=K, n_hidden=HIDDEN, encoder_depth=2))
pooled, centre, scale = input_statistics(X, 1.0)
module.initialise_from_data(torch.as_tensor(pooled, dtype=torch.float32),
                            torch.as_tensor(centre, dtype=torch.float32), scale)
module.train()
data = CountData(X, "cpu")
opt = torch.optim.Adam(module.parameters(), lr=3e-3)
gen = torch.Generator().manual_seed(0)
order = torch.randperm(n, generator=gen)
def step(i):
    idx = order[(i * BATCH) % (n - BATCH):][:BATCH]
    loss = module.loss(data.batch(idx), generator=gen).negative_elbo().mean()
    opt.zero_grad(); loss.backward(); opt.step()
for i in range(3):
    step(i)
t = time.process_time()
for i in range(steps):
    step(i)
print(json.dumps(dict(ms_per_step=1000 * (time.process_time() - t) / steps, mvae=mvae.__file__)))
"""


#: glibc's allocator settings that mvae 0.1.0's training loop made with mallopt (and 0.2.0 no
#: longer makes): applied through the environment to both checkouts by --malloc-env, so that a
#: comparison can separate that setting from the rest of a change
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**30),
              "MALLOC_MMAP_MAX_": "0"}


def child(checkout: str, case, steps: int, malloc_env: bool = False) -> dict:
    D, density, n = case
    code = CHILD.format(bench=str(HERE), D=D, density=density, n=n, steps=steps)
    env = dict(os.environ, PYTHONPATH=str(Path(checkout).resolve()), OMP_NUM_THREADS="1",
               **(MALLOC_ENV if malloc_env else {}))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=checkout)
    if out.returncode != 0:
        raise SystemExit(f"{checkout} at D={D} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


CASES = {2_000: (2_000, None, 2048), 20_000: (20_000, 0.02, 2048), 100_000: (100_000, 0.01, 1024)}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("--features", type=int, nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--malloc-env", action="store_true",
                   help="apply glibc's allocator settings (MALLOC_ENV) to both checkouts")
    p.add_argument("-o", "--output")
    args = p.parse_args(argv)
    rows = []
    for D in args.features:
        ratios, times = [], {args.first: [], args.second: []}
        for r in range(args.rounds):
            order = [args.first, args.second] if r % 2 == 0 else [args.second, args.first]
            got = {c: child(c, CASES[D], args.steps, args.malloc_env)["ms_per_step"]
                   for c in order}
            for c in order:
                times[c].append(got[c])
            ratios.append(got[args.second] / got[args.first])
            print(f"D={D} round {r}: {got[args.first]:.1f} / {got[args.second]:.1f} ms "
                  f"(ratio {ratios[-1]:.3f})", flush=True)
        rows.append(dict(D=D, first_ms=statistics.median(times[args.first]),
                         second_ms=statistics.median(times[args.second]),
                         ratio=statistics.median(ratios), ratio_min=min(ratios),
                         ratio_max=max(ratios), rounds=args.rounds, steps=args.steps,
                         malloc_env=args.malloc_env))
        print(json.dumps(rows[-1]), flush=True)
    out = TsvRows(args.output, "{:.4g}")
    for row in rows:
        out.append(row)
    out.close()
    return rows


if __name__ == "__main__":
    main()
