"""Read and write count tables.

mvae works on samples x features tables of raw counts held in an :class:`anndata.AnnData`
(``obs`` = samples, ``var`` = features, ``X`` = counts). Three kinds of file are read:

- BIOM (``.biom``), in all three forms that ``biom.load_table`` understands: HDF5 (BIOM 2.1),
  JSON (BIOM 1.0) and classic tab-separated text. A BIOM file stores features x samples; it is
  transposed on reading.
- AnnData (``.h5ad``), from ``X`` or from a named layer (e.g. ``layer="counts"``).
- Delimited text (``.tsv``, ``.txt``: tab-separated; ``.csv``: comma-separated), one id column
  and one header row. Which axis is which is *never guessed*: pass
  ``orientation="samples-as-rows"`` or ``"features-as-rows"``. The ids are compared with the
  patterns feature and sample ids usually follow (QIIME 2 feature hashes, sequences, taxonomy
  strings, OTU/ASV numbers, Ensembl genes; SRA/BioSample accessions, Qiita sample names, cell
  barcodes, ``sample1``...): without an orientation the error says which one the ids suggest,
  and an orientation the ids contradict gives a :class:`OrientationWarning`.

Gzipped files (``.biom.gz``, ``.h5ad.gz``, ``.tsv.gz``, ...) are read too. Every table goes
through :func:`mvae.io.validation.check_counts`, so a bad value is reported with the file name, the
sample, the feature and the value. Nothing is dropped here: empty samples and features are the
model's business (:func:`mvae.io.validation.drop_empty`). Ids are kept exactly as written (any
Unicode; numeric-looking ids such as ``0003`` stay strings).

biom-format, anndata and h5py are imported inside the functions that need them, so importing
this module is cheap.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from mvae.errors import InputError

from .formats import _HDF5_MAGIC, ORIENTATIONS, OrientationWarning, _is_gzip, _is_hdf5

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = [
    "read_counts",
    "write_biom",
    "sha256_file",
    "OrientationWarning",
    "ORIENTATIONS",
    "SUPPORTED_SUFFIXES",
    "TEXT_SUFFIXES",
]

#: Endings of delimited text tables (need an ``orientation``); ``.csv`` is comma-separated.
TEXT_SUFFIXES = (".tsv", ".tsv.gz", ".csv", ".csv.gz", ".txt", ".txt.gz")

#: File name endings read_counts accepts (matched case-insensitively).
SUPPORTED_SUFFIXES = (".biom", ".biom.gz", ".h5ad", ".h5ad.gz") + TEXT_SUFFIXES

#: How the axes of a text table are laid out; there is no default.

def read_counts(
    path: str | os.PathLike,
    *,
    layer: str | None = None,
    orientation: str | None = None,
) -> "anndata.AnnData":
    """Read a count table as samples x features.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.biom`` file (HDF5, JSON or classic TSV), a ``.h5ad`` file, or a delimited text
        table (``.tsv``/``.txt`` tab-separated, ``.csv`` comma-separated), optionally gzipped
        (``.biom.gz``, ``.h5ad.gz``, ``.tsv.gz``, ...).
    layer : str, optional
        For ``.h5ad`` only: read counts from ``adata.layers[layer]`` instead of ``adata.X``.
    orientation : {"samples-as-rows", "features-as-rows"}, optional
        Required for text tables, refused for BIOM and h5ad (whose layout is fixed).
        ``"samples-as-rows"``: the header row names the features and the first column the
        samples; ``"features-as-rows"``: the other way round (the layout of
        ``biom convert --to-tsv``). In a features-as-rows table a last column named
        ``taxonomy`` (or ``taxon``, ``Consensus Lineage``) is feature annotation: it is kept in
        ``var`` and not read as a sample.

    Returns
    -------
    anndata.AnnData, shape (n_samples, n_features)
        ``X`` is a ``scipy.sparse.csr_matrix`` of ``float64`` values that are exact non-negative
        integers (float64 holds every integer up to 2**53 exactly). ``obs_names`` are the sample
        ids and ``var_names`` the feature ids, exactly as in the file. For ``.h5ad`` input the
        ``obs`` and ``var`` annotation columns are kept; layers, ``obsm`` and ``uns`` are not.
        All-zero samples and features are kept.

    Raises
    ------
    InputError
        If the file is missing, a directory, empty, of an unsupported type, corrupt or
        unparsable; if ``layer`` is not in the file; if ``orientation`` is missing for a text
        table (the message says which layout the ids suggest) or given for another format; if a
        value is not a raw count or ids repeat. The message names the file, and for text
        tables the line.

    Warns
    -----
    OrientationWarning
        If the ids of a text table look like the other axis than ``orientation`` says.

    Examples
    --------
    >>> adata = read_counts("data/moving_pictures_16s_table.biom")  # doctest: +SKIP
    >>> adata.shape  # doctest: +SKIP
    (34, 759)
    >>> adata = read_counts("counts.tsv", orientation="features-as-rows")  # doctest: +SKIP
    """
    shown = str(path)
    p = Path(path)
    kind = _check_path(p, shown)
    if orientation is not None and orientation not in ORIENTATIONS:
        raise InputError(
            f"{shown}: orientation={orientation!r} is not allowed; choose "
            f"{' or '.join(repr(o) for o in ORIENTATIONS)}."
        )
    if kind != "text" and orientation is not None:
        raise InputError(
            f"{shown}: orientation={orientation!r} only applies to text tables (.tsv, .csv, "
            f".txt); a {'BIOM' if kind == 'biom' else 'h5ad'} file fixes which axis holds the "
            "samples. Leave orientation unset."
        )
    if kind != "h5ad" and layer is not None:
        raise InputError(
            f"{shown}: layer={layer!r} only applies to .h5ad files; a "
            f"{'BIOM' if kind == 'biom' else 'text'} file holds one table. Leave layer unset."
        )
    try:
        return _read_kind(p, shown, kind, layer, orientation)
    except (zlib.error, gzip.BadGzipFile, EOFError) as exc:
        # found by tests/fuzz/fuzz_readers.py: a corrupt gzip stream escaped as zlib.error
        raise InputError(f"{shown}: the compressed data is corrupt or truncated ({exc}); "
                         "re-create or re-download the file") from exc


def _read_kind(p: Path, shown: str, kind: str, layer, orientation):
    from mvae.io.validation import check_counts

    if kind == "text":
        from .text import read_text_table

        X, sample_ids, feature_ids, var = read_text_table(p, shown, orientation)
        X = check_counts(X, sample_ids=sample_ids, feature_ids=feature_ids, source=shown)
        return _make_anndata(X, sample_ids, feature_ids, None, var)
    with _uncompressed_hdf5(p, shown) as local:
        if kind == "biom":
            X, sample_ids, feature_ids = _read_biom(local, shown)
            obs = var = None
        else:
            X, sample_ids, feature_ids, obs, var = _read_h5ad(local, shown, layer)

    X = check_counts(X, sample_ids=sample_ids, feature_ids=feature_ids, source=shown)
    return _make_anndata(X, sample_ids, feature_ids, obs, var)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (as stored, before any gunzip).

    ``hashlib.file_digest`` reads the file in blocks, so a large table is never held in memory.
    """
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_biom(
    path: str | os.PathLike,
    X,
    sample_ids: Sequence[str],
    feature_ids: Sequence[str],
) -> None:
    """Write a samples x features count table as an HDF5 BIOM 2.1 file.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; overwritten if it exists. Conventionally ends in ``.biom``.
    X : array-like or scipy sparse matrix, shape (n_samples, n_features)
        Raw counts (checked with :func:`mvae.io.validation.check_counts`). Stored as features x
        samples, as BIOM requires.
    sample_ids, feature_ids : sequence of str
        Unique ids of the rows and columns of ``X``.

    Raises
    ------
    InputError
        If ``X`` is not a table of raw counts, ids do not match it or repeat, or the file cannot
        be written.
    """
    from mvae.io.validation import check_counts

    shown = str(path)
    sample_ids = [str(s) for s in sample_ids]
    feature_ids = [str(f) for f in feature_ids]
    M = check_counts(X, sample_ids=sample_ids, feature_ids=feature_ids, source=f"writing {shown}")

    import h5py
    from biom import Table

    table = Table(M.T.tocsr(), observation_ids=feature_ids, sample_ids=sample_ids)
    # Written beside the target and renamed into place: an interrupted write never leaves a
    # truncated .biom under the final name.
    target = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        with h5py.File(tmp, "w") as f:
            table.to_hdf5(f, generated_by="mvae")
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it private; follow the umask instead
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise InputError(
            f"{shown}: cannot write the BIOM file ({exc}). Check that the folder exists and is "
            "writable."
        ) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _check_path(p: Path, shown: str) -> str:
    """Return 'biom', 'h5ad' or 'text' for a readable, non-empty file, else raise InputError."""
    if not p.exists():
        raise InputError(
            f"{shown}: no such file (working directory: {os.getcwd()}). Check the path."
        )
    if p.is_dir():
        raise InputError(
            f"{shown}: is a directory; expected a count table file "
            f"({', '.join(SUPPORTED_SUFFIXES)})."
        )
    name = p.name.lower()
    if name.endswith((".biom", ".biom.gz")):
        kind = "biom"
    elif name.endswith((".h5ad", ".h5ad.gz")):
        kind = "h5ad"
    elif name.endswith(TEXT_SUFFIXES):
        kind = "text"
    else:
        raise InputError(
            f"{shown}: unsupported file type. Supported: {', '.join(SUPPORTED_SUFFIXES)} "
            "(.biom may be HDF5, JSON or classic tab-separated BIOM; .tsv/.txt are "
            "tab-separated and .csv comma-separated text tables, which need an orientation). "
            "Rename the file to the ending that matches its content, or convert it with "
            "`biom convert -i table.txt -o table.biom --to-hdf5 --table-type='OTU table'`."
        )
    if p.stat().st_size == 0:
        raise InputError(f"{shown}: the file is empty (0 bytes). Re-export or re-download it.")
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise InputError(f"{shown}: cannot be opened ({exc}). Check its permissions.") from exc
    return kind


@contextmanager
def _uncompressed_hdf5(p: Path, shown: str) -> Iterator[Path]:
    """Yield a path h5py/biom can read.

    biom reads gzipped JSON and TSV itself but not gzipped HDF5, and anndata reads no gzip at
    all, so gzipped HDF5 is unpacked into a temporary file that is removed afterwards.
    """
    if not _is_gzip(p):
        yield p
        return
    try:
        with gzip.open(p, "rb") as gz:
            is_hdf5 = gz.read(len(_HDF5_MAGIC)) == _HDF5_MAGIC
    except (OSError, EOFError) as exc:
        raise InputError(
            f"{shown}: corrupt gzip file ({exc}). Re-download or re-export it."
        ) from exc
    if not is_hdf5:
        yield p  # gzipped JSON/TSV: biom handles it
        return
    with tempfile.TemporaryDirectory(prefix="mvae-") as tmp:
        local = Path(tmp) / "unpacked.h5"
        try:
            with gzip.open(p, "rb") as gz, open(local, "wb") as out:
                shutil.copyfileobj(gz, out)
        except (OSError, EOFError) as exc:
            raise InputError(
                f"{shown}: corrupt or truncated gzip file ({exc}). Re-download or re-export it."
            ) from exc
        yield local


def _read_biom(p: Path, shown: str):
    """(features x samples BIOM) -> (samples x features CSR, sample ids, feature ids)."""
    import biom
    from biom.exception import TableException

    form = "hdf5" if _is_hdf5(p) else "json" if _is_json(p) else "tsv"
    try:
        table = biom.load_table(str(p))
    except MemoryError:
        raise
    except TableException as exc:
        why = _explain_table_exception(p, form, exc)
        raise InputError(f"{shown}: invalid BIOM table: {why}") from exc
    except Exception as exc:
        if form == "tsv":
            _scan_classic_tsv(p, shown, check_values=True)  # raises a precise message if it can
        raise InputError(f"{shown}: {_explain_biom_failure(p, form, exc)}") from exc

    if form == "tsv":
        _scan_classic_tsv(p, shown, check_values=False)  # what biom lets through silently
    if 0 in table.shape:
        # biom's TSV parser turns almost any text into a table; an empty one means it was not one
        raise InputError(
            f"{shown}: could not be parsed as a BIOM table ({form} form gave "
            f"{table.shape[1]} samples x {table.shape[0]} features). A classic table needs a "
            "header line '#OTU ID<TAB>sample1<TAB>sample2...' and one line per feature. Check "
            "it with `biom validate-table -i FILE` or re-export it."
        )

    # matrix_data is features x samples; Table.to_anndata() fails on tables without metadata
    X = table.matrix_data.T.tocsr()
    sample_ids = [str(s) for s in table.ids(axis="sample")]
    feature_ids = [str(f) for f in table.ids(axis="observation")]
    return X, sample_ids, feature_ids


def _explain_table_exception(p: Path, form: str, exc: Exception) -> str:
    """biom says 'Duplicate sample IDs!' without naming them; name them."""
    from mvae.io.validation import _check_ids

    try:
        sample_ids, feature_ids = _biom_ids(p, form)
        _check_ids(sample_ids, len(sample_ids), "sample", "columns", "")
        _check_ids(feature_ids, len(feature_ids), "feature", "rows", "")
    except InputError as named:
        return str(named)
    except Exception:  # the ids themselves are unreadable: fall back to biom's words
        pass
    return f"{exc}. Check it with `biom validate-table -i FILE` or re-export it."


def _biom_ids(p: Path, form: str) -> tuple[list[str], list[str]]:
    """Sample and feature ids as stored, without building a Table (error path only)."""
    if form == "hdf5":
        import h5py

        with h5py.File(p, "r") as f:
            return [_decode(s) for s in f["sample/ids"][:]], [
                _decode(s) for s in f["observation/ids"][:]
            ]
    if form == "json":
        import json

        with _open_text(p) as fh:
            doc = json.load(fh)
        return [str(c["id"]) for c in doc["columns"]], [str(r["id"]) for r in doc["rows"]]
    header, rows = _classic_tsv_layout(p)
    return header[1:], [fields[0] for _, fields in rows]


def _decode(s) -> str:
    return s.decode("utf-8") if isinstance(s, bytes) else str(s)


def _explain_biom_failure(p: Path, form: str, exc: Exception) -> str:
    detail = f"{type(exc).__name__}: {exc}"
    if form == "hdf5":
        if _hdf5_flavour(p) == "anndata":
            return "this is an AnnData (h5ad) file, not a BIOM table. Rename it to .h5ad."
        if "truncated" in str(exc) or "signature" in str(exc):
            return (
                f"the HDF5 file is truncated or corrupt ({detail}). Re-download or re-export it."
            )
        return (
            f"not a readable BIOM 2.1 HDF5 table ({detail}). Check it with "
            "`biom validate-table -i FILE` or re-export it."
        )
    return (
        f"could not be parsed as a BIOM table ({'JSON' if form == 'json' else 'classic TSV'} "
        f"form; {detail}). Check it with `biom validate-table -i FILE` or re-export it."
    )


def _open_text(p: Path):
    if _is_gzip(p):
        return gzip.open(p, "rt", encoding="utf-8")
    return open(p, encoding="utf-8")


def _is_json(p: Path) -> bool:
    """biom's own test: the first non-space character is '{'."""
    try:
        with _open_text(p) as fh:
            for line in fh:
                s = line.lstrip()
                if s:
                    return s.startswith("{")
    except (OSError, EOFError, UnicodeDecodeError):
        return False
    return False


def _hdf5_flavour(p: Path) -> str | None:
    """'biom' or 'anndata' from the HDF5 root attributes; None if neither or unreadable."""
    import h5py

    try:
        with h5py.File(p, "r") as f:
            attrs = f.attrs
            if "format-url" in attrs or ("format-version" in attrs and "id" in attrs):
                return "biom"
            if attrs.get("encoding-type") == "anndata" or ("obs" in f and "var" in f):
                return "anndata"
    except Exception:
        return None
    return None


def _isfloat(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _classic_tsv_layout(p: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header fields and (line number, fields) of each data row, found the way biom finds them.

    The header is the last line starting with '#' before the first other line, or, when no such
    line exists, the first other line itself. Blank lines and later '#' lines are skipped.
    """
    header: list[str] | None = None
    in_data = False
    rows = []
    with _open_text(p) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if line.startswith("#"):
                if not in_data:
                    header = line.strip().split("\t")
                continue
            if header is None:
                header = line.rstrip().split("\t")
                continue
            in_data = True
            fields = line.rstrip("\r\n").split("\t")
            fields[-1] = fields[-1].strip()
            rows.append((lineno, fields))
    return header or [], rows


def _scan_classic_tsv(p: Path, shown: str, *, check_values: bool) -> None:
    """Check a classic BIOM TSV table for what biom misreads or reports vaguely.

    biom's parser (1) fills a row with fewer fields than the header with zeros, (2) reads the
    whole last column as observation metadata (meant for 'taxonomy') if any value in it is not
    a number, so a typo in the last sample's column silently removes that sample, and (3) on a
    non-numeric count says only "does not appear to be a BIOM file". ``check_values`` looks for
    (3), which is only needed once biom has failed (it is the slow part).
    """
    try:
        header, rows = _classic_tsv_layout(p)
    except (OSError, EOFError, UnicodeDecodeError):
        return  # not text we can read; biom's own error will be reported
    if len(header) < 2 or not rows:
        return
    n = len(header)
    for lineno, fields in rows:
        if len(fields) != n:
            found = len(fields) - 1
            why = (
                "biom would silently fill the gap with zeros; write missing counts as 0"
                if found < n - 1
                else "a sample name may be missing from the header, or a value has a stray tab"
            )
            raise InputError(
                f"{shown}: line {lineno} (feature '{fields[0]}') has {found} "
                f"value{'s' if found != 1 else ''} but the header names {n - 1} columns. "
                f"Fix the row: {why}."
            )
    last = [fields[-1] for _, fields in rows]
    numeric_last = [_isfloat(v) for v in last]
    last_is_metadata = not all(numeric_last)
    if last_is_metadata and any(numeric_last):
        lineno, fields = rows[numeric_last.index(False)]
        raise InputError(
            f"{shown}: line {lineno}, feature '{fields[0]}', column '{header[-1]}': value "
            f"'{fields[-1]}' is not a number, so biom would read the whole column as metadata and "
            f"drop sample '{header[-1]}'. Fix the value (write missing counts as 0); if the "
            "column is metadata, none of its values may be numbers."
        )
    if not check_values:
        return
    n_count_columns = n - 1 - last_is_metadata
    for lineno, fields in rows:
        for j in range(1, 1 + n_count_columns):
            if not _isfloat(fields[j]):
                raise InputError(
                    f"{shown}: line {lineno}, feature '{fields[0]}', sample '{header[j]}': value "
                    f"'{fields[j]}' is not a number. Counts must be numbers; write missing "
                    "counts as 0."
                )


def _read_h5ad(p: Path, shown: str, layer: str | None):
    import anndata

    try:
        # hold anndata's warnings back: on failure they are noise (e.g. a BIOM file read as
        # h5ad warns about every group), and duplicate names are reported by check_counts
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            adata = anndata.read_h5ad(p)
    except MemoryError:
        raise
    except Exception as exc:
        if _is_hdf5(p) and _hdf5_flavour(p) == "biom":
            why = "this is a BIOM table, not an AnnData file. Rename it to .biom."
        elif not _is_hdf5(p):
            why = "not an HDF5 file, so not an .h5ad. Check the file or re-export it."
        elif "truncated" in str(exc) or "signature" in str(exc):
            why = "the HDF5 file is truncated or corrupt. Re-download or re-export it."
        else:
            why = "anndata could not read it. Re-export it with a recent anndata."
        raise InputError(f"{shown}: {why} ({type(exc).__name__}: {exc})") from exc
    for w in caught:
        if not re.search(r"(Observation|Variable) names are not unique", str(w.message)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)

    available = list(adata.layers.keys())
    if layer is not None:
        if layer not in adata.layers:
            raise InputError(
                f"{shown}: no layer {layer!r}. Available layers: "
                f"{', '.join(repr(k) for k in available) if available else 'none'}"
                "; leave layer unset to read X."
            )
        X = adata.layers[layer]
    else:
        X = adata.X
        if X is None:
            raise InputError(
                f"{shown}: the file has no X matrix. Pass layer= with one of: "
                f"{', '.join(repr(k) for k in available) if available else '(no layers either)'}."
            )
        if available and not _has_nonzero(X):
            raise InputError(
                f"{shown}: X holds no reads (every value is 0), and the file has layers: the raw "
                f"counts are probably in one of them. Pass --layer (layer=) with one of: "
                f"{', '.join(repr(k) for k in available)}."
            )
    sample_ids = [str(s) for s in adata.obs_names]
    feature_ids = [str(f) for f in adata.var_names]
    return X, sample_ids, feature_ids, adata.obs.copy(), adata.var.copy()


def _has_nonzero(X) -> bool:
    """Whether a dense or sparse matrix (or an h5py-backed array) holds a non-zero value."""
    import numpy as np
    import scipy.sparse as sp

    if sp.issparse(X):
        return bool(np.any(X.data))
    try:
        return bool(np.any(np.asarray(X)))
    except (TypeError, ValueError):  # something numpy cannot read: let the checks that follow say
        return True


# --------------------------------------------------------------------------------------------
# delimited text tables
# --------------------------------------------------------------------------------------------

def _make_anndata(X, sample_ids, feature_ids, obs, var) -> "anndata.AnnData":
    import anndata
    import pandas as pd

    if obs is None:
        obs = pd.DataFrame(index=pd.Index(sample_ids, dtype=object))
    if var is None:
        var = pd.DataFrame(index=pd.Index(feature_ids, dtype=object))
    return anndata.AnnData(X=X, obs=obs, var=var)
