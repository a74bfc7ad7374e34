r"""Checks that a count table is something a multinomial model can use.

A multinomial VAE models each sample as a draw of :math:`n_i` reads over :math:`D` features,

.. math::

    x_i \sim \operatorname{Multinomial}(n_i, p_i), \qquad n_i = \sum_j x_{ij},

so the table must hold raw counts: finite, non-negative integers. Relative abundances, rarefied
tables rescaled to fractions, CLR/log values and TPM all break that assumption; the checks here
catch them and say which sample and feature gave the first bad value.

Two functions:

- :func:`check_counts` rejects values a multinomial cannot take and duplicate ids, and returns a
  ``float64`` CSR copy. It never drops anything.
- :func:`drop_empty` removes all-zero samples (no reads: no composition) and all-zero features
  (never observed: nothing to learn), with one :class:`DroppedWarning` that says what went.

Both work on the stored values of a sparse matrix, so their cost grows with the number of non-zero
entries, not with samples x features.

Examples
--------
>>> import numpy as np
>>> X = check_counts(np.array([[0, 3], [2, 5]]), sample_ids=["s1", "s2"], feature_ids=["a", "b"])
>>> X.toarray()
array([[0., 3.],
       [2., 5.]])
>>> check_counts(np.array([[0.5, 3.0]]), sample_ids=["s1"], feature_ids=["a", "b"])
... # doctest: +ELLIPSIS
Traceback (most recent call last):
...
mvae.errors.InputError: sample 's1' (row 0), feature 'a' (column 0): value 0.5 is not ...
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import scipy.sparse as sp

from mvae.errors import InputError
from mvae.params import is_int

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["check_counts", "drop_empty", "kept_after_dropping_empty", "Filtered", "DroppedWarning", "MAX_EXACT_COUNT",
           "MAX_SEED", "MAX_THREADS", "MAX_HIDDEN", "check_seed", "check_threads"]

#: Largest count that float64 holds exactly; every integer up to 2**53 is representable.
MAX_EXACT_COUNT = 2**53
#: Seeds are 32-bit (numpy's legacy range); torch and numpy generators are seeded from them with
#: small offsets, which must stay below torch's 2**64.
MAX_SEED = 2**32 - 1
#: More threads than any machine mvae runs on; counts above the usable cores are clamped.
MAX_THREADS = 1024
#: The encoder's width: its first layer holds D x width weights (and as many for Adam twice).
MAX_HIDDEN = 65536


def check_seed(value, name: str = "random_state") -> None:
    """``value`` is None or an integer seed in [0, MAX_SEED]; an InputError naming it otherwise."""
    if value is None:
        return
    if not is_int(value):
        raise InputError(f"{name}={value!r} is not allowed: give an integer seed between 0 and "
                         f"{MAX_SEED} (or None); a numpy Generator or RandomState cannot be "
                         "recorded in a checkpoint or a model file")
    if not 0 <= int(value) <= MAX_SEED:
        raise InputError(f"{name}={value!r} is not allowed: give an integer seed between 0 and "
                         f"{MAX_SEED}")


def check_threads(value, name: str = "threads") -> None:
    """``value`` is None or an integer in [1, MAX_THREADS]; an InputError naming it otherwise.

    A count above the cores this process may use is allowed here and clamped where threads are
    set (:func:`mvae.training.loop.torch_threads`): a model saved on a larger machine still loads.
    """
    if value is None:
        return
    if not is_int(value) or not 1 <= int(value) <= MAX_THREADS:
        from mvae.training.loop import usable_cores

        raise InputError(f"{name}={value!r} is not allowed: need None or an integer between 1 "
                         f"and {MAX_THREADS} (this machine has {usable_cores()} usable cores)")

_RAW_COUNTS_HINT = (
    "(normalised data? mvae needs raw counts). Pass the integer number of reads per sample and "
    "feature, e.g. the feature table before relative abundance, rarefaction to fractions, CLR or "
    "log transforms."
)

_N_LISTED = 5  # ids listed in warnings and error messages before "..."


class DroppedWarning(UserWarning):
    """Samples or features were removed from a count table (see :func:`drop_empty`)."""


# --------------------------------------------------------------------------------------------
# check_counts
# --------------------------------------------------------------------------------------------


def check_counts(
    X,
    *,
    sample_ids: Sequence | None = None,
    feature_ids: Sequence | None = None,
    source: str | None = None,
) -> sp.csr_matrix:
    """Check that ``X`` is a table of raw counts and return it as ``float64`` CSR.

    Parameters
    ----------
    X : array-like, scipy sparse matrix or array, or pandas.DataFrame, shape (n_samples, n_features)
        Samples in rows, features in columns. Not modified.
    sample_ids, feature_ids : sequence of str, optional
        Ids used in error messages (length ``n_samples`` / ``n_features``); they must be unique.
        When ``None`` and ``X`` is a DataFrame, its index and columns are used; otherwise
        messages give the row and column index.
    source : str, optional
        Where the table came from (e.g. a file path); put at the start of every message.

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n_samples, n_features)
        ``float64`` values that are exact non-negative integers, in canonical form (sorted
        indices, no duplicate or explicitly stored zero entries): a new matrix, unless ``X`` is
        such a CSR matrix already, in which case the result shares its arrays (a copy of a
        large table costs its size in fresh memory; neither is ever modified).

    Raises
    ------
    InputError
        If ``X`` is not 2-D or has no samples or features; if the ids do not match the shape or
        repeat; if a value is negative, not a whole number, NaN, infinite or above
        :math:`2^{53}` (float64 cannot hold it exactly). The message names the first offending
        sample and feature in row-major order and the value.

    Notes
    -----
    The value checks run on the stored entries of the sparse matrix only, so they cost
    O(nnz). Dense input is converted to CSR first (O(n_samples x n_features), unavoidable).
    """
    prefix = f"{source}: " if source else ""
    clean = None  # whether M is already what this returns (then it is returned as it is)

    pd = sys.modules.get("pandas")  # a DataFrame can only exist if pandas was imported
    if pd is not None and isinstance(X, pd.DataFrame):
        if sample_ids is None:
            sample_ids = X.index
        if feature_ids is None:
            feature_ids = X.columns
        M = _csr_from_dense(_dataframe_values(X), prefix, sample_ids, feature_ids)
    elif sp.issparse(X):
        if X.ndim != 2:
            raise InputError(
                f"{prefix}expected a 2-D count table (samples x features), got a "
                f"{X.ndim}-D sparse array of shape {X.shape}."
            )
        M = sp.csr_matrix(X)  # X's own arrays when X is CSR already
        clean = _is_clean(M)
        data = getattr(X, "data", None)
        if not clean and isinstance(data, np.ndarray) and np.may_share_memory(M.data, data):
            # sum_duplicates() and eliminate_zeros() below work in place: never on X's arrays
            M = M.copy()
    else:
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise InputError(
                f"{prefix}expected a 2-D count table (samples x features), got an array of "
                f"shape {arr.shape}."
            )
        M = _csr_from_dense(arr, prefix, sample_ids, feature_ids)

    n_samples, n_features = M.shape
    if n_samples == 0 or n_features == 0:
        raise InputError(
            f"{prefix}the count table is empty ({n_samples} samples x {n_features} features)."
        )
    sample_ids = _check_ids(sample_ids, n_samples, "sample", "rows", prefix)
    feature_ids = _check_ids(feature_ids, n_features, "feature", "columns", prefix)

    if not (M.dtype.kind in "biuf"):
        raise InputError(
            f"{prefix}counts must be numbers, got values of type {M.dtype}. "
            "Pass a table of integer read counts."
        )
    if clean if clean is not None else _is_clean(M):
        _check_values(M, sample_ids, feature_ids, prefix)
        return M
    M.sum_duplicates()  # canonical: stored entries are in row-major order
    _check_values(M, sample_ids, feature_ids, prefix)

    out = M.astype(np.float64, copy=M.dtype != np.float64)
    out.eliminate_zeros()
    return out


def _is_clean(M: sp.csr_matrix) -> bool:
    """Whether ``M`` is float64 in canonical form (sorted, no duplicates) with no stored zero:
    what :func:`check_counts` returns, so that it need not copy such a matrix."""
    if M.dtype != np.float64 or not M.has_canonical_format:
        return False
    data = M.data
    return not any((data[a:a + _CHECK_BLOCK] == 0).any()
                   for a in range(0, data.size, _CHECK_BLOCK))


def _dataframe_values(df) -> np.ndarray:
    values = df.to_numpy()
    if values.dtype == object:
        # nullable dtypes (Int64, Float64) give pd.NA in an object array; turn NA into NaN so it
        # is reported as a missing value. Strings stay object and are reported below.
        try:
            values = df.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            pass
    return values


def _csr_from_dense(arr: np.ndarray, prefix, sample_ids, feature_ids) -> sp.csr_matrix:
    if arr.ndim != 2:
        raise InputError(
            f"{prefix}expected a 2-D count table (samples x features), got shape {arr.shape}."
        )
    if arr.dtype.kind not in "biuf":
        arr = _as_float_or_raise(arr, prefix, sample_ids, feature_ids)
    return sp.csr_matrix(arr)  # NaN != 0, so NaNs are stored and checked like any value


def _as_float_or_raise(arr: np.ndarray, prefix, sample_ids, feature_ids) -> np.ndarray:
    """Convert an object/string/complex array to float64, or name the first value that fails."""
    if arr.dtype.kind == "c":
        raise InputError(f"{prefix}counts must be real numbers, got complex values.")
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError):
        pass
    # error path only: find the culprit element by element
    for (i, j), v in np.ndenumerate(arr):
        try:
            float(v)
        except (TypeError, ValueError):
            where = _where(i, j, _id_list(sample_ids), _id_list(feature_ids))
            raise InputError(
                f"{prefix}{where}: value {v!r} is not a number. Pass a table of integer read "
                "counts (remove text such as taxonomy columns first)."
            ) from None
    raise InputError(f"{prefix}counts could not be converted to numbers.")  # pragma: no cover


def _id_list(ids) -> list[str] | None:
    return None if ids is None else [str(s) for s in ids]


def _check_ids(ids, n: int, axis: str, dim: str, prefix: str) -> list[str] | None:
    if ids is None:
        return None
    ids = _id_list(ids)
    if len(ids) != n:
        raise InputError(
            f"{prefix}got {len(ids)} {axis} ids for a table with {n} {dim}. mvae expects samples "
            "in rows and features in columns; is the table transposed?"
        )
    if len(set(ids)) != n:
        counts = Counter(ids)
        dups = [s for s, c in counts.items() if c > 1]
        shown = ", ".join(f"'{s}' (x{counts[s]})" for s in dups[:10])
        more = f" and {len(dups) - 10} more" if len(dups) > 10 else ""
        raise InputError(
            f"{prefix}duplicate {axis} ids: {shown}{more}. Every {axis} id must be unique; "
            f"rename or merge the repeated {axis}s."
        )
    return ids


#: Stored entries checked at a time: the masks stay in the processor's cache.
_CHECK_BLOCK = 2**16


def _invalid(data: np.ndarray, kind: str) -> np.ndarray:
    """Mask of the entries that are not whole numbers in [0, 2**53]."""
    if kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(data)
            bad |= data < 0
            bad |= data > MAX_EXACT_COUNT
            bad |= data != np.floor(data)
        return bad
    if kind == "i":
        return (data < 0) | (data > MAX_EXACT_COUNT)
    return data > MAX_EXACT_COUNT  # unsigned


def _check_values(M: sp.csr_matrix, sample_ids, feature_ids, prefix: str) -> None:
    data = M.data  # O(nnz): only stored entries can be bad, implicit zeros are fine
    kind = M.dtype.kind
    if kind == "b" or data.size == 0:
        return
    # block by block: the masks of a whole table would be fresh memory several times its size
    if not any(_invalid(data[a:a + _CHECK_BLOCK], kind).any()
               for a in range(0, data.size, _CHECK_BLOCK)):
        return
    bad = _invalid(data, kind)  # something is wrong: find and count it
    n_bad = int(np.count_nonzero(bad))

    k = int(np.argmax(bad))  # first bad stored entry = first in row-major order (canonical CSR)
    i = int(np.searchsorted(M.indptr, k, side="right") - 1)
    j = int(M.indices[k])
    v = data[k]
    where = _where(i, j, sample_ids, feature_ids)
    value = _format_value(v)
    more = (
        f" ({n_bad - 1} more invalid value{'s' if n_bad > 2 else ''} in the table.)"
        if n_bad > 1
        else ""
    )

    if kind == "f" and np.isnan(v):
        problem = (
            "is missing (NaN). Counts cannot be missing: if it means 'not observed' fill it with "
            f"0, otherwise remove the sample or feature {_RAW_COUNTS_HINT}"
        )
    elif kind == "f" and np.isinf(v):
        problem = f"is infinite {_RAW_COUNTS_HINT}"
    elif v < 0:
        problem = f"is negative {_RAW_COUNTS_HINT}"
    elif v > MAX_EXACT_COUNT:
        problem = (
            f"is above 2**53 = {MAX_EXACT_COUNT}, the largest count float64 holds exactly. "
            "Read counts are never this large; check the table (e.g. an overflow or a sum "
            "over the wrong axis)."
        )
    else:
        problem = f"is not a whole number {_RAW_COUNTS_HINT}"
    raise InputError(f"{prefix}{where}: value {value} {problem}{more}")


def _where(i: int, j: int, sample_ids, feature_ids) -> str:
    # ids may not have been checked yet (non-numeric dense input): fall back to positions
    has_s = sample_ids is not None and i < len(sample_ids)
    has_f = feature_ids is not None and j < len(feature_ids)
    s = f"sample '{sample_ids[i]}' (row {i})" if has_s else f"sample at row {i}"
    f = f"feature '{feature_ids[j]}' (column {j})" if has_f else f"feature at column {j}"
    return f"{s}, {f}"


def _format_value(v) -> str:
    if isinstance(v, (np.integer, int)):
        return str(int(v))
    v = float(v)
    if np.isfinite(v) and v.is_integer():
        return f"{v:.0f}"  # -1 rather than -1.0; 2**54 in full rather than 1.8e+16
    return repr(v)  # 1.5, nan, inf, -inf


# --------------------------------------------------------------------------------------------
# drop_empty
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Filtered:
    """A count table with its all-zero samples and features removed (see :func:`drop_empty`).

    Frozen, and compared by identity (``eq=False``): array fields make ``==`` ambiguous.

    Attributes
    ----------
    X : scipy.sparse.csr_matrix, shape (n_kept_samples, n_kept_features)
    sample_ids, feature_ids : list of str
        Ids of the rows and columns of ``X``.
    dropped_samples, dropped_features : list of str
        Ids removed, in their original order.
    kept_sample_index, kept_feature_index : numpy.ndarray of int
        Positions of the kept rows/columns in the input, so that
        ``X_in[kept_sample_index][:, kept_feature_index]`` equals ``X``.
    """

    X: sp.csr_matrix
    sample_ids: list[str]
    feature_ids: list[str]
    dropped_samples: list[str]
    dropped_features: list[str]
    kept_sample_index: np.ndarray
    kept_feature_index: np.ndarray

    def report(self) -> "pd.DataFrame":
        """One row per dropped sample or feature.

        Returns
        -------
        pandas.DataFrame
            Columns ``axis`` (``'sample'`` or ``'feature'``), ``id`` and ``reason``
            (``'all-zero'``); samples first.
        """
        import pandas as pd

        rows = [("sample", s, "all-zero") for s in self.dropped_samples]
        rows += [("feature", f, "all-zero") for f in self.dropped_features]
        return pd.DataFrame(rows, columns=["axis", "id", "reason"])


def drop_empty(
    X,
    sample_ids: Sequence,
    feature_ids: Sequence,
    *,
    min_samples: int = 2,
    min_features: int = 2,
) -> Filtered:
    """Remove samples with no reads and features never observed.

    An all-zero sample has depth :math:`n_i = 0` and no composition; an all-zero feature has
    maximum-likelihood probability 0 in every sample and nothing to learn from.

    Parameters
    ----------
    X : scipy sparse matrix or array-like, shape (n_samples, n_features)
        Non-negative counts, as returned by :func:`check_counts` (not re-validated here).
        Not modified.
    sample_ids, feature_ids : sequence of str
        Ids of the rows and columns.
    min_samples, min_features : int
        Fewest samples / features that may remain.

    Returns
    -------
    Filtered
        The kept table, ids, dropped ids and kept positions.

    Warns
    -----
    DroppedWarning
        Once, if anything was dropped: how many samples and features, with up to 5 ids each.

    Raises
    ------
    InputError
        If fewer than ``min_samples`` samples or ``min_features`` features remain.

    Notes
    -----
    Both sets are found on the input table in one pass each, and the order does not matter:
    with non-negative counts, removing an all-zero feature changes no sample's total, and every
    non-zero entry of a feature lies in a sample with a non-zero total, so removing all-zero
    samples cannot make a feature all-zero. One pass is therefore already stable.
    """
    M = sp.csr_matrix(X, copy=True)
    M.eliminate_zeros()  # explicitly stored zeros must not count as observations
    n_samples, n_features = M.shape
    sample_ids = _check_ids(sample_ids, n_samples, "sample", "rows", "")
    feature_ids = _check_ids(feature_ids, n_features, "feature", "columns", "")
    if sample_ids is None or feature_ids is None:
        raise InputError("drop_empty needs sample_ids and feature_ids (got None).")

    keep_s, keep_f, dropped_s, dropped_f = kept_after_dropping_empty(
        np.diff(M.indptr), np.bincount(M.indices, minlength=n_features), sample_ids,
        feature_ids, min_samples=min_samples, min_features=min_features, stacklevel=3)
    kept = M[keep_s][:, keep_f].tocsr()
    return Filtered(
        X=kept,
        sample_ids=[sample_ids[i] for i in keep_s],
        feature_ids=[feature_ids[j] for j in keep_f],
        dropped_samples=dropped_s,
        dropped_features=dropped_f,
        kept_sample_index=keep_s,
        kept_feature_index=keep_f,
    )


def kept_after_dropping_empty(sample_nnz, feature_nnz, sample_ids, feature_ids, *,
                              min_samples: int = 2, min_features: int = 2, stacklevel: int = 2):
    """The samples and features with any reads, from their numbers of non-zeros; refused when too
    few remain, a :class:`DroppedWarning` when any were dropped.

    Returns
    -------
    keep_s, keep_f : numpy.ndarray of int
        Positions kept.
    dropped_s, dropped_f : list of str
        Ids dropped.
    """
    sample_nnz, feature_nnz = np.asarray(sample_nnz), np.asarray(feature_nnz)
    n_samples, n_features = len(sample_nnz), len(feature_nnz)
    keep_s = np.flatnonzero(sample_nnz > 0)
    keep_f = np.flatnonzero(feature_nnz > 0)
    dropped_s = [sample_ids[i] for i in np.flatnonzero(sample_nnz == 0)]
    dropped_f = [feature_ids[j] for j in np.flatnonzero(feature_nnz == 0)]

    if keep_s.size < min_samples:
        raise InputError(
            f"after dropping {len(dropped_s)} all-zero samples (of {n_samples}), only "
            f"{keep_s.size} sample(s) remain; mvae needs at least {min_samples}. Check that the "
            "table holds raw counts with samples in rows."
        )
    if keep_f.size < min_features:
        raise InputError(
            f"after dropping {len(dropped_f)} all-zero features (of {n_features}), only "
            f"{keep_f.size} feature(s) remain; mvae needs at least {min_features}. Check that "
            "the table holds raw counts with features in columns."
        )

    if dropped_s or dropped_f:
        warnings.warn(
            f"dropped {len(dropped_s)} all-zero sample{'s' if len(dropped_s) != 1 else ''}"
            f"{_listing(dropped_s)} and {len(dropped_f)} all-zero "
            f"feature{'s' if len(dropped_f) != 1 else ''}{_listing(dropped_f)}; they carry no "
            "reads. See Filtered.report() for the full list.",
            DroppedWarning,
            stacklevel=stacklevel,
        )
    return keep_s, keep_f, dropped_s, dropped_f


def _listing(ids: list[str]) -> str:
    if not ids:
        return ""
    shown = ", ".join(f"'{s}'" for s in ids[:_N_LISTED])
    return f" ({shown}{', ...' if len(ids) > _N_LISTED else ''})"
