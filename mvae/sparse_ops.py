"""Sparse x dense products with a weight gradient, shared by the encoder and the KL.

Count tables are sparse, and so are their log-ratio inputs log(x/c + 1). Products of such an input
y (B, D) with a dense (D, n) matrix M run in CSR layout: the product and the gradient with respect
to M, yᵀg, are both CSR x dense (measured 2x faster than COO at D = 20,000, 2% density).
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["to_csr", "transpose_csr", "sparse_dense_mm"]


def to_csr(y: torch.Tensor) -> torch.Tensor:
    """A coalesced sparse COO tensor in CSR layout (torch flags CSR as beta; the warning is noise
    here: the products are tested against dense ones). Kept on ``y`` for the next call: a batch's
    input is multiplied in the encoder's first layer and in the KL."""
    cached = getattr(y, "_mvae_csr", None)
    if cached is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cached = y.to_sparse_csr()
        y._mvae_csr = cached
    return cached


def transpose_csr(y: torch.Tensor) -> torch.Tensor:
    """yᵀ of a coalesced sparse COO tensor, in CSR layout (kept on ``y`` like :func:`to_csr`).

    A coalesced y is sorted by (row, column), so a stable sort of the column indices alone puts
    the non-zeros in (column, row) order, which is yᵀ's CSR order; the row pointers are a
    cumulative count of the columns. ``y.t().coalesce()`` sorts on a combined key instead: 2.7
    against 1.1 ms at D = 20,000, 2%, batch 128."""
    cached = getattr(y, "_mvae_csr_t", None)
    if cached is None:
        yc = y if y.is_coalesced() else y.coalesce()
        rows, cols = yc.indices()
        order = torch.argsort(cols, stable=True)
        indptr = cols.new_zeros(y.shape[1] + 1)
        torch.cumsum(torch.bincount(cols, minlength=y.shape[1]), 0, out=indptr[1:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cached = torch.sparse_csr_tensor(indptr, rows[order], yc.values()[order],
                                             (y.shape[1], y.shape[0]), check_invariants=False)
        y._mvae_csr_t = cached
    return cached


class _SparseDenseProduct(torch.autograd.Function):
    """y @ M for a constant y (dense or sparse COO), with the gradient yᵀg for M only."""

    @staticmethod
    def forward(ctx, y, M):
        ctx.y = y
        return to_csr(y) @ M if y.is_sparse else y @ M

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        y = ctx.y
        return None, (transpose_csr(y) @ g if y.is_sparse else y.T @ g)


def sparse_dense_mm(y: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """:math:`yM` for y (B, D) dense or sparse COO (no gradient to y) and M (D, n): shape (B, n).

    Examples
    --------
    >>> import torch
    >>> y = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    >>> M = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> sparse_dense_mm(y.to_sparse(), M)
    tensor([[6., 8.],
            [1., 2.]])
    """
    return _SparseDenseProduct.apply(y, M)
