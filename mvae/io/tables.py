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

import csv
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
ORIENTATIONS = ("samples-as-rows", "features-as-rows")

#: Trailing columns of a features-as-rows table that hold feature annotation, not a sample.
_ANNOTATION_COLUMNS = ("taxonomy", "taxon", "consensus lineage", "consensuslineage")


class OrientationWarning(UserWarning):
    """The ids of a text table look like the other axis than the ``orientation`` given says."""

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_GZIP_MAGIC = b"\x1f\x8b"


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
        X, sample_ids, feature_ids, var = _read_text_table(p, shown, orientation)
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


def _is_hdf5(p: Path) -> bool:
    with open(p, "rb") as fh:
        return fh.read(len(_HDF5_MAGIC)) == _HDF5_MAGIC


def _is_gzip(p: Path) -> bool:
    with open(p, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


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

_TEXT_CHUNK_ROWS = 2048  # rows parsed into one dense float block before it is made sparse
_ID_SAMPLE_SIZE = 2000  # ids looked at when judging which axis a list of ids belongs to
_MISSING_WORDS = {"na", "n/a", "nan", "null", "none", "-", "?"}

# Patterns that ids of one axis usually follow. Each is (what to call it, regex).
_FEATURE_ID_PATTERNS = (
    ("QIIME 2 feature hashes (32 hex digits)", re.compile(r"^[0-9a-f]{32}$")),
    ("DNA sequences", re.compile(r"^[ACGTUNacgtun]{25,}$")),
    ("taxonomy strings", re.compile(r"(^|[;|]\s*)[kdpcofgs]__")),
    ("OTU/ASV ids", re.compile(r"^(z?otu|asv|esv|sv)[\s_.\-]?\d+", re.IGNORECASE)),
    ("mOTUs ids", re.compile(r"motu", re.IGNORECASE)),
    ("Ensembl gene ids", re.compile(r"^ENS[A-Z]*[GT]\d{6,}")),
    ("feature numbers", re.compile(r"^(feature|feat|f)[\s_.\-]?\d+$", re.IGNORECASE)),
)
_SAMPLE_ID_PATTERNS = (
    ("SRA/ENA run accessions", re.compile(r"^[SED]R[RSXP]\d{5,}$")),
    ("BioSample accessions", re.compile(r"^SAM(N|EA|D)\d+$")),
    ("Qiita sample names (study.sample)", re.compile(r"^\d{3,6}\.[^.\s]")),
    ("cell barcodes", re.compile(r"^([A-Za-z0-9]+[_:\-])?[ACGT]{10,20}(-\d+)?$")),
    ("sample numbers", re.compile(r"^(sample|smpl|s)[\s_.\-]?\d+$", re.IGNORECASE)),
)
# Labels of the top-left cell, lower-cased without '#', ' ', '-', '_'
_FEATURE_CORNERS = {"otuid", "featureid", "asvid", "gene", "geneid", "taxon", "taxonomy"}
_SAMPLE_CORNERS = {"sampleid", "sample", "samplename", "cell", "cellid", "barcode"}


def _text_delimiter(p: Path) -> str:
    return "," if p.name.lower().endswith((".csv", ".csv.gz")) else "\t"


def _delimiter_name(delimiter: str) -> str:
    return "comma" if delimiter == "," else "tab"


def _iter_text_lines(p: Path, shown: str) -> Iterator[str]:
    """Decoded lines of a UTF-8 text file (gzipped or not), line endings kept.

    A byte-order mark is dropped. Bad bytes raise InputError naming the line; a corrupt gzip
    stream raises InputError too.
    """
    opener = gzip.open if _is_gzip(p) else open
    with opener(p, "rb") as fh:
        lineno = 0
        while True:
            try:
                raw = fh.readline()
            except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
                raise InputError(
                    f"{shown}: corrupt or truncated gzip file ({exc}). Re-download or re-export it."
                ) from exc
            if not raw:
                return
            lineno += 1
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = raw[exc.start : exc.end].hex(" ")
                raise InputError(
                    f"{shown}: line {lineno} is not valid UTF-8 (byte {bad} at byte "
                    f"{exc.start + 1} of the line). Save the file as UTF-8 (in Excel: 'CSV UTF-8'; "
                    "or convert it with `iconv -f latin1 -t utf-8 FILE`)."
                ) from None


def _text_records(p: Path, shown: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line; double-quoted fields are understood.

    Trailing empty fields are dropped (spreadsheets often end every line with a delimiter).
    """
    reader = csv.reader(_iter_text_lines(p, shown), delimiter=delimiter, quotechar='"')
    try:
        for fields in reader:
            while fields and not fields[-1].strip():
                fields.pop()
            if fields:
                yield reader.line_num, fields
    except csv.Error as exc:
        raise InputError(
            f"{shown}: line {reader.line_num}: cannot be split into {_delimiter_name(delimiter)}-"
            f"separated fields ({exc}). Check the quoting, or whether this is a text table at all."
        ) from exc


def _not_a_table(shown: str, delimiter: str, lineno: int, line: list[str]) -> InputError:
    other = "," if delimiter == "\t" else "\t"
    text = delimiter.join(line)
    hint = ""
    if other in text:
        hint = (
            f" It looks {_delimiter_name(other)}-separated: rename it to "
            f"{'.csv' if other == ',' else '.tsv'}."
        )
    return InputError(
        f"{shown}: not a {_delimiter_name(delimiter)}-separated table: line {lineno} "
        f"({text[:60]!r}) has no {_delimiter_name(delimiter)}, but a count table needs an id "
        f"column and at least one count column.{hint}"
    )


def _split_header(records, shown: str, delimiter: str):
    """Find the header row: returns (header fields, first data record or None, leading lines).

    Lines starting with '#' before the data are comments, except that the last of them is the
    header when it has as many fields as the first data line (``#OTU ID<TAB>s1<TAB>s2``, as
    ``biom convert --to-tsv`` writes). Otherwise the first line not starting with '#' is the
    header.
    """
    comments: list[tuple[int, list[str]]] = []
    header = None
    for lineno, fields in records:
        if header is None and fields[0].startswith("#"):
            comments.append((lineno, fields))
            continue
        if header is None:
            if comments and len(comments[-1][1]) == len(fields) and len(fields) >= 2:
                header = comments[-1]
                return header, (lineno, fields), comments[:-1]
            header = (lineno, fields)
            continue
        if fields[0].startswith("#"):
            continue  # a comment line among the data
        return header, (lineno, fields), comments
    if header is None:
        if comments:
            header = comments[-1]
        else:
            raise InputError(f"{shown}: no table found (only blank lines).")
    return header, None, comments


def _data_records(first, records):
    if first is not None:
        yield first
    for lineno, fields in records:
        if not fields[0].startswith("#"):
            yield lineno, fields


def _id_evidence(ids: Sequence[str]) -> tuple[str | None, str]:
    """('feature' | 'sample' | None, description) from the patterns most of ``ids`` follow."""
    ids = list(ids[:_ID_SAMPLE_SIZE])
    if not ids:
        return None, ""

    def best(patterns):
        scored = []
        for label, pattern in patterns:
            hits = [i for i in ids if pattern.search(i)]
            scored.append((len(hits) / len(ids), label, hits[:2]))
        return max(scored, key=lambda t: t[0])

    f_frac, f_label, f_hits = best(_FEATURE_ID_PATTERNS)
    s_frac, s_label, s_hits = best(_SAMPLE_ID_PATTERNS)
    if f_frac >= 0.5 and f_frac > s_frac:
        return "feature", f"{f_label}, e.g. {', '.join(repr(h) for h in f_hits)}"
    if s_frac >= 0.5 and s_frac > f_frac:
        return "sample", f"{s_label}, e.g. {', '.join(repr(h) for h in s_hits)}"
    return None, ""


def _orientation_evidence(corner: str, header_ids, row_ids, comments) -> tuple[str | None, str]:
    """The orientation the table's own labels suggest, and why; (None, '') when they do not."""
    votes: list[tuple[str, str]] = []
    if any("constructed from biom file" in " ".join(f).lower() for _, f in comments):
        votes.append(("features-as-rows", "it was written by `biom convert --to-tsv`"))
    label = re.sub(r"[#\s_\-]", "", corner).lower()
    if label in _FEATURE_CORNERS:
        votes.append(("features-as-rows", f"the first column is headed {corner!r}"))
    elif label in _SAMPLE_CORNERS:
        votes.append(("samples-as-rows", f"the first column is headed {corner!r}"))
    head_kind, head_why = _id_evidence(header_ids)
    if head_kind:
        votes.append((
            "samples-as-rows" if head_kind == "feature" else "features-as-rows",
            f"the header ids look like {head_kind} ids ({head_why})",
        ))
    row_kind, row_why = _id_evidence(row_ids)
    if row_kind:
        votes.append((
            "features-as-rows" if row_kind == "feature" else "samples-as-rows",
            f"the first-column ids look like {row_kind} ids ({row_why})",
        ))
    suggested = {o for o, _ in votes}
    if len(suggested) != 1:
        return None, ""
    return suggested.pop(), "; ".join(why for _, why in votes)


def _orientation_needed(shown, header, row_ids, n_rows_seen, more_rows, comments) -> InputError:
    corner, header_ids = header[0], header[1:]
    suggested, why = _orientation_evidence(corner, header_ids, row_ids, comments)
    shape = (
        f"{len(header_ids)} columns after the id column and "
        f"{'at least ' if more_rows else ''}{n_rows_seen} data rows"
    )
    if suggested:
        hint = f" Here {why}, which suggests orientation={suggested!r}."
    else:
        hint = (
            f" Its header starts {', '.join(repr(h) for h in header_ids[:3])} and its first "
            f"column {', '.join(repr(r) for r in row_ids[:3])}."
        )
    return InputError(
        f"{shown}: a text table needs its orientation: pass orientation='samples-as-rows' "
        "(samples in rows, feature ids in the header) or 'features-as-rows' (features in rows, "
        f"sample ids in the header); on the command line, --orientation. mvae never guesses it. "
        f"The table has {shape}.{hint}"
    )


def _bad_text_value(shown, lineno, row_axis, row_id, col_axis, col_id, value) -> InputError:
    if not value.strip():
        why = "an empty cell. Counts cannot be missing: write 0 for 'not observed'."
    elif value.strip().lower() in _MISSING_WORDS:
        why = "a missing value. Counts cannot be missing: write 0 for 'not observed'."
    else:
        why = (
            "not a number. Counts must be numbers; remove annotation columns (such as taxonomy "
            "or metadata) first."
        )
    return InputError(
        f"{shown}: line {lineno}, {row_axis} '{row_id}', {col_axis} '{col_id}': value {value!r} "
        f"is {why}"
    )


def _read_text_table(p: Path, shown: str, orientation: str | None):
    """A delimited text table -> (samples x features CSR, sample ids, feature ids, var)."""
    import numpy as np
    import scipy.sparse as sp

    if _is_hdf5(p) or (_is_gzip(p) and _gzip_is_hdf5(p, shown)):
        raise InputError(
            f"{shown}: this is an HDF5 file (a BIOM 2.1 table or an AnnData file), not a text "
            "table. Rename it to .biom or .h5ad."
        )
    delimiter = _text_delimiter(p)
    records = _text_records(p, shown, delimiter)
    (header_line, header), first, comments = _split_header(records, shown, delimiter)
    if len(header) < 2:
        raise _not_a_table(shown, delimiter, header_line, header)
    data = _data_records(first, records)

    if orientation is None:
        row_ids, more = [], False
        for _, fields in data:
            if len(row_ids) == _ID_SAMPLE_SIZE:
                more = True
                break
            row_ids.append(fields[0])
        if not row_ids:
            raise InputError(
                f"{shown}: the header (line {header_line}) is followed by no data rows."
            )
        raise _orientation_needed(shown, header, row_ids, len(row_ids), more, comments)

    rows_are_samples = orientation == "samples-as-rows"
    row_axis, col_axis = ("sample", "feature") if rows_are_samples else ("feature", "sample")
    n_fields = len(header)
    annotation = None
    if not rows_are_samples and header[-1].strip().lower() in _ANNOTATION_COLUMNS and n_fields > 2:
        annotation = header[-1]
        n_fields -= 1
    col_ids = header[1:n_fields]
    for j, c in enumerate(col_ids):
        if not c.strip():
            raise InputError(
                f"{shown}: line {header_line}: column {j + 2} of the header has no "
                f"{col_axis} id. Every column needs a name."
            )

    row_ids: list[str] = []
    notes: list[str] = []
    blocks = []
    chunk: list[list[str]] = []
    chunk_lines: list[int] = []

    def flush():
        try:
            arr = np.array(chunk, dtype=np.float64)
        except ValueError:
            for values, lineno, r in zip(chunk, chunk_lines, range(len(chunk))):
                for j, v in enumerate(values):
                    try:
                        float(v)
                    except ValueError:
                        row_id = row_ids[len(row_ids) - len(chunk) + r]
                        raise _bad_text_value(shown, lineno, row_axis, row_id, col_axis,
                                              col_ids[j], v) from None
            raise InputError(f"{shown}: counts could not be read as numbers.")  # pragma: no cover
        blocks.append(sp.csr_matrix(arr))
        chunk.clear()
        chunk_lines.clear()

    expected = len(header)  # fields per data line
    for lineno, fields in data:
        if len(fields) != expected:
            if annotation is not None and len(fields) == expected - 1:
                fields = fields + [""]  # an empty annotation cell was trimmed away
            else:
                found = len(fields) - 1
                raise InputError(
                    f"{shown}: line {lineno} ({row_axis} '{fields[0]}') has {found} "
                    f"field{'s' if found != 1 else ''} after the id but the header (line "
                    f"{header_line}) names {len(header) - 1} columns. "
                    + ("Write missing counts as 0." if found < len(header) - 1 else
                       "A header name may be missing, or a value holds a stray "
                       f"{_delimiter_name(delimiter)}.")
                    + ("" if found > 1 else _delimiter_hint(delimiter, fields))
                )
        if not fields[0].strip():
            raise InputError(f"{shown}: line {lineno} has no {row_axis} id in its first column.")
        row_ids.append(fields[0])
        if annotation is not None:
            notes.append(fields[-1])
        chunk.append(fields[1:n_fields])
        chunk_lines.append(lineno)
        if len(chunk) >= _TEXT_CHUNK_ROWS:
            flush()
    if chunk:
        flush()
    if not blocks:
        raise InputError(f"{shown}: the header (line {header_line}) is followed by no data rows.")
    M = sp.vstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]

    suggested, why = _orientation_evidence(header[0], col_ids, row_ids, comments)
    if suggested is not None and suggested != orientation:
        warnings.warn(
            f"{shown}: read with orientation={orientation!r}, but {why}, which suggests "
            f"orientation={suggested!r}. Check the orientation: mvae never guesses it.",
            OrientationWarning,
            stacklevel=3,
        )

    import pandas as pd

    var = None
    if rows_are_samples:
        X, sample_ids, feature_ids = M, row_ids, list(col_ids)
    else:
        X, sample_ids, feature_ids = M.T.tocsr(), list(col_ids), row_ids
        if annotation is not None:
            var = pd.DataFrame({annotation: notes}, index=pd.Index(feature_ids, dtype=object))
    return X, sample_ids, feature_ids, var


def _delimiter_hint(delimiter: str, fields: list[str]) -> str:
    other = "," if delimiter == "\t" else "\t"
    if any(other in f for f in fields):
        return (
            f" The line holds {_delimiter_name(other)}s: is the file "
            f"{_delimiter_name(other)}-separated? Then name it "
            f"{'.csv' if other == ',' else '.tsv'}."
        )
    return ""


def _gzip_is_hdf5(p: Path, shown: str) -> bool:
    try:
        with gzip.open(p, "rb") as gz:
            return gz.read(len(_HDF5_MAGIC)) == _HDF5_MAGIC
    except (OSError, EOFError) as exc:
        raise InputError(
            f"{shown}: corrupt gzip file ({exc}). Re-download or re-export it."
        ) from exc


def _make_anndata(X, sample_ids, feature_ids, obs, var) -> "anndata.AnnData":
    import anndata
    import pandas as pd

    if obs is None:
        obs = pd.DataFrame(index=pd.Index(sample_ids, dtype=object))
    if var is None:
        var = pd.DataFrame(index=pd.Index(feature_ids, dtype=object))
    return anndata.AnnData(X=X, obs=obs, var=var)
