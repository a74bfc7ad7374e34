"""Where a short default fit spends its CPU time outside the optimiser's steps.

Each run is a fresh interpreter (one thread for torch and BLAS) that times ``import torch`` and
``import mvae``, then fits ``MultinomialVAE(random_state=0, threads=1, max_epochs=3)`` to a
simulated 5,000 x 2,000 dense table (``throughput.py``'s) and reports CPU seconds
(``time.process_time``: user + system of the whole process, every thread):

- ``fit``: the whole ``fit`` call;
- ``epochs``: the training loop (``train_module``) less the parts below that it calls -- the
  optimiser's steps, the per-epoch validation and the early-stopping bookkeeping;
- ``fixed``: ``fit`` - ``epochs``, the target of issue 19 item 2 (<= 1 CPU-second);
- the parts of ``fixed``, each the CPU time of the named function less that of any other named
  function it calls, and ``rest``: the remainder (ids, the dropped-feature report, the module's
  construction, ...);
- the imports: ``import torch``, ``import mvae`` and the modules a fit imports on its first call
  (``FIT_IMPORTS``: pandas, scipy submodules, mvae's training modules), imported and timed before
  the fit unless ``--imports-in-fit`` leaves them inside it.

The parts are timed by wrapping the functions in the child process (no profiler: its overhead
falls unevenly on Python-heavy and C-heavy code). A function the measured package does not have
reads 0. ``--profile`` adds one cProfile run (CPU-time clock) and prints the 40 largest
cumulative entries, to find what the parts are made of.

    python benchmarks/fixed_costs.py [--runs 3] [--full-svd] [--profile] [--imports-in-fit]
    python benchmarks/fixed_costs.py --adam-steps    # one optimiser step, torch's Adam and ours
    python benchmarks/fixed_costs.py --compare DIR   # DIR: an export of an earlier mvae/,
                                                     # e.g. git archive BASE mvae | tar -x -C DIR
With ``--compare`` the runs alternate between the package in DIR and the checkout's, and the
medians of both are printed side by side. ``--full-svd`` starts the PCA from the full SVD the
PCA start used before the k leading triplets.
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

#: What a fit of an array imports beyond ``import mvae`` and torch (the largest: pandas, for the
#: model's history and report of dropped features); imported and timed before the fit unless
#: ``--imports-in-fit``. Names a measured package lacks are skipped.
FIT_IMPORTS = ["pandas", "scipy.special", "scipy.linalg", "scipy.sparse.linalg", "threadpoolctl",
               "mvae.io", "mvae.io.sources", "mvae.io.validation", "mvae.maths.pca",
               "mvae.maths.compositions", "mvae.training.loop", "mvae.training.batches",
               "mvae.training.checkpoint", "mvae.training.distributed", "mvae.training.optim",
               "mvae.counts"]

#: (label, module, attribute) of the functions timed in the child; "Class.method" for methods.
PARTS = [
    ("count validation", "mvae.io.validation", "check_counts"),
    ("table scan", "mvae.io.sources", "scan"),
    ("kept rows and features", "mvae.io.sources", "InMemoryCounts.select"),
    ("row subsets (splits, PCA rows)", "mvae.io.sources", "InMemoryCounts.subset"),
    ("data fingerprint", "mvae.model", "MultinomialVAE._fingerprint_parts"),
    ("input statistics", "mvae.io.sources", "input_statistics"),
    ("PCA start", "mvae.model", "_pca_initialise"),
    ("minibatch store (CountData)", "mvae.training.batches", "CountData.__init__"),
    ("torch.optim.Adam construction", "torch.optim", "Adam.__init__"),
    ("reported form", "mvae.model", "MultinomialVAE._set_ordered_form"),
    ("end-of-fit polish (EM on the variances)", "mvae.model", "_polish"),
    ("epochs", "mvae.training.loop", "train_module"),
]

CHILD = r"""
import json, os, sys, time, warnings, importlib
FIT_IMPORTS = FIT_IMPORTS if PREIMPORT else []
sys.path[:0] = PATHS
from throughput import make_counts
X = make_counts(5000, 2000, None)
t = time.process_time(); import torch; t_torch = time.process_time() - t
t = time.process_time(); import mvae, mvae.model; t_mvae = time.process_time() - t
t = time.process_time()
for name in FIT_IMPORTS:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
t_fit_imports = time.process_time() - t
assert os.path.dirname(mvae.__file__) == PACKAGE, mvae.__file__
excl = {label: 0.0 for label, _, _ in PARTS}
stack = []

def wrap(label, fn):
    def inner(*a, **k):
        t0 = time.process_time()
        stack.append(0.0)
        try:
            return fn(*a, **k)
        finally:
            dt = time.process_time() - t0
            excl[label] += dt - stack.pop()  # exclusive of the other timed parts inside
            if stack:
                stack[-1] += dt
    return inner

for label, modname, attr in PARTS:
    try:
        mod = importlib.import_module(modname)
    except ImportError:
        continue
    owner, name = (mod, attr) if "." not in attr else (getattr(mod, attr.split(".")[0], None),
                                                         attr.split(".")[1])
    if owner is not None and hasattr(owner, name):
        setattr(owner, name, wrap(label, getattr(owner, name)))
if FULL_SVD:
    from mvae.maths import pca
    original = pca.clr_pca
    pca.clr_pca = lambda X, k, pseudocount=1.0, top_only=False: original(X, k, pseudocount)
model = mvae.MultinomialVAE(random_state=0, threads=1, max_epochs=3)
if PROFILE:
    import cProfile, pstats
    profile = cProfile.Profile(time.process_time)
    profile.enable()
loaded = set(sys.modules)
import resource
r0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.process_time()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model.fit(X)
fit = time.process_time() - t
r1 = resource.getrusage(resource.RUSAGE_SELF)
if PROFILE:
    profile.disable()
    pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
row = {"import torch": t_torch, "import mvae": t_mvae,
       "imports the fit needs, before it": t_fit_imports, "fit": fit,
       "fixed": fit - excl["epochs"], **excl,
       "dynamo imported": "torch._dynamo" in sys.modules,
       "fit: system CPU": r1.ru_stime - r0.ru_stime,
       "fit: peak RSS growth (MB)": (r1.ru_maxrss - r0.ru_maxrss) / 1024,
       "modules the fit imported": len(set(sys.modules) - loaded)}
row["rest"] = row["fixed"] - sum(v for k, v in excl.items() if k != "epochs")
row["fixed + the fit's imports"] = row["fixed"] + t_fit_imports
row["fixed + all imports (torch, mvae, the fit's)"] = (row["fixed"] + t_fit_imports + t_torch
                                                      + t_mvae)
print("ROW " + json.dumps(row))
"""


def run_child(package_root: Path, full_svd: bool, profile: bool, preimport: bool) -> dict:
    code = (f"PATHS = {[str(package_root), str(HERE)]!r}\n"
            f"PACKAGE = {str(package_root / 'mvae')!r}\nPARTS = {PARTS!r}\n"
            f"FIT_IMPORTS = {FIT_IMPORTS!r}\nPREIMPORT = {preimport!r}\n"
            f"FULL_SVD = {full_svd!r}\nPROFILE = {profile!r}\n" + CHILD)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(package_root))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=package_root)
    if out.returncode:
        raise RuntimeError(out.stderr)
    if profile:
        print(out.stderr, file=sys.stderr)
    line = [x for x in out.stdout.splitlines() if x.startswith("ROW ")][-1]
    return json.loads(line[4:])


def adam_steps(sizes=(2000, 20000), steps: int = 100, repeats: int = 5) -> dict:
    """CPU milliseconds of one Adam step over a default module's parameters (one thread, fixed
    gradients): torch.optim.Adam's three implementations against mvae's Adam, which calls the
    fused kernel or, with ``fused=False``, writes the update in tensor operations."""
    import time

    import torch

    from mvae.counts import MultinomialVAEModule, MVAEConfig
    from mvae.training.optim import Adam

    torch.set_num_threads(1)
    makers = {
        "torch.optim.Adam(fused=True)": lambda ps: torch.optim.Adam(ps, lr=3e-3, fused=True),
        "torch.optim.Adam(foreach=True)": lambda ps: torch.optim.Adam(ps, lr=3e-3, foreach=True),
        "torch.optim.Adam(foreach=False)": lambda ps: torch.optim.Adam(ps, lr=3e-3,
                                                                      foreach=False),
        "mvae Adam (fused kernel)": lambda ps: Adam(ps, lr=3e-3),
        "mvae Adam(fused=False)": lambda ps: Adam(ps, lr=3e-3, fused=False),
    }
    out = {}
    for D in sizes:
        params = [p for p in MultinomialVAEModule(MVAEConfig(n_features=D)).parameters()]
        gen = torch.Generator().manual_seed(0)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * 1e-2
        for name, make in makers.items():
            opt = make(params)
            opt.step()  # the state is created at the first step
            best = float("inf")
            for _ in range(repeats):  # the least of several: other work on shared cores
                t = time.process_time()
                for _ in range(steps):
                    opt.step()
                best = min(best, time.process_time() - t)
            out[f"D={D}: {name}"] = round(best / steps * 1e3, 3)
    for k, v in out.items():
        print(f"{k}: {v} ms per step")
    return out


def medians(rows: list[dict]) -> dict:
    return {k: (round(statistics.median(r[k] for r in rows), 2)
                if not isinstance(rows[0][k], bool) else any(r[k] for r in rows))
            for k in rows[0]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--full-svd", action="store_true")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--imports-in-fit", action="store_true",
                   help="leave the fit's own imports (pandas, ...) inside the fit's time")
    p.add_argument("--compare", type=Path, default=None,
                   help="a directory holding an earlier mvae/ package to measure alongside")
    p.add_argument("--adam-steps", action="store_true",
                   help="only time one optimiser step of each Adam (D = 2,000 and 20,000)")
    args = p.parse_args(argv)
    if args.adam_steps:
        return adam_steps()
    roots = {"now": HERE.parent}
    if args.compare is not None:
        roots = {"before": args.compare.resolve(), **roots}
    rows = {name: [] for name in roots}
    for i in range(args.runs):
        for name, root in roots.items():
            row = run_child(root, args.full_svd, args.profile and i == 0,
                            not args.imports_in_fit)
            rows[name].append(row)
            print(json.dumps({"package": name, **{k: (round(v, 3) if isinstance(v, float) else v)
                                                  for k, v in row.items()}}), flush=True)
    result = {name: medians(r) for name, r in rows.items()}
    print("\nmedians of", args.runs, "runs (CPU seconds)")
    keys = list(next(iter(result.values())))
    print("| | " + " | ".join(result) + " |")
    print("|---|" + "---|" * len(result))
    for k in keys:
        print(f"| {k} | " + " | ".join(str(result[n][k]) for n in result) + " |")
    return result


if __name__ == "__main__":
    main()
