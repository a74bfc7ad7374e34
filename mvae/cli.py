"""The ``mvae`` command line: parses and validates arguments, then calls the Python API.

No model logic lives here. Heavy modules (torch, anndata, scikit-bio, pandas, matplotlib) are
imported inside the commands so that ``mvae --help`` answers at once.

Conventions shared by every command:

- A problem the user can fix (:class:`mvae.errors.MVAEError`: a bad table, metadata file, tree,
  model directory or option value) ends the command with one line ``Error: ...`` on stderr that
  names the file or value, and exit code 2 -- never a traceback. Warnings are printed as one line
  ``Warning: ...``.
- Outputs are written atomically: ``mvae fit`` and ``mvae simulate`` build their directory in a
  temporary sibling and rename it into place; single-file outputs are written beside the target
  and renamed onto it. An existing output directory is refused unless ``--force``.
- ``--quiet`` turns off the progress bar and the closing summary; ``--verbose`` adds detail.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from pathlib import Path

import click

from . import __version__

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}
ORIENTATIONS = ("samples-as-rows", "features-as-rows")  # = mvae.io.tables.ORIENTATIONS (not imported)
# = mvae.io.validation.MAX_SEED, MAX_THREADS, MAX_HIDDEN (not imported: numpy would slow --help)
MAX_SEED, MAX_THREADS, MAX_HIDDEN = 2**32 - 1, 1024, 65536


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"Warning: {message}", err=True)


class _Group(click.Group):
    """The ``mvae`` group: loads subcommands from other modules on demand, and turns the errors
    mvae raises on purpose into a one-line message and exit code 2.

    Parameters
    ----------
    lazy_commands : dict of str to (str, str), optional
        Subcommand name -> (``"module.path:attribute"`` of its click command, its short help).
        The module is imported only when the subcommand is looked up by name (invoked, or its
        own ``--help``); ``mvae --help`` lists it with the short help given here, so that
        neither ``mvae --help`` nor ``mvae fit`` imports it.
    """

    def __init__(self, *args, lazy_commands: dict[str, tuple[str, str]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx):
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx, cmd_name):
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            from importlib import import_module

            module, _, attribute = self.lazy_commands[cmd_name][0].partition(":")
            self.add_command(getattr(import_module(module), attribute), cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx, formatter):
        """The command list of ``--help``; a lazy command's short help comes from the mapping."""
        names = [name for name in self.list_commands(ctx)
                 if name in self.lazy_commands or not self.commands[name].hidden]
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)  # as click.Group does
        rows = []
        for name in names:
            # a stand-in command shortens the mapping's text exactly as click shortens a help
            command = (click.Command(name, help=self.lazy_commands[name][1])
                       if name in self.lazy_commands else self.commands[name])
            rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        from .errors import MVAEError, TrainingInterrupted

        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except TrainingInterrupted as exc:
                click.echo(f"Interrupted: {_one_line(str(exc))}; rerun the same command with "
                           "--resume to continue", err=True)
                sys.exit(exc.exit_code)  # 143 for SIGTERM, 130 for SIGINT
            except MVAEError as exc:
                click.echo(f"Error: {_one_line(str(exc))}", err=True)
                sys.exit(2)
            except KeyboardInterrupt:  # Ctrl-C outside training (which checkpoints on its own)
                click.echo("Interrupted (Ctrl-C): stopped before finishing; outputs appear only "
                           "once complete, so nothing was written or replaced", err=True)
                sys.exit(130)
            except _Terminated:  # SIGTERM outside training, see _sigterm_reported
                click.echo("Terminated (SIGTERM): stopped before finishing; outputs appear only "
                           "once complete, so nothing was written or replaced", err=True)
                sys.exit(143)


class _Terminated(Exception):
    """SIGTERM arrived while a command ran work that reads no HDF5 (see _sigterm_reported)."""


@contextlib.contextmanager
def _sigterm_reported():
    """While the block runs, SIGTERM stops the command with a message and exit code 143 instead
    of killing it silently.

    Used only around work that reads no HDF5 file: a Python signal handler runs between
    bytecodes, so a read stuck inside libhdf5 (a damaged file can do that) would leave the
    process deaf to SIGTERM; while such reads may happen the default, immediate death, is kept.
    Training installs its own handler (it checkpoints first) and gives this one back after.
    Main thread only; the previous handler is restored on leaving.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# Command groups that live in other modules, imported only when used (see _Group):
# name -> ("module.path:attribute", short help for `mvae --help`, = the group's first sentence).
LAZY_COMMANDS = {
    "benchmark": ("mvae.evaluation.cli:benchmark",
                  "Simulation benchmarks with known truth (results as CSV, markdown and PNG)."),
    "images": ("mvae.images.cli:images",
               "Convolutional VAE, autoencoder and denoising autoencoder for images."),
}


@click.group(cls=_Group, lazy_commands=LAZY_COMMANDS, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="mvae")
def main():
    """Multinomial variational autoencoders for count tables (microbiome, single-cell).

    Fit a model with `mvae fit TABLE -o OUTDIR`; see `mvae COMMAND --help` for each command.
    TABLE is a .biom (HDF5, JSON or classic TSV), .h5ad, or .tsv/.csv/.txt count table
    (text tables need --orientation), optionally gzipped.
    """


# ------------------------------------------------------------------------------------------------
# shared options
# ------------------------------------------------------------------------------------------------


def _verbosity(f):
    f = click.option("--verbose", "-v", is_flag=True, help="More detail on stderr.")(f)
    f = click.option("--quiet", "-q", is_flag=True,
                     help="No progress bar or summary (warnings and errors are still shown).")(f)
    return f


def _threads(f):
    return click.option("--threads", default=None, type=click.IntRange(1, MAX_THREADS),
                        help="torch threads [default: half the usable cores, at most 8].")(f)


def _table_options(f):
    f = click.option("--layer", default=None,
                     help="For .h5ad: the layer holding raw counts [default: X].")(f)
    f = click.option("--orientation", type=click.Choice(ORIENTATIONS), default=None,
                     help="Layout of a text table (.tsv/.csv/.txt): samples-as-rows (feature ids "
                          "in the header) or features-as-rows (sample ids in the header, as "
                          "`biom convert --to-tsv` writes). Required for text tables; never "
                          "guessed.")(f)
    return f


def _check_verbosity(quiet: bool, verbose: bool) -> None:
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose cannot be used together.")


def _stderr_is_tty() -> bool:
    """Whether a progress bar on stderr would reach a person (not a log file or a pipe)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        click.echo(message, err=True)


def _load_model(path: Path):
    """MultinomialVAE.load, also accepting the path of a file inside the model directory."""
    from .model import MultinomialVAE

    if path.is_file() and path.name in ("config.json", "model.safetensors"):
        path = path.parent
    return MultinomialVAE.load(path)


def _read_table(path: Path, layer, orientation):
    from .io.tables import read_counts

    return read_counts(path, layer=layer, orientation=orientation)


def _resolve_threads(threads):
    if threads is not None:
        return int(threads)
    from .training.loop import default_threads

    return default_threads()


def _check_device(device: str) -> str:
    """The device to train on, as a string; an InputError when CUDA is asked for but absent."""
    from .training.loop import resolve_device

    return str(resolve_device(device, option=True))


def _check_table_usable(adata, table: Path, latent_dim: int) -> None:
    """Fail before training, naming TABLE, when too little is left after empty rows/columns."""
    from .errors import InputError
    from .io.validation import drop_empty

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fit() warns about what it drops
            kept = drop_empty(adata.X, list(adata.obs_names), list(adata.var_names))
    except InputError as exc:
        raise InputError(f"{table}: {exc}") from exc
    n_features = len(kept.feature_ids)
    if latent_dim >= n_features:
        raise InputError(
            f"{table}: --latent-dim {latent_dim} is too large: the table has {n_features} "
            f"features with reads, and k must be below that. Use --latent-dim "
            f"{max(1, min(10, n_features - 1))} or less."
        )


def _check_tree(tree: Path, adata) -> None:
    """Fail before training when the tree cannot give a basis for the table's features."""
    import numpy as np

    from .maths.trees import TreeBasis
    from .errors import InputError

    try:
        text = tree.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{tree}: not valid UTF-8 text, so not a Newick tree ({exc}).") from exc
    except OSError as exc:
        raise InputError(f"{tree}: cannot be read ({exc}).") from exc
    if not text.lstrip().startswith("("):
        raise InputError(
            f"{tree}: not a Newick tree (a tree starts with '('; this file starts with "
            f"{text.strip()[:20]!r}). Pass the phylogeny of the table's features, e.g. QIIME 2's "
            "rooted-tree exported as tree.nwk."
        )
    observed = np.asarray(adata.X.getnnz(axis=0)).ravel() > 0
    features = [f for f, keep in zip(adata.var_names, observed) if keep]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            TreeBasis.from_tree(text, features)
    except InputError as exc:
        raise InputError(f"{tree}: {exc}") from exc


def _check_streamable(table: Path, orientation) -> None:
    """--stream reads HDF5 files only (.biom 2.x or .h5ad), whose layout fixes the orientation."""
    from .errors import InputError

    if orientation is not None:
        raise InputError("--orientation applies to text tables; --stream reads HDF5 .biom and "
                         ".h5ad files, whose layout already says which axis holds the samples.")
    with open(table, "rb") as fh:
        magic = fh.read(8)
    if magic != b"\x89HDF\r\n\x1a\n":
        raise InputError(f"{table}: --stream needs an HDF5 table (BIOM 2.x .biom or .h5ad); "
                         "convert text or JSON tables first, e.g. `biom convert -i table.tsv -o "
                         "table.biom --to-hdf5`, or drop --stream to load it into memory.")


def _obs_column(adata, column: str, table: Path):
    """A sample annotation stored in the table itself (an .h5ad's obs) to colour by."""
    from .errors import InputError

    if column not in adata.obs.columns:
        have = [str(c) for c in adata.obs.columns]
        raise InputError(
            f"--color {column}: give --metadata FILE with that column"
            + (f", or one of the sample annotations in {table}: {', '.join(have[:20])}"
               if have else f" ({table} holds no sample annotations)")
            + "."
        )
    series = adata.obs[column]
    kind = "numeric" if series.dtype.kind in "fiu" else "categorical"
    series = series.astype(float if kind == "numeric" else object)
    series.index = [str(s) for s in adata.obs_names]
    return series, kind


def _wrap_write_errors(outdir, func, *args, **kwargs):
    """Call a writer; an OSError (disk full, quota...) becomes a one-line InputError."""
    from .errors import InputError

    try:
        return func(*args, **kwargs)
    except OSError as exc:
        raise InputError(f"{outdir}: writing the results failed ({exc}).") from exc


# ------------------------------------------------------------------------------------------------
# fit
# ------------------------------------------------------------------------------------------------


@main.command(context_settings=CONTEXT)
@click.argument("table", type=click.Path(path_type=Path))
@click.option("-o", "--output", "outdir", required=True, type=click.Path(path_type=Path),
              help="Output directory (must not exist unless --force; parents are created).")
@click.option("--latent-dim", "-k", default=10, type=click.IntRange(min=1),
              help="Latent dimensions k.")
@click.option("--encoder-depth", default=2, type=click.IntRange(min=1),
              help="Encoder depth L: L - 1 nonlinear hidden layers (1 = a linear encoder).")
@click.option("--hidden", default=128, type=click.IntRange(1, MAX_HIDDEN), help="Encoder width.")
@click.option("--pseudocount", default=1.0, type=click.FloatRange(min=0, min_open=True),
              help="Pseudocount c in the encoder input log(x + c).")
@click.option("--objective", default="marginal", type=click.Choice(["marginal", "sampled"]),
              help="ELBO form (marginal integrates z out; sampled is catvae's).")
@click.option("--basis", default=None, type=click.Choice(["helmert", "balanced", "tree"]),
              help="ILR basis of loadings_ilr.tsv [default: tree when --tree is given, else "
                   "helmert].")
@click.option("--tree", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Newick tree whose tips are the table's features (balance basis).")
@_table_options
@click.option("--epochs", default=None, type=click.IntRange(min=1),
              help="Maximum epochs [default: chosen from the table size].")
@click.option("--batch-size", default=128, type=click.IntRange(min=1))
@click.option("--lr", default=3e-3, type=click.FloatRange(min=0, min_open=True),
              help="Adam learning rate.")
@click.option("--seed", default=0, type=click.IntRange(0, MAX_SEED),
              help="Random seed (same seed and threads, same result).")
@_threads
@click.option("--device", default="cpu", type=click.Choice(["cpu", "cuda", "auto"]),
              help="Where to train (auto: cuda when available).")
@click.option("--metadata", type=click.Path(path_type=Path), default=None,
              help="QIIME 2 style sample metadata (TSV); every table sample must be in it.")
@click.option("--color", "--colour", "color", default=None,
              help="Metadata column to colour embedding.png by (from --metadata, or from the "
                   "sample annotations of an .h5ad table).")
@click.option("--top", default=1000, type=click.IntRange(min=0),
              help="Feature pairs in correlations.tsv (strongest |correlation| first).")
@click.option("--min-abs", default=0.0, type=click.FloatRange(0, 1),
              help="Only pairs with |correlation| >= this in correlations.tsv.")
@click.option("--force", is_flag=True,
              help="Replace an existing OUTDIR (only once the new results are complete).")
@click.option("--checkpoint-every", default=0, type=click.IntRange(min=0),
              help="Write a checkpoint (OUTDIR.checkpoint.pt) every N epochs; 0: only when "
                   "interrupted by SIGTERM/SIGINT.")
@click.option("--resume", is_flag=True,
              help="Continue from OUTDIR.checkpoint.pt (refused if the table or options "
                   "changed); the result equals an uninterrupted run.")
@click.option("--distributed", is_flag=True,
              help="Data-parallel training under torchrun (gloo on CPU, nccl on GPU); rank 0 "
                   "writes the outputs. With --stream each rank reads only its own block of "
                   "samples.")
@click.option("--stream", is_flag=True,
              help="Read an HDF5 .biom or .h5ad table chunk by chunk instead of loading it: "
                   "for tables larger than memory (peak memory follows --chunk-mb).")
@click.option("--chunk-mb", default=256, type=click.IntRange(min=1),
              help="With --stream: memory budget of one chunk of samples, in MiB.")
@_verbosity
@click.pass_context
def fit(ctx, table, outdir, latent_dim, encoder_depth, hidden, pseudocount, objective, basis,
        tree, layer, orientation, epochs, batch_size, lr, seed, threads, device, metadata, color,
        top, min_abs, force, checkpoint_every, resume, distributed, stream, chunk_mb, quiet,
        verbose):
    """Fit a multinomial VAE to TABLE and write its results into OUTDIR.

    OUTDIR receives model.safetensors + config.json (load with
    mvae.MultinomialVAE.load), embeddings.tsv, ordination.txt (scikit-bio / QIIME 2 /
    Emperor), loadings_clr.tsv, loadings_ilr.tsv, correlations.tsv, scores.tsv,
    history.tsv, filtered.tsv, loss.png and embedding.png. Everything is written to a
    temporary sibling and renamed into place at the end.
    """
    _check_verbosity(quiet, verbose)
    basis = _fit_basis(basis, tree)
    if stream:
        _check_streamable(table, orientation)
    writer = True
    if distributed:
        from .training.distributed import is_writer, process_group

        # joined until the command returns; leaving it then (not at interpreter exit) lets the
        # backend's threads end while Python still runs
        ctx.with_resource(process_group(device))
        writer = is_writer()  # the other ranks train their shard and write nothing
        quiet = quiet or not writer
    started, cpu0 = time.time(), time.process_time()
    checkpoint = outdir.parent / (outdir.name + ".checkpoint.pt")
    with contextlib.ExitStack() as stack:
        if writer:  # fails here, before any reading, if OUTDIR is unusable
            from .io.outputs import ResultsDirectory

            results = stack.enter_context(ResultsDirectory(outdir, force=force,
                                                           inputs=[table, metadata, tree]))
        source = _fit_source(stack, table, layer, orientation, stream, chunk_mb, latent_dim,
                             tree, quiet=quiet or not verbose)
        if not stream:  # the table is in memory: nothing below reads HDF5
            stack.enter_context(_sigterm_reported())
        colour, colour_kind, md_info = _fit_colour(source, table, metadata, color, stream)
        from .model import MultinomialVAE

        model = MultinomialVAE(
            n_latent=latent_dim, encoder_depth=encoder_depth, n_hidden=hidden,
            pseudocount=pseudocount, objective=objective, basis=basis,
            tree=str(tree) if tree else None, max_epochs=epochs, batch_size=batch_size,
            learning_rate=lr, random_state=seed, threads=threads, device=_check_device(device),
            progress=not quiet and _stderr_is_tty())
        if resume and not checkpoint.is_file():
            _say(quiet, f"no checkpoint at {checkpoint}: starting from the beginning")
            resume = False
        t_fit = time.perf_counter()
        model.fit(source, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)
        fit_seconds = time.perf_counter() - t_fit
        if not writer:
            return
        from .io.outputs import write_fit_results

        fitted = (source.select(model.stream_rows_, model.kept_feature_index_) if stream
                  else source)
        run = _run_record(ctx, table, source, stream, md_info, tree, model, threads, started,
                          fit_seconds, cpu0)
        files = _wrap_write_errors(outdir, write_fit_results, results.path, model, fitted,
                                   run=run, top=top, min_abs=min_abs, colour=colour,
                                   colour_kind=colour_kind)

    checkpoint.unlink(missing_ok=True)  # the results are complete: the checkpoint is spent
    hist = model.history_
    kept = _restored_losses(model)
    _say(quiet, f"fitted {len(source) - int((model.filtered_['axis'] == 'sample').sum())} "
                f"samples x {len(model.feature_ids_)} features in {len(hist)} epochs; the model "
                f"is epoch {kept['epoch']}'s: train loss {kept['train']:.4g}, validation loss "
                f"{kept['validation']:.4g} nats/sample{_polish_clause(model)}; wrote {outdir}/")
    if verbose:
        ratio = ", ".join(f"{r:.3f}" for r in model.explained_variance_ratio_)
        _say(False, f"proportion of clr variance per axis: {ratio}; noise variance "
                    f"{model.noise_variance_:.4g}; {time.time() - started:.1f} s wall, "
                    f"{time.process_time() - cpu0:.1f} s CPU; files: {', '.join(files)}")


def _polish_clause(model) -> str:
    """", then its variances polished (validation X)" when the end-of-fit polish was kept."""
    p = getattr(model, "polish_", None)
    if not p or not p["kept"]:
        return ""
    return f", then its variances polished (validation {p['scores'][p['kept']]:.4g})"


def _polish_summary(model) -> str | None:
    """One line on the end-of-fit polish: the EM iterate kept and the validation loss it gave."""
    p = getattr(model, "polish_", None)
    if not p:
        return None
    kept, scores = int(p["kept"]), p["scores"]
    if kept == 0:
        return (f"not kept: no EM iterate beat the trained decoder's validation loss "
                f"{scores[0]:.6g}")
    return (f"iterate {kept} of {len(scores) - 1} kept: validation loss {scores[0]:.6g} -> "
            f"{scores[kept]:.6g}, noise variance {p['sigma2'][0]:.4g} -> {p['sigma2'][kept]:.4g}")


def _restored_losses(model) -> dict:
    """The epoch whose weights a fitted model holds (the best one when early stopping restored
    it, else the last) and its train and validation losses (mean nats per sample)."""
    hist = model.history_
    restored = getattr(model, "early_stopping", True) and model.best_epoch_
    epoch = int(model.best_epoch_ if restored else hist["epoch"].iloc[-1])
    row = hist.loc[hist["epoch"] == epoch].iloc[0]
    return {"epoch": epoch, "train": float(row["train_loss"]),
            "validation": float(row["validation_loss"])}


def _fit_basis(basis: str | None, tree: Path | None) -> str:
    """--basis, defaulting to tree when --tree is given; the two must agree."""
    if basis is None:
        basis = "tree" if tree is not None else "helmert"
    if basis == "tree" and tree is None:
        raise click.UsageError("--basis tree needs --tree FILE.nwk.")
    if tree is not None and basis != "tree":
        raise click.UsageError(f"--tree is only used with --basis tree (got --basis {basis}).")
    return basis


def _fit_source(stack, table: Path, layer, orientation, stream: bool, chunk_mb: int,
                latent_dim: int, tree, *, quiet: bool):
    """TABLE as mvae fit reads it: an AnnData in memory (checked before training, naming the
    file), or with --stream a StreamingCounts left open until the command ends."""
    if stream:
        from .io.streaming import StreamingCounts

        source = stack.enter_context(StreamingCounts(table, layer=layer,
                                                     max_bytes=chunk_mb * 2**20))
        _say(quiet, f"streaming {table}: {len(source)} samples x {source.n_features} "
                    f"features, chunks of at most {chunk_mb} MiB")
        return source
    adata = _read_table(table, layer, orientation)
    _say(quiet, f"read {table}: {adata.n_obs} samples x {adata.n_vars} features")
    _check_table_usable(adata, table, latent_dim)
    if tree is not None:
        _check_tree(tree, adata)
    return adata


def _fit_colour(source, table: Path, metadata, color, stream: bool):
    """The colour of embedding.png (from --metadata, or the table's own sample annotations) and
    what run info records of the metadata file: (colour, colour kind, metadata record)."""
    from .io.tables import sha256_file

    sample_names = list(source.sample_ids if stream else source.obs_names)
    if metadata is not None:
        from .io.metadata import align_metadata, metadata_column, read_metadata

        md = align_metadata(read_metadata(metadata), sample_names, table=str(table))
        md_info = {"path": str(metadata.absolute()), "sha256": sha256_file(metadata)}
        if color is None:
            return None, None, md_info
        colour = metadata_column(md, color)
        md_info["color"] = color
        return colour, colour.attrs["kind"], md_info
    if color is None:
        return None, None, None
    if stream:
        from .errors import InputError

        raise InputError(f"--color {color} with --stream needs --metadata FILE (the "
                         "sample annotations of a streamed table are not read).")
    colour, colour_kind = _obs_column(source, color, table)
    return colour, colour_kind, None


def _run_record(ctx, table: Path, source, stream: bool, md_info, tree, model, threads,
                started: float, fit_seconds: float, cpu0: float) -> dict:
    """The "run" section of config.json: the command, its inputs with their sha256, the seed,
    threads, device, versions and times."""
    from .io.outputs import package_versions
    from .io.tables import sha256_file

    n_obs, n_vars = (len(source), source.n_features) if stream else source.shape
    return {
        "command": ctx.command_path,
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in ctx.params.items()},
        "input": {"path": str(table.absolute()), "sha256": sha256_file(table),
                  "bytes": table.stat().st_size, "n_samples": int(n_obs),
                  "n_features": int(n_vars), "streamed": bool(stream)},
        "metadata": md_info,
        "tree": None if tree is None else {"path": str(tree.absolute()),
                                           "sha256": sha256_file(tree)},
        "seed": int(model.seed_),
        "threads": _resolve_threads(threads),
        "device": str(model.device),
        "versions": package_versions(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "fit_seconds": round(fit_seconds, 3),
        "cpu_seconds": round(time.process_time() - cpu0, 3),
    }


# ------------------------------------------------------------------------------------------------
# transform, score
# ------------------------------------------------------------------------------------------------


def _model_and_table_args(f):
    f = click.option("-o", "--output", required=True,
                     type=click.Path(dir_okay=False, path_type=Path),
                     help="Output TSV (replaced if it exists).")(f)
    f = click.argument("table", type=click.Path(path_type=Path))(f)
    f = click.argument("model_dir", metavar="MODEL", type=click.Path(path_type=Path))(f)
    return f


def _refine_option(f):
    return click.option(
        "--refine/--no-refine", default=True, show_default=True,
        help="Refine each sample's posterior from the encoder's output with the decoder frozen "
             "(docs/model.md): new samples are then treated like the ones the model was "
             "trained on. --no-refine uses the encoder alone (faster).")(f)


@main.command(context_settings=CONTEXT)
@_model_and_table_args
@_table_options
@_refine_option
@_threads
@_verbosity
def transform(model_dir, table, output, layer, orientation, refine, threads, quiet, verbose):
    """Embeddings of the samples of TABLE under a fitted MODEL directory.

    Writes sample_id, axis1..axisk (TSV). Features are matched by id: the model's features
    missing from TABLE count as zero and features unknown to the model are dropped (each with a
    warning).
    """
    import pandas as pd

    from .io.outputs import atomic_path, write_tsv

    _check_verbosity(quiet, verbose)
    with atomic_path(output) as tmp:
        model = _load_model(model_dir)
        if threads is not None:
            model.threads = threads
        adata = _read_table(table, layer, orientation)
        emb = model.transform(adata, refine=refine)
        axes = [f"axis{i + 1}" for i in range(emb.shape[1])]
        index = pd.Index([str(s) for s in adata.obs_names], dtype=object, name="sample_id")
        write_tsv(pd.DataFrame(emb, index=index, columns=axes), tmp)
    _say(quiet, f"embedded {adata.n_obs} samples on {emb.shape[1]} axes; wrote {output}")


@main.command(context_settings=CONTEXT)
@_model_and_table_args
@_table_options
@click.option("--n-samples", default=16, type=click.IntRange(min=1),
              help="Monte Carlo draws per sample for the ELBO estimate.")
@_refine_option
@_threads
@_verbosity
def score(model_dir, table, output, layer, orientation, n_samples, refine, threads, quiet,
          verbose):
    """Per-sample anomaly scores of TABLE under a fitted MODEL: the negative ELBO.

    Writes sample_id, depth (reads on the model's features), negative_elbo (nats) and
    negative_elbo_per_read (= negative_elbo / depth, comparable across depths). Higher is more
    anomalous.
    """
    import numpy as np
    import pandas as pd

    from .io.outputs import atomic_path, write_tsv

    _check_verbosity(quiet, verbose)
    with atomic_path(output) as tmp:
        model = _load_model(model_dir)
        if threads is not None:
            model.threads = threads
        adata = _read_table(table, layer, orientation)
        scores = np.asarray(model.score_samples(adata, n_samples=n_samples, refine=refine), dtype=float)
        on_model = np.isin(np.asarray(adata.var_names, dtype=object), model.feature_ids_)
        depth = np.asarray(adata.X[:, on_model].sum(axis=1)).ravel()
        empty = [str(s) for s, d in zip(adata.obs_names, depth) if d == 0]
        if empty:
            warnings.warn(f"{len(empty)} samples have no reads on the model's features, so no "
                          f"per-read score (written as NaN): {empty[:5]}", stacklevel=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_read = np.where(depth > 0, scores / np.where(depth > 0, depth, 1), np.nan)
        index = pd.Index([str(s) for s in adata.obs_names], dtype=object, name="sample_id")
        frame = pd.DataFrame({"depth": depth.astype(np.int64), "negative_elbo": scores,
                              "negative_elbo_per_read": per_read}, index=index)
        write_tsv(frame, tmp)
    _say(quiet, f"scored {adata.n_obs} samples; wrote {output}")


# ------------------------------------------------------------------------------------------------
# sample, network
# ------------------------------------------------------------------------------------------------


@main.command(context_settings=CONTEXT)
@click.argument("model_dir", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("-n", "--n-samples", "n", required=True, type=click.IntRange(min=1),
              help="Number of synthetic samples.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output BIOM 2.1 (HDF5) file, replaced if it exists.")
@click.option("--depth", default=None, type=click.IntRange(min=1),
              help="Reads per sample [default: drawn from the training samples' depths].")
@click.option("--prefix", default="synthetic", show_default=True,
              help="Sample ids are PREFIX1, PREFIX2, ...")
@click.option("--seed", default=0, type=click.IntRange(0, MAX_SEED), help="Random seed.")
@_verbosity
def sample(model_dir, n, output, depth, prefix, seed, quiet, verbose):
    """Draw N new count samples from a fitted MODEL's generative model into a BIOM file."""
    from .io.tables import write_biom
    from .io.outputs import atomic_path

    _check_verbosity(quiet, verbose)
    with atomic_path(output) as tmp:
        model = _load_model(model_dir)
        counts = model.sample(n, depth=depth, random_state=seed)
        ids = [f"{prefix}{i + 1}" for i in range(n)]
        write_biom(tmp, counts, ids, model.feature_ids_)
    _say(quiet, f"drew {n} samples over {len(model.feature_ids_)} features; wrote {output}")


@main.command(context_settings=CONTEXT)
@click.argument("model_dir", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output edge list (TSV), replaced if it exists.")
@click.option("--top", default=1000, type=click.IntRange(min=0),
              help="Number of feature pairs (strongest |correlation| first).")
@click.option("--min-abs", default=0.0, type=click.FloatRange(0, 1),
              help="Only pairs with |correlation| >= this.")
@_threads
@_verbosity
def network(model_dir, output, top, min_abs, threads, quiet, verbose):
    """The strongest feature-feature clr correlations of a fitted MODEL, as an edge list.

    Writes feature_a, feature_b, correlation, covariance (TSV), sorted by |correlation|;
    computed in chunks from the low-rank covariance, never as a dense D x D matrix.
    """
    from .io.outputs import atomic_path, write_tsv

    _check_verbosity(quiet, verbose)
    with atomic_path(output) as tmp:
        model = _load_model(model_dir)
        if threads is not None:
            model.threads = threads
        edges = model.network(top=top, min_abs=min_abs)
        write_tsv(edges, tmp, index=False)
    _say(quiet, f"wrote {len(edges)} edges to {output}")


# ------------------------------------------------------------------------------------------------
# simulate
# ------------------------------------------------------------------------------------------------


def _parse_eigenvalues(ctx, param, value):
    if value is None:
        return None
    try:
        values = [float(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated numbers, e.g. 4,2,1") from None
    if not values:
        raise click.BadParameter(f"{value!r}: give comma-separated numbers, e.g. 4,2,1")
    return values


@main.command(context_settings=CONTEXT)
@click.option("-o", "--output", "outdir", required=True, type=click.Path(path_type=Path),
              help="Output directory (must not exist unless --force).")
@click.option("-n", "--n-samples", default=1000, type=click.IntRange(min=1))
@click.option("-d", "--n-features", default=200, type=click.IntRange(min=2))
@click.option("-k", "--latent-dim", default=10, type=click.IntRange(min=1))
@click.option("--depth", default=10_000.0, type=click.FloatRange(min=0, min_open=True),
              help="Median reads per sample.")
@click.option("--depth-sd", default=0.5, type=click.FloatRange(min=0),
              help="Standard deviation of log depth.")
@click.option("--sigma", default=0.316, type=click.FloatRange(min=0),
              help="Noise scale of the clr logits.")
@click.option("--abundance-spread", default=1.0, type=click.FloatRange(min=0),
              help="Spread of mean clr abundances (larger = sparser).")
@click.option("--eigenvalues", default=None, callback=_parse_eigenvalues,
              help="Comma-separated variances of the k latent directions [default: geometric "
                   "from 0.2 D to 0.02 D].")
@click.option("--seed", default=0, type=click.IntRange(0, MAX_SEED), help="Random seed.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@_verbosity
def simulate(outdir, n_samples, n_features, latent_dim, depth, depth_sd, sigma,
             abundance_spread, eigenvalues, seed, force, quiet, verbose):
    """Simulate a count table from the MVAE generative model, with its ground truth.

    Writes into OUTDIR: table.biom (BIOM 2.1), loadings_clr.tsv (feature_id x axis: true
    W~), bias_clr.tsv (feature_id, bias_clr), z.tsv (sample_id x z1..zk), depths.tsv
    (sample_id, depth) and simulation.json (settings, seed, sigma, noise variance,
    eigenvalues, density, package versions).
    """
    import json

    import numpy as np
    import pandas as pd

    from .io.tables import write_biom
    from .io.outputs import ResultsDirectory, package_versions, write_tsv
    from .evaluation.simulate import simulate as run_simulation

    _check_verbosity(quiet, verbose)
    with ResultsDirectory(outdir, force=force) as results:
        sim = run_simulation(n_samples, n_features, latent_dim, depth=depth, depth_sd=depth_sd,
                             sigma=sigma, eigenvalues=eigenvalues,
                             abundance_spread=abundance_spread, random_state=seed)
        d = results.path
        samples = pd.Index(sim.sample_ids.tolist(), dtype=object, name="sample_id")
        features = pd.Index(sim.feature_ids.tolist(), dtype=object, name="feature_id")
        k = sim.n_latent

        def write_all():
            write_biom(d / "table.biom", sim.counts, samples, features)
            write_tsv(pd.DataFrame(np.asarray(sim.loadings_clr), index=features,
                                   columns=[f"axis{i + 1}" for i in range(k)]),
                      d / "loadings_clr.tsv")
            write_tsv(pd.DataFrame({"bias_clr": np.asarray(sim.bias_clr)}, index=features),
                      d / "bias_clr.tsv")
            write_tsv(pd.DataFrame(np.asarray(sim.z), index=samples,
                                   columns=[f"z{i + 1}" for i in range(k)]), d / "z.tsv")
            write_tsv(pd.DataFrame({"depth": np.asarray(sim.depths)}, index=samples),
                      d / "depths.tsv")
            config = {
                "generator": "mvae.simulate",
                "settings": {"n_samples": n_samples, "n_features": n_features,
                             "n_latent": latent_dim, "depth": depth, "depth_sd": depth_sd,
                             "sigma": sigma, "abundance_spread": abundance_spread,
                             "eigenvalues": eigenvalues},
                "seed": seed,
                "random_state": sim.random_state,
                "sigma": float(sim.sigma),
                "noise_variance": float(sim.sigma) ** 2,
                "eigenvalues": [float(v) for v in sim.eigenvalues],
                "density": float(sim.density),
                "files": ["table.biom", "loadings_clr.tsv", "bias_clr.tsv", "z.tsv",
                          "depths.tsv", "simulation.json"],
                "versions": package_versions(),
            }
            (d / "simulation.json").write_text(json.dumps(config, indent=1), encoding="utf-8")

        _wrap_write_errors(outdir, write_all)
    _say(quiet, f"simulated {sim.n_samples} samples x {sim.n_features} features (density "
                f"{sim.density:.3f}); wrote {outdir}/")


# ------------------------------------------------------------------------------------------------
# info
# ------------------------------------------------------------------------------------------------


@main.command(context_settings=CONTEXT)
@click.argument("path", metavar="MODEL|TABLE", type=click.Path(path_type=Path))
@_table_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(path, layer, orientation, as_json):
    """Summarise a saved model directory or a count table.

    For a table: shape, density, reads per sample, empty samples/features. For a model:
    hyperparameters, features, latent axes and the variance they explain, epochs, seed and the
    run that made it.
    """
    import json

    if path.is_dir() or (path.is_file() and path.name in ("config.json", "model.safetensors")):
        summary = _model_summary(path)
    else:
        summary = _table_summary(path, layer, orientation)
    if as_json:
        click.echo(json.dumps(summary, indent=1, ensure_ascii=False))
        return
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, list):
            value = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        click.echo(f"{key:<{width}}  {value}")


def _model_summary(path: Path) -> dict:
    import json

    from .errors import ModelFileError

    directory = path.parent if path.is_file() else path
    if not (directory / "config.json").is_file():
        raise ModelFileError(
            f"{directory}: a directory but not a saved mvae model (no config.json). Give a "
            "model directory written by `mvae fit` or a count table file."
        )
    model = _load_model(directory)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    hist = model.history_
    n_params = int(sum(p.numel() for p in model.module_.parameters()))
    filtered = model.filtered_
    run = config.get("run") or {}
    restored = _restored_losses(model) if len(hist) else None
    summary = {
        "model": str(directory),
        "format": f"{config.get('format')} schema {config.get('schema_version')}",
        "features": len(model.feature_ids_),
        "input features": len(model.input_feature_ids_),
        "dropped samples": int((filtered["axis"] == "sample").sum()),
        "dropped features": int((filtered["axis"] == "feature").sum()),
        "latent dim": int(model.n_latent),
        "encoder depth": int(model.encoder_depth),
        "hidden": int(model.n_hidden),
        "objective": model.objective,
        "pseudocount": float(model.pseudocount),
        "basis": model.basis,
        "parameters": n_params,
        "epochs": int(len(hist)),
        "best epoch": model.best_epoch_,
        # the losses of the epoch whose weights the model holds (early stopping restores the
        # best epoch), not of the last epoch run
        "train loss": restored["train"] if restored else None,
        "validation loss": restored["validation"] if restored else None,
        "polish": _polish_summary(model),
        "noise variance": float(model.noise_variance_),
        "proportion explained": [float(v) for v in model.explained_variance_ratio_],
        "seed": int(model.seed_),
        "threads": run.get("threads", model.threads),
    }
    if run.get("input"):
        summary["input"] = run["input"].get("path")
        summary["input sha256"] = run["input"].get("sha256")
    versions = run.get("versions") or config.get("versions") or {}
    summary["versions"] = {k: v for k, v in versions.items() if v is not None}
    return summary


def _table_summary(path: Path, layer, orientation) -> dict:
    import numpy as np

    adata = _read_table(path, layer, orientation)
    X = adata.X
    depth = np.asarray(X.sum(axis=1)).ravel()
    observed = np.diff(X.indptr)
    n, d = X.shape
    return {
        "table": str(path),
        "samples": int(n),
        "features": int(d),
        "non-zero": int(X.nnz),
        "density": float(X.nnz / (n * d)),
        "total reads": int(depth.sum()),
        "reads per sample (min, median, max)": [int(depth.min()), float(np.median(depth)),
                                                int(depth.max())],
        "features per sample (min, median, max)": [int(observed.min()),
                                                   float(np.median(observed)),
                                                   int(observed.max())],
        "all-zero samples": int((depth == 0).sum()),
        "all-zero features": int((np.asarray(X.getnnz(axis=0)).ravel() == 0).sum()),
        "first samples": [str(s) for s in adata.obs_names[:3]],
        "first features": [str(f) for f in adata.var_names[:3]],
    }



if __name__ == "__main__":  # pragma: no cover
    main()
