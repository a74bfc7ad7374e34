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
    """yᵀ of a sparse COO tensor, in CSR layout (kept on ``y`` like :func:`to_csr`: the
    transpose costs a sort of the non-zeros, 2.3 ms at D = 20,000, 2%, batch 128)."""
    cached = getattr(y, "_mvae_csr_t", None)
    if cached is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cached = y.t().coalesce().to_sparse_csr()
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
