"""Minibatches sliced from a count matrix already in memory, as torch tensors.

No per-sample Python work: a batch is one ``index_select`` (dense) or a handful of vectorised
gathers over CSR arrays (sparse). Sparse storage is used when the table's density is below
``SPARSE_DENSITY`` (the first encoder layer and the likelihood then touch only the non-zeros).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.special import gammaln

__all__ = ["CountData", "CountBatch", "SPARSE_DENSITY"]

#: Tables sparser than this are kept sparse on the device.
SPARSE_DENSITY = 0.05


@dataclass(frozen=True)
class CountBatch:
    """A minibatch of counts with its per-sample multinomial constant.

    Attributes
    ----------
    counts : torch.Tensor, shape (B, D), dense or sparse COO
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
        cum = np.concatenate([[0.0], np.cumsum(gammaln(csr.data + 1))])
        per_row = cum[csr.indptr[1:]] - cum[csr.indptr[:-1]]  # Σ_d log x_d! per row, O(nnz)
        self._log_const = torch.as_tensor(gammaln(depth + 1) - per_row, dtype=dtype,
                                          device=self.device)
        if self.sparse:
            self._indptr = torch.as_tensor(csr.indptr.astype(np.int64), device=self.device)
            self._indices = torch.as_tensor(csr.indices.astype(np.int64), device=self.device)
            self._values = torch.as_tensor(csr.data, dtype=dtype, device=self.device)
        else:
            self._dense = torch.as_tensor(csr.toarray(), dtype=dtype, device=self.device)

    def __len__(self) -> int:
        return self.n_samples

    def batch(self, index: torch.Tensor) -> CountBatch:
        """Rows ``index`` (LongTensor, shape (B,)): counts (dense or sparse COO) and constants."""
        index = index.to(self.device)
        return CountBatch(self._rows(index), self._log_const.index_select(0, index))

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
