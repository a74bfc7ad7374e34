"""Training throughput of mvae against a minimal plain-torch reference loop, in one run.

For each table size, every method trains for the same number of epochs on the same simulated counts,
each in its own subprocess (so peak RSS is per method) with ONE torch thread. Reported: samples per
CPU-second (training loop only: CPU time of the process while the loop runs), wall seconds, peak RSS
and the ratio to the reference measured in the same run: a reference run precedes every other run
and each run's rate is divided by the mean of the reference runs on either side of it (the shared
machine's speed drifts by 10-20% within a minute; a neighbour sees the same drift), the median of
these local ratios over the rounds is reported with their range.

The reference is the floor the issue names: encoder D -> 128 -> (mean, log-variance) of k, decoder
k -> D, multinomial likelihood from log-softmax, standard-normal KL, Adam, batch 128, dense input
sliced from a dense tensor, no ILR, nothing else. mvae is measured with its own training loop
(`mvae.training.loop.train_module`) and data path (`mvae.training.batches.CountData`, sparse below 5% density).

Usage::

    python benchmarks/throughput.py                 # the full table, 3 rounds (~25 min)
    python benchmarks/throughput.py --smoke         # seconds
    python benchmarks/throughput.py -o benchmarks/results/throughput
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CASES = [  # (D, density, n_samples, epochs)
    (200, None, 4096, 3),
    (2_000, None, 4096, 2),
    (20_000, 0.02, 4096, 1),  # 32 steps: 16 left the rounds 15% apart
    (100_000, 0.01, 1024, 1),
]
SMOKE = [(200, None, 512, 1), (2_000, 0.02, 512, 1)]
# mvae-<objective>: mvae-marginal is the default model (the posteriors and estimators it was
# compared with on the way are retired; their rows in results/throughput/ name the commit)
METHODS = ["reference", "reference-tuned", "mvae-marginal", "mvae-sampled"]
K, HIDDEN, BATCH = 10, 128, 128


def make_counts(n, D, density, seed=0):
    """Counts with a known density: dense multinomial-like rows, or a random sparse pattern."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    if density is None:
        logits = rng.normal(size=(n, K)) @ rng.normal(size=(K, D)) * 0.3 + rng.normal(size=D)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        X = rng.poisson(p * 20 * D).astype(np.float64)
        return sp.csr_matrix(X)
    # k distinct features per sample, drawn row by row: scipy.sparse.random draws its positions
    # from all n x D cells at once (an 800 MB index at n = 1,024, D = 100,000), which set every
    # method's peak RSS in earlier versions of this table
    k = max(1, int(round(density * D)))
    cols = np.concatenate([np.sort(rng.choice(D, size=k, replace=False)) for _ in range(n)])
    data = rng.poisson(5.0, size=n * k).astype(np.float64) + 1
    return sp.csr_matrix((data, cols, np.arange(0, n * k + 1, k)), shape=(n, D))


def run_reference(X, epochs, seed=0, tuned=False, device="cpu"):
    """The plain-torch loop; ``tuned`` gives it what mvae's loop has beyond plain torch (fused
    Adam), so that the ratio measures the model's work.
    ``device``: where it trains (``benchmarks/device_throughput.py`` runs it on a GPU)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    n, D = X.shape
    # the reference keeps dense input
    dense = torch.as_tensor(X.toarray(), dtype=torch.float32, device=device)
    enc = nn.Sequential(nn.Linear(D, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * K)).to(device)
    dec = nn.Linear(K, D).to(device)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3, fused=tuned)
    gen = torch.Generator(device=device).manual_seed(seed)
    steps = n // BATCH
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    _reference_epochs(dense, enc, dec, opt, gen, epochs, steps)
    _synchronise(device)
    cpu, wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
    return steps * BATCH * epochs, cpu, wall


def _reference_epochs(dense, enc, dec, opt, gen, epochs, steps):
    import numpy as np
    import torch

    n = dense.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen, device=dense.device)
        for s in range(steps):
            x = dense[order[s * BATCH:(s + 1) * BATCH]]
            h = enc(torch.log1p(x))
            mu, log_var = h[:, :K], h[:, K:]
            noise = torch.randn(mu.shape, generator=gen, device=mu.device)
            z = mu + noise * torch.exp(0.5 * log_var)
            log_p = torch.log_softmax(dec(z), dim=-1)
            recon = (x * log_p).sum(-1)
            kl = 0.5 * (mu.pow(2) + log_var.exp() - 1 - log_var).sum(-1)
            loss = (kl - recon).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert np.isfinite(loss.item())


def run_mvae(X, epochs, objective, seed=0, device="cpu"):
    import torch

    from mvae.training.batches import CountData
    from mvae.io.sources import InMemoryCounts
    from mvae.counts import MultinomialVAEModule, MVAEConfig
    from mvae.training.loop import TrainConfig, train_module

    torch.manual_seed(seed)
    n, D = X.shape
    cfg = MVAEConfig(n_features=D, n_latent=K, n_hidden=HIDDEN, encoder_depth=2,
                     objective=objective)
    module = MultinomialVAEModule(cfg)
    table = InMemoryCounts(X, range(X.shape[0]), range(X.shape[1]))
    pooled, centre, scale = table.input_statistics(1.0)
    module.initialise_from_data(torch.as_tensor(pooled, dtype=torch.float32),
                                torch.as_tensor(centre, dtype=torch.float32), scale)
    module.to(device)
    data = CountData(X, device=device)
    conf = TrainConfig(max_epochs=epochs, batch_size=BATCH, early_stopping=False, seed=seed)
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    train_module(module, data, None, conf, handle_signals=False)
    _synchronise(device)
    cpu, wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
    return (n // BATCH) * BATCH * epochs, cpu, wall


def _synchronise(device):
    """Wait for a GPU's queued work, so that wall time covers it (a no-op on the CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def child(args):
    """Run one (case, method) measurement and print a JSON line."""
    import torch

    torch.set_num_threads(1)
    D, density, n, epochs = args.case
    X = make_counts(n, D, density)
    if args.method.startswith("reference"):
        def run(data, e):
            return run_reference(data, e, tuned=args.method == "reference-tuned")
    else:
        _, objective = args.method.split("-")

        def run(data, e):
            return run_mvae(data, e, objective)
    run(X[: 2 * BATCH], 1)  # warm-up: lazy imports and torch's first-call set-up are not timed
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    samples, cpu, wall = run(X, epochs)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(D=D, density=X.nnz / (n * D), n=n, epochs=epochs, method=args.method,
                          samples=samples, cpu_s=cpu, wall_s=wall,
                          samples_per_cpu_s=samples / cpu, peak_rss_mb=rss_mb, threads=1,
                          page_faults_per_step=faults / (samples / BATCH))))


def select_cases(cases: list, features: list[int] | None) -> list:
    """The cases with the numbers of features asked for (all when None or empty)."""
    if not features:
        return list(cases)
    known = [c[0] for c in cases]
    unknown = sorted(set(features) - set(known))
    if unknown:
        raise SystemExit(f"--features {unknown}: no such case; the cases have D = {known}")
    return [c for c in cases if c[0] in set(features)]


def main(config: dict) -> list[dict]:
    """Run every case and method; return the rows (dicts) and write them if config['out']."""
    cases = select_cases(SMOKE if config.get("smoke") else CASES, config.get("features"))
    methods = config.get("methods") or METHODS
    repeats = int(config.get("repeats") or 1)
    runs = []
    for case in cases:
        D, density, n, epochs = case
        # `repeats` rounds, and in each a reference run before every other method and one at
        # the end: the shared machine's speed drifts by 10-20% within a minute, so each run is
        # compared with the reference runs on either side of it (see summarise)
        others = [m for m in methods if m != "reference"]
        for rep in range(repeats):
            for method in [x for m in others for x in ("reference", m)] + ["reference"]:
                cmd = [sys.executable, __file__, "--child", "--method", method,
                       "--case", json.dumps([D, density, n, epochs])]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"{method} at D={D} failed")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["repeat"] = rep
                row["order"] = len(runs)
                runs.append(row)
                print(f"D={D:>7} {method:<24} {row['samples_per_cpu_s']:>9.0f} samples/CPU-s "
                      f"cpu {row['cpu_s']:6.1f}s wall {row['wall_s']:6.1f}s "
                      f"rss {row['peak_rss_mb']:7.0f} MB", flush=True)
    rows = summarise(runs)
    if config.get("out"):
        write(rows, runs, Path(config["out"]))
    return rows


def local_ratios(runs: list[dict]) -> None:
    """Set each run's ``local_ratio``: its rate over the mean rate of the reference runs just
    before and after it (same D and round), so that drifts of the machine's speed cancel."""
    refs = [r for r in runs if r["method"] == "reference"]
    for r in runs:
        near = [q["samples_per_cpu_s"] for q in refs
                if q["D"] == r["D"] and q.get("repeat") == r.get("repeat")
                and abs(q["order"] - r["order"]) == 1]
        r["local_ratio"] = (r["samples_per_cpu_s"] / (sum(near) / len(near)) if near
                            else 1.0 if r["method"] == "reference" else None)


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (D, method): medians over the repeats, the spread, and the ratio to the
    reference: the median over runs of each run's ratio to its neighbouring reference runs."""
    import numpy as np

    if all("order" in r for r in runs):
        local_ratios(runs)
    rows = []
    keys = list(dict.fromkeys((r["D"], r["method"]) for r in runs))
    for D, method in keys:
        mine = [r for r in runs if r["D"] == D and r["method"] == method]
        rate = np.array([r["samples_per_cpu_s"] for r in mine])
        row = dict(mine[0])
        row.pop("repeat", None)
        row.update(samples_per_cpu_s=float(np.median(rate)), rate_min=float(rate.min()),
                   rate_max=float(rate.max()), repeats=len(mine),
                   cpu_s=float(np.median([r["cpu_s"] for r in mine])),
                   wall_s=float(np.median([r["wall_s"] for r in mine])),
                   peak_rss_mb=float(max(r["peak_rss_mb"] for r in mine)),
                   page_faults_per_step=float(np.median([r["page_faults_per_step"]
                                                         for r in mine])))
        local = [r["local_ratio"] for r in mine if r.get("local_ratio") is not None]
        if local:
            row.update(ratio_to_reference=float(np.median(local)), ratio_min=float(min(local)),
                       ratio_max=float(max(local)))
        rows.append(row)
    ref = {r["D"]: r["samples_per_cpu_s"] for r in rows if r["method"] == "reference"}
    for r in rows:  # without the run order (older CSVs): the ratio of medians
        if "ratio_to_reference" not in r:
            r["ratio_to_reference"] = (r["samples_per_cpu_s"] / ref[r["D"]] if r["D"] in ref
                                       else None)
    return rows


def write(rows, runs, out: Path) -> None:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "throughput.csv", index=False)
    pd.DataFrame(runs).to_csv(out / "throughput_runs.csv", index=False)
    lines = ["| D | density | method | samples/CPU-s (median) | range over runs | "
             "ratio to reference (median, range) | CPU s | peak RSS MB | page faults / step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = (f" ({r['ratio_min']:.2f}–{r['ratio_max']:.2f})"
                  if r["method"] != "reference" and "ratio_min" in r else "")
        lines.append(f"| {r['D']:,} | {r['density']:.3f} | {r['method']} | "
                     f"{r['samples_per_cpu_s']:,.0f} | {r['rate_min']:,.0f}–{r['rate_max']:,.0f} | "
                     f"{r['ratio_to_reference']:.2f}{spread} | {r['cpu_s']:.1f} | "
                     f"{r['peak_rss_mb']:,.0f} | {r['page_faults_per_step']:,.0f} |")
    (out / "throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("-o", "--out", default=None)
    p.add_argument("--methods", nargs="*", default=None)
    p.add_argument("--features", nargs="*", type=int, default=None,
                   help="run only the cases with these numbers of features (D)")
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved rounds per case; medians are reported (default 3)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--case", type=json.loads, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a)
    else:
        main(dict(smoke=a.smoke, out=a.out, methods=a.methods, features=a.features,
                  repeats=1 if a.smoke else a.repeats))
