"""Sparse x dense products with a weight gradient, shared by the encoder and the KL.

Count tables are sparse, and so are their log-ratio inputs log(x/c + 1). Products of such an input
y (B, D) with a dense (D, n) matrix M, and the gradient with respect to M, yᵀg (D, n), are both
sums of weighted rows of a dense matrix: row b of yM sums the rows of M at the non-zeros of y's
row b, row d of yᵀg sums the rows of g at the non-zeros of y's column d. That is what
``torch.nn.functional.embedding_bag`` (mode ``"sum"`` with per-sample weights) computes, one bag
per output row, writing each output row once, where torch's CSR x dense product zero-fills its
(D, n) output, computes into a second buffer and copies it over (the measured difference, per
product and per training step, is in benchmarks/results/throughput/code_choices.md).
The same call runs on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["row_bags", "column_bags", "row_sums", "segment_sums", "sparse_mm", "sparse_t_mm",
           "sparse_dense_mm"]


def _bags(keys: torch.Tensor, n_bags: int, members: torch.Tensor, values: torch.Tensor,
          order: torch.Tensor | None):
    """(members, offsets, values) of embedding bags grouped by ``keys`` (already sorted when
    ``order`` is None): offsets[i] is where bag i starts."""
    counts = torch.bincount(keys, minlength=n_bags)
    offsets = torch.cumsum(counts, 0).sub_(counts)
    if order is not None:
        members, values = members.index_select(0, order), values.index_select(0, order)
    return members, offsets, values


def row_bags(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The non-zeros of a sparse COO y (B, D) grouped by row: (columns, row offsets (B,), values)
    in y's coalesced order. Kept on ``y`` for the next product: a batch's input is multiplied in
    the encoder's first layer and in the KL."""
    cached = getattr(y, "_mvae_row_bags", None)
    if cached is None:
        yc = y if y.is_coalesced() else y.coalesce()
        rows, cols = yc.indices()
        cached = _bags(rows, y.shape[0], cols, yc.values(), None)
        y._mvae_row_bags = cached
    return cached


def column_bags(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The non-zeros of a sparse COO y (B, D) grouped by column: (rows, column offsets (D,),
    values), kept on ``y`` like :func:`row_bags`.

    A coalesced y is sorted by (row, column), so a stable sort of the column indices alone puts
    the non-zeros in (column, row) order (yᵀ's row-major order); the offsets are a cumulative
    count of the columns."""
    cached = getattr(y, "_mvae_column_bags", None)
    if cached is None:
        yc = y if y.is_coalesced() else y.coalesce()
        rows, cols = yc.indices()
        # int32 keys sort faster than int64 ones
        keys = cols.to(torch.int32) if y.shape[1] < 2**31 else cols
        cached = _bags(cols, y.shape[1], rows, yc.values(), torch.argsort(keys, stable=True))
        y._mvae_column_bags = cached
    return cached


def row_sums(y: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per-row sums of ``values`` given at the non-zeros of a sparse COO y (B, D), in its
    coalesced order: (nnz,) -> (B,), (nnz, n) -> (B, n); differentiable in ``values``.

    The non-zeros of a row are contiguous, so these are segment sums over the row bags' offsets
    (``index_add_`` over the row numbers accumulates serially into a few addresses, which is
    slower on the CPU). Rows without non-zeros sum to 0.

    Examples
    --------
    >>> import torch
    >>> y = torch.tensor([[0.0, 2.0, 1.0], [0.0, 0.0, 0.0], [4.0, 0.0, 0.0]]).to_sparse()
    >>> row_sums(y, torch.tensor([1.0, 2.0, 5.0]))
    tensor([3., 0., 5.])
    """
    if not y.is_coalesced() or values.shape[0] != y._nnz():
        raise ValueError("row_sums needs a coalesced y and one value (row) per non-zero, in its "
                         f"order: y coalesced={y.is_coalesced()}, {y._nnz()} non-zeros, values "
                         f"{tuple(values.shape)}")
    _, starts, _ = row_bags(y)
    ends = starts.new_full((1,), values.shape[0])
    return segment_sums(values, torch.cat([starts, ends]))


def segment_sums(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Sums of the contiguous segments ``values[offsets[i]:offsets[i + 1]]`` along the first
    axis: (nnz, ...) -> (len(offsets) - 1, ...); differentiable in ``values``; empty segments sum
    to 0.

    The one place mvae calls ``torch.segment_reduce``: it has CPU and CUDA kernels and autograd,
    but is not in torch's documented API (``index_add_`` over segment numbers is the fallback,
    should a later torch drop it).

    >>> import torch
    >>> segment_sums(torch.tensor([1.0, 2.0, 5.0]), torch.tensor([0, 2, 2, 3]))
    tensor([3., 0., 5.])
    """
    return torch.segment_reduce(values, "sum", offsets=offsets)


def _bag_sums(bags, M: torch.Tensor) -> torch.Tensor:
    members, offsets, values = bags
    return F.embedding_bag(members, M, offsets, mode="sum",
                           per_sample_weights=values.to(M.dtype))


def sparse_mm(y: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """yM for a sparse COO y (B, D) and a dense M (D, n): shape (B, n). Not differentiable in y."""
    return _bag_sums(row_bags(y), M)


def sparse_t_mm(y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """yᵀg for a sparse COO y (B, D) and a dense g (B, n): shape (D, n), a fresh tensor."""
    return _bag_sums(column_bags(y), g)


class _SparseDenseProduct(torch.autograd.Function):
    """y @ M for a constant y (dense or sparse COO), with the gradient yᵀg for M only."""

    @staticmethod
    def forward(ctx, y, M):
        ctx.y = y
        # dense: (Mᵀyᵀ)ᵀ, a transposed view; for a thin M (the KL's few dozen columns) the CPU
        # BLAS is faster in that layout than y @ M, and never slower
        return sparse_mm(y, M) if y.is_sparse else (M.T @ y.T).T

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        y = ctx.y
        return None, (sparse_t_mm(y, g) if y.is_sparse else (g.T @ y).T)


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
