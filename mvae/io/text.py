"""Count tables in delimited text (TSV, CSV, gzipped or not), either orientation.

Read by :func:`mvae.io.tables.read_counts` for the text suffixes: the delimiter, the header and
the orientation are worked out from the file (with a warning when the ids look like the other
axis), values are parsed in dense blocks of rows made sparse as they come, and every error names
the file, the line, the sample and feature, and the value.
"""

from __future__ import annotations

import csv
import gzip
import re
import warnings
from pathlib import Path
from typing import Iterator, Sequence

from mvae.errors import InputError

from .formats import _ANNOTATION_COLUMNS, OrientationWarning, _gzip_is_hdf5, _is_gzip, _is_hdf5

__all__ = ["read_text_table"]


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


def read_text_table(p: Path, shown: str, orientation: str | None):
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
