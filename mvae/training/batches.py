"""Minibatches sliced from a count matrix already in memory, as torch tensors.

No per-sample Python work: a batch is one ``index_select`` (dense) or a handful of vectorised
gathers over CSR arrays (sparse). Sparse storage is used when the table's density is below
``SPARSE_DENSITY`` (the first encoder layer and the likelihood then touch only the non-zeros).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.special import gammaln

__all__ = ["CountData", "CountBatch", "SPARSE_DENSITY"]

#: Tables sparser than this are kept sparse on the device.
SPARSE_DENSITY = 0.05
#: A batch holding a sample deeper than this is served in float64 (see :class:`CountData`).
EXACT_DEPTH = 2**20


def csr_row_sums(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """The sum of ``values`` over each row's stretch of a CSR matrix's stored entries.

    Parameters
    ----------
    values : numpy.ndarray, shape (indptr[-1] - indptr[0],)
        One value per stored entry of the rows, in order.
    indptr : numpy.ndarray, shape (rows + 1,)
        The rows' pointers (those of a block of rows of a larger matrix need not start at 0).

    Returns
    -------
    numpy.ndarray of float64, shape (rows,)
        0 for a row without stored entries.
    """
    out = np.zeros(len(indptr) - 1)
    filled = np.flatnonzero(np.diff(indptr))
    if filled.size:  # a stretch ends where the next filled row's begins: empty rows add nothing
        out[filled] = np.add.reduceat(values, indptr[filled] - indptr[0])
    return out


#: Counts below this have their log-factorial looked up (see :func:`log_factorial`).
FACTORIAL_TABLE = 2**16


@functools.cache
def _log_factorials() -> np.ndarray:
    return gammaln(np.arange(FACTORIAL_TABLE, dtype=np.float64) + 1)


def log_factorial(x: np.ndarray) -> np.ndarray:
    """``scipy.special.gammaln(x + 1)`` (:math:`\\log x!` for whole numbers), elementwise, in
    float64: looked up for the whole numbers below ``FACTORIAL_TABLE`` (the same values, an order
    of magnitude faster than evaluating the function at every stored count of a table),
    evaluated for anything else."""
    x = np.asarray(x, dtype=np.float64)
    table = (x >= 0) & (x < FACTORIAL_TABLE)  # False for NaN
    k = np.where(table, x, 0.0).astype(np.intp)
    table &= k == x  # whole numbers only
    if table.all():
        return _log_factorials()[k]
    out = gammaln(x + 1)
    out[table] = _log_factorials()[k[table]]
    return out


#: Stored entries per block when a table is converted (see :func:`_row_blocks`).
BLOCK_ENTRIES = 2**17


def _row_blocks(csr: sp.csr_matrix):
    """(start, stop) of consecutive row blocks of about ``BLOCK_ENTRIES`` stored entries (at
    least one row): the conversion's temporaries are then the size of a block and stay in the
    processor's cache, instead of fresh memory the size of the table."""
    n = csr.shape[0]
    step = max(1, int(BLOCK_ENTRIES * n // max(1, csr.nnz)))
    return [(start, min(start + step, n)) for start in range(0, n, step)]


@dataclass(frozen=True)
class CountBatch:
    """A minibatch of counts with its per-sample multinomial constant.

    Attributes
    ----------
    counts : torch.Tensor, shape (B, D), dense or sparse COO
        In the table's dtype, or float64 when a sample of the batch is deeper than
        ``EXACT_DEPTH`` reads.
    log_const : torch.Tensor, shape (B,)
        :math:`\\log N! - \\sum_d \\log x_d!`, computed once per table rather than at every step.
    """

    counts: torch.Tensor
    log_const: torch.Tensor


class CountData:
    """A samples x features count matrix on a device, served in minibatches.

    Parameters
    ----------
    X : scipy.sparse matrix or numpy.ndarray, shape (n, D)
        Validated counts.
    device : torch.device
    dtype : torch.dtype
    sparse : bool or None
        Keep sparse on the device; ``None`` decides from the density.

    Attributes
    ----------
    density : float
        Fraction of non-zero entries.
    sparse : bool

    Notes
    -----
    A batch with a sample deeper than ``EXACT_DEPTH`` (2²⁰) reads is served in float64, and the
    likelihoods then form the count-dependent sums x·ℓ and N log Σ exp ℓ in float64: in float32
    the counts above 2²⁴ are rounded and those sums (of order N |ℓ|) lose more than the
    difference between them, so that a sample of 10⁹ reads could score a probability above
    one. Other batches are served in ``dtype`` as before (their counts are exact in float32).
    The multinomial constants are kept in float64 and served in the batch's dtype.
    """

    def __init__(self, X, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 sparse: bool | None = None):
        csr = sp.csr_matrix(X)
        csr.sort_indices()
        self.n_samples, self.n_features = csr.shape
        self.density = csr.nnz / max(1, self.n_samples * self.n_features)
        self.sparse = self.density < SPARSE_DENSITY if sparse is None else bool(sparse)
        self.device = torch.device(device)
        self.dtype = dtype
        depth = np.asarray(csr.sum(axis=1)).ravel()
        per_row = np.zeros(self.n_samples)  # Σ_d log x_d! per row, O(nnz)
        for start, stop in _row_blocks(csr):
            a, b = csr.indptr[start], csr.indptr[stop]
            per_row[start:stop] = csr_row_sums(log_factorial(csr.data[a:b]),
                                               csr.indptr[start:stop + 1])
        # float64: log N! alone is ~2.6e13 at N = 10^12, far beyond float32's resolution
        self._log_const = torch.as_tensor(gammaln(depth + 1) - per_row, dtype=torch.float64,
                                          device=self.device)
        # deep tables keep exact counts; each batch is narrowed unless it needs them (batch())
        self._deep = (torch.as_tensor(depth > EXACT_DEPTH, device=self.device)
                      if depth.size and depth.max() > EXACT_DEPTH else None)
        stored = torch.float64 if self._deep is not None else dtype
        if self.sparse:
            self._indptr = torch.as_tensor(csr.indptr.astype(np.int64), device=self.device)
            self._indices = torch.as_tensor(csr.indices.astype(np.int64), device=self.device)
            self._values = torch.as_tensor(csr.data, dtype=stored, device=self.device)
        else:
            dense = torch.empty((self.n_samples, self.n_features), dtype=stored)
            for start, stop in _row_blocks(csr):
                dense[start:stop] = torch.from_numpy(csr[start:stop].toarray())
            self._dense = dense.to(self.device)

    def __len__(self) -> int:
        return self.n_samples

    def batch(self, index: torch.Tensor) -> CountBatch:
        """Rows ``index`` (LongTensor, shape (B,)): counts (dense or sparse COO) and constants."""
        index = index.to(self.device)
        counts, log_const = self._rows(index), self._log_const.index_select(0, index)
        if self._deep is None or not bool(self._deep.index_select(0, index).any()):
            # every count of these rows is exact in float32, and so is the constant's use
            return CountBatch(counts.to(self.dtype), log_const.to(self.dtype))
        return CountBatch(counts, log_const)

    def _rows(self, index: torch.Tensor) -> torch.Tensor:
        if not self.sparse:
            return self._dense.index_select(0, index)
        # index_select throughout: faster than advanced indexing on the CPU
        starts = self._indptr.index_select(0, index)  # (B,)
        lengths = self._indptr.index_select(0, index + 1) - starts  # (B,)
        B = index.shape[0]
        rows = torch.repeat_interleave(torch.arange(B, device=self.device), lengths)  # (nnz_b,)
        # each entry's position in the table: its row's start, plus its place within the row
        shift = (starts - (torch.cumsum(lengths, 0) - lengths)).index_select(0, rows)
        pos = torch.arange(rows.shape[0], device=self.device).add_(shift)
        coords = torch.stack([rows, self._indices.index_select(0, pos)])  # (2, nnz_b), row-major
        return torch.sparse_coo_tensor(coords, self._values.index_select(0, pos),
                                       (B, self.n_features), is_coalesced=True,
                                       check_invariants=False)

    def all(self) -> torch.Tensor:
        """All rows (for small evaluation sets)."""
        return self.batch(torch.arange(self.n_samples))

    def chunks(self, size: int):
        """Yield consecutive row batches of at most ``size`` rows, in order."""
        for start in range(0, self.n_samples, size):
            yield self.batch(torch.arange(start, min(start + size, self.n_samples)))
