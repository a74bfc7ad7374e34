"""Count tables as a fit reads them: in memory or streamed from disk, behind one interface.

A fit needs the same few things of any table, wherever its rows live:

- ``sample_ids``, ``feature_ids``, ``len()`` and ``n_features``;
- :meth:`CountSource.scan` -- one pass for the depths, the non-zeros per sample and feature and
  the largest count (to drop all-zero samples and features and to warn about the rest);
- :meth:`~CountSource.select`, :meth:`~CountSource.subset` and :meth:`~CountSource.shard` --
  the rows and features kept, the training and validation splits, one process's share;
- :meth:`CountSource.input_statistics` -- the encoder's input conditioning and the decoder's
  starting bias, from sums that shards add up;
- ``batch(index)``, ``chunks(size)`` and ``device`` -- minibatches for the training loop
  (:meth:`CountSource.on` gives the source on a device);
- :meth:`~CountSource.to_csr` of a few rows (the PCA start) and ``fingerprint_parts()`` (what a
  checkpoint records of the data).

:class:`InMemoryCounts` holds a validated sparse matrix; :class:`mvae.io.streaming.StreamingCounts`
reads an HDF5 ``.biom`` or ``.h5ad`` file chunk by chunk. :func:`scan` and
:func:`input_statistics` run the same passes shard by shard when several processes train
together, each reading only its own rows, and add the sums up over the processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mvae.errors import InputError

__all__ = ["TableScan", "CountSource", "InMemoryCounts", "scan", "input_statistics",
           "finish_input_statistics"]


@dataclass(frozen=True, eq=False)
class TableScan:
    """Totals of a table from one pass over it (see :meth:`CountSource.scan`).

    Attributes
    ----------
    feature_totals : numpy.ndarray of float64, shape (n_features,)
        :math:`\\sum_i x_{id}`.
    feature_nnz : numpy.ndarray of int64, shape (n_features,)
        Number of samples in which each feature is non-zero.
    depths : numpy.ndarray of float64, shape (n_samples,)
        :math:`n_i = \\sum_d x_{id}`.
    sample_nnz : numpy.ndarray of int64, shape (n_samples,)
        Number of non-zero features per sample.
    max_count : float
        The largest count (0 for an all-zero table).
    max_at : tuple of int
        (sample position, feature position) of its first occurrence in row-major order.
    """

    feature_totals: np.ndarray
    feature_nnz: np.ndarray
    depths: np.ndarray
    sample_nnz: np.ndarray
    max_count: float = 0.0
    max_at: tuple[int, int] = (0, 0)


class CountSource:
    """The passes over a table that every source shares, written once over its row chunks.

    A subclass provides ``n_samples``, ``n_features``, ``sample_ids``, ``feature_ids``,
    ``subset(positions)``, ``select(rows, features)``, ``on(device)``, ``batch``, ``chunks``,
    ``fingerprint_parts()`` and ``_csr_chunks()``: (chunk number, float64 CSR of its rows) in
    order, with chunk ``c`` starting at row ``c * chunk_rows``.
    """

    chunk_rows: int

    def __len__(self) -> int:
        return self.n_samples

    def scan(self) -> TableScan:
        """One pass over the table, chunk by chunk.

        Returns
        -------
        TableScan
            Per-feature totals and non-zeros and per-sample depths and non-zeros.
        """
        D = self.n_features
        totals = np.zeros(D)
        feature_nnz = np.zeros(D, dtype=np.int64)
        depths = np.zeros(self.n_samples)
        sample_nnz = np.zeros(self.n_samples, dtype=np.int64)
        max_count, max_at = 0.0, (0, 0)
        for c, M in self._csr_chunks():
            start = c * self.chunk_rows
            depths[start:start + M.shape[0]] = np.asarray(M.sum(axis=1)).ravel()
            sample_nnz[start:start + M.shape[0]] = np.diff(M.indptr)
            totals += np.bincount(M.indices, weights=M.data, minlength=D)
            feature_nnz += np.bincount(M.indices, minlength=D)
            if M.nnz and M.data.max() > max_count:
                k = int(np.argmax(M.data))
                row = int(np.searchsorted(M.indptr, k, side="right") - 1)
                max_count, max_at = float(M.data[k]), (start + row, int(M.indices[k]))
        return TableScan(totals, feature_nnz, depths, sample_nnz, max_count, max_at)

    def input_statistics(self, pseudocount: float):
        r"""The encoder's input conditioning and the decoder's starting bias, from one pass.

        With :math:`y_{id} = \log(1 + x_{id}/c)` and :math:`\bar y_i = \frac1D\sum_d y_{id}`:

        .. math::

            \text{pooled}_d = \log\Big(\sum_i x_{id} + c\Big), \quad
            \text{centre}_d = \frac1n\sum_i y_{id} - \frac1n\sum_i \bar y_i, \quad
            \text{scale}^2 = \frac1n\sum_i\Big(\frac1D\sum_d y_{id}^2 - \bar y_i^2\Big)
                             - \frac1D\sum_d \text{centre}_d^2

        (scale is 1 when degenerate).

        Returns
        -------
        pooled : numpy.ndarray, shape (n_features,)
        centre : numpy.ndarray, shape (n_features,)
        scale : float
        """
        return finish_input_statistics(self.input_sums(pseudocount), pseudocount, self.n_features)

    def input_sums(self, pseudocount: float) -> np.ndarray:
        """The sums behind :meth:`input_statistics`, flat so that shards can add theirs.

        Returns
        -------
        numpy.ndarray of float64, shape (2 * n_features + 3,)
            :math:`[\\sum_i x_{i\\cdot},\\ \\sum_i y_{i\\cdot},\\ n,\\ \\sum_i \\bar y_i,\\
            \\sum_i (\\tfrac1D\\sum_d y_{id}^2 - \\bar y_i^2)]`; pass the (summed) array to
            :func:`finish_input_statistics`.
        """
        from mvae.training.batches import csr_row_sums

        c = float(pseudocount)
        D = self.n_features
        totals, y_cols = np.zeros(D), np.zeros(D)
        s_mean = s_spread = 0.0
        for _, M in self._csr_chunks():
            totals += np.bincount(M.indices, weights=M.data, minlength=D)
            y = np.log1p(M.data / c)  # at the non-zeros; zeros stay zero
            y_cols += np.bincount(M.indices, weights=y, minlength=D)
            # per-row sums of y and y² over each row's stretch of the non-zeros
            row_mean = csr_row_sums(y, M.indptr) / D
            sq = csr_row_sums(np.square(y, out=y), M.indptr) / D
            s_mean += float(row_mean.sum())
            s_spread += float((sq - row_mean**2).sum())
        return np.concatenate([totals, y_cols, [float(self.n_samples), s_mean, s_spread]])

    def shard(self, rank: int, world_size: int, *, equal: bool = True) -> "CountSource":
        """Rank ``rank``'s share of the rows for ``world_size`` processes: a contiguous block.

        Contiguous blocks keep each process's reads of a file to its own stretch. With ``equal``
        every shard has ``n_samples // world_size`` rows (the last ``n_samples % world_size``
        rows are left out) so that all ranks take the same number of steps; otherwise the first
        shards get one row more.
        """
        if not (isinstance(world_size, (int, np.integer)) and world_size >= 1
                and isinstance(rank, (int, np.integer)) and 0 <= rank < world_size):
            raise InputError(f"shard(rank={rank!r}, world_size={world_size!r}): need "
                             "0 <= rank < world_size.")
        if world_size > self.n_samples:
            raise InputError(f"world_size={world_size} is larger than the {self.n_samples} "
                             "samples; use fewer processes.")
        if equal:
            size = self.n_samples // world_size
            return self.subset(np.arange(rank * size, (rank + 1) * size))
        return self.subset(np.array_split(np.arange(self.n_samples), world_size)[rank])


def finish_input_statistics(sums: np.ndarray, pseudocount: float, n_features: int):
    """(pooled, centre, scale) from the sums of :meth:`CountSource.input_sums`."""
    D = int(n_features)
    totals, y_cols = sums[:D], sums[D:2 * D]
    n, s_mean, s_spread = (float(v) for v in sums[2 * D:])
    pooled = np.log(totals + float(pseudocount))
    centre = y_cols / n - s_mean / n
    var = float(s_spread / n - np.mean(centre**2))
    return pooled, centre, (float(np.sqrt(var)) if var > 1e-12 else 1.0)


def _shard_start(n: int, rank: int, world: int) -> int:
    """First row of ``shard(rank, world, equal=False)`` (numpy's array_split)."""
    return (n // world) * rank + min(rank, n % world)


def scan(source: CountSource, info=None) -> TableScan:
    """:meth:`CountSource.scan` of the whole source; with ``info`` (a
    :class:`mvae.training.distributed.DistInfo`) each rank reads only its own block of rows and
    the totals are added up over the ranks."""
    if info is None:
        return source.scan()
    n, D = source.n_samples, source.n_features
    shard = source.shard(info.rank, info.world, equal=False)
    start = _shard_start(n, info.rank, info.world)
    part = shard.scan()
    flat = np.zeros(2 * D + 2 * n)
    flat[:D], flat[D:2 * D] = part.feature_totals, part.feature_nnz
    flat[2 * D + start:2 * D + start + shard.n_samples] = part.depths
    flat[2 * D + n + start:2 * D + n + start + shard.n_samples] = part.sample_nnz
    flat = info.sum(flat)
    best = np.zeros((info.world, 3))
    best[info.rank] = (part.max_count, start + part.max_at[0], part.max_at[1])
    best = info.sum(best)
    r = int(np.argmax(best[:, 0]))  # the first rank holding the largest count
    return TableScan(flat[:D], flat[D:2 * D].astype(np.int64), flat[2 * D:2 * D + n],
                     flat[2 * D + n:].astype(np.int64), float(best[r, 0]),
                     (int(best[r, 1]), int(best[r, 2])))


def input_statistics(source: CountSource, pseudocount: float, info=None):
    """:meth:`CountSource.input_statistics` of the whole source; with ``info``, each rank reads
    only its own block of rows and the sums are added up over the ranks."""
    if info is None:
        return source.input_statistics(pseudocount)
    shard = source.shard(info.rank, info.world, equal=False)
    return finish_input_statistics(info.sum(shard.input_sums(pseudocount)), pseudocount,
                                   source.n_features)


def _is_every(positions: np.ndarray, n: int) -> bool:
    """Whether ``positions`` is 0, 1, ..., n - 1."""
    return len(positions) == n and bool(np.array_equal(positions, np.arange(n)))


#: Stored entries per block of a pass over an in-memory table (see ``InMemoryCounts``).
PASS_ENTRIES = 2**17


class InMemoryCounts(CountSource):
    """A validated count matrix in memory with its ids, as a source for a fit.

    Parameters
    ----------
    X : scipy.sparse matrix, shape (n, D)
        Validated counts (see :func:`mvae.io.validation.check_counts`).
    sample_ids, feature_ids : list of str
    device : torch.device or str
        Where :meth:`batch` and :meth:`chunks` put their tensors.
    sparse : bool, optional
        Serve sparse batches; by default decided from the density, as
        :class:`mvae.training.batches.CountData` does. Subsets (splits, shards) keep their
        table's layout, so the model's estimator is the same for training and validation.
    """

    def __init__(self, X, sample_ids, feature_ids, device="cpu", sparse: bool | None = None):
        self.X = sp.csr_matrix(X)
        self.X.sort_indices()
        self.n_samples, self.n_features = self.X.shape
        # rows of about PASS_ENTRIES stored entries (at least one row)
        self.chunk_rows = max(1, int(PASS_ENTRIES * self.n_samples // max(1, self.X.nnz)))
        self.sample_ids, self.feature_ids = list(sample_ids), list(feature_ids)
        if len(self.sample_ids) != self.n_samples or len(self.feature_ids) != self.n_features:
            raise InputError(f"{len(self.sample_ids)} sample ids and {len(self.feature_ids)} "
                             f"feature ids for a table of shape {self.X.shape}")
        self.device = device
        self.density = self.X.nnz / max(1, self.n_samples * self.n_features)
        if sparse is None:
            from mvae.training.batches import SPARSE_DENSITY

            sparse = self.density < SPARSE_DENSITY
        self.sparse = bool(sparse)
        self._batches = None

    def _csr_chunks(self):
        # views of consecutive row blocks, not copies: a pass's temporaries (logs, squares,
        # masks) are then the size of a block and stay in the processor's cache, where over the
        # whole table they were fresh memory of the table's size, several times per pass
        X, n, step = self.X, self.n_samples, self.chunk_rows
        for c, start in enumerate(range(0, n, step)):
            stop = min(start + step, n)
            a, b = X.indptr[start], X.indptr[stop]
            yield c, sp.csr_matrix((X.data[a:b].astype(np.float64, copy=False), X.indices[a:b],
                                    X.indptr[start:stop + 1] - a), shape=(stop - start,
                                                                          self.n_features))

    def to_csr(self) -> sp.csr_matrix:
        """The rows, as CSR."""
        return self.X

    def subset(self, positions) -> "InMemoryCounts":
        """The rows at ``positions``."""
        positions = np.asarray(positions, dtype=np.int64)
        X = self.X if _is_every(positions, self.n_samples) else self.X[positions]
        return InMemoryCounts(X, [self.sample_ids[i] for i in positions],
                              self.feature_ids, self.device, self.sparse)

    def select(self, rows, features) -> "InMemoryCounts":
        """The rows and features (positions) kept, in their order (the layout is decided anew
        from their density)."""
        rows, features = np.asarray(rows, dtype=np.int64), np.asarray(features, dtype=np.int64)
        X = self.X
        # usually nothing was dropped: then no copy (the indexing copied the whole table)
        if not _is_every(rows, self.n_samples):
            X = X[rows]
        if not _is_every(features, self.n_features):
            X = X[:, features]
        return InMemoryCounts(X, [self.sample_ids[i] for i in rows],
                              [self.feature_ids[j] for j in features], self.device)

    def on(self, device) -> "InMemoryCounts":
        """The same rows, with batches on ``device``."""
        return InMemoryCounts(self.X, self.sample_ids, self.feature_ids, device, self.sparse)

    def fingerprint_parts(self) -> list[bytes]:
        """The counts and ids, for a checkpoint's record of the data."""
        X = self.X
        return ([np.ascontiguousarray(a).tobytes() for a in (X.indptr, X.indices, X.data)]
                + [json.dumps([self.sample_ids, self.feature_ids]).encode()])

    # minibatches: the table's CountData, built on first use
    def _data(self):
        if self._batches is None:
            from mvae.training.batches import CountData

            self._batches = CountData(self.X, self.device, sparse=self.sparse)
        return self._batches

    def batch(self, index):
        """Rows ``index`` (LongTensor, shape (B,)) as a CountBatch."""
        return self._data().batch(index)

    def chunks(self, size: int):
        """Consecutive batches of at most ``size`` rows, in order."""
        return self._data().chunks(size)
