"""``mvae benchmark ...``: the simulation benchmarks on the command line.

A click group registered on the main command with ``main.add_command(benchmark)`` (in
:mod:`mvae.cli`). No benchmark logic lives here: :mod:`mvae.evaluation.encoder_depth` does the
work.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


@click.group(context_settings=CONTEXT)
def benchmark():
    """Simulation benchmarks with known truth (results as CSV, markdown and PNG)."""


@benchmark.command("encoder-depth", context_settings=CONTEXT)
@click.option("-o", "--out-dir", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Output directory (created). Finished runs in OUT_DIR/runs are reused, so an "
                   "interrupted benchmark resumes when the same command is run again.")
@click.option("--smoke", is_flag=True,
              help="A tiny design (one small table, depths 1-2) that finishes in well under a "
                   "minute; for CI and for trying the command.")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Seeds per cell [default: 5, smoke 1].")
@click.option("--pseudocount-seeds", type=click.IntRange(min=0), default=None,
              help="Seeds of the pseudocount sweep [default: --seeds].")
@click.option("--scale-seeds", type=click.IntRange(min=0), default=None,
              help="Seeds of the other (D, n) cells [default: 5, smoke 0].")
@click.option("--jobs", type=click.IntRange(min=1), default=1,
              help="Parallel processes, one torch thread each.")
@click.option("--dry-run", is_flag=True, help="List the tasks of the design and exit.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG figures.")
def encoder_depth(out_dir, smoke, seeds, pseudocount_seeds, scale_seeds, jobs, dry_run,
                  no_plots):
    """Does a deeper encoder remove the pseudocount's bias? MVAE at encoder depths 1-6 (both
    objectives, several pseudocounts and sparsity levels) against the non-amortised reference,
    clr + PCA, multiplicative replacement + PCA, the sample clr covariance, SparCC, robust
    Aitchison PCA and (when installed) PLN-PCA, on simulated tables.

    Writes OUT_DIR/results.csv (one row per method and table), OUT_DIR/summary.md (means ± sd)
    and OUT_DIR/*.png. The full design takes about an hour with --jobs 2.
    """
    from .encoder_depth import build_tasks, full_config, run_encoder_depth, smoke_config

    config = smoke_config() if smoke else full_config()
    if seeds is not None:
        config = replace(config, seeds=int(seeds))
    if pseudocount_seeds is not None:
        config = replace(config, pseudocount_seeds=int(pseudocount_seeds))
    if scale_seeds is not None:
        config = replace(config, scale_seeds=int(scale_seeds))
    if dry_run:
        for task in build_tasks(config):
            click.echo(task.task_id)
        return
    run_encoder_depth(config, out_dir, jobs=int(jobs), plots=not no_plots,
                      log=lambda line: click.echo(line, err=True))
    click.echo(f"results in {out_dir}: results.csv, summary.md, *.png", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(benchmark())
