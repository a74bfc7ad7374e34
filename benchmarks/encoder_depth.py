"""Encoder depth against pseudocount bias, side by side with the baselines (issue 4).

Usage::

    python benchmarks/encoder_depth.py -o benchmarks/results/encoder_depth --jobs 2
    python benchmarks/encoder_depth.py --smoke -o /tmp/encoder_depth_smoke

The same is reachable as ``mvae benchmark encoder-depth -o DIR [--smoke] [--seeds N] [--jobs J]``.
The reusable parts (design, tasks, metrics, tables, plots) live in
:mod:`mvae.evaluation.encoder_depth`; this script only parses arguments and calls :func:`main`. Runs are resumable: finished tasks in
``DIR/runs/`` are skipped when the command is run again.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "encoder_depth"


def main(config=None, out_dir=None, jobs: int = 1, plots: bool = True):
    """Run (or resume) the benchmark.

    Parameters
    ----------
    config : mvae.evaluation.encoder_depth.EncoderDepthConfig, dict or None
        The design; a dict is passed to ``EncoderDepthConfig(**config)``; None is the full design
        (:func:`mvae.evaluation.encoder_depth.full_config`).
    out_dir : path, optional
        Where results go (default benchmarks/results/encoder_depth).
    jobs : int
        Parallel processes (one torch thread each).
    plots : bool

    Returns
    -------
    pandas.DataFrame
        The tidy results (also written to ``out_dir/results.csv``).
    """
    from mvae.evaluation.encoder_depth import EncoderDepthConfig, full_config, run_encoder_depth

    if config is None:
        config = full_config()
    elif isinstance(config, dict):
        config = EncoderDepthConfig(**config)
    return run_encoder_depth(config, out_dir or DEFAULT_OUT, jobs=jobs, plots=plots)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--out-dir", default=str(DEFAULT_OUT), help="output directory")
    p.add_argument("--smoke", action="store_true", help="tiny design for CI (under a minute)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per cell (default: 5; smoke 1)")
    p.add_argument("--pseudocount-seeds", type=int, default=None,
                   help="seeds of the pseudocount sweep (default: --seeds)")
    p.add_argument("--scale-seeds", type=int, default=None,
                   help="seeds of the other (D, n) cells (default: 5; smoke 0)")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes, one thread each")
    p.add_argument("--dry-run", action="store_true", help="list the tasks and exit")
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def cli(argv=None) -> int:
    from mvae.evaluation.encoder_depth import build_tasks, full_config, smoke_config

    args = _parse(sys.argv[1:] if argv is None else argv)
    config = smoke_config() if args.smoke else full_config()
    if args.seeds is not None:
        if args.seeds < 1:
            print(f"--seeds must be >= 1, got {args.seeds}", file=sys.stderr)
            return 2
        config = replace(config, seeds=args.seeds)
    for name in ("pseudocount_seeds", "scale_seeds"):
        value = getattr(args, name)
        if value is not None:
            if value < 0:
                print(f"--{name.replace('_', '-')} must be >= 0, got {value}", file=sys.stderr)
                return 2
            config = replace(config, **{name: value})
    if args.dry_run:
        for t in build_tasks(config):
            print(t.task_id)
        return 0
    main(config, args.out_dir, jobs=max(1, args.jobs), plots=not args.no_plots)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
