"""The in-memory count source's passes, block by block, against numpy on the dense table."""

import numpy as np
import pytest
import scipy.sparse as sp

from mvae.io import sources
from mvae.io.sources import InMemoryCounts


def _table(seed=0, n=37, D=11):
    """Sparse counts with all-zero rows at the start, in the middle and at the end."""
    rng = np.random.default_rng(seed)
    X = rng.poisson(2.0, size=(n, D)) * (rng.random((n, D)) < 0.4)
    X[[0, 5, 6, n - 1]] = 0
    return X.astype(np.float64)


def _source(X):
    n, D = X.shape
    return InMemoryCounts(sp.csr_matrix(X), [f"s{i}" for i in range(n)],
                          [f"f{j}" for j in range(D)])


@pytest.fixture(params=[1, 7, 10**6], ids=["one-entry-blocks", "small-blocks", "one-block"])
def block(request, monkeypatch):
    monkeypatch.setattr(sources, "PASS_ENTRIES", request.param)
    return request.param


def test_blocks_cover_the_table_in_order(block):
    X = _table()
    src = _source(X)
    blocks = list(src._csr_chunks())
    assert [c for c, _ in blocks] == list(range(len(blocks)))
    assert all(M.shape[0] == src.chunk_rows for _, M in blocks[:-1])
    if block == 1:
        assert len(blocks) == X.shape[0]
    np.testing.assert_array_equal(sp.vstack([M for _, M in blocks]).toarray(), X)


def test_scan_equals_numpy(block):
    X = _table(1)
    s = _source(X).scan()
    np.testing.assert_allclose(s.depths, X.sum(axis=1), rtol=1e-14)
    np.testing.assert_allclose(s.feature_totals, X.sum(axis=0), rtol=1e-14)
    np.testing.assert_array_equal(s.sample_nnz, (X > 0).sum(axis=1))
    np.testing.assert_array_equal(s.feature_nnz, (X > 0).sum(axis=0))
    i, j = np.unravel_index(np.argmax(X), X.shape)  # first maximum in row-major order
    assert s.max_count == X.max() and s.max_at == (i, j)


def test_input_statistics_equal_the_dense_formula(block):
    """pooled = log(Σ_i x + c); centre = mean of the row-centred log(1 + x/c); scale = the root
    mean square around it."""
    X, c = _table(2), 0.5
    pooled, centre, scale = _source(X).input_statistics(c)
    y = np.log1p(X / c)
    centred = y - y.mean(axis=1, keepdims=True)
    want_centre = centred.mean(axis=0)
    np.testing.assert_allclose(pooled, np.log(X.sum(axis=0) + c), rtol=1e-14)
    np.testing.assert_allclose(centre, want_centre, rtol=1e-12, atol=1e-14)
    assert scale == pytest.approx(np.sqrt(np.mean((centred - want_centre) ** 2)), rel=1e-12)


def test_select_of_everything_shares_the_table_and_a_subset_copies_the_right_entries():
    X = _table(3)
    src = _source(X)
    n, D = X.shape
    same = src.select(np.arange(n), np.arange(D))
    assert same.X.data is src.X.data or np.shares_memory(same.X.data, src.X.data)
    assert same.sample_ids == src.sample_ids and same.feature_ids == src.feature_ids
    rows, feats = np.array([1, 2, 4, 30]), np.array([0, 3, 10])
    for r, f in ((rows, feats), (rows, np.arange(D)), (np.arange(n), feats)):
        part = src.select(r, f)
        np.testing.assert_array_equal(part.X.toarray(), X[np.ix_(r, f)])
        assert part.sample_ids == [f"s{i}" for i in r]
        assert part.feature_ids == [f"f{j}" for j in f]
        assert not np.shares_memory(part.X.data, src.X.data)
