"""StreamingCounts: an HDF5 BIOM / h5ad table served chunk by chunk, never held whole.

The tables are written with biom-format's and anndata's own writers; batches are compared with
the in-memory CountData of the same matrix, the constants with scipy's log-gamma, the totals with
numpy sums of the matrix.
"""

import shutil
import tracemalloc
from pathlib import Path

import anndata
import biom
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.special import gammaln

from mvae.training.batches import CountData
from mvae.errors import InputError
from mvae.io.streaming import BYTES_PER_NNZ, StreamingCounts

DATA = Path(__file__).parent.parent / "data"
N, D = 3000, 500
BUDGET = 2**20  # 1 MiB: ~160 rows per chunk, ~19 chunks for a table of ~300,000 non-zeros


def _counts(seed=0) -> sp.csr_matrix:
    """N x D counts, ~20% non-zero, with an all-zero sample (row 7) and feature (column 3)."""
    rng = np.random.default_rng(seed)
    X = sp.random(N, D, density=0.2, format="csr", random_state=rng,
                  data_rvs=lambda k: rng.integers(1, 60, size=k)).astype(np.float64)
    X = X.tolil()
    X[7, :] = 0
    X[:, 3] = 0
    X = X.tocsr()
    X.eliminate_zeros()
    return X


SAMPLE_IDS = [f"S{i}" for i in range(N)]
FEATURE_IDS = [f"ASV_{j}" for j in range(D)]


def _write_biom(path, X):
    table = biom.Table(X.T.tocsr(), observation_ids=FEATURE_IDS, sample_ids=SAMPLE_IDS)
    with h5py.File(path, "w") as f:
        table.to_hdf5(f, generated_by="test")


def _write_h5ad(path, X):
    adata = anndata.AnnData(X=sp.csr_matrix(X.astype(np.int32)))
    adata.obs_names = SAMPLE_IDS
    adata.var_names = FEATURE_IDS
    adata.write_h5ad(path)


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: torch's thread pool only adds contention on shared cores."""
    from mvae.training.loop import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def X():
    return _counts()


@pytest.fixture(scope="module")
def files(X, tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    _write_biom(d / "table.biom", X)
    _write_h5ad(d / "table.h5ad", X)
    return {"biom": d / "table.biom", "h5ad": d / "table.h5ad"}


@pytest.fixture(params=["biom", "h5ad"])
def path(request, files):
    return files[request.param]


def _dense(batch):
    return batch.counts.to_dense().numpy()


def _log_const(rows: np.ndarray) -> np.ndarray:
    """log N! - sum log x! of dense rows, straight from scipy."""
    return gammaln(rows.sum(1) + 1) - gammaln(rows + 1).sum(1)


def test_shape_ids_and_chunking(path, X):
    with StreamingCounts(path, max_bytes=BUDGET) as data:
        assert (len(data), data.n_features) == X.shape
        # batches are sparse for a table below 5% density, as CountData decides; dense here
        assert data.density == X.nnz / np.prod(X.shape) and data.density > 0.05
        assert not data.sparse and data.device == torch.device("cpu")
        assert data.sample_ids == SAMPLE_IDS and data.feature_ids == FEATURE_IDS
        assert data.n_chunks >= 10  # the table is larger than the budget
        expected = int(BUDGET // (BYTES_PER_NNZ * X.nnz / N + 64))
        assert data.chunk_rows == expected


def test_batches_equal_in_memory_batches(path, X):
    ref = CountData(X, sparse=True)
    rng = np.random.default_rng(1)
    with StreamingCounts(path, max_bytes=BUDGET) as data:
        cr = data.chunk_rows
        cases = [
            np.arange(5, 60),                          # inside one chunk
            np.arange(cr - 10, cr + 10),               # across a chunk boundary
            rng.choice(N, 128, replace=False),         # across many chunks, unsorted
            np.array([N - 1, 0, 7, 7 + cr]),           # ends, and the all-zero sample
        ]
        for idx in cases:
            got = data.batch(torch.as_tensor(idx))
            want = ref.batch(torch.as_tensor(idx))
            assert got.counts.is_sparse == data.sparse and got.counts.shape == (len(idx), D)
            np.testing.assert_array_equal(_dense(got), _dense(want))
            np.testing.assert_allclose(got.log_const.numpy(), want.log_const.numpy(), rtol=1e-6)
            np.testing.assert_allclose(got.log_const.numpy(), _log_const(X[idx].toarray()),
                                       rtol=1e-5)
        # chunks() gives the table in order
        stacked = np.concatenate([_dense(b) for b in data.chunks(1000)])
        np.testing.assert_array_equal(stacked, X.toarray())


def test_epoch_order_is_a_seeded_chunk_contiguous_permutation(path):
    with StreamingCounts(path, max_bytes=BUDGET) as data:
        o1 = data.epoch_order(torch.Generator().manual_seed(3))
        o2 = data.epoch_order(torch.Generator().manual_seed(3))
        o3 = data.epoch_order(torch.Generator().manual_seed(4))
        assert o1.dtype == torch.int64
        np.testing.assert_array_equal(np.sort(o1.numpy()), np.arange(N))
        assert torch.equal(o1, o2) and not torch.equal(o1, o3)
        chunk = o1.numpy() // data.chunk_rows
        runs = 1 + np.count_nonzero(np.diff(chunk))
        assert runs == data.n_chunks  # each chunk's rows are consecutive in the order
        seq = chunk[np.r_[0, 1 + np.flatnonzero(np.diff(chunk))]]  # chunks in visiting order
        np.testing.assert_array_equal(np.sort(seq), np.arange(data.n_chunks))
        assert not np.array_equal(seq, np.arange(data.n_chunks))  # the chunks are shuffled
        first = o1.numpy()[chunk == seq[0]]
        assert not np.array_equal(first, np.sort(first))  # and the rows within a chunk


def test_an_epoch_reads_each_chunk_once_and_holds_one_chunk(path, X):
    bs = 128
    ref = CountData(X, sparse=True)
    with StreamingCounts(path, max_bytes=BUDGET) as data:
        order = data.epoch_order(torch.Generator().manual_seed(0))
        for step in range(N // bs):
            idx = order[step * bs:(step + 1) * bs]
            np.testing.assert_array_equal(_dense(data.batch(idx)), _dense(ref.batch(idx)))
        assert data.chunks_read == data.n_chunks
        assert data.rows_held_max <= data.chunk_rows + bs
        assert data.rows_held_max < N / 8


def test_peak_memory_is_bounded_by_the_budget(files, X):
    """tracemalloc sees numpy's and h5py's allocations: one epoch stays within the budget,
    while the table's stored entries alone would take more than twice as much."""
    table_bytes = X.nnz * (8 + 4)  # float64 values + int32 indices, as stored in the BIOM
    assert table_bytes > 3 * BUDGET
    data = StreamingCounts(files["biom"], max_bytes=BUDGET)
    order = data.epoch_order(torch.Generator().manual_seed(0))
    tracemalloc.start()
    try:
        for step in range(N // 128):
            data.batch(order[step * 128:(step + 1) * 128])
        data.scan()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        data.close()
    assert peak < BUDGET, f"peak {peak} bytes for a budget of {BUDGET}"


def test_scan_equals_numpy_sums(path, X):
    with StreamingCounts(path, max_bytes=BUDGET) as data:
        s = data.scan()
        assert data.rows_held_max <= data.chunk_rows
    np.testing.assert_allclose(s.feature_totals, np.asarray(X.sum(0)).ravel())
    np.testing.assert_array_equal(s.feature_nnz, np.asarray((X > 0).sum(0)).ravel())
    np.testing.assert_allclose(s.depths, np.asarray(X.sum(1)).ravel())
    np.testing.assert_array_equal(s.sample_nnz, np.diff(X.indptr))
    assert s.depths[7] == 0 and s.feature_totals[3] == 0
    k = int(np.argmax(X.data))  # first maximum in row-major order
    assert s.max_count == X.data[k]
    assert s.max_at == (int(np.searchsorted(X.indptr, k, side="right") - 1), int(X.indices[k]))


def _dense_input_statistics(X: np.ndarray, c: float):
    """The encoder's input statistics written out on a dense matrix: pooled log composition,
    the mean of the centred log-ratio input H log(1 + x/c), and the spread around it."""
    y = np.log1p(X / c)
    centred = y - y.mean(axis=1, keepdims=True)  # H y, row by row
    centre = centred.mean(axis=0)
    return np.log(X.sum(axis=0) + c), centre, float(np.sqrt(np.mean((centred - centre) ** 2)))


def test_input_statistics_equal_the_in_memory_source_and_the_formula(files, X):
    from mvae.io.sources import InMemoryCounts

    rows = np.flatnonzero(np.asarray(X.sum(1)).ravel() > 0)
    feats = np.flatnonzero(np.asarray(X.sum(0)).ravel() > 0)
    with StreamingCounts(files["biom"], rows=rows, features=feats, max_bytes=BUDGET) as data:
        got = data.input_statistics(0.5)
        assert data.n_chunks > 1  # summed over several chunks
    kept = X[rows][:, feats]
    want = _dense_input_statistics(kept.toarray(), 0.5)
    memory = InMemoryCounts(kept, [str(i) for i in rows], [str(j) for j in feats])
    for a, b in zip(memory.input_statistics(0.5), got):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-9, atol=1e-12)
    assert got[2] == pytest.approx(want[2], rel=1e-9)


def test_rows_features_subset_and_shard(path, X):
    rng = np.random.default_rng(2)
    rows = np.sort(rng.choice(N, 900, replace=False))
    feats = np.flatnonzero(np.asarray(X.sum(0)).ravel() > 0)[::2]
    with StreamingCounts(path, rows=rows, features=feats, chunk_rows=100) as data:
        assert (len(data), data.n_features, data.n_chunks) == (900, len(feats), 9)
        assert data.feature_ids == [FEATURE_IDS[j] for j in feats]
        assert data.sample_ids == [SAMPLE_IDS[i] for i in rows]
        ref = CountData(X[rows][:, feats], sparse=True)
        idx = torch.as_tensor(rng.choice(900, 200, replace=False))
        np.testing.assert_array_equal(_dense(data.batch(idx)), _dense(ref.batch(idx)))
        np.testing.assert_allclose(data.batch(idx).log_const, ref.batch(idx).log_const,
                                   rtol=1e-6)
        # a split: validation and training parts, sharing the file
        valid = data.subset(np.arange(0, 900, 10))
        assert valid.chunk_rows == 90
        np.testing.assert_array_equal(valid.to_csr().toarray(), X[rows[::10]][:, feats].toarray())
        # shards: contiguous, equal, disjoint blocks
        shards = [data.shard(r, 4) for r in range(4)]
        assert [len(s) for s in shards] == [225] * 4
        np.testing.assert_array_equal(np.concatenate([s.rows for s in shards]), rows)
        assert [len(data.shard(r, 7, equal=False)) for r in (3, 4)] == [129, 128]


def test_unsorted_rows_keep_their_order(files, X):
    rows = np.array([2999, 5, 6, 7, 1500, 4, 0])
    with StreamingCounts(files["h5ad"], rows=rows, chunk_rows=3) as data:
        np.testing.assert_array_equal(data.to_csr().toarray(), X[rows].toarray())


@pytest.mark.parametrize("bad, phrase", [(-3.0, "is negative"), (0.5, "is not a whole number"),
                                         (np.nan, r"is missing \(NaN\)")])
def test_invalid_value_names_file_sample_feature_and_value(files, X, tmp_path, bad, phrase):
    path = tmp_path / "bad.biom"
    shutil.copy(files["biom"], path)
    i = 2000
    k = X.indptr[i] + 2  # the third stored entry of sample i
    j = X.indices[k]
    with h5py.File(path, "r+") as f:
        f["sample/matrix/data"][k] = bad
    value = "nan" if np.isnan(bad) else f"{bad:g}"
    with StreamingCounts(path, max_bytes=BUDGET) as data:
        with pytest.raises(InputError, match=rf"bad\.biom: sample 'S{i}' \(row {i}\), feature "
                                             rf"'ASV_{j}' \(column {j}\): value {value} {phrase}"):
            data.scan()
        # rows outside the bad sample are served without reading it
        fine = data.subset(np.r_[0:i, i + 1:N])
        fine.scan()
        with pytest.raises(InputError, match=f"'S{i}'"):
            data.batch(torch.tensor([i]))


def test_not_a_streamable_table(tmp_path, X):
    json_biom = tmp_path / "json.biom"
    json_biom.write_text('{"id": "x", "format": "Biological Observation Matrix 1.0.0"}')
    with pytest.raises(InputError, match=r"json\.biom: not an HDF5 file"):
        StreamingCounts(json_biom)
    tsv = tmp_path / "t.tsv"
    tsv.write_text("a\tb\n1\t2\n")
    with pytest.raises(InputError, match=r"t\.tsv: not an HDF5 file"):
        StreamingCounts(tsv)
    empty_h5 = tmp_path / "nothing.biom"
    with h5py.File(empty_h5, "w") as f:
        f.create_group("observation")
    with pytest.raises(InputError, match=r"nothing\.biom: no 'sample/matrix/indptr'"):
        StreamingCounts(empty_h5)
    no_x = tmp_path / "no_x.h5ad"
    with h5py.File(no_x, "w") as f:
        f.create_group("obs")
    with pytest.raises(InputError, match=r"no_x\.h5ad: no 'X'"):
        StreamingCounts(no_x)
    dense = tmp_path / "dense.h5ad"
    anndata.AnnData(X=X[:20].toarray()).write_h5ad(dense)
    with pytest.raises(InputError, match=r"dense\.h5ad: X is stored as dense; .* CSR"):
        StreamingCounts(dense)
    with pytest.raises(InputError, match="no such file"):
        StreamingCounts(tmp_path / "missing.biom")


def test_an_h5ad_layer_is_streamed_instead_of_x(X, tmp_path):
    """layer="counts" reads layers/counts (CSR); X, here another matrix, is not touched."""
    path = tmp_path / "layers.h5ad"
    adata = anndata.AnnData(X=sp.csr_matrix(X[:200].shape, dtype=np.float32),
                            layers={"counts": sp.csr_matrix(X[:200])})
    adata.obs_names, adata.var_names = SAMPLE_IDS[:200], FEATURE_IDS
    adata.write_h5ad(path)
    with StreamingCounts(path, layer="counts", chunk_rows=16) as data:
        assert data.n_chunks == 13
        np.testing.assert_array_equal(data.to_csr().toarray(), X[:200].toarray())
        assert data.sample_ids == SAMPLE_IDS[:200]
    with pytest.raises(InputError, match=r"layers\.h5ad: no 'layers/other'"):
        StreamingCounts(path, layer="other")


def test_a_column_compressed_h5ad_is_a_clear_error(X, tmp_path):
    path = tmp_path / "csc.h5ad"
    anndata.AnnData(X=sp.csc_matrix(X[:20])).write_h5ad(path)
    with pytest.raises(InputError, match=r"csc\.h5ad: X is stored as csc_matrix; streaming needs "
                                         "CSR rows"):
        StreamingCounts(path)


def test_bad_arguments(files):
    with pytest.raises(InputError, match=r"rows must lie in \[0, 3000\)"):
        StreamingCounts(files["biom"], rows=[0, 3000])
    with pytest.raises(InputError, match="rows repeats"):
        StreamingCounts(files["biom"], rows=[1, 1])
    with pytest.raises(InputError, match="chunk_rows=0"):
        StreamingCounts(files["biom"], chunk_rows=0)
    with pytest.raises(InputError, match="layer='counts'.*BIOM"):
        StreamingCounts(files["biom"], layer="counts")


@pytest.mark.parametrize("name", ["moving_pictures_16s_table.biom",
                                  "pbmc68k_reduced_counts.h5ad"])
def test_real_tables_equal_read_counts(name):
    from mvae.io.tables import read_counts

    adata = read_counts(DATA / name)
    with StreamingCounts(DATA / name, chunk_rows=64) as data:
        assert data.sample_ids == list(adata.obs_names)
        assert data.feature_ids == list(adata.var_names)
        np.testing.assert_array_equal(data.to_csr().toarray(), sp.csr_matrix(adata.X).toarray())


def test_train_module_runs_an_epoch_from_a_stream(files, X):
    from mvae.counts import MultinomialVAEModule, MVAEConfig
    from mvae.training.loop import TrainConfig, train_module

    with StreamingCounts(files["h5ad"], max_bytes=BUDGET) as whole:
        s = whole.scan()
    rows = np.flatnonzero(s.sample_nnz > 0)  # drop the all-zero sample and feature
    feats = np.flatnonzero(s.feature_nnz > 0)
    data = StreamingCounts(files["h5ad"], rows=rows, features=feats, max_bytes=BUDGET)
    n_valid = 300
    train, valid = data.subset(np.arange(n_valid, len(data))), data.subset(np.arange(n_valid))
    config = MVAEConfig(n_features=len(feats), n_latent=2, n_hidden=16)
    torch.manual_seed(0)
    module = MultinomialVAEModule(config)
    pooled, centre, scale = train.input_statistics(config.pseudocount)
    module.initialise_from_data(torch.as_tensor(pooled, dtype=torch.float32),
                                torch.as_tensor(centre, dtype=torch.float32), scale)
    history = train_module(module, train, valid, TrainConfig(max_epochs=1, batch_size=128,
                                                             early_stopping=False, seed=0),
                           handle_signals=False)
    assert np.isfinite(history.train_loss[0]) and np.isfinite(history.validation_loss[0])
    assert train.chunks_read == 2 * train.n_chunks  # input statistics, then one epoch
    assert train.rows_held_max <= train.chunk_rows + 128
    data.close()
