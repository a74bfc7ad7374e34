"""Sample metadata in the QIIME 2 tab-separated format.

A metadata file is a table with one row per sample: the first column holds the sample ids, the
other columns hold anything known about the samples (body site, subject, age...). mvae uses it to
colour the embedding plot and to check that every sample of a count table is described.

The format is QIIME 2's (https://docs.qiime2.org, "Metadata in QIIME 2"):

- UTF-8, tab-separated; cells may be double-quoted; whitespace around a cell is ignored.
- The first column is the id column. Its header is one of ``id``, ``sampleid``, ``sample id``,
  ``sample-id``, ``featureid``, ``feature id``, ``feature-id`` (any case) or exactly
  ``#SampleID``, ``#Sample ID``, ``#OTUID``, ``#OTU ID``, ``sample_name``. mvae also accepts
  ``sample_id`` (any case), which R and Qiita exports use; QIIME 2 itself does not.
- Lines starting with ``#`` are comments (except a ``#SampleID`` header) and blank lines are
  skipped. A ``#q2:types`` line straight after the header declares each column ``categorical``
  or ``numeric``; other ``#q2:`` directives are ignored.
- An empty cell is a missing value. Short rows are padded with empty cells; a row with more
  non-empty cells than the header names is an error. Ids and column names must be unique.
- A column without a declared type is numeric when every non-empty value is a number, else
  categorical.

Functions: :func:`read_metadata` reads a file into a :class:`pandas.DataFrame`;
:func:`align_metadata` puts its rows in a count table's sample order (extra metadata rows are
ignored; table samples missing from the metadata are an error that lists them);
:func:`metadata_column` picks a column to colour by.

Examples
--------
>>> md = read_metadata("data/moving_pictures_16s_metadata.tsv")  # doctest: +SKIP
>>> md.attrs["column_types"]["BodySite"]  # doctest: +SKIP
'categorical'
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from mvae.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["read_metadata", "align_metadata", "metadata_column", "ID_HEADERS"]

_ID_HEADERS_ANY_CASE = frozenset(
    {"id", "sampleid", "sample id", "sample-id", "featureid", "feature id", "feature-id",
     "sample_id"}
)
_ID_HEADERS_EXACT = frozenset({"#SampleID", "#Sample ID", "#OTUID", "#OTU ID", "sample_name"})

#: Every id-column header accepted (the any-case ones in lower case).
ID_HEADERS = tuple(sorted(_ID_HEADERS_ANY_CASE)) + tuple(sorted(_ID_HEADERS_EXACT))

_TYPES = ("categorical", "numeric")
_N_LISTED = 10


def _is_id_header(cell: str) -> bool:
    return cell in _ID_HEADERS_EXACT or cell.lower() in _ID_HEADERS_ANY_CASE


def _is_number(cell: str) -> bool:
    try:
        value = float(cell)
    except ValueError:
        return False
    return math.isfinite(value)


def _listing(ids: Sequence[str], n: int = _N_LISTED) -> str:
    shown = ", ".join(repr(i) for i in ids[:n])
    return shown + (f" and {len(ids) - n} more" if len(ids) > n else "")


def read_metadata(path: str | os.PathLike) -> "pd.DataFrame":
    """Read a QIIME 2 style sample metadata file.

    Parameters
    ----------
    path : str or os.PathLike
        A tab-separated UTF-8 file, optionally gzipped (see the module docstring for the format).

    Returns
    -------
    pandas.DataFrame, shape (n_ids, n_columns)
        Indexed by the ids, as strings exactly as written (surrounding whitespace removed); the
        index is named after the id column's header. Numeric columns are ``float64`` (missing =
        NaN), categorical ones ``object`` holding ``str`` (missing = NaN). ``attrs["source"]`` is
        the path and ``attrs["column_types"]`` maps each column to ``"numeric"`` or
        ``"categorical"``.

    Raises
    ------
    InputError
        If the file is missing, a directory, empty, not UTF-8, has no recognised id header,
        repeats an id or a column name, has a row longer than the header, an unknown
        ``#q2:types`` entry, or a non-number in a column declared numeric. The message names the
        file and the line.
    """
    import numpy as np
    import pandas as pd

    from mvae.io.text import _text_records

    shown = str(path)
    p = Path(path)
    if not p.exists():
        raise InputError(f"{shown}: no such metadata file (working directory: {os.getcwd()}).")
    if p.is_dir():
        raise InputError(f"{shown}: is a directory; expected a tab-separated metadata file.")
    if p.stat().st_size == 0:
        raise InputError(f"{shown}: the metadata file is empty (0 bytes).")

    records = ((n, [c.strip() for c in fields]) for n, fields in _text_records(p, shown, "\t"))
    header = header_line = None
    declared: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    for lineno, cells in records:
        if not any(cells):
            continue
        first = cells[0]
        if header is None:
            if _is_id_header(first):
                header, header_line = cells, lineno
            elif first.startswith("#"):
                continue  # a comment before the header
            else:
                raise InputError(
                    f"{shown}: line {lineno}: the first column must be the sample id column, "
                    f"headed by one of {', '.join(repr(h) for h in ID_HEADERS)}; found "
                    f"{first!r}. Rename that header (QIIME 2 metadata format)."
                )
            continue
        if first.lower() == "#q2:types":
            if rows:
                raise InputError(
                    f"{shown}: line {lineno}: the '#q2:types' line must come straight after the "
                    "header."
                )
            declared = [c.lower() for c in cells[1:]]
            for j, t in enumerate(declared):
                if t and t not in _TYPES:
                    name = header[j + 1] if j + 1 < len(header) else f"#{j + 2}"
                    raise InputError(
                        f"{shown}: line {lineno}: column '{name}' has type {cells[j + 1]!r}; "
                        "'#q2:types' allows 'categorical' or 'numeric'."
                    )
            continue
        if first.startswith("#"):
            continue  # a comment or another '#q2:' directive
        rows.append((lineno, cells))
    if header is None:
        raise InputError(
            f"{shown}: no header line found; the first column must be headed by one of "
            f"{', '.join(repr(h) for h in ID_HEADERS)}."
        )

    columns = header[1:]
    for j, name in enumerate(columns):
        if not name:
            raise InputError(f"{shown}: line {header_line}: column {j + 2} has no name.")
    seen: dict[str, int] = {}
    for name in columns:
        seen[name] = seen.get(name, 0) + 1
    dup_cols = [c for c, k in seen.items() if k > 1]
    if dup_cols:
        raise InputError(
            f"{shown}: line {header_line}: repeated column names: {_listing(dup_cols)}."
        )

    width = len(header)
    ids: list[str] = []
    first_line: dict[str, int] = {}
    table: list[list[str]] = []
    for lineno, cells in rows:
        if len(cells) > width:
            raise InputError(
                f"{shown}: line {lineno} (id {cells[0]!r}) has {len(cells) - 1} values but the "
                f"header (line {header_line}) names {width - 1} columns."
            )
        if not cells[0]:
            raise InputError(f"{shown}: line {lineno} has an empty id.")
        if cells[0] in first_line:
            raise InputError(
                f"{shown}: line {lineno}: id {cells[0]!r} is repeated (first on line "
                f"{first_line[cells[0]]}). Every id must be unique."
            )
        first_line[cells[0]] = lineno
        ids.append(cells[0])
        table.append(cells[1:] + [""] * (width - len(cells)))

    data = {}
    types = {}
    for j, name in enumerate(columns):
        values = [r[j] for r in table]
        kind = declared[j] if declared is not None and j < len(declared) and declared[j] else None
        present = [v for v in values if v]
        if kind is None:
            kind = "numeric" if present and all(_is_number(v) for v in present) else "categorical"
        if kind == "numeric":
            for i, v in enumerate(values):
                if v and not _is_number(v):
                    raise InputError(
                        f"{shown}: line {rows[i][0]}, id {ids[i]!r}, column {name!r}: value "
                        f"{v!r} is not a number, but the column is declared numeric in "
                        "'#q2:types'."
                    )
            data[name] = np.array([float(v) if v else np.nan for v in values], dtype=np.float64)
        else:
            data[name] = pd.Series([v if v else np.nan for v in values], dtype=object).to_numpy()
        types[name] = kind

    index = pd.Index(ids, dtype=object, name=header[0])
    frame = pd.DataFrame(data, index=index, columns=pd.Index(columns, dtype=object))
    frame.attrs["source"] = shown
    frame.attrs["column_types"] = types
    return frame


def align_metadata(
    metadata: "pd.DataFrame", sample_ids: Sequence[str], *, table: str | None = None
) -> "pd.DataFrame":
    """The metadata rows of ``sample_ids``, in that order.

    Parameters
    ----------
    metadata : pandas.DataFrame
        As returned by :func:`read_metadata`.
    sample_ids : sequence of str
        The count table's sample ids.
    table : str, optional
        The table's file name, for the error message.

    Returns
    -------
    pandas.DataFrame, shape (len(sample_ids), n_columns)
        Metadata rows not in ``sample_ids`` are left out.

    Raises
    ------
    InputError
        If some sample ids are not in the metadata: the message lists them (up to 10 and how
        many more) and, when the table's ids appear in another column, names that column.
    """
    source = metadata.attrs.get("source", "metadata")
    known = set(metadata.index)
    missing = [s for s in sample_ids if s not in known]
    if missing:
        where = f" of {table}" if table else ""
        hint = ""
        probe = list(sample_ids[:200])
        for col in metadata.columns:
            values = set(metadata[col].dropna().astype(str))
            if values and sum(s in values for s in probe) >= 0.5 * len(probe):
                hint = (
                    f" The table's ids appear in column {col!r}: make it the first column if it "
                    "holds the sample ids."
                )
                break
        raise InputError(
            f"{source}: {len(missing)} of {len(sample_ids)} samples{where} are not in the "
            f"metadata: {_listing(missing)}. The metadata's ids look like "
            f"{_listing(list(metadata.index), 3)}.{hint} Add rows for the missing samples (ids "
            "must match exactly, including case), or leave --metadata out."
        )
    out = metadata.loc[list(sample_ids)]
    out.attrs = dict(metadata.attrs)
    return out


def metadata_column(metadata: "pd.DataFrame", column: str) -> "pd.Series":
    """One column of the metadata, by exact name.

    Returns
    -------
    pandas.Series
        ``float64`` for a numeric column, ``object`` (``str`` or NaN) for a categorical one; its
        ``attrs["kind"]`` is ``"numeric"`` or ``"categorical"``.

    Raises
    ------
    InputError
        If there is no such column; the message lists the columns there are.
    """
    source = metadata.attrs.get("source", "metadata")
    if column not in metadata.columns:
        close = [c for c in metadata.columns if c.lower() == column.lower()]
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InputError(
            f"{source}: no column {column!r}.{hint} Columns: "
            f"{_listing(list(metadata.columns), 30) or '(none)'}."
        )
    series = metadata[column].copy()
    series.attrs["kind"] = metadata.attrs.get("column_types", {}).get(
        column, "numeric" if series.dtype.kind == "f" else "categorical"
    )
    return series
