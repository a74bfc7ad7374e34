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
    return torch.log1p(counts / pseudocount)


def _csr(y: torch.Tensor) -> torch.Tensor:
    """A coalesced sparse COO tensor in CSR layout (torch flags CSR as beta; the warning is noise
    here, the product and its weight gradient are tested against the dense layer)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return y.to_sparse_csr()


class ClrLinear(nn.Module):
    """Linear layer on centred log counts: :math:`h = \\tilde V (y - m) / s + a`, rows of Ṽ in 1⊥.

    Ṽ is the stored weight with its row means removed (the projection H = I − 11ᵀ/D applied from
    the right), so :math:`\\tilde V y = \\tilde V H y`: the layer sees only the clr part of y, which
    makes it equal to a dense layer on ILR coordinates u for any basis. ``centre`` (m, the mean clr
    input of the training data) and ``scale`` (s, its overall standard deviation) are buffers set from
    the data to condition the optimisation; they do not change what the layer can express.

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
        self.weight = nn.Parameter(torch.empty(n_out, n_features))
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.register_buffer("centre", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(()))
        # Same fan-in scaling as nn.Linear's default, in a form that is easy to read.
        bound = 1.0 / n_features**0.5
        nn.init.uniform_(self.weight, -bound, bound)

    def effective_weight(self) -> torch.Tensor:
        """Ṽ / s, shape (n_out, D): rows sum to zero."""
        w = self.weight - self.weight.mean(dim=1, keepdim=True)
        return w / self.scale

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """y: (B, D) dense or sparse log-ratio input -> (B, n_out).

        Computes :math:`(y W^\top - (y 1/D)(W 1)^\top - W m + (W 1)(1^\top m)/D) / s + a`, which
        equals ``effective_weight()`` applied to y − m without forming the centred weight: one
        pass over W per step instead of three (measured: the centring was as costly as the matmul
        at D = 2,000, batch 128).
        """
        row_sum_w = self.weight.sum(dim=1)  # (n_out,) W 1
        if y.is_sparse:
            # CSR rows times a dense matrix: measured 2x faster than the COO product (forward
            # plus weight gradient) at D = 20,000, 2% density, batch 128, one thread
            raw = _csr(y) @ self.weight.T  # (B, D) @ (D, n_out)
            y_mean = torch.sparse.sum(y, dim=1).to_dense() / self.n_features  # (B,)
        else:
            raw = y @ self.weight.T
            y_mean = y.mean(dim=1)
        centred = raw - y_mean[:, None] * row_sum_w  # y H Wᵀ
        shift = self.weight @ self.centre - row_sum_w * (self.centre.mean())  # W H m
        return (centred - shift) / self.scale + self.bias


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
