"""Training throughput on an accelerator: mvae's default and the plain-torch reference loop of
``throughput.py``, samples per wall-second, on ``--device`` (cuda by default).

The issue asks for samples/s at D = 20,000 (2% dense) and 100,000 (1%) on a GPU whenever one is
available; no session so far has had one, so this script is ready to run in one go on a lent
machine (a few minutes in all):

    python benchmarks/device_throughput.py -o benchmarks/results/device_throughput

It trains each method on the same simulated counts as ``throughput.py`` (``make_counts``), after a
one-epoch warm-up (CUDA context, kernels, allocator), for ``--epochs`` epochs, and reports samples
per wall-second (CPU-seconds say little of a GPU's work; every run ends with a synchronise), the
ratio to the reference run just before it, the GPU's peak memory and the device's name. Runs
alternate reference / method for ``--repeats`` rounds; medians are reported. ``--device cpu``
runs the same code on the CPU (the test suite does, at small sizes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

try:
    from benchmarks.throughput import make_counts, run_mvae, run_reference
except ImportError:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.throughput import make_counts, run_mvae, run_reference

CASES = [(20_000, 0.02, 4096), (100_000, 0.01, 4096)]  # (D, density, samples)
# name -> function(X, epochs, device) -> (samples, cpu s, wall s)
METHODS = {
    "reference": lambda X, e, dev: run_reference(X, e, device=dev),
    "mvae-default": lambda X, e, dev: run_mvae(X, e, "marginal", device=dev),
    "mvae-sampled": lambda X, e, dev: run_mvae(X, e, "sampled", device=dev),
}


def _peak_memory_mb(device) -> float | None:
    import torch

    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def _device_name(device) -> str:
    import platform

    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(device: str = "cuda", cases=CASES, epochs: int = 2, repeats: int = 3,
         methods=tuple(METHODS), out: str | None = None) -> list[dict]:
    """Run every case and method; return the per-method summary rows (and write them)."""
    import torch

    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu to try the script)")
    runs = []
    for D, density, n in cases:
        X = make_counts(n, D, density)
        for name in methods:  # warm-up: CUDA context, kernels, the allocator's pools
            METHODS[name](X[: min(n, 512)], 1, device)
        for rep in range(repeats):
            ref_rate = None
            for name in ["reference"] + [m for m in methods if m != "reference"]:
                if torch.device(device).type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                samples, cpu, wall = METHODS[name](X, epochs, device)
                rate = samples / wall
                ref_rate = rate if name == "reference" else ref_rate
                runs.append(dict(D=D, density=density, n=n, method=name, repeat=rep,
                                 samples_per_s=rate, ratio=rate / ref_rate, wall_s=wall,
                                 cpu_s=cpu, peak_gpu_mb=_peak_memory_mb(device)))
                print(json.dumps(runs[-1]), flush=True)
    rows = []
    for (D, name) in dict.fromkeys((r["D"], r["method"]) for r in runs):
        mine = [r for r in runs if r["D"] == D and r["method"] == name]
        peaks = [r["peak_gpu_mb"] for r in mine if r["peak_gpu_mb"] is not None]
        rows.append(dict(D=D, density=mine[0]["density"], method=name,
                         samples_per_s=statistics.median(r["samples_per_s"] for r in mine),
                         ratio=statistics.median(r["ratio"] for r in mine),
                         ratio_min=min(r["ratio"] for r in mine),
                         ratio_max=max(r["ratio"] for r in mine),
                         peak_gpu_mb=max(peaks) if peaks else None,
                         device=_device_name(device)))
    if out:
        _write(rows, runs, Path(out))
    return rows


def _write(rows, runs, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    lines = [f"Device: {rows[0]['device']}", "",
             "| D (density) | method | samples/s (median) | ratio to reference (median, range) "
             "| peak GPU MB |", "|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_gpu_mb']:,.0f}" if r["peak_gpu_mb"] is not None else "–"
        lines.append(f"| {r['D']:,} ({r['density']:.0%}) | {r['method']} | "
                     f"{r['samples_per_s']:,.0f} | {r['ratio']:.2f} ({r['ratio_min']:.2f}–"
                     f"{r['ratio_max']:.2f}) | {peak} |")
    (out / "device_throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--features", nargs="*", type=int, default=None,
                   help="only the cases with these numbers of features")
    p.add_argument("-o", "--out", default=None)
    a = p.parse_args()
    chosen = [c for c in CASES if not a.features or c[0] in a.features]
    main(a.device, chosen, a.epochs, a.repeats, out=a.out)
