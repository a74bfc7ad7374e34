r"""Count tables read from disk chunk by chunk, for tables larger than memory.

:class:`~mvae.training.batches.CountData` holds the whole table on the device. :class:`StreamingCounts` has
the same interface (``len``, ``device``, ``n_features``, ``sparse``, ``batch``, ``chunks``) but
keeps only one *chunk* of consecutive samples in memory, read from an HDF5 file on demand:

- an HDF5 BIOM 2.1 table (``.biom``): its ``sample/matrix`` group is the table in CSR form with
  samples as rows (datasets ``indptr``, ``indices``, ``data``); ids are in ``sample/ids`` and
  ``observation/ids``;
- an ``.h5ad`` file whose ``X`` (or ``layers/<layer>``) is stored as CSR; ids are the ``obs``
  and ``var`` indexes.

How a training epoch reads the file
-----------------------------------
The rows in use (all of them, or a ``rows`` subset) are cut into chunks of ``chunk_rows``
consecutive rows. :meth:`StreamingCounts.epoch_order` shuffles the order of the chunks and the
rows inside each chunk, so consecutive minibatches come from one chunk and each chunk is read
once per epoch; :meth:`StreamingCounts.batch` serves rows from a one-chunk cache (a minibatch
that straddles two chunks is assembled from both). This is the usual compromise of out-of-core
SGD: the shuffle is coarser than a full permutation, but every sample is still visited once per
epoch in a random order of random chunks.

Memory
------
A chunk of :math:`m` stored entries costs about ``BYTES_PER_NNZ`` :math:`\times m` bytes at its
peak (the file's arrays, the validity checks, the multinomial constant and the tensors kept), so
the default ``chunk_rows`` is ``max_bytes / (BYTES_PER_NNZ * mean nnz per row)``. Besides one
chunk, an object holds O(n_samples) integers (the file's row pointers and the row subset) and
O(n_features) feature ids; sample ids are read from the file only when asked for. HDF5 adds its
own chunk cache (1 MiB per dataset by default).

Each chunk's values are checked as :func:`mvae.io.validation.check_counts` checks a table
(negative, fractional, NaN, infinite or too large values raise :class:`~mvae.errors.InputError`
naming the file, sample, feature and value), and each sample's multinomial constant
:math:`\log n_i! - \sum_d \log x_{id}!` is computed when its chunk is read. :meth:`scan` makes one
pass for the totals needed before training (per-feature totals, per-sample depths, non-zeros),
and :meth:`input_statistics` one for the encoder's input conditioning.

Examples
--------
>>> data = StreamingCounts("data/moving_pictures_16s_table.biom", chunk_rows=8)
>>> len(data), data.n_features, data.n_chunks
(34, 759, 5)
>>> import torch
>>> order = data.epoch_order(torch.Generator().manual_seed(0))
>>> batch = data.batch(order[:4])
>>> tuple(batch.counts.shape), tuple(batch.log_const.shape)
((4, 759), (4,))
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ..training.batches import SPARSE_DENSITY, CountBatch, CountData
from ..errors import InputError
from .sources import CountSource, TableScan, finish_input_statistics  # noqa: F401 (re-exported)

__all__ = ["StreamingCounts", "TableScan", "DEFAULT_MAX_BYTES", "BYTES_PER_NNZ",
           "finish_input_statistics"]

#: Default memory budget for one chunk.
DEFAULT_MAX_BYTES = 256 * 2**20

#: Peak bytes per stored entry while a chunk is read, checked and turned into tensors (file
#: arrays, check masks, log-factorial temporaries, the int64/float32 tensors kept). Measured with
#: tracemalloc on 10^4-10^5-entry chunks: ~29 during an epoch, ~35 in scan, ~50 in
#: input_statistics (numpy's share; torch's float32 values add 4); rounded up.
BYTES_PER_NNZ = 64

#: Bytes per row of a chunk (row pointers, constants, positions).
BYTES_PER_ROW = 64


class _Source:
    """An open HDF5 count table: the CSR datasets, row pointers and ids (shared by subsets)."""

    def __init__(self, path, layer: str | None):
        import h5py

        from .tables import _check_path

        p = Path(path)
        self.shown = str(path)
        kind = _check_path(p, self.shown)
        if p.name.lower().endswith(".gz"):
            raise InputError(f"{self.shown}: a gzipped file cannot be read chunk by chunk; "
                             f"decompress it first (gunzip -k {self.shown}).")
        if kind == "text" or not h5py.is_hdf5(p):
            raise InputError(
                f"{self.shown}: not an HDF5 file; streaming reads an HDF5 BIOM 2.1 table or an "
                ".h5ad file. Convert a JSON or text BIOM with `biom convert -i in.biom -o "
                "out.biom --to-hdf5`, or read small tables in memory without streaming.")
        if kind == "biom" and layer is not None:
            raise InputError(f"{self.shown}: layer={layer!r} was given, but a BIOM file holds "
                             "one table. Leave layer unset.")
        try:
            self.file = h5py.File(p, "r")
        except OSError as exc:
            raise InputError(f"{self.shown}: cannot be opened as HDF5 ({exc}).") from exc
        try:
            if kind == "biom":
                self._open_biom()
            else:
                self._open_h5ad(layer)
        except BaseException:
            self.file.close()
            raise
        self.indptr = np.asarray(self.indptr_ds[:], dtype=np.int64)  # (n + 1,)
        if self.indptr.shape != (self.n_rows + 1,) or self.indptr[0] != 0 or np.any(
                np.diff(self.indptr) < 0) or self.indptr[-1] > self.indices_ds.shape[0]:
            raise InputError(f"{self.shown}: the row pointers of {self.where} do not describe "
                             f"{self.n_rows} rows of the stored entries; the file is corrupt.")
        self.feature_ids = [str(s) for s in self._read_strings(self.feature_ids_ds, slice(None))]
        if len(self.feature_ids) != self.n_cols:
            raise InputError(f"{self.shown}: {len(self.feature_ids)} feature ids for a table "
                             f"with {self.n_cols} features; the file is corrupt.")
        self._sample_ids: list[str] | None = None

    def _need(self, name: str, what: str):
        if name not in self.file:
            raise InputError(f"{self.shown}: no '{name}' in the file, so it is not {what}. "
                             "Re-export the table, or read it in memory without streaming.")
        return self.file[name]

    def _open_biom(self) -> None:
        what = "an HDF5 BIOM 2.1 table"
        self.where = "sample/matrix"
        self.indptr_ds = self._need("sample/matrix/indptr", what)
        self.indices_ds = self._need("sample/matrix/indices", what)
        self.data_ds = self._need("sample/matrix/data", what)
        self.sample_ids_ds = self._need("sample/ids", what)
        self.feature_ids_ds = self._need("observation/ids", what)
        shape = self.file.attrs.get("shape")  # (n_observations, n_samples)
        n_obs = int(shape[0]) if shape is not None else int(self.feature_ids_ds.shape[0])
        self.n_rows, self.n_cols = int(self.sample_ids_ds.shape[0]), n_obs

    def _open_h5ad(self, layer: str | None) -> None:
        import h5py

        what = "an .h5ad file"
        self.where = "X" if layer is None else f"layers/{layer}"
        X = self._need(self.where, what)
        if isinstance(X, h5py.Dataset) or X.attrs.get("encoding-type",
                                                     X.attrs.get("h5sparse_format")) not in (
                "csr_matrix", "csr"):
            stored = "dense" if isinstance(X, h5py.Dataset) else str(
                X.attrs.get("encoding-type", X.attrs.get("h5sparse_format", "unknown")))
            raise InputError(
                f"{self.shown}: {self.where} is stored as {stored}; streaming needs CSR rows. "
                "Rewrite it with `adata.X = scipy.sparse.csr_matrix(adata.X); "
                "adata.write_h5ad(path)`.")
        self.indptr_ds = self._need(f"{self.where}/indptr", what)
        self.indices_ds = self._need(f"{self.where}/indices", what)
        self.data_ds = self._need(f"{self.where}/data", what)
        self.sample_ids_ds = self._index_of("obs", what)
        self.feature_ids_ds = self._index_of("var", what)
        shape = X.attrs.get("shape", X.attrs.get("h5sparse_shape"))
        if shape is None:
            raise InputError(f"{self.shown}: {self.where} has no 'shape' attribute; the file is "
                             "not an anndata CSR matrix.")
        self.n_rows, self.n_cols = int(shape[0]), int(shape[1])

    def _index_of(self, group: str, what: str):
        g = self._need(group, what)
        name = g.attrs.get("_index", "_index")
        return self._need(f"{group}/{name}", what)

    @staticmethod
    def _read_strings(ds, sel):
        values = ds.asstr()[sel] if ds.dtype.kind in "OSU" else ds[sel]
        return values

    def sample_id(self, row: int) -> str:
        return str(self._read_strings(self.sample_ids_ds, int(row)))

    @property
    def sample_ids(self) -> list[str]:
        if self._sample_ids is None:
            self._sample_ids = [str(s) for s in self._read_strings(self.sample_ids_ds,
                                                                   slice(None))]
        return self._sample_ids

    def read_rows(self, rows: np.ndarray) -> sp.csr_matrix:
        """File rows ``rows`` (any order, unique) as a CSR matrix of the file's dtype.

        Each run of consecutive file rows is one read of ``indices`` and ``data``; no other rows
        are read.
        """
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        breaks = np.flatnonzero(np.diff(srt) != 1) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [len(srt)]])
        lengths = self.indptr[srt + 1] - self.indptr[srt]  # (m,)
        idx, dat = [], []
        for a, b in zip(starts, stops):
            lo, hi = self.indptr[srt[a]], self.indptr[srt[b - 1] + 1]
            idx.append(self.indices_ds[lo:hi])
            dat.append(self.data_ds[lo:hi])
        indices = idx[0] if len(idx) == 1 else np.concatenate(idx)
        data = dat[0] if len(dat) == 1 else np.concatenate(dat)
        del idx, dat
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        M = sp.csr_matrix((data, indices, indptr), shape=(len(rows), self.n_cols))
        if not np.array_equal(order, np.arange(len(rows))):
            M = M[np.argsort(order)]  # back to the requested order
        return M

    def close(self) -> None:
        self.file.close()


class StreamingCounts(CountSource):
    """A samples x features count table in an HDF5 file, served in minibatches chunk by chunk.

    Parameters
    ----------
    path : str or os.PathLike
        An HDF5 BIOM 2.1 file (``.biom``) or an ``.h5ad`` file whose matrix is CSR.
    rows : array-like of int, optional
        File rows (samples) to use, unique, in the order used here (sorted order reads the file
        sequentially); default all. Positions given to :meth:`batch` index into this list.
    features : array-like of int, optional
        File columns (features) to keep, e.g. to drop all-zero features found by :meth:`scan`;
        default all. Entries in other columns are discarded (as ``X[:, features]`` would).
    chunk_rows : int, optional
        Rows per chunk. Default: from ``max_bytes`` and the mean number of non-zeros per row.
    max_bytes : int
        Memory budget of one chunk when ``chunk_rows`` is not given (default 256 MiB).
    layer : str, optional
        For ``.h5ad``: read ``layers/<layer>`` instead of ``X``.
    device : torch.device or str
        Where batches are put.
    dtype : torch.dtype
        Of the counts and constants.
    validate : bool
        Check every chunk's values when it is read (O(nnz), cheap next to a training step).

    Attributes
    ----------
    n_samples, n_features : int
        Shape of the table as served (after ``rows`` and ``features``).
    n_chunks, chunk_rows : int
    sparse : bool
        Whether batches are sparse COO tensors: as :class:`~mvae.training.batches.CountData` decides, from
        the density of the whole file (below ``SPARSE_DENSITY``); dense tensors otherwise. The
        model's estimator follows this layout, so a table gets the same one streamed or not.
    density : float
        Fraction of non-zero entries of the whole file (the same for every subset and shard, so
        that every process of a distributed fit makes the same density-based choices).
    rows_held_max : int
        The largest number of table rows this object has held at once (the cached chunk plus the
        rows of a batch being assembled); at most ``chunk_rows + batch size``.
    chunks_read : int
        Number of chunk reads so far (one per chunk per epoch under :meth:`epoch_order`).

    Notes
    -----
    For a train/validation split use :meth:`subset`; for one process of several, :meth:`shard`
    (a contiguous block of rows, so each process reads its own stretch of the file). The HDF5
    file stays open until :meth:`close` (or the end of a ``with`` block); objects made by
    :meth:`subset` and :meth:`shard` share it.
    """

    def __init__(self, path, *, rows=None, features=None, chunk_rows: int | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, layer: str | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 validate: bool = True, _source: _Source | None = None):
        self._source = _source if _source is not None else _Source(path, layer)
        src = self._source
        self.path = src.shown
        self._layer = layer
        self.device = torch.device(device)
        self.dtype = dtype
        self.validate = bool(validate)
        self._rows = _index_array(rows, src.n_rows, "rows", "samples", src.shown)
        self._features = (None if features is None else
                          _index_array(features, src.n_cols, "features", "features", src.shown))
        if self._features is not None:
            self._column_map = np.full(src.n_cols, -1, dtype=np.int64)
            self._column_map[self._features] = np.arange(len(self._features))
        self.n_samples = len(self._rows)
        self.n_features = src.n_cols if self._features is None else len(self._features)
        self.density = float(src.indptr[-1]) / max(1, src.n_rows * src.n_cols)
        self.sparse = self.density < SPARSE_DENSITY
        if self.n_samples == 0 or self.n_features == 0:
            raise InputError(f"{src.shown}: no samples or no features selected "
                             f"({self.n_samples} x {self.n_features}).")
        self._max_bytes = int(max_bytes)
        self._chunk_rows_given = chunk_rows
        if chunk_rows is None:
            if self._max_bytes <= 0:
                raise InputError(f"max_bytes={max_bytes!r}; give a positive number of bytes.")
            nnz = int(np.sum(src.indptr[self._rows + 1] - src.indptr[self._rows]))
            per_row = BYTES_PER_NNZ * nnz / self.n_samples + BYTES_PER_ROW
            chunk_rows = max(1, int(self._max_bytes // per_row))
        elif int(chunk_rows) < 1 or int(chunk_rows) != chunk_rows:
            raise InputError(f"chunk_rows={chunk_rows!r}; give a positive whole number of rows.")
        self.chunk_rows = min(int(chunk_rows), self.n_samples)
        self.n_chunks = -(-self.n_samples // self.chunk_rows)
        self._cache: tuple[int, CountData] | None = None
        self.rows_held_max = 0
        self.chunks_read = 0

    # ---- the CountData interface ---------------------------------------------------------------
    def __len__(self) -> int:
        return self.n_samples

    def batch(self, index) -> CountBatch:
        """Rows ``index`` (positions, LongTensor of shape (B,)): counts (sparse COO for a sparse
        table, else dense) and constants."""
        batch = self._sparse_batch(index)
        if self.sparse:
            return batch
        return CountBatch(batch.counts.to_dense(), batch.log_const)

    def _sparse_batch(self, index) -> CountBatch:
        """Rows ``index`` as sparse COO counts and constants.

        Rows from one chunk are sliced from the cached chunk (read if needed). A batch that spans
        several chunks is assembled piece by piece, the cached chunk first, keeping one chunk in
        memory at a time.
        """
        pos = torch.as_tensor(index).to("cpu", torch.int64).numpy()
        if pos.size and (pos.min() < 0 or pos.max() >= self.n_samples):
            raise IndexError(f"row positions must be in [0, {self.n_samples}); got "
                             f"{int(pos.min())}..{int(pos.max())}")
        chunk_of = pos // self.chunk_rows
        _, first = np.unique(chunk_of, return_index=True)
        present = chunk_of[np.sort(first)]  # chunks in the order the batch meets them
        if len(present) == 1:
            c = int(present[0])
            local = torch.as_tensor(pos - c * self.chunk_rows)
            return self._chunk(c, pending=0).batch(local)
        cached = self._cache[0] if self._cache is not None else -1
        # the cached chunk first, then in order of appearance: under epoch_order the last one
        # read is the one the next batch continues with
        present = sorted(present.tolist(), key=lambda c: c != cached)
        B = len(pos)
        coords, values, log_const = [], [], torch.empty(B, dtype=self.dtype, device=self.device)
        held = 0
        for c in present:
            where = np.flatnonzero(chunk_of == c)  # positions within the batch
            part = self._chunk(int(c), pending=held).batch(
                torch.as_tensor(pos[where] - c * self.chunk_rows))
            where_t = torch.as_tensor(where, device=self.device)
            ij = part.counts.indices()  # (2, nnz_part)
            coords.append(torch.stack([where_t[ij[0]], ij[1]]))
            values.append(part.counts.values())
            log_const[where_t] = part.log_const
            held += len(where)
        counts = torch.sparse_coo_tensor(torch.cat(coords, 1), torch.cat(values),
                                         (B, self.n_features), check_invariants=False)
        return CountBatch(counts.coalesce(), log_const)  # coalesce: row-major, batch order

    def chunks(self, size: int):
        """Yield consecutive batches of at most ``size`` rows, in order (each chunk read once)."""
        for start in range(0, self.n_samples, size):
            yield self.batch(torch.arange(start, min(start + size, self.n_samples)))

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        """A permutation of the positions, shuffled by chunk: chunks in random order, rows
        shuffled within each chunk.

        Parameters
        ----------
        generator : torch.Generator
            CPU generator; the same state gives the same order.

        Returns
        -------
        torch.LongTensor, shape (n_samples,)
            Positions of one chunk are consecutive, so minibatches drawn in this order read each
            chunk once per epoch.
        """
        parts = []
        for c in torch.randperm(self.n_chunks, generator=generator).tolist():
            start = c * self.chunk_rows
            size = min(self.chunk_rows, self.n_samples - start)
            parts.append(torch.randperm(size, generator=generator) + start)
        return torch.cat(parts)

    # ---- subsets ------------------------------------------------------------------------------
    def subset(self, positions) -> "StreamingCounts":
        """The rows at ``positions`` of this object (e.g. a train or validation split), sharing
        the open file, features and chunk settings; nothing is read but row pointers."""
        positions = _index_array(positions, self.n_samples, "positions", "rows", self.path)
        return StreamingCounts(self.path, rows=self._rows[positions], features=self._features,
                               chunk_rows=self._chunk_rows_given, max_bytes=self._max_bytes,
                               layer=self._layer, device=self.device, dtype=self.dtype,
                               validate=self.validate, _source=self._source)

    def select(self, rows, features) -> "StreamingCounts":
        """The rows and features (positions in this object) kept, in their order."""
        rows = _index_array(rows, self.n_samples, "rows", "samples", self.path)
        features = _index_array(features, self.n_features, "features", "features", self.path)
        kept = features if self._features is None else self._features[features]
        return StreamingCounts(self.path, rows=self._rows[rows], features=kept,
                               chunk_rows=self._chunk_rows_given, max_bytes=self._max_bytes,
                               layer=self._layer, device=self.device, dtype=self.dtype,
                               validate=self.validate, _source=self._source)

    def on(self, device) -> "StreamingCounts":
        """The same rows, with batches on ``device``."""
        return StreamingCounts(self.path, rows=self._rows, features=self._features,
                               chunk_rows=self._chunk_rows_given, max_bytes=self._max_bytes,
                               layer=self._layer, device=device, dtype=self.dtype,
                               validate=self.validate, _source=self._source)

    def fingerprint_parts(self) -> list[bytes]:
        """The file's sha256 and the ids served, for a checkpoint's record of the data."""
        import json

        from .tables import sha256_file

        return [sha256_file(self._source.shown).encode(),
                json.dumps([list(self.sample_ids), list(self.feature_ids)]).encode()]

    # ---- ids and whole-table passes ----------------------------------------------------------
    @property
    def feature_ids(self) -> list[str]:
        """Ids of the features served, shape (n_features,)."""
        ids = self._source.feature_ids
        return list(ids) if self._features is None else [ids[j] for j in self._features]

    @property
    def sample_ids(self) -> list[str]:
        """Ids of the samples served, read from the file on first use (O(n_samples) strings)."""
        ids = self._source.sample_ids
        return [ids[i] for i in self._rows]

    @property
    def rows(self) -> np.ndarray:
        """File rows of the samples served, shape (n_samples,) (a copy)."""
        return self._rows.copy()

    def to_csr(self) -> sp.csr_matrix:
        """All rows served, in memory, as float64 CSR: for small subsets only (e.g. the rows a
        PCA initialisation uses)."""
        return sp.vstack([M for _, M in self._csr_chunks()], format="csr")

    # ---- reading ------------------------------------------------------------------------------
    def _csr_chunks(self):
        """(chunk number, float64 CSR of its rows), in order, one chunk in memory at a time."""
        self._cache = None
        for c in range(self.n_chunks):
            M = self._read_chunk(c, pending=0)
            yield c, M
            del M

    def _chunk(self, c: int, pending: int) -> CountData:
        if self._cache is None or self._cache[0] != c:
            self._cache = None  # release the old chunk before reading the next
            self._cache = (c, CountData(self._read_chunk(c, pending), self.device, self.dtype,
                                        sparse=True))
        return self._cache[1]

    def _read_chunk(self, c: int, pending: int) -> sp.csr_matrix:
        """Chunk ``c`` as validated float64 CSR with the kept feature columns."""
        rows = self._rows[c * self.chunk_rows:(c + 1) * self.chunk_rows]
        self.rows_held_max = max(self.rows_held_max, len(rows) + pending)
        self.chunks_read += 1
        src = self._source
        M = src.read_rows(rows)
        if M.dtype.kind not in "biuf":
            raise InputError(f"{src.shown}: counts must be numbers, got values of type "
                             f"{M.dtype} in {src.where}/data.")
        if not M.has_canonical_format:
            M.sum_duplicates()
        if self.validate:
            self._check(M, rows)
        M = M.astype(np.float64, copy=M.dtype != np.float64)
        if self._features is not None:
            cols = self._column_map[M.indices]  # (nnz,), -1 for dropped features
            keep = cols >= 0
            row_of = np.repeat(np.arange(M.shape[0]), np.diff(M.indptr))  # (nnz,)
            kept_per_row = np.bincount(row_of[keep], minlength=M.shape[0])
            indptr = np.concatenate([[0], np.cumsum(kept_per_row)])
            M = sp.csr_matrix((M.data[keep], cols[keep], indptr),
                              shape=(M.shape[0], self.n_features))
            M.sort_indices()
        M.eliminate_zeros()
        return M

    def _check(self, M: sp.csr_matrix, rows: np.ndarray) -> None:
        from .validation import _check_values

        src = self._source
        ids = _ChunkSampleIds(src, rows)
        try:
            _check_values(M, ids, src.feature_ids, f"{src.shown}: ")
        except InputError as exc:
            # the message counts rows within the chunk; name the file's row instead
            msg = re.sub(r"' \(row (\d+)\), feature",
                         lambda m: f"' (row {rows[int(m.group(1))]}), feature", str(exc), count=1)
            raise InputError(msg) from None

    # ---- file handle --------------------------------------------------------------------------
    def close(self) -> None:
        """Close the HDF5 file (also for the objects made by :meth:`subset` and :meth:`shard`)."""
        self._cache = None
        self._source.close()

    def __enter__(self) -> "StreamingCounts":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"StreamingCounts({self.path!r}: {self.n_samples} samples x {self.n_features} "
                f"features in {self.n_chunks} chunks of {self.chunk_rows} rows)")


class _ChunkSampleIds:
    """Sample ids of a chunk's rows, read from the file one at a time (for error messages)."""

    def __init__(self, source: _Source, rows: np.ndarray):
        self._source, self._rows = source, rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> str:
        return self._source.sample_id(self._rows[i])


def _index_array(values, n: int, name: str, what: str, shown: str) -> np.ndarray:
    """``values`` as unique int64 positions in [0, n), or all of them when None."""
    if values is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(values)
    if arr.dtype == bool and arr.shape == (n,):
        arr = np.flatnonzero(arr)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise InputError(f"{shown}: {name} must be a 1-D array of integer positions (or a "
                         f"boolean mask of length {n}); got shape {arr.shape}, dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise InputError(f"{shown}: {name} must lie in [0, {n}) ({n} {what}); got values from "
                         f"{int(arr.min())} to {int(arr.max())}.")
    if len(np.unique(arr)) != len(arr):
        raise InputError(f"{shown}: {name} repeats positions; each of the {what} may be used "
                         "once.")
    return arr
