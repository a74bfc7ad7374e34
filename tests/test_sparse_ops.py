"""Sparse x dense products of mvae.sparse_ops against scipy.sparse and dense torch."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mvae.sparse_ops import sparse_dense_mm, to_csr, transpose_csr


def _table(rng, n, D, density):
    """A scipy CSR table with empty rows and columns, and its torch COO twin (coalesced)."""
    X = sp.random(n, D, density=density, format="csr", random_state=rng, dtype=np.float64)
    X.data = rng.integers(1, 9, size=X.nnz).astype(np.float64)
    X = X.tolil()
    X[0, :] = 0  # an empty row
    X[:, 1] = 0  # an empty column
    X = X.tocsr()
    X.eliminate_zeros()
    coo = X.tocoo()
    y = torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]), coo.data, X.shape,
                                check_invariants=True).coalesce()
    return X, y


@pytest.mark.parametrize("n,D,density", [(7, 11, 0.3), (64, 500, 0.02), (3, 4, 0.9)])
def test_transpose_csr_is_scipys_transpose(n, D, density):
    rng = np.random.default_rng(n * D)
    X, y = _table(rng, n, D, density)
    t = transpose_csr(y)
    ref = X.T.tocsr()
    ref.sort_indices()
    assert t.shape == (D, n)
    np.testing.assert_array_equal(t.crow_indices().numpy(), ref.indptr)
    np.testing.assert_array_equal(t.col_indices().numpy(), ref.indices)
    np.testing.assert_array_equal(t.values().numpy(), ref.data)
    assert transpose_csr(y) is t  # kept on the batch for the next product


def test_transpose_csr_of_an_uncoalesced_tensor():
    idx = torch.tensor([[1, 0, 1], [2, 1, 0]])
    y = torch.sparse_coo_tensor(idx, torch.tensor([3.0, 4.0, 5.0]), (2, 3),
                                check_invariants=True)  # not coalesced
    np.testing.assert_array_equal(transpose_csr(y).to_dense().numpy(),
                                  y.to_dense().T.numpy())


def test_products_and_gradient_against_scipy():
    rng = np.random.default_rng(3)
    X, y = _table(rng, 40, 300, 0.05)
    M = torch.tensor(rng.normal(size=(300, 6)), requires_grad=True)
    g = rng.normal(size=(40, 6))
    out = sparse_dense_mm(y, M)
    np.testing.assert_allclose(out.detach().numpy(), X @ M.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose((to_csr(y) @ M).detach().numpy(), X @ M.detach().numpy(),
                               rtol=1e-12)
    out.backward(torch.tensor(g))
    np.testing.assert_allclose(M.grad.numpy(), X.T @ g, rtol=1e-12, atol=1e-12)
