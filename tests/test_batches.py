"""CountData's conversion of a table, block by block, against scipy and numpy references."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.special import gammaln

from mvae.training import batches
from mvae.training.batches import CountData, csr_row_sums, log_factorial


def _table(seed=0, n=41, D=13):
    """Counts with all-zero rows at the start, in the middle and at the end, and a few deep
    entries above the log-factorial table."""
    rng = np.random.default_rng(seed)
    X = (rng.poisson(3.0, size=(n, D)) * (rng.random((n, D)) < 0.5)).astype(np.float64)
    X[[0, 7, 8, n - 1]] = 0
    X[3, 2], X[20, 5] = 70_000.0, 1e6
    return X


def test_log_factorial_is_scipys_gammaln_exactly():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.integers(0, 2**16, 1000), [0, 1, 2**16 - 1, 2**16, 10**7],
                        rng.random(20) * 50, [np.nan, np.inf]]).astype(np.float64)
    np.testing.assert_array_equal(log_factorial(x), gammaln(x + 1))


def test_csr_row_sums_match_numpy_with_empty_rows():
    X = _table()
    M = sp.csr_matrix(X)
    np.testing.assert_allclose(csr_row_sums(M.data, M.indptr), X.sum(axis=1), rtol=1e-14)
    a, b = M.indptr[20], M.indptr[35]  # a block whose pointers do not start at 0
    np.testing.assert_allclose(csr_row_sums(M.data[a:b], M.indptr[20:36]),
                               X[20:35].sum(axis=1), rtol=1e-14)
    assert list(csr_row_sums(np.zeros(0), np.zeros(4, dtype=np.int64))) == [0.0] * 3


@pytest.mark.parametrize("block", [1, 9, 10**6], ids=["one-entry", "small", "one-block"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_count_data_holds_the_table_and_its_multinomial_constants(block, sparse, monkeypatch):
    """log N! - Σ_d log x_d! per row from scipy on the dense table; the counts as given."""
    monkeypatch.setattr(batches, "BLOCK_ENTRIES", block)
    X = _table()
    data = CountData(sp.csr_matrix(X), sparse=sparse, dtype=torch.float64)
    got = data.all()
    counts = got.counts.to_dense() if sparse else got.counts
    np.testing.assert_array_equal(counts.numpy(), X)
    want = gammaln(X.sum(axis=1) + 1) - gammaln(X + 1).sum(axis=1)
    np.testing.assert_allclose(got.log_const.numpy(), want, rtol=1e-13, atol=1e-9)


def test_dense_store_is_the_table_in_float32(monkeypatch):
    monkeypatch.setattr(batches, "BLOCK_ENTRIES", 9)
    X = _table(2)
    data = CountData(sp.csr_matrix(X), sparse=False)
    assert data._dense.dtype == torch.float32
    assert torch.equal(data._dense, torch.as_tensor(X, dtype=torch.float32))
