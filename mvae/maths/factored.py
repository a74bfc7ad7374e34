"""The multinomial likelihood under the factored posterior, fused and chunked (the training hot path).

The posterior of :mod:`mvae.counts.module` is :math:`q(\\ell \\mid x) = N(m, \\operatorname{diag} v)` with

.. math::

    m = \\beta + P Q^\\top + a \\odot y, \\qquad \\log v = t 1^\\top + f + g \\odot y

for the (B, D) log-ratio input y, P (B, r) from the encoder, Q (D, r) and β, a, f, g per feature,
t per sample. The expected log-likelihood :math:`E_q \\log \\operatorname{Mult}(x \\mid
\\operatorname{softmax}\\ell)` is estimated according to the layout of the counts
(docs/model.md):

- dense counts: Monte Carlo at :math:`\\ell = m + \\varepsilon \\odot v^{1/2}`, draws at every entry;
- sparse counts: draws at the non-zero counts only and the Jensen bound over the zeros,
  :math:`x^\\top\\ell - N\\log(\\sum_{x_d > 0} e^{\\ell_d} + \\sum_{x_d = 0} e^{m_d + v_d/2})`, a lower
  bound of the expected log-likelihood that needs nnz random numbers instead of B × D.

Written with separate torch operations this is a few dozen passes over (B, D) buffers per step (m,
v, the logits, their exponentials and as many for the gradients), and at large D each buffer is
many megabytes: the step is limited by memory traffic, not by arithmetic.
:func:`factored_multinomial_log_prob` instead works through blocks of rows small enough to stay in
cache, forms m and v only block by block, and computes every gradient by hand from one saved
(B, D) buffer, :math:`\\partial/\\partial\\ell` of the log-normaliser, besides the draws (for
dense counts the noise :math:`\\varepsilon \\odot v^{1/2}` is kept in place of ε, which gives the
variance's gradient without forming v again). For sparse counts the variance off the non-zeros is
an outer product, so its gradient is two matrix-vector products per block.
"""

from __future__ import annotations

import torch

from .likelihoods import _coo_parts, count_depths, multinomial_log_const, softmax_log_normaliser
from .sparse_ops import segment_sums

__all__ = ["factored_multinomial_log_prob", "CHUNK_ELEMENTS", "MIN_CHUNK_ROWS"]

#: Entries of one (rows, D) block of the fused likelihood: 2¹⁹ float32 entries = 2 MiB, so the
#: block's two or three live buffers stay in a typical shared L3 cache with room to spare.
CHUNK_ELEMENTS = 2**19
#: But never fewer rows than this per block: at very large D a 2 MiB block is a handful of rows,
#: and the block's thin products and its ~40 small operations then cost more than the cache saves
#: (benchmarks/results/throughput/).
MIN_CHUNK_ROWS = 16


def factored_multinomial_log_prob(left: torch.Tensor, right: torch.Tensor, base: torch.Tensor,
                                  skip: torch.Tensor, log_scale: torch.Tensor,
                                  feature_log_var: torch.Tensor, skip_log_var: torch.Tensor,
                                  y: torch.Tensor, counts: torch.Tensor, eps: torch.Tensor,
                                  log_const: torch.Tensor | None = None,
                                  chunk_rows: int | None = None) -> torch.Tensor:
    """Expected multinomial log-probability of ``counts`` under a factored Gaussian posterior.

    Parameters
    ----------
    left : torch.Tensor, shape (B, r)
        P.
    right : torch.Tensor, shape (D, r)
        Q.
    base : torch.Tensor, shape (D,)
        β, the constant part of the mean.
    skip : torch.Tensor, shape (D,)
        a.
    log_scale : torch.Tensor, shape (B,)
        t.
    feature_log_var, skip_log_var : torch.Tensor, shape (D,)
        f and g.
    y : torch.Tensor, shape (B, D)
        The log-ratio input, in the layout of ``counts`` and (if sparse, coalesced) with the same
        non-zeros. No gradient flows to it.
    counts : torch.Tensor, shape (B, D), dense or sparse COO (coalesced)
    eps : torch.Tensor
        Standard normal draws: shape (S, B, D) for dense counts (Monte Carlo at
        :math:`\\ell = m + \\varepsilon\\odot v^{1/2}`), shape (S, nnz) for sparse counts (draws at
        the non-zeros in their coalesced order, the Jensen bound over the zeros).
    log_const : torch.Tensor, shape (B,), optional
        :math:`\\log N! - \\sum_d \\log x_d!` when already known.
    chunk_rows : int, optional
        Rows per block (default: :data:`CHUNK_ELEMENTS` // D, at least
        :data:`MIN_CHUNK_ROWS`).

    Returns
    -------
    torch.Tensor
        Shape (S, B): one estimate per draw.

    Examples
    --------
    For dense counts, the same value as the Monte Carlo estimate on the materialised posterior:

    >>> import torch
    >>> from mvae.maths.likelihoods import gaussian_multinomial_log_prob
    >>> g = torch.Generator().manual_seed(0)
    >>> r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    >>> x = torch.tensor([[3.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 5.0]], dtype=torch.float64)
    >>> y = torch.log1p(x)
    >>> P, Q, base, a, t, f, gg, eps = r(2, 2), r(4, 2), r(4), r(4), r(2), r(4), r(4), r(1, 2, 4)
    >>> m = base + P @ Q.T + a * y
    >>> std = torch.exp(0.5 * (t[:, None] + f + gg * y))
    >>> fused = factored_multinomial_log_prob(P, Q, base, a, t, f, gg, y, x, eps)
    >>> bool(torch.allclose(fused, gaussian_multinomial_log_prob(m, std, eps, x)))
    True
    """
    if counts.is_sparse:
        counts = counts if counts.is_coalesced() else counts.coalesce()
        if not y.is_sparse:
            raise ValueError("y must have the layout of counts")
        y = y if y.is_coalesced() else y.coalesce()
        if y.values().shape != counts.values().shape:
            raise ValueError("y and counts must have the same non-zeros")
        if eps.dim() != 2 or eps.shape[1] != counts.values().shape[0]:
            raise ValueError(f"sparse counts need (S, nnz) draws at their {counts._nnz()} "
                             f"non-zeros; got eps of shape {tuple(eps.shape)}")
    else:
        if y.is_sparse:
            raise ValueError("y must have the layout of counts")
        if eps.dim() != 3 or eps.shape[1:] != counts.shape:
            raise ValueError(f"dense counts need (S, B, D) draws; got eps of shape "
                             f"{tuple(eps.shape)} for counts of shape {tuple(counts.shape)}")
    B, D = counts.shape
    rows_per = (int(chunk_rows) if chunk_rows
                else max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // max(1, D)))
    depth = count_depths(counts).to(left.dtype)
    out = _FactoredLikelihood.apply(left, right, base, skip, log_scale, feature_log_var,
                                    skip_log_var, y, counts, eps, depth, rows_per)
    if log_const is None:
        log_const = multinomial_log_const(counts)
    return out + log_const.to(out.dtype)


class _Block:
    """One block of rows [i0, i1) and, for sparse counts, its non-zeros (local row numbers).

    The non-zeros are addressed by their flat position in the block's (c, D) buffers and summed
    per row as segments (the non-zeros of a coalesced batch are sorted by row): an
    ``index_select`` / ``index_add_`` on a flat view and ``segment_reduce`` are several times
    faster on the CPU than indexing with a (rows, cols) pair and ``index_add_`` over the rows,
    which accumulates serially into a few addresses.
    """

    def __init__(self, i0, i1, counts, y, ptr):
        self.i0, self.i1 = i0, i1
        self.sparse = counts.is_sparse
        if self.sparse:
            rows, cols, vals = _coo_parts(counts)
            lo, hi = int(ptr[i0]), int(ptr[i1])
            self.lo, self.hi = lo, hi  # the block's slice of the non-zeros
            self.rows, self.cols = rows[lo:hi] - i0, cols[lo:hi]
            self.flat = self.rows * counts.shape[1] + self.cols  # position in a (c, D) buffer
            self.offsets = ptr[i0:i1 + 1] - lo  # where each row's non-zeros start, (c + 1,)
            self.x = vals[lo:hi]
            self.y = y.values()[lo:hi]
        else:
            self.x, self.y = counts[i0:i1], y[i0:i1]

    def at(self, t):
        """The entries of t (c, D) or (S, c, D) at the non-zeros: (nnz_c,) or (S, nnz_c)."""
        return t.reshape(*t.shape[:-2], -1).index_select(-1, self.flat)

    def add_at(self, t, v):
        """t += v at the non-zeros, in place on a contiguous t (c, D) or (S, c, D)."""
        t.view(*t.shape[:-2], -1).index_add_(t.dim() - 2, self.flat, v)
        return t

    def put_at(self, t, v):
        """t = v at the non-zeros, in place on a contiguous t (S, c, D); v (S, nnz_c)."""
        t.view(t.shape[0], -1).index_copy_(1, self.flat, v)
        return t

    def row_sum(self, v):
        """Sums per row of values at the non-zeros: (nnz_c,) -> (c,), (S, nnz_c) -> (S, c)."""
        return segment_sums(v, self.offsets) if v.dim() == 1 else segment_sums(v.T, self.offsets).T

    def by_row(self, a):
        """a (c,) per row, at the non-zeros (nnz_c,)."""
        return a.index_select(0, self.rows)

    def by_col(self, a):
        """a (D,) per feature, at the non-zeros (nnz_c,)."""
        return a.index_select(0, self.cols)


def _blocks(counts, y, rows_per):
    B = counts.shape[0]
    ptr = None
    if counts.is_sparse:
        rows, _, _ = _coo_parts(counts)
        ptr = torch.searchsorted(rows, torch.arange(B + 1, device=rows.device))
    return [_Block(i0, min(B, i0 + rows_per), counts, y, ptr) for i0 in range(0, B, rows_per)]


def _mean_block(blk, left, right, base, skip):
    """m for the block's rows, (c, D): one product plus the skip term."""
    m = torch.addmm(base, left[blk.i0:blk.i1], right.T)  # (c, r) @ (r, D) + (D,)
    if blk.sparse:
        return blk.add_at(m, blk.by_col(skip) * blk.y)
    return m.addcmul_(blk.y, skip)


def _scale_block(blk, t, f, g, power):
    """v^power for the block: sparse -> (A (c,), C (D,), R at the non-zeros) with
    v^p = A C off the non-zeros and A C R on them; dense -> the (c, D) array."""
    t = t[blk.i0:blk.i1]
    if blk.sparse:
        return (torch.exp(power * t), torch.exp(power * f),
                torch.exp(power * blk.by_col(g) * blk.y))
    return torch.addcmul(f, blk.y, g).add_(t[:, None]).mul_(power).exp_()


class _FactoredLikelihood(torch.autograd.Function):
    """Dense counts: Monte Carlo everywhere. Sparse counts: draws at the non-zeros, the bound at
    the zeros. Returns (S, B); the backward pass needs ``soft`` = −N softmax(ℓ) per draw."""

    @staticmethod
    def forward(ctx, left, right, base, skip, t, f, g, y, counts, eps, depth, rows_per):
        S = eps.shape[0]
        B, D = counts.shape
        sparse = counts.is_sparse
        blocks = _blocks(counts, y, rows_per)
        out = left.new_empty(S, B)
        soft = left.new_empty(S, B, D)  # −N softmax(ℓ) per block, saved for the backward pass
        # dense: the noise ε ⊙ v^{1/2} is kept in place of ε, so that the backward pass gets
        # ∂/∂log v from it without forming v again
        noise = None if sparse else left.new_empty(S, B, D)
        for blk in blocks:
            i0, i1 = blk.i0, blk.i1
            m = _mean_block(blk, left, right, base, skip)  # (c, D)
            if sparse:  # v/2 at the zeros, ε v^{1/2} at the non-zeros
                A, C, R = _scale_block(blk, t, f, g, 1.0)
                m_nz = blk.at(m)  # (nnz_c,)
                m.addcmul_(A[:, None], C[None, :], value=0.5)
                lg = m[None].expand(S, -1, -1).clone() if S > 1 else m[None]
                std_nz = torch.sqrt(blk.by_row(A) * blk.by_col(C) * R)
                ell_nz = m_nz + eps[:, blk.lo:blk.hi] * std_nz  # (S, nnz_c)
                blk.put_at(lg, ell_nz)
                dot = blk.row_sum(ell_nz * blk.x)  # x·ℓ at the non-zeros, (S, c)
            else:
                std = _scale_block(blk, t, f, g, 0.5)  # (c, D)
                lg = torch.mul(eps[:, i0:i1], std, out=noise[:, i0:i1]).add(m)  # (S, c, D)
                dot = torch.linalg.vecdot(lg, blk.x)  # x·ℓ, (S, c)
            prob, log_norm = softmax_log_normaliser(lg)
            N = depth[i0:i1]
            out[:, i0:i1] = dot - N * log_norm
            torch.mul(prob, -N[:, None], out=soft[:, i0:i1])
        ctx.save_for_backward(soft, left, right, base, skip, t, f, g,
                              eps if noise is None else noise)
        ctx.blocks = blocks
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        soft, left, right, base, skip, t, f, g, eps = ctx.saved_tensors
        go = grad_out  # (S, B)
        go_sum = go.sum(0)  # (B,)
        # Q's gradient is accumulated transposed, (r, D), for blocks of MIN_CHUNK_ROWS rows or
        # more, where the CPU BLAS is faster at Pᵀ gm than at gmᵀ P (and slower for thin blocks)
        q_layout = "right_t" if ctx.blocks[0].i1 - ctx.blocks[0].i0 >= MIN_CHUNK_ROWS else "right"
        grads = dict(left=torch.empty_like(left),
                     **{q_layout: right.new_zeros(right.shape[::-1] if q_layout == "right_t"
                                                  else right.shape)},
                     base=torch.zeros_like(base), skip=torch.zeros_like(skip),
                     t=torch.empty_like(t), f=torch.zeros_like(f), g=torch.zeros_like(g))
        for blk in ctx.blocks:
            i0, i1 = blk.i0, blk.i1
            gn = soft[:, i0:i1] * go[:, i0:i1, None]  # ∂/∂ℓ of the normaliser, (S, c, D)
            if not blk.sparse:
                # ∂/∂ℓ per draw with the x part, then ∂/∂log v = ½ Σ_s ∂ℓ ⊙ ε v^{1/2} from the
                # saved noise (``eps`` holds ε ⊙ v^{1/2} here)
                g_ell = gn.addcmul_(blk.x, go[:, i0:i1, None])
                noise = eps[:, i0:i1]
                _dense_log_var_grads(blk, (g_ell * noise).sum(0) if g_ell.shape[0] > 1
                                     else g_ell[0] * noise[0], 0.5, grads)
                gm = g_ell.sum(0) if g_ell.shape[0] > 1 else g_ell[0]
                _mean_grads(blk, gm, left, right, grads)
                continue
            gm = gn.sum(0) if gn.shape[0] > 1 else gn[0]  # (c, D), fresh
            _sparse_log_var_grads(blk, gn, gm, go[:, i0:i1], eps[:, blk.lo:blk.hi], t, f, g,
                                  grads)
            # ∂/∂m: add x (times the upstream gradient) at the non-zeros
            blk.add_at(gm, blk.x * blk.by_row(go_sum[i0:i1]))
            _mean_grads(blk, gm, left, right, grads)
        if q_layout == "right_t":
            grads["right"] = grads.pop("right_t").T
        need = ctx.needs_input_grad
        names = ("left", "right", "base", "skip", "t", "f", "g")
        return (*[grads[n] if need[i] else None for i, n in enumerate(names)],
                None, None, None, None, None)


def _mean_grads(blk, gm, left, right, grads):
    """Add the gradients of P, Q, β and a from gm = ∂/∂m for the block's rows, (c, D)."""
    i0, i1 = blk.i0, blk.i1
    grads["left"][i0:i1] = gm @ right  # (c, D) @ (D, r)
    if "right_t" in grads:  # Qᵀ's gradient (see the backward pass)
        grads["right_t"].addmm_(left[i0:i1].T, gm)  # (r, c) @ (c, D)
    else:
        grads["right"].addmm_(gm.T, left[i0:i1])  # (D, c) @ (c, r)
    grads["base"] += gm.sum(0)
    if blk.sparse:
        grads["skip"].index_add_(0, blk.cols, blk.at(gm) * blk.y)
    else:
        grads["skip"] += torch.linalg.vecdot(gm.T, blk.y.T)


def _dense_log_var_grads(blk, q, scale, grads):
    """Add the gradients of t, f and g for a dense block from q, where ``scale`` · q =
    ∂/∂log v, (c, D)."""
    grads["t"][blk.i0:blk.i1] = scale * q.sum(1)
    grads["f"] += scale * q.sum(0)
    grads["g"] += scale * torch.linalg.vecdot(q.T, blk.y.T)


def _sparse_log_var_grads(blk, gn, gm, go, e, t, f, g, grads):
    """The t, f, g gradients of a sparse block: v/2 at the zeros (v = A C), ε v^{1/2} at the
    non-zeros. ``gn`` (S, c, D) is ∂/∂ℓ of the normaliser, ``gm`` its sum over draws (before the
    x part is added), ``go`` (S, c) the upstream gradient and ``e`` (S, nnz_c) the draws."""
    i0, i1 = blk.i0, blk.i1
    A, C, R = _scale_block(blk, t, f, g, 1.0)
    gm_nz = blk.at(gm)
    A_nz, C_nz = blk.by_row(A), blk.by_col(C)
    # the zeros: ∂/∂log v = v ∂/∂v = v ⊙ gm / 2, summed over the zeros only
    by_row = (gm @ C).sub_(blk.row_sum(gm_nz * C_nz))
    by_col = (gm.T @ A).index_add_(0, blk.cols, -gm_nz * A_nz)
    # the non-zeros: ∂/∂log v = ½ std ⊙ Σ_s ε_s (∂ℓ_s of the normaliser + x · upstream)
    std_nz = torch.sqrt(A_nz * C_nz * R)
    g_ell = blk.at(gn) + blk.x * go.index_select(1, blk.rows)  # (S, nnz_c)
    d_log_v = 0.5 * std_nz * (g_ell * e).sum(0)  # (nnz_c,)
    grads["t"][i0:i1] = (0.5 * A * by_row).add_(blk.row_sum(d_log_v))
    grads["f"] += 0.5 * C * by_col
    grads["f"].index_add_(0, blk.cols, d_log_v)
    grads["g"].index_add_(0, blk.cols, d_log_v * blk.y)
