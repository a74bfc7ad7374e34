"""Encoder networks for count data: the pseudocount log-ratio input and an L-layer MLP body.

The recognition model sees :math:`u = \\Psi^\\top(\\log(x + c) - m)`. Because every orthonormal ILR
basis :math:`\\Psi` spans the same subspace (the vectors that sum to zero), a first linear layer
acting on u is the same thing as a first layer acting on the centred log counts with weights whose
rows sum to zero: :math:`V u = (V\\Psi^\\top)(\\log(x + c) - m)` and :math:`V\\Psi^\\top` is any matrix
with rows in :math:`1^\\perp`. :class:`ClrLinear` parametrises that directly, so no Ψ is ever applied.

:math:`\\log(x + c) - \\log c = \\operatorname{log1p}(x / c)` keeps zeros at zero, so the first layer
can take a sparse input; subtracting the constant :math:`\\log c` changes nothing after centring.
"""

from __future__ import annotations

import torch
from torch import nn

from ..maths.sparse_ops import row_sums, sparse_mm, sparse_t_mm

__all__ = ["log_ratio_input", "ClrLinear", "Encoder", "make_activation"]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of relu, gelu, softplus, tanh, elu, silu)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"activation={name!r} is not supported; choose one of {sorted(_ACTIVATIONS)}"
        ) from None


def log_ratio_input(counts: torch.Tensor, pseudocount: float) -> torch.Tensor:
    """:math:`\\log(x + c) - \\log c`, elementwise, preserving sparsity.

    Parameters
    ----------
    counts : torch.Tensor, shape (B, D), dense or sparse COO
    pseudocount : float
        c > 0.

    Returns
    -------
    torch.Tensor, shape (B, D), same layout as ``counts``
    """
    if counts.is_sparse:
        counts = counts.coalesce()
        return torch.sparse_coo_tensor(
            counts.indices(), torch.log1p(counts.values() / pseudocount), counts.shape,
            is_coalesced=True, check_invariants=False,
        )
    return torch.log1p(counts / pseudocount if pseudocount != 1 else counts)


class _CentredProduct(torch.autograd.Function):
    """:math:`(yH - \\tilde m) K` for a (B, D) input y (dense or sparse COO) and a (D, n) kernel K,
    with :math:`H = I - 11^\\top/D` and :math:`\\tilde m = Hm` (a constant).

    Written out, :math:`yK - \\bar y\\,(1^\\top K) - \\tilde m K` uses K three times; autograd
    would then build three (D, n) gradients and add them. Here the gradient
    :math:`y^\\top g - 1\\,(\\bar y^\\top g) - \\tilde m^\\top (1^\\top g)` is one product plus
    one rank-2 update in place: two passes over a (D, n) buffer where autograd makes five. No
    gradient flows to y (the data).
    """

    @staticmethod
    def forward(ctx, y, kernel, centre_tilde):
        D = kernel.shape[0]
        if y.is_sparse:
            raw = sparse_mm(y, kernel)  # bag sums over the non-zeros (mvae.maths.sparse_ops)
            y_mean = row_sums(y, y.values()) / D  # (B,)
        else:
            raw = y @ kernel
            y_mean = y.mean(dim=1)
        ctx.y, ctx.y_mean, ctx.centre_tilde = y, y_mean, centre_tilde
        # 1ᵀK and m̃ᵀK in one pass over K
        sums = torch.stack([torch.ones_like(centre_tilde), centre_tilde]) @ kernel  # (2, n)
        return raw.sub_(sums[1]).addr_(y_mean, sums[0], alpha=-1.0)

    @staticmethod
    def backward(ctx, g):
        y = ctx.y
        grad = sparse_t_mm(y, g) if y.is_sparse else y.T @ g  # (D, n), fresh
        U = torch.stack([torch.ones_like(ctx.centre_tilde), ctx.centre_tilde], dim=1)  # (D, 2)
        V = torch.stack([ctx.y_mean @ g, g.sum(dim=0)])  # (2, n)
        grad.addmm_(U, V, alpha=-1.0)
        return None, grad, None


class ClrLinear(nn.Module):
    """Linear layer on centred log counts: :math:`h = \\tilde V (y - m) / s + a`, rows of Ṽ in 1⊥.

    Ṽ is the stored weight with its row means removed (the projection H = I − 11ᵀ/D applied from
    the right), so :math:`\\tilde V y = \\tilde V H y`: the layer sees only the clr part of y, which
    makes it equal to a dense layer on ILR coordinates u for any basis. ``centre`` (m, the mean clr
    input of the training data) and ``scale`` (s, its overall standard deviation) are buffers set from
    the data to condition the optimisation; they do not change what the layer can express.

    The weight is stored transposed, as ``kernel`` (D, n_out), so that its gradient is produced in
    its own layout (a transposing copy of a D x n_out buffer cost as much as the product at D =
    20,000). Model files written with the earlier ``weight`` (n_out, D) still load.

    Parameters
    ----------
    n_features : int
        D.
    n_out : int
        Output width.
    """

    def __init__(self, n_features: int, n_out: int):
        super().__init__()
        self.n_features = n_features
        # Same fan-in scaling as nn.Linear's default, drawn in nn.Linear's (n_out, D) order.
        bound = 1.0 / n_features**0.5
        init = torch.empty(n_out, n_features).uniform_(-bound, bound)
        self.kernel = nn.Parameter(init.T.contiguous())
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.register_buffer("centre", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        legacy = prefix + "weight"
        if legacy in state_dict and prefix + "kernel" not in state_dict:
            state_dict[prefix + "kernel"] = state_dict.pop(legacy).T.contiguous()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def weight(self) -> torch.Tensor:
        """The (n_out, D) view of ``kernel``, as nn.Linear would store it."""
        return self.kernel.T

    def effective_weight(self) -> torch.Tensor:
        """Ṽ / s, shape (n_out, D): rows sum to zero."""
        w = self.weight - self.weight.mean(dim=1, keepdim=True)
        return w / self.scale

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """y: (B, D) dense or sparse log-ratio input -> (B, n_out).

        Computes :math:`(yH - Hm) V^\\top / s + a`, which equals ``effective_weight()`` applied to
        y − m without forming the centred weight (see :class:`_CentredProduct`).
        """
        centre_tilde = self.centre - self.centre.mean()
        return _CentredProduct.apply(y, self.kernel, centre_tilde) / self.scale + self.bias


class Encoder(nn.Module):
    """The shared body of the recognition network: ClrLinear, then (depth − 1) nonlinear layers.

    ``depth`` counts the linear maps between the input and the output heads, heads included:
    depth 1 is a linear encoder (ClrLinear into a width-``n_hidden`` bottleneck and a linear head,
    no activation); depth L ≥ 2 puts L − 1 activations before the head.

    Parameters
    ----------
    n_features : int
        D.
    n_hidden : int
        Width of every hidden layer.
    depth : int
        L ≥ 1.
    activation : str
        Name of the activation (see :func:`make_activation`).
    dropout : float
        Dropout probability after each activation.
    """

    def __init__(self, n_features: int, n_hidden: int, depth: int, activation: str = "gelu",
                 dropout: float = 0.0):
        super().__init__()
        if depth < 1:
            raise ValueError(f"encoder depth must be >= 1, got {depth}")
        self.input_layer = ClrLinear(n_features, n_hidden)
        layers: list[nn.Module] = []
        for i in range(depth - 1):
            if i > 0:
                layers.append(nn.Linear(n_hidden, n_hidden))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.n_hidden = n_hidden

    def forward(self, log_ratio: torch.Tensor) -> torch.Tensor:
        """(B, D) log-ratio input (dense or sparse) -> (B, n_hidden) features for the heads."""
        return self.body(self.input_layer(log_ratio))
