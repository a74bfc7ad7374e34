"""Sparse x dense products of mvae.maths.sparse_ops against scipy.sparse and dense torch."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mvae.maths.sparse_ops import (column_bags, row_bags, row_sums, segment_sums, sparse_dense_mm,
                              sparse_mm, sparse_t_mm)


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
def test_bags_are_scipys_csr_of_the_table_and_its_transpose(n, D, density):
    rng = np.random.default_rng(n * D)
    X, y = _table(rng, n, D, density)
    for bags, ref in ((row_bags(y), X.tocsr()), (column_bags(y), X.T.tocsr())):
        ref.sort_indices()
        members, offsets, values = bags
        np.testing.assert_array_equal(offsets.numpy(), ref.indptr[:-1])
        np.testing.assert_array_equal(members.numpy(), ref.indices)
        np.testing.assert_array_equal(values.numpy(), ref.data)
    assert column_bags(y) is column_bags(y)  # kept on the batch for the next product
    assert row_bags(y) is row_bags(y)


def test_bags_of_an_uncoalesced_tensor():
    idx = torch.tensor([[1, 0, 1], [2, 1, 0]])
    y = torch.sparse_coo_tensor(idx, torch.tensor([3.0, 4.0, 5.0]), (2, 3),
                                check_invariants=True)  # not coalesced
    M = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    g = torch.tensor([[1.0, -1.0], [2.0, 0.5]])
    dense = y.to_dense()
    np.testing.assert_allclose(sparse_mm(y, M).numpy(), (dense @ M).numpy())
    np.testing.assert_allclose(sparse_t_mm(y, g).numpy(), (dense.T @ g).numpy())


def test_products_of_an_all_zero_batch_are_zero():
    y = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (3, 5),
                                check_invariants=True).coalesce()
    assert torch.equal(sparse_mm(y, torch.ones(5, 2)), torch.zeros(3, 2))
    assert torch.equal(sparse_t_mm(y, torch.ones(3, 2)), torch.zeros(5, 2))


def test_products_and_gradient_against_scipy():
    rng = np.random.default_rng(3)
    X, y = _table(rng, 40, 300, 0.05)
    M = torch.tensor(rng.normal(size=(300, 6)), requires_grad=True)
    g = rng.normal(size=(40, 6))
    out = sparse_dense_mm(y, M)
    np.testing.assert_allclose(out.detach().numpy(), X @ M.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(sparse_mm(y, M).detach().numpy(), X @ M.detach().numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(sparse_t_mm(y, torch.tensor(g)).numpy(), X.T @ g, rtol=1e-12,
                               atol=1e-12)
    out.backward(torch.tensor(g))
    np.testing.assert_allclose(M.grad.numpy(), X.T @ g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,D,density", [(7, 11, 0.3), (64, 500, 0.02)])
def test_row_sums_against_scipy(n, D, density):
    """Sums per row of values at the non-zeros (one column and two), empty rows included, and
    the gradient: each value's weight is its row's upstream gradient."""
    rng = np.random.default_rng(n + D)
    X, y = _table(rng, n, D, density)
    values = rng.normal(size=(X.nnz, 2))
    coo = X.tocoo()  # row-major, as y's coalesced order
    for j in range(2):
        ref = sp.csr_matrix((values[:, j], (coo.row, coo.col)), shape=X.shape).sum(axis=1)
        got = row_sums(y, torch.tensor(values[:, j]))
        np.testing.assert_allclose(got.numpy(), np.asarray(ref).ravel(), rtol=1e-12)
        np.testing.assert_allclose(row_sums(y, torch.tensor(values))[:, j].numpy(),
                                   np.asarray(ref).ravel(), rtol=1e-12)
    v = torch.tensor(values[:, 0], requires_grad=True)
    up = rng.normal(size=n)
    (row_sums(y, v) * torch.tensor(up)).sum().backward()
    np.testing.assert_allclose(v.grad.numpy(), up[coo.row], rtol=1e-12)


def test_row_sums_of_an_all_zero_batch_are_zero():
    y = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (3, 5),
                                check_invariants=True).coalesce()
    assert torch.equal(row_sums(y, torch.zeros(0)), torch.zeros(3))


def test_segment_sums_against_slices():
    """Segments of random lengths (empty ones at the start, middle and end), 1-D and 2-D values,
    against numpy sums of the slices."""
    rng = np.random.default_rng(11)
    lengths = np.array([0, 3, 0, 0, 5, 1, 7, 0])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.normal(size=(offsets[-1], 3))
    want = np.stack([values[a:b].sum(0) for a, b in zip(offsets[:-1], offsets[1:])])
    got = segment_sums(torch.tensor(values), torch.tensor(offsets))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(segment_sums(torch.tensor(values[:, 0]), torch.tensor(offsets))
                               .numpy(), want[:, 0], rtol=1e-12, atol=1e-15)


def test_row_sums_refuses_values_it_cannot_place():
    """Values are matched to y's coalesced order: an uncoalesced y, or a count of values other
    than its non-zeros, is an error rather than a silently wrong sum."""
    idx = torch.tensor([[1, 0], [0, 2]])
    y = torch.sparse_coo_tensor(idx, torch.tensor([1.0, 2.0]), (2, 3),
                                check_invariants=True)  # not coalesced
    with pytest.raises(ValueError, match="coalesced"):
        row_sums(y, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="one value"):
        row_sums(y.coalesce(), torch.tensor([1.0, 2.0, 3.0]))
