"""Write the results directory of ``mvae fit`` (and of ``mvae simulate``) atomically.

Every file goes into a temporary sibling of the output directory (``.NAME.mvae-tmp-XXXX``, on
the same file system), which is renamed into place only when everything has been written. An
interrupted run therefore never leaves a half-written OUTDIR: either the complete directory is
there or nothing is (plus, after a hard kill, a hidden temporary sibling that can be deleted).
The staging directory is created *before* any work, so an unwritable location is reported before
a model is trained.

``--force`` replaces only an earlier mvae result (:func:`is_mvae_result`: a directory holding an
mvae ``config.json`` with a ``"run"`` section or an mvae ``simulation.json``, and nothing but the
files mvae writes), never a directory that holds an input of the run. While a run is writing
OUTDIR it holds a lock on ``.NAME.mvae-lock`` beside it, so a second run into the same OUTDIR is
refused at start; the run that holds the lock removes the staging directories an earlier
interrupted run left (``.NAME.mvae-tmp-*``, ``.NAME.mvae-old-*``) and says so.

The files of a fit (:func:`write_fit_results`):

=====================  ======================================================================
``model.safetensors``  model weights (``MultinomialVAE.save``; no pickle)
``config.json``        hyperparameters, feature ids, basis, history (``MultinomialVAE.save``)
                       plus a ``"run"`` section: input path, size and sha256, metadata file,
                       command line, seed, threads, device, package versions, times
``embeddings.tsv``     ``sample_id`` then ``axis1..axisk``: posterior means of z
``ordination.txt``     scikit-bio ``OrdinationResults`` (QIIME 2 / Emperor): eigvals = variance
                       of the clr logits per axis, proportion explained, features = clr
                       loadings, samples = embeddings
``loadings_clr.tsv``   ``feature_id`` then ``axis1..axisk`` (D rows)
``loadings_ilr.tsv``   ``balance`` then ``axis1..axisk`` (D - 1 rows; tree node names for a tree)
``correlations.tsv``   ``feature_a, feature_b, correlation, covariance``: strongest clr
                       correlations, sorted by ``|correlation|`` (never D x D in memory)
``scores.tsv``         ``sample_id, depth, negative_elbo, negative_elbo_per_read, split``;
                       split is ``train`` or ``validation`` (the samples held out for early
                       stopping): the model has seen only the first kind, so compare anomaly
                       scores within a split (training samples score lower when it overfits)
``history.tsv``        one row per epoch (``MultinomialVAE.history_``)
``filtered.tsv``       ``axis, id, reason``: samples/features dropped before fitting
``loss.png``           train / validation loss per epoch
``embedding.png``      first two axes, coloured by a metadata column when given
=====================  ======================================================================

Samples dropped before fitting (all-zero) are listed in ``filtered.tsv`` and left out of
``embeddings.tsv``, ``ordination.txt`` and ``scores.tsv``, so those files never hold NaN.
All tables are UTF-8, tab-separated, with a header row and floats written in full precision.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from mvae.errors import InputError
from mvae.files import atomic_path, fsync_dir, umask  # noqa: F401 (atomic_path re-exported)
from mvae.training.checkpoint import json_default

if TYPE_CHECKING:  # pragma: no cover
    import anndata
    import pandas as pd

__all__ = [
    "ResultsDirectory",
    "FIT_FILES",
    "is_mvae_result",
    "write_fit_results",
    "write_tsv",
    "write_ordination",
    "add_run_info",
    "package_versions",
    "atomic_path",
]

#: Files ``mvae fit`` writes, in the order they are written.
FIT_FILES = (
    "model.safetensors",
    "config.json",
    "embeddings.tsv",
    "ordination.txt",
    "loadings_clr.tsv",
    "loadings_ilr.tsv",
    "correlations.tsv",
    "scores.tsv",
    "history.tsv",
    "filtered.tsv",
    "loss.png",
    "embedding.png",
)

#: Files ``mvae simulate`` and ``mvae images fit`` write (for recognising an earlier result).
SIMULATE_FILES = ("table.biom", "loadings_clr.tsv", "bias_clr.tsv", "z.tsv", "depths.tsv",
                  "simulation.json")
IMAGE_FIT_FILES = ("model.safetensors", "config.json", "history.tsv", "loss.png", "samples.png",
                   "reconstructions.png", "scores.tsv")

_PACKAGES = ("mvae", "torch", "numpy", "scipy", "pandas", "anndata", "scikit-bio",
             "biom-format", "h5py", "safetensors", "click", "matplotlib", "tqdm")


class ResultsDirectory:
    """A directory whose files appear all at once.

    Use as a context manager: files are written under :attr:`path` (a temporary sibling of
    ``outdir``); a clean exit renames it to ``outdir``, an exception removes it and leaves any
    existing ``outdir`` untouched.

    Parameters
    ----------
    outdir : str or os.PathLike
        The final directory. Missing parent directories are created.
    force : bool
        Replace an existing ``outdir`` (only at commit: if the run fails it is kept), provided it
        is an earlier mvae result (:func:`is_mvae_result`).
    inputs : sequence of path
        The files this run reads (table, metadata, tree): ``outdir`` must not hold any of them.

    Raises
    ------
    InputError
        On entry: ``outdir`` exists (without ``force``), is a file, is not an earlier mvae
        result (with ``force``), holds an input, is being written by another run, or its parent
        cannot be created or written. On commit: the rename failed.

    Examples
    --------
    >>> with ResultsDirectory("results/run1") as out:  # doctest: +SKIP
    ...     (out.path / "a.tsv").write_text("x\\n")
    """

    def __init__(self, outdir: str | os.PathLike, *, force: bool = False,
                 inputs: Sequence[str | os.PathLike] = ()):
        self.outdir = Path(outdir)
        self._target = Path(os.path.abspath(outdir))  # "." and "a/.." have a name and a parent
        self.force = force
        self.inputs = [Path(p) for p in inputs if p is not None]
        self.path: Path | None = None
        self._lock: _OutputLock | None = None

    def __enter__(self) -> "ResultsDirectory":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def open(self) -> Path:
        """Check the target, lock it, and create the staging directory; returns its path."""
        out = self._target
        shown = str(self.outdir)
        _refuse_inputs_inside(self.outdir, self.inputs)
        if out.exists() or out.is_symlink():
            if not out.is_dir():
                raise InputError(
                    f"{shown}: exists and is not a directory. Choose another output directory."
                )
            if not self.force:
                raise InputError(
                    f"{shown}: already exists. Pass --force to replace it (it is replaced only "
                    "once the new results are complete), or choose another output directory."
                )
            _refuse_unless_result(self.outdir)
        parent = out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"{shown}: cannot create the output directory ({exc.strerror or exc}: "
                f"{exc.filename or parent}). Choose a location you can write to."
            ) from exc
        self._lock = _OutputLock.acquire(out)
        try:
            _remove_leftovers(out)
            self.path = Path(tempfile.mkdtemp(prefix=f".{out.name}.mvae-tmp-", dir=parent))
        except OSError as exc:
            self._release()
            raise InputError(
                f"{shown}: cannot create the output directory ({exc.strerror or exc}: "
                f"{exc.filename or parent}). Choose a location you can write to."
            ) from exc
        except BaseException:
            self._release()
            raise
        return self.path

    def commit(self) -> None:
        """Rename the staging directory to ``outdir`` (replacing it when ``force``)."""
        if self.path is None:
            raise RuntimeError("ResultsDirectory.commit() before open()")
        out = self._target
        _normal_permissions(self.path)
        old = None
        try:
            if out.exists() and self.force:
                try:  # files may have been added while the model trained
                    _refuse_unless_result(self.outdir)
                except InputError as exc:
                    kept, self.path = self.path, None
                    self._release()
                    raise InputError(f"{exc} The new results are complete in {kept}.") from None
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.mvae-old-", dir=self.path.parent))
                os.rmdir(old)
                os.rename(out, old)
            os.rename(self.path, out)
        except OSError as exc:
            if old is not None and not out.exists():
                os.rename(old, out)  # put the previous results back
            self.discard()
            raise InputError(
                f"{self.outdir}: cannot move the finished results into place ({exc}). Nothing was "
                "changed; check the location and run again."
            ) from exc
        self.path = None
        fsync_dir(out.absolute().parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._release()

    def discard(self) -> None:
        """Remove the staging directory and everything in it."""
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _result_config(directory: Path) -> tuple[str, set] | None:
    """``(kind, files it records)`` of an earlier mvae result in ``directory``, else None."""
    for name, ok in (("config.json", lambda c: str(c.get("format", "")).startswith("mvae.")
                      and isinstance(c.get("run"), dict)),
                     ("simulation.json", lambda c: c.get("generator") == "mvae.simulate")):
        p = directory / name
        try:
            if p.is_symlink() or not p.is_file() or p.stat().st_size > 2**28:
                continue
            config = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(config, dict) and ok(config):
            recorded = (config.get("run") or {}).get("outputs") or config.get("files") or []
            return name, {str(f) for f in recorded if isinstance(f, str)}
    return None


def is_mvae_result(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` is an earlier result of ``mvae fit``, ``mvae simulate`` or ``mvae
    images fit`` that ``--force`` may replace.

    It must hold an mvae ``config.json`` with a ``"run"`` section (what ``mvae fit`` writes) or
    an mvae ``simulation.json``, and nothing else but plain files with the names mvae writes: a
    user's own file or folder inside it makes it not replaceable.
    """
    return _foreign_entries(Path(directory)) == []


def _foreign_entries(directory: Path) -> list[str] | None:
    """None when ``directory`` holds no mvae marker; else the entries mvae did not write."""
    found = _result_config(directory)
    if found is None:
        return None
    allowed = set(FIT_FILES) | set(SIMULATE_FILES) | set(IMAGE_FIT_FILES) | found[1]
    foreign = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name not in allowed or entry.is_symlink() or not entry.is_file():
            foreign.append(entry.name + ("/" if entry.is_dir() else ""))
    return foreign


def _refuse_unless_result(out: Path) -> None:
    try:
        foreign = _foreign_entries(out)
    except OSError as exc:
        raise InputError(f"{out}: cannot be read to check what it holds ({exc}); --force "
                         "replaces only an earlier mvae result.") from exc
    if foreign is None:
        raise InputError(
            f"{out}: --force replaces only an earlier mvae result, and this directory is not one "
            "(it has no mvae config.json or simulation.json). Nothing was changed; choose a new "
            "output directory, e.g. a subdirectory of it.")
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise InputError(
            f"{out}: --force would delete files mvae did not write ({shown}). Nothing was "
            "changed; move them elsewhere or choose a new output directory.")


def _refuse_inputs_inside(out: Path, inputs: Sequence[Path]) -> None:
    """An output directory never holds (or is) a file the run reads."""
    target = Path(os.path.realpath(out))
    for p in inputs:
        real = Path(os.path.realpath(p))
        if real == target or target in real.parents:
            raise InputError(
                f"{out}: holds {p}, an input of this run; the output directory is replaced as a "
                f"whole, so it must be a new directory (e.g. {out}/results).")


class _OutputLock:
    """An exclusive ``flock`` on ``.NAME.mvae-lock`` beside an output directory.

    The kernel drops the lock when the process ends, however it ends, so a killed run never
    leaves a stale lock; the file is removed on release. Where ``fcntl`` is missing (Windows)
    no lock is taken.
    """

    def __init__(self, path: Path, fd: int | None):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, out: Path) -> "_OutputLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return cls(out, None)
        path = out.absolute().parent / f".{out.name}.mvae-lock"
        for _ in range(10):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
            except OSError as exc:
                raise InputError(f"{out}: cannot create the lock file {path} "
                                 f"({exc.strerror or exc}). Choose a location you can write "
                                 "to.") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise InputError(
                    f"{out}: another mvae run is writing this output directory now (it holds "
                    f"the lock {path}). Wait for it to finish or choose another output "
                    "directory.") from None
            try:  # the holder before us may have removed the file we opened: lock the new one
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except OSError:
                same = False
            if same:
                return cls(path, fd)
            os.close(fd)
        raise InputError(f"{out}: could not take the lock {path}; try again.")  # pragma: no cover

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding the lock (see acquire)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _remove_leftovers(out: Path) -> None:
    """Remove the staging directories an earlier interrupted run into ``out`` left; warn."""
    parent = out.absolute().parent
    pattern = glob.escape(f".{out.name}.mvae-")
    removed = []
    for kind in ("tmp-", "old-"):
        for p in sorted(parent.glob(pattern + kind + "*")):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    if removed:
        warnings.warn(f"removed {len(removed)} unfinished output director"
                      f"{'y' if len(removed) == 1 else 'ies'} that an interrupted earlier run "
                      f"into {out} left in {parent}: {', '.join(removed[:5])}", stacklevel=4)


def _normal_permissions(directory: Path) -> None:
    """Give the staged directory and its files the modes a plain mkdir/open would have.

    ``mkdtemp`` makes the directory private (0700) and some writers create private files; a
    results directory on a shared server should follow the user's umask instead.
    """
    mask = umask()
    try:
        os.chmod(directory, 0o777 & ~mask)
        for entry in directory.iterdir():
            if entry.is_file() and not entry.is_symlink():
                os.chmod(entry, 0o666 & ~mask)
    except OSError:
        pass  # permissions are a courtesy; the results are complete either way


def write_tsv(frame: "pd.DataFrame", path: str | os.PathLike, *, index: bool = True) -> None:
    """A DataFrame as UTF-8 TSV with a header; floats in full (round-trip) precision."""
    frame.to_csv(path, sep="\t", index=index, encoding="utf-8", lineterminator="\n")


def write_ordination(
    path: str | os.PathLike,
    embeddings: "pd.DataFrame",
    loadings: "pd.DataFrame",
    explained_variance: Sequence[float],
    proportion_explained: Sequence[float],
) -> None:
    """Write an embedding as a scikit-bio ``OrdinationResults`` text file.

    Parameters
    ----------
    embeddings : pandas.DataFrame, shape (n_samples, k)
        Sample coordinates ("Site" block).
    loadings : pandas.DataFrame, shape (n_features, k)
        Feature coordinates ("Species" block): the clr loadings.
    explained_variance, proportion_explained : sequence of float, length k
        "Eigvals" and "Proportion explained": the variance of the clr logits along each axis and
        its share of the model's total clr variance (signal plus noise).
    """
    import pandas as pd
    from skbio import OrdinationResults

    axes = list(embeddings.columns)
    result = OrdinationResults(
        short_method_name="MVAE",
        long_method_name="Multinomial variational autoencoder (ILR basis)",
        eigvals=pd.Series(list(map(float, explained_variance)), index=axes),
        samples=embeddings,
        features=loadings,
        proportion_explained=pd.Series(list(map(float, proportion_explained)), index=axes),
    )
    result.write(str(path), format="ordination")


def package_versions() -> dict:
    """Installed versions of mvae and the packages its results depend on (None if absent)."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def add_run_info(directory: str | os.PathLike, run: dict) -> None:
    """Add a ``"run"`` section to the ``config.json`` that ``MultinomialVAE.save`` wrote.

    ``MultinomialVAE.load`` reads only the keys it knows, so the model stays loadable.
    """
    path = Path(directory) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["run"] = run
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=1, ensure_ascii=False, default=json_default),
                   encoding="utf-8")
    os.replace(tmp, path)


def _axes(k: int) -> list[str]:
    return [f"axis{i + 1}" for i in range(k)]


def write_fit_results(
    directory: str | os.PathLike,
    model,  # a fitted mvae.model.MultinomialVAE (not imported: io sits below the estimator)
    adata: "anndata.AnnData",
    *,
    run: dict,
    top: int = 1000,
    min_abs: float = 0.0,
    colour: "pd.Series | None" = None,
    colour_kind: str | None = None,
) -> list[str]:
    """Write every file of a fit (see the module docstring) into ``directory``.

    Parameters
    ----------
    directory : path
        An existing, empty directory (normally ``ResultsDirectory.path``).
    model : MultinomialVAE
        Fitted on ``adata``.
    adata : anndata.AnnData or mvae.io.streaming.StreamingCounts
        The table the model was fitted on (its ``obsm["X_mvae"]`` and ``obs["mvae_negative_elbo"]``
        hold the embeddings and scores), or, for
        :meth:`~mvae.MultinomialVAE.fit_stream`, the fitted rows and features of the file
        (``StreamingCounts(path, rows=model.stream_rows_, features=model.kept_feature_index_)``),
        which is read chunk by chunk for the embeddings, scores and depths.
    run : dict
        Provenance added to ``config.json`` as ``"run"`` (the output list and the writing time
        are added here).
    top, min_abs : int, float
        Edges in ``correlations.tsv``: at most ``top`` pairs with ``|correlation| >= min_abs``.
    colour, colour_kind : pandas.Series, str, optional
        Metadata values (indexed by sample id) to colour ``embedding.png`` by.

    Returns
    -------
    list of str
        The file names written, in :data:`FIT_FILES` order.
    """
    import numpy as np
    import pandas as pd

    from mvae.io.plots import plot_embedding, plot_loss

    t0 = time.perf_counter()
    d = Path(directory)
    model.save(d)

    from mvae.io import is_streamed

    if is_streamed(adata):  # streamed: every row served was fitted
        ids = adata.sample_ids
        emb, scores = model.embed_and_score(adata)
        depth = adata.scan().depths  # one pass over the file, float64 sums
    else:
        dropped = set(model.filtered_.loc[model.filtered_["axis"] == "sample", "id"])
        keep = np.array([s not in dropped for s in adata.obs_names])
        ids = adata.obs_names[keep]
        emb = np.asarray(adata.obsm["X_mvae"])[keep]
        kept = adata[keep]
        scores = np.asarray(kept.obs["mvae_negative_elbo"], dtype=float)  # scored by the fit
        depth = np.asarray(kept.X.sum(axis=1)).ravel()
    sample_ids = pd.Index([str(s) for s in ids], dtype=object, name="sample_id")
    k = model.components_.shape[1]
    axes = _axes(k)
    embeddings = pd.DataFrame(emb, index=sample_ids, columns=axes)
    write_tsv(embeddings, d / "embeddings.tsv")

    loadings_clr = model.loadings("clr")
    loadings_clr.index = pd.Index(loadings_clr.index, dtype=object, name="feature_id")
    write_ordination(d / "ordination.txt", embeddings, loadings_clr, model.explained_variance_,
                     model.explained_variance_ratio_)
    write_tsv(loadings_clr, d / "loadings_clr.tsv")
    loadings_ilr = model.loadings("ilr")
    loadings_ilr.index = pd.Index(loadings_ilr.index, dtype=object, name="balance")
    write_tsv(loadings_ilr, d / "loadings_ilr.tsv")

    edges = model.network(top=top, min_abs=min_abs)
    write_tsv(edges, d / "correlations.tsv", index=False)

    held_out = {str(s) for s in getattr(model, "validation_samples_", ())}
    write_tsv(pd.DataFrame({"depth": depth.astype(np.int64), "negative_elbo": scores,
                            "negative_elbo_per_read": scores / depth,
                            "split": ["validation" if s in held_out else "train"
                                      for s in sample_ids]}, index=sample_ids),
              d / "scores.tsv")

    write_tsv(model.history_, d / "history.tsv", index=False)
    write_tsv(model.filtered_, d / "filtered.tsv", index=False)
    plot_loss(model.history_, d / "loss.png", best_epoch=model.best_epoch_)
    plot_embedding(embeddings, d / "embedding.png",
                   colour=None if colour is None else colour.reindex(sample_ids),
                   kind=colour_kind, proportion_explained=model.explained_variance_ratio_)

    run = dict(run)
    run["outputs"] = list(FIT_FILES)
    run["write_seconds"] = round(time.perf_counter() - t0, 3)
    add_run_info(d, run)
    return list(FIT_FILES)
