"""What glibc's malloc settings are worth to a default fit's training steps.

mvae's training loop used to switch glibc's allocator for the whole process while it ran (through
``mallopt``): freed blocks up to 32 MiB stayed in the heap instead of going back to the system,
and new mappings were off, so a step did not pay a page fault per 4 KiB page to get its (B, D)
buffers back. The library no longer changes its user's process; this script measures what the
setting was worth, applied the way a user can apply it, through the environment variables glibc
reads when a process starts (no ``ctypes``)::

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_MMAP_MAX_=0

Each measurement is its own process, with one torch thread: the default model (``marginal``
objective, ``factored`` posterior, the estimator chosen by the batch layout, batch 128) trained by
``mvae.training.loop.train_module`` on the simulated tables of ``throughput.py`` at D = 2,000 (dense),
D = 20,000 (2% non-zero, kept sparse) and D = 100,000 (1%), after an untimed warm-up. Reported per training step: CPU
milliseconds of the process, wall milliseconds and minor page faults. The runs alternate between
the default allocator and the environment's setting, in an order reversed every round (the shared
machine's speed drifts within minutes); the ratio of each setting's run to the default run of the
same round is summarised by its median and range.

    python benchmarks/allocator.py                        # D = 2,000 and 20,000, 5 rounds
    python benchmarks/allocator.py --features 100000 --rounds 3
    python benchmarks/allocator.py --features 2000 --rounds 1
    python benchmarks/allocator.py -o benchmarks/results/allocator
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

#: glibc's equivalents of the mallopt calls the training loop used to make (glibc >= 2.26 reads
#: them at start-up; they are ignored by other C libraries)
SETTING = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**30),
           "MALLOC_MMAP_MAX_": "0"}
# D: (density, n_samples, epochs), as in throughput.py
CASES = {2_000: (None, 4096, 2), 20_000: (0.02, 4096, 1), 100_000: (0.01, 1024, 1)}


def child(D: int) -> dict:
    """One measurement in this process: a warm-up fit, then the timed one."""
    import torch

    try:
        from benchmarks.throughput import BATCH, make_counts, run_mvae
    except ImportError:  # run as a script: benchmarks/ itself is on the path
        from throughput import BATCH, make_counts, run_mvae

    torch.set_num_threads(1)
    density, n, epochs = CASES[D]
    X = make_counts(n, D, density)
    run_mvae(X[: 2 * BATCH], 1, "marginal", "factored")  # first-call set-up is not timed
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    samples, cpu, wall = run_mvae(X, epochs, "marginal", "factored")
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    steps = samples // BATCH
    return dict(D=D, density=X.nnz / (n * D), steps=steps, threads=torch.get_num_threads(),
                cpu_ms_per_step=cpu / steps * 1e3, wall_ms_per_step=wall / steps * 1e3,
                faults_per_step=faults / steps, cpu_s=cpu, wall_s=wall,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def measure(D: int, setting: bool) -> dict:
    """:func:`child` in a fresh process, with or without :data:`SETTING` in its environment."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING}
    if setting:
        env.update(SETTING)
    out = subprocess.run([sys.executable, __file__, "--child", str(D)], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"D={D} setting={setting} failed:\n{out.stderr[-2000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["setting"] = "glibc env" if setting else "default"
    return row


def summarise(runs: list[dict]) -> list[dict]:
    """Per D and setting: medians per step, and the median (min, max) ratio of CPU time per step
    to the default run of the same round."""
    import numpy as np

    rows = []
    for D in dict.fromkeys(r["D"] for r in runs):
        base = {r["round"]: r for r in runs if r["D"] == D and r["setting"] == "default"}
        for setting in ("default", "glibc env"):
            mine = [r for r in runs if r["D"] == D and r["setting"] == setting]
            ratio = np.array([r["cpu_ms_per_step"] / base[r["round"]]["cpu_ms_per_step"]
                              for r in mine])
            rows.append(dict(
                D=D, setting=setting, rounds=len(mine), threads=mine[0]["threads"],
                steps=mine[0]["steps"],
                cpu_ms_per_step=float(np.median([r["cpu_ms_per_step"] for r in mine])),
                wall_ms_per_step=float(np.median([r["wall_ms_per_step"] for r in mine])),
                faults_per_step=float(np.median([r["faults_per_step"] for r in mine])),
                peak_rss_mb=float(max(r["peak_rss_mb"] for r in mine)),
                cpu_ratio=float(np.median(ratio)), cpu_ratio_min=float(ratio.min()),
                cpu_ratio_max=float(ratio.max())))
    return rows


def main(features: list[int], rounds: int, out: Path | None) -> list[dict]:
    runs = []
    t0 = time.perf_counter()
    for D in features:
        for r in range(rounds):
            for setting in ((False, True) if r % 2 == 0 else (True, False)):
                row = measure(D, setting)
                row["round"] = r
                runs.append(row)
                print(f"D={D:>6} round {r} {row['setting']:<9} cpu {row['cpu_ms_per_step']:7.1f} "
                      f"ms/step  wall {row['wall_ms_per_step']:7.1f} ms/step  "
                      f"{row['faults_per_step']:8.0f} faults/step  rss "
                      f"{row['peak_rss_mb']:6.0f} MB", flush=True)
    rows = summarise(runs)
    for row in rows:
        print(f"D={row['D']:>6} {row['setting']:<9} median cpu {row['cpu_ms_per_step']:7.1f} "
              f"ms/step, ratio to default {row['cpu_ratio']:.3f} "
              f"({row['cpu_ratio_min']:.3f}-{row['cpu_ratio_max']:.3f}), "
              f"{row['faults_per_step']:.0f} faults/step")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "runs.json").write_text(json.dumps(runs, indent=1) + "\n")
        (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{time.perf_counter() - t0:.0f} s in all", file=sys.stderr)
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, nargs="+", default=[2_000, 20_000],
                   choices=sorted(CASES))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("-o", "--out", type=Path, default=None,
                   help="write runs.json and summary.json here")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)))
    else:
        main(args.features, args.rounds, args.out)
