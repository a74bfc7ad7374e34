"""Log-likelihoods and KL divergences used by the mvae modules (torch).

Everything here is a pure function of tensors: no parameters, no state. Per-sample values are
returned (shape ``(B,)``) so that callers can report reconstruction and KL terms separately and use
the per-sample negative ELBO as an anomaly score.

- :func:`multinomial_log_prob` -- :math:`\\log \\operatorname{Mult}(x \\mid \\operatorname{softmax}\\ell)`,
  with :func:`multinomial_log_const`, :func:`count_depths` and :func:`sparse_row_dot` as parts;
- :func:`gaussian_multinomial_log_prob` -- the same at reparameterised logits
  :math:`\\ell = m + \\varepsilon\\odot s`, with a hand-written gradient (the training hot path);
- :func:`kl_normal_standard` -- KL of a diagonal Gaussian from N(0, I) (the ``sampled`` objective);
- :class:`LowRankPrior`, :func:`kl_factored_to_lowrank` -- KL of the ``marginal`` objective's
  factored posterior (low rank plus per-feature terms of a sparse input) from
  :math:`N(b, W W^\\top + \\sigma^2 I)` on the ILR subspace :math:`1^\\perp` (the D-dimensional KL
  less the mean-field slack of the component along 1), in O(D k²) by Woodbury and the matrix
  determinant lemma (docs/model.md); :func:`kl_diag_to_lowrank` -- the same for a diagonal
  Gaussian given as dense (B, D) arrays (the non-amortised reference's per-sample posteriors).

Counts may be a dense ``(B, D)`` tensor or a sparse COO tensor of the same shape. For sparse counts
only the non-zero entries enter :math:`\\sum_d x_d \\ell_d` and :math:`\\sum_d \\log x_d!`; the
normaliser :math:`N \\operatorname{logsumexp}(\\ell)` always runs over all D logits.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = [
    "factored_gram",
    "multinomial_log_prob",
    "gaussian_multinomial_log_prob",
    "multinomial_log_const",
    "sparse_row_dot",
    "count_depths",
    "softmax_log_normaliser",
    "kl_normal_standard",
    "kl_diag_to_lowrank",
    "kl_factored_to_lowrank",
    "LowRankPrior",
]


def _coo_parts(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, values) of a sparse COO tensor (coalesced)."""
    if not counts.is_coalesced():
        counts = counts.coalesce()
    idx = counts.indices()
    return idx[0], idx[1], counts.values()


def sparse_row_dot(counts: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-row :math:`\\sum_d x_{bd} \\ell_{bd}` touching only the non-zeros of a sparse ``counts``.

    Parameters
    ----------
    counts : torch.Tensor, sparse COO, shape (B, D)
    logits : torch.Tensor, shape (B, D) or (S, B, D)

    Returns
    -------
    torch.Tensor, shape (B,) or (S, B)

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[2.0, 0.0, 1.0]]).to_sparse()
    >>> sparse_row_dot(x, torch.tensor([[1.0, 2.0, 3.0]]))   # 2*1 + 1*3
    tensor([5.])
    """
    rows, cols, vals = _coo_parts(counts)
    picked = logits[..., rows, cols] * vals.to(logits.dtype)  # (..., nnz)
    out = logits.new_zeros(logits.shape[:-1])  # (..., B)
    return out.index_add_(out.dim() - 1, rows, picked)


def count_depths(counts: torch.Tensor) -> torch.Tensor:
    """Reads per sample, :math:`N_b = \\sum_d x_{bd}`.

    Parameters
    ----------
    counts : torch.Tensor, shape (B, D), dense or sparse COO

    Returns
    -------
    torch.Tensor, shape (B,)

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[2.0, 0.0, 1.0], [0.0, 5.0, 0.0]])
    >>> count_depths(x), count_depths(x.to_sparse())
    (tensor([3., 5.]), tensor([3., 5.]))
    """
    if counts.is_sparse:
        rows, _, vals = _coo_parts(counts)
        out = vals.new_zeros(counts.shape[0])
        return out.index_add_(0, rows, vals)
    return counts.sum(-1)


def _log_factorial_sum(counts: torch.Tensor) -> torch.Tensor:
    """Per-row :math:`\\sum_d \\log x_d!` (zeros contribute nothing)."""
    if counts.is_sparse:
        rows, _, vals = _coo_parts(counts)
        out = vals.new_zeros(counts.shape[0])
        return out.index_add_(0, rows, torch.lgamma(vals + 1))
    return torch.lgamma(counts + 1).sum(-1)


def multinomial_log_prob(logits: torch.Tensor, counts: torch.Tensor,
                         log_const: torch.Tensor | None = None) -> torch.Tensor:
    """Multinomial log-probability of counts given unnormalised logits.

    .. math::

        \\log p(x \\mid \\ell) = \\sum_d x_d \\ell_d - N \\log\\sum_d e^{\\ell_d}
            + \\log N! - \\sum_d \\log x_d!, \\qquad N = \\sum_d x_d

    The logits may be any representative of the clr class: adding a constant to every logit of a
    sample does not change the value.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, D) or (S, B, D)
        Unnormalised log-probabilities; a leading axis S holds Monte Carlo samples.
    counts : torch.Tensor, shape (B, D), dense or sparse COO
        Non-negative integer counts (stored as floating point).

    log_const : torch.Tensor, shape (B,), optional
        :math:`\\log N! - \\sum_d \\log x_d!` when already known (it does not depend on the logits;
        :class:`mvae.training.batches.CountData` computes it once per sample, which saves an lgamma over every
        count at every step).

    Returns
    -------
    torch.Tensor, shape (B,) or (S, B)

    Examples
    --------
    Equal logits give the uniform composition: :math:`\\log \\tfrac{3!}{2!\\,0!\\,1!} - 3\\log 3`.

    >>> import torch
    >>> x = torch.tensor([[2.0, 0.0, 1.0]])
    >>> multinomial_log_prob(torch.zeros(1, 3), x)
    tensor([-2.1972])
    >>> multinomial_log_prob(torch.zeros(4, 1, 3), x.to_sparse()).shape   # 4 Monte Carlo draws
    torch.Size([4, 1])
    """
    logits = _widened(logits, counts)
    if counts.is_sparse:
        dot = sparse_row_dot(counts, logits)
    else:
        dot = (counts.to(logits.dtype) * logits).sum(-1)
    depth = count_depths(counts).to(logits.dtype)  # (B,)
    log_norm = torch.logsumexp(logits, dim=-1)  # (..., B)
    if log_const is None:
        log_const = multinomial_log_const(counts)
    return dot - depth * log_norm + log_const.to(logits.dtype)


def _wide(counts: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether float64 counts meet lower-precision logits: the count-dependent sums are then
    formed in float64 (deep samples; see :class:`mvae.training.batches.CountData`)."""
    return counts.dtype == torch.float64 and dtype != torch.float64


def _widened(t: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``t`` in float64 when :func:`_wide` (autograd casts the gradient back), else ``t``."""
    return t.double() if _wide(counts, t.dtype) else t


def softmax_log_normaliser(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(ℓ) and logsumexp(ℓ) over the last dimension, from torch's fused softmax kernel.

    ``torch.softmax`` makes its one pass per row with a vectorised exponential, faster than
    ``exp`` alone and than the max / subtract / exp / sum / scale sequence it replaces in the
    fused likelihoods (figures: ``benchmarks/results/throughput/code_choices.md``). The
    log-normaliser follows from the
    largest probability, :math:`\\log Z = \\max\\ell - \\log \\max_d p_d`, which is at least
    1/D, so its log is as accurate as the probabilities themselves.

    >>> import torch
    >>> prob, log_z = softmax_log_normaliser(torch.tensor([[0.0, 0.0], [1e4, -1e4]]))
    >>> prob, log_z
    (tensor([[0.5000, 0.5000],
            [1.0000, 0.0000]]), tensor([6.9315e-01, 1.0000e+04]))
    """
    prob = torch.softmax(logits, dim=-1)
    return prob, logits.amax(-1) - prob.amax(-1).log()


class _GaussianMultinomial(torch.autograd.Function):
    """Multinomial log-probability (without the constant) at :math:`\\ell = m + \\varepsilon s`.

    Autograd would keep ℓ, the shifted logits and their exponentials, then walk back through the
    log-sum-exp, the product and the sum: about a dozen passes over an (S, B, D) buffer. The
    gradient is known in closed form, :math:`\\partial/\\partial\\ell = x - N\\operatorname{softmax}(\\ell)`,
    so the forward pass turns the exponentials into it in place and the backward pass only scales
    it (five passes forward, two back).
    """

    @staticmethod
    def forward(ctx, mean, std, eps, counts, depth):
        logits = torch.addcmul(mean, eps, std)  # (S, B, D)
        if _wide(counts, logits.dtype):  # deep samples: x·ℓ and N log Z in float64
            wide = logits.double()
            dot = (sparse_row_dot(counts, wide) if counts.is_sparse
                   else torch.linalg.vecdot(wide, counts))
            log_norm = torch.logsumexp(wide, dim=-1)
            del wide
            prob = torch.softmax(logits, dim=-1)
        else:
            if counts.is_sparse:
                dot = sparse_row_dot(counts, logits)
            else:
                dot = torch.linalg.vecdot(logits, counts.to(logits.dtype))
            prob, log_norm = softmax_log_normaliser(logits)
        del logits
        out = dot - depth * log_norm  # (S, B)
        ctx.mean_shape, ctx.std_shape = mean.shape, std.shape
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad = prob.mul_(-depth.unsqueeze(-1))  # −N softmax(ℓ)
            if counts.is_sparse:
                rows, cols, vals = _coo_parts(counts)
                grad[..., rows, cols] += vals.to(grad.dtype)  # (rows, cols) are unique
            else:
                grad.add_(counts.to(grad.dtype))
            ctx.save_for_backward(grad, eps)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        grad, eps = ctx.saved_tensors
        grad = grad * grad_out.to(grad.dtype).unsqueeze(-1)  # ∂/∂ℓ, (S, B, D)
        grad_std = None
        if ctx.needs_input_grad[1]:
            grad_std = _sum_to(grad * eps, ctx.std_shape)
        grad_mean = _sum_to(grad, ctx.mean_shape) if ctx.needs_input_grad[0] else None
        return grad_mean, grad_std, None, None, None


def _sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast result back to ``shape`` (the shape of the input it was broadcast from)."""
    return t.sum() if len(shape) == 0 else t.sum_to_size(shape)


def gaussian_multinomial_log_prob(mean: torch.Tensor, std: torch.Tensor, eps: torch.Tensor,
                                  counts: torch.Tensor,
                                  log_const: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`multinomial_log_prob` at the reparameterised logits :math:`\\ell = m + \\varepsilon \\odot s`.

    The same value as ``multinomial_log_prob(mean + eps * std, counts, log_const)`` and the same
    gradients with respect to ``mean`` and ``std``, computed by hand: the training loop spends most of
    its elementwise time here when D is large.

    Parameters
    ----------
    mean : torch.Tensor, broadcastable to ``eps`` (for example (B, D) or (S, B, D))
    std : torch.Tensor, broadcastable to ``eps`` ((B, D), (B, 1) or a scalar)
    eps : torch.Tensor, shape (S, B, D)
        Standard normal draws.
    counts : torch.Tensor, shape (B, D), dense or sparse COO
    log_const : torch.Tensor, shape (B,), optional
        As in :func:`multinomial_log_prob`.

    Returns
    -------
    torch.Tensor, shape (S, B)

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[2.0, 0.0, 1.0]])
    >>> m, s, e = torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([[[0.5, -1.0, 0.2]]])
    >>> bool(torch.allclose(gaussian_multinomial_log_prob(m, s, e, x),
    ...                     multinomial_log_prob(m + e * s, x)))
    True
    """
    depth = count_depths(counts)
    depth = depth if _wide(counts, eps.dtype) else depth.to(eps.dtype)
    out = _GaussianMultinomial.apply(mean, std, eps, counts, depth)
    if log_const is None:
        log_const = multinomial_log_const(counts)
    return out + log_const.to(out.dtype)


def multinomial_log_const(counts: torch.Tensor) -> torch.Tensor:
    """The multinomial coefficient's log, :math:`\\log N! - \\sum_d \\log x_d!`, per sample.

    Parameters
    ----------
    counts : torch.Tensor, shape (B, D), dense or sparse COO

    Returns
    -------
    torch.Tensor, shape (B,)

    Examples
    --------
    >>> import torch
    >>> multinomial_log_const(torch.tensor([[2.0, 0.0, 1.0]]))   # log 3
    tensor([1.0986])
    """
    return torch.lgamma(count_depths(counts) + 1) - _log_factorial_sum(counts)


def kl_normal_standard(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL( N(mean, diag exp(log_var)) || N(0, I) ), summed over the last axis.

    .. math:: \\tfrac12 \\sum_j (\\mu_j^2 + v_j - 1 - \\log v_j)

    Parameters
    ----------
    mean : torch.Tensor, shape (B, k)
        :math:`\\mu`.
    log_var : torch.Tensor, shape (B, k)
        :math:`\\log v`.

    Returns
    -------
    torch.Tensor, shape (B,)

    Examples
    --------
    >>> import torch
    >>> kl_normal_standard(torch.tensor([[0.0, 2.0]]), torch.zeros(1, 2))   # (0 + 4) / 2
    tensor([2.])
    """
    return 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(-1)


class LowRankPrior:
    """The Gaussian :math:`N(b, \\Sigma)`, :math:`\\Sigma = W W^\\top + \\sigma^2 I_D`, kept factored.

    Precomputes the k x k Cholesky factor of :math:`C = \\sigma^2 I_k + W^\\top W` once per step so that
    the Woodbury identity

    .. math:: \\Sigma^{-1} = \\sigma^{-2}\\,(I - W C^{-1} W^\\top)

    and the matrix determinant lemma :math:`\\log|\\Sigma| = (D - k)\\log\\sigma^2 + \\log|C|` cost
    O(D k^2), never D x D.

    Parameters
    ----------
    loadings : torch.Tensor, shape (D, k)
        :math:`W` (in the module, the clr loadings :math:`\\tilde W`).
    bias : torch.Tensor, shape (D,)
        :math:`b`.
    noise_variance : torch.Tensor, scalar
        :math:`\\sigma^2 > 0`.
    gram : torch.Tensor, shape (k, k), optional
        :math:`W^\\top W` when already computed (it must be, up to rounding).

    Attributes
    ----------
    chol : torch.Tensor, shape (k, k)
        Lower Cholesky factor :math:`L` of :math:`C = LL^\\top`.
    whitened : torch.Tensor, shape (D, k)
        :math:`U = W L^{-\\top}`, so that :math:`W C^{-1} W^\\top = U U^\\top`.

    Examples
    --------
    >>> import torch
    >>> W = torch.tensor([[1.0], [-1.0], [0.0]], dtype=torch.float64)
    >>> prior = LowRankPrior(W, torch.zeros(3, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64))
    >>> dense = W @ W.T + 0.5 * torch.eye(3, dtype=torch.float64)
    >>> bool(torch.isclose(prior.logdet(), torch.logdet(dense)))
    True
    >>> delta = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64)
    >>> bool(torch.isclose(prior.mahalanobis(delta)[0], delta[0] @ torch.linalg.solve(dense, delta[0])))
    True
    """

    def __init__(self, loadings: torch.Tensor, bias: torch.Tensor, noise_variance: torch.Tensor,
                 gram: torch.Tensor | None = None):
        self.loadings = loadings
        self.bias = bias
        self.noise_variance = noise_variance
        D, k = loadings.shape
        eye = torch.eye(k, dtype=loadings.dtype, device=loadings.device)
        if gram is None:  # else WᵀW from a larger Gram matrix already formed (factored_gram)
            gram = loadings.T @ loadings  # (k, D) @ (D, k) -> (k, k)
        self.chol = torch.linalg.cholesky(gram + noise_variance * eye)  # C = L Lᵀ

    @functools.cached_property
    def core_inverse(self) -> torch.Tensor:
        """:math:`C^{-1} = (\\sigma^2 I + W^\\top W)^{-1}`, (k, k), from the Cholesky factor."""
        return torch.cholesky_inverse(self.chol)

    @functools.cached_property
    def leverages(self) -> torch.Tensor:
        """:math:`\\lambda_d = w_d^\\top C^{-1} w_d`, (D,), the diagonal of :math:`WC^{-1}W^\\top`
        (from the k x k :math:`C^{-1}`, with a hand-written gradient: :class:`_Leverages`)."""
        return _Leverages.apply(self.loadings, self.core_inverse)

    @functools.cached_property
    def whitened(self) -> torch.Tensor:
        """U = W L⁻ᵀ, (D, k), so that W C⁻¹ Wᵀ = U Uᵀ: a (D, k) solve, made only when asked for
        (the factored posterior's KL does without it)."""
        return torch.linalg.solve_triangular(self.chol, self.loadings.T, upper=False).T

    @property
    def n_features(self) -> int:
        """D, the dimension of the Gaussian."""
        return self.loadings.shape[0]

    def logdet(self) -> torch.Tensor:
        """:math:`\\log|\\Sigma| = (D - k)\\log\\sigma^2 + 2\\sum_j \\log L_{jj}`, a scalar tensor."""
        D, k = self.loadings.shape
        return (D - k) * torch.log(self.noise_variance) + 2.0 * torch.log(torch.diagonal(self.chol)).sum()

    def mahalanobis(self, delta: torch.Tensor) -> torch.Tensor:
        """:math:`\\delta^\\top \\Sigma^{-1} \\delta = \\sigma^{-2}(\\lVert\\delta\\rVert^2 - \\lVert U^\\top\\delta\\rVert^2)` per row.

        Parameters
        ----------
        delta : torch.Tensor, shape (B, D)

        Returns
        -------
        torch.Tensor, shape (B,)
        """
        proj = delta @ self.whitened  # (B, D) @ (D, k) -> (B, k)
        return (delta.pow(2).sum(-1) - proj.pow(2).sum(-1)) / self.noise_variance

    def trace_diag(self, var: torch.Tensor) -> torch.Tensor:
        """:math:`\\operatorname{tr}(\\Sigma^{-1}\\operatorname{diag} v) = \\sigma^{-2}\\sum_d v_d (1 - \\lVert U_{d\\cdot}\\rVert^2)` per row.

        Parameters
        ----------
        var : torch.Tensor, shape (B, D)
            Variances :math:`v`.

        Returns
        -------
        torch.Tensor, shape (B,)
        """
        lever = self.whitened.pow(2).sum(-1)  # (D,) diagonal of W C^{-1} Wᵀ
        return (var.sum(-1) - var @ lever) / self.noise_variance


def kl_diag_to_lowrank(mean: torch.Tensor, log_var: torch.Tensor, prior: LowRankPrior) -> torch.Tensor:
    """KL of N(mean, diag exp(log_var)) from N(b, W Wᵀ + σ² I) on the ILR subspace, per sample, in
    O(B D k).

    The likelihood sees the logits ℓ only through Hℓ (the softmax ignores the component along 1),
    so the bound uses the KL of the two Gaussians' marginals on 1^⊥ (in any orthonormal ILR
    basis Ψ: of N(Ψᵀm, ΨᵀVΨ) from N(Ψᵀb, ΨᵀΣΨ)), not the D-dimensional KL. The prior's columns
    W must sum to zero (W = ΨW_ilr, as the module's W̃); its component along 1,
    u = 1ᵀℓ/√D, is then N(1ᵀb/√D, σ²) and independent of Hℓ, and

    .. math::

        \\mathrm{KL}_D = \\mathrm{KL}_{\\mathrm{ILR}}
            + \\tfrac12\\Big[\\frac{\\bar v + (1^\\top\\delta)^2/D}{\\sigma^2} - 1
            - \\log\\frac{\\tilde v}{\\sigma^2}\\Big]

    (:math:`\\bar v` and :math:`\\tilde v = D / \\sum_d v_d^{-1}` the arithmetic and harmonic means
    of v, the posterior's variance of u and its variance given Hℓ; δ = m − b): the last term,
    the *slack*, is what a mean-field posterior over the D features pays for its component along
    1 (docs/model.md, "The slack"). So

    .. math::

        2\\,\\mathrm{KL}_{\\mathrm{ILR}} = \\sigma^{-2}\\big[v^\\top(1 - \\lambda - 1/D)
            + \\lVert H\\delta\\rVert^2 - \\lVert U^\\top\\delta\\rVert^2\\big] - \\sum_d \\log v_d
            + \\log\\tilde v - (D - 1) + \\log|\\Sigma| - \\log\\sigma^2

    with :math:`V = \\operatorname{diag}(e^{\\text{log\\_var}})`, every term by
    :class:`LowRankPrior`'s Woodbury and determinant-lemma forms (:math:`\\log|\\Sigma| -
    \\log\\sigma^2` is the log-determinant of the prior's covariance on 1^⊥). It does not depend
    on the posterior mean's component along 1.

    Parameters
    ----------
    mean, log_var : torch.Tensor, shape (B, D)
        :math:`m` and :math:`\\log v` of the diagonal Gaussian.
    prior : LowRankPrior
        Its loadings' columns must sum to zero.

    Returns
    -------
    torch.Tensor, shape (B,)

    Examples
    --------
    Against torch's dense KL in the ILR coordinates of scipy's Helmert basis:

    >>> import scipy.linalg, torch
    >>> W = torch.tensor([[1.0], [-1.0], [0.0]], dtype=torch.float64)
    >>> b = torch.zeros(3, dtype=torch.float64)
    >>> prior = LowRankPrior(W, b, torch.tensor(0.5, dtype=torch.float64))
    >>> m = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    >>> log_var = torch.tensor([[0.0, -1.0, 0.5]], dtype=torch.float64)
    >>> Psi = torch.tensor(scipy.linalg.helmert(3).T)   # (D, D - 1), orthonormal, Ψᵀ1 = 0
    >>> N = torch.distributions.MultivariateNormal
    >>> dense = torch.distributions.kl_divergence(
    ...     N(Psi.T @ m[0], Psi.T @ torch.diag(log_var[0].exp()) @ Psi),
    ...     N(Psi.T @ b, Psi.T @ (W @ W.T + 0.5 * torch.eye(3, dtype=torch.float64)) @ Psi))
    >>> bool(torch.isclose(kl_diag_to_lowrank(m, log_var, prior)[0], dense))
    True
    """
    D = prior.n_features
    quad = _DiagLowRankQuadratic.apply(mean, log_var, prior.bias, prior.whitened,
                                       prior.noise_variance)
    return 0.5 * (quad - (D - 1) + prior.logdet() - torch.log(prior.noise_variance))


class _DiagLowRankQuadratic(torch.autograd.Function):
    """The data-dependent part of :func:`kl_diag_to_lowrank`, per row, with a hand-written gradient:

    .. math:: \\sigma^{-2}\\big[v^\\top(1 - \\lambda - 1/D) + \\lVert H\\delta\\rVert^2
              - \\lVert U^\\top\\delta\\rVert^2\\big] - \\textstyle\\sum_d \\log v_d + \\log\\tilde v

    with :math:`v = e^{\\text{log\\_var}}`, :math:`\\delta = m - b`, :math:`\\lambda_d = \\lVert U_{d\\cdot}\\rVert^2`,
    :math:`\\lVert H\\delta\\rVert^2 = \\lVert\\delta\\rVert^2 - (1^\\top\\delta)^2/D` and
    :math:`\\log\\tilde v = \\log D - \\operatorname{logsumexp}(-\\log v)`.
    Autograd walked back through about fifteen (B, D) passes for this; the closed-form gradients
    (:math:`\\partial/\\partial m = 2\\sigma^{-2}(H\\delta - UU^\\top\\delta)`,
    :math:`\\partial/\\partial \\log v = \\sigma^{-2} v(1 - \\lambda - 1/D) - 1 + \\operatorname{softmax}(-\\log v)`,
    and the thin (D, k) terms for U) need about half as many.
    """

    @staticmethod
    def forward(ctx, mean, log_var, bias, whitened, noise_variance):
        D = mean.shape[-1]
        var = log_var.exp()  # (B, D)
        delta = mean - bias  # (B, D)
        keep = 1.0 - whitened.pow(2).sum(-1)  # (D,) 1 − leverage
        proj = delta @ whitened  # (B, D) @ (D, k) -> (B, k)
        total = delta.sum(-1)  # (B,) 1ᵀδ
        resid = (var @ keep - var.sum(-1) / D + torch.linalg.vecdot(delta, delta)
                 - total.pow(2) / D - proj.pow(2).sum(-1))  # (B,)
        log_inv_sum = torch.logsumexp(-log_var, dim=-1)  # (B,) log Σ 1/v
        ctx.save_for_backward(var, delta, whitened, keep, proj, total, log_inv_sum,
                              noise_variance, resid)
        return resid / noise_variance - log_var.sum(-1) + (math.log(D) - log_inv_sum)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        var, delta, whitened, keep, proj, total, log_inv_sum, s2, resid = ctx.saved_tensors
        D = var.shape[-1]
        need = ctx.needs_input_grad
        scale = grad_out / s2  # (B,)
        grad_mean = grad_log_var = grad_bias = grad_whitened = grad_s2 = None
        if need[0] or need[2]:
            # 2σ⁻²(Hδ − UUᵀδ): Hδ = δ − (1ᵀδ/D) 1
            grad_mean = (torch.addmm(delta, proj, whitened.T, alpha=-1.0)
                         .sub_((total / D)[:, None]).mul_(2.0 * scale[:, None]))
            if need[2]:
                grad_bias = -grad_mean.sum(0)
        if need[1]:
            # σ⁻² v (1 − λ − 1/D) − 1 + softmax(−log v), softmax(−log v)_d = e^{−lse} / v_d
            soft = torch.reciprocal(var).mul_(torch.exp(-log_inv_sum)[:, None])
            grad_log_var = ((var * (keep - 1.0 / D)).mul_(scale[:, None])
                            .add_(soft.sub_(1.0).mul_(grad_out[:, None])))
        if need[3]:
            # −‖Uᵀδ‖² and the leverage λ = rowsums(U²) inside vᵀ(1 − λ)
            grad_whitened = -2.0 * (delta.T @ (proj * scale[:, None])
                                    + (var.T @ scale)[:, None] * whitened)
        if need[4]:
            grad_s2 = -(grad_out * resid).sum() / s2**2
        return grad_mean, grad_log_var, grad_bias, grad_whitened, grad_s2


class _Gram(torch.autograd.Function):
    """:math:`M^\\top M` with the gradient :math:`M(\\bar G + \\bar G^\\top)` as one product
    (autograd's matmul backward makes two, one per operand)."""

    @staticmethod
    def forward(ctx, M):
        ctx.save_for_backward(M)
        return M.T @ M

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (M,) = ctx.saved_tensors
        return M @ (grad + grad.T)


class _Leverages(torch.autograd.Function):
    """:math:`\\lambda_d = w_d^\\top C^{-1} w_d` for W (D, k) and a symmetric :math:`C^{-1}`
    (k, k), with the gradients :math:`2\\bar\\lambda \\odot (WC^{-1})` and
    :math:`W^\\top \\operatorname{diag}(\\bar\\lambda) W` by hand (autograd's made two products
    with (D, k) outputs and four more passes over them)."""

    @staticmethod
    def forward(ctx, W, C_inv):
        # (W C⁻¹)ᵀ = C⁻¹Wᵀ (C⁻¹ symmetric), (k, D): the CPU BLAS makes the thin product much
        # faster in this layout than W C⁻¹ (benchmarks/results/throughput/code_choices.md)
        A_t = C_inv @ W.T
        ctx.save_for_backward(W, A_t)
        return (A_t * W.T).sum(0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        W, A_t = ctx.saved_tensors
        grad_W = (A_t * (2.0 * grad)).T if ctx.needs_input_grad[0] else None
        grad_C = (W.T * grad) @ W if ctx.needs_input_grad[1] else None
        return grad_W, grad_C


class _ExpSums(torch.autograd.Function):
    """:math:`\\sum_d w_{dj}\\, e^{g_d y_{bd}}` for each column j of w (D, n) and
    :math:`\\sum_d u_d\\, e^{-g_d y_{bd}}` per row, for a dense constant y (B, D): shape (B, n + 1),
    with the gradients by hand (:math:`\\partial/\\partial w = E^\\top c`,
    :math:`\\partial/\\partial u = (1/E)^\\top c'`, :math:`\\partial/\\partial g = \\sum_j w_{\\cdot j}
    \\odot (y \\odot E)^\\top c_j - u \\odot (y / E)^\\top c'`, E the saved exponentials, c and c'
    the upstream gradients). Autograd made four (B, D) passes back for each sum; this makes one
    exponential for all of them."""

    @staticmethod
    def forward(ctx, y, g, w, u):
        expo = torch.exp(y * g)  # (B, D)
        inv = torch.reciprocal(expo)  # e^{−g y}
        ctx.save_for_backward(y, expo, inv, w, u)
        return torch.cat([expo @ w, (inv @ u)[:, None]], dim=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        y, expo, inv, w, u = ctx.saved_tensors
        need = ctx.needs_input_grad
        c, c_inv = grad_out[:, :-1], grad_out[:, -1]
        grad_g = ((y * expo).T @ c * w).sum(1) - u * ((y * inv).T @ c_inv) if need[1] else None
        grad_w = expo.T @ c if need[2] else None
        grad_u = inv.T @ c_inv if need[3] else None
        return None, grad_g, grad_w, grad_u


class _FactoredKLTail(torch.autograd.Function):
    """The per-sample part of :func:`kl_factored_to_lowrank` once its D-wide sums are known,
    with the gradient by hand.

    Inputs: P (B, m); the Gram matrix G of [Q, W, s]; yM = y [aQ, aW, a s, g] (B, m + k + 2);
    :math:`\\lVert a \\odot y\\rVert^2` and :math:`\\sum_d e^{f_d + g_d y_{bd}}(1 - \\lambda_d)`
    (B,) each; t (B,); :math:`C^{-1}` (k, k); σ². With :math:`u = W^\\top\\delta = G_{Ws} + PG_{QW}
    + yW` and :math:`\\lVert\\delta\\rVert^2 = G_{ss} + (PG_{QQ} + 2\\,yQ)\\cdot P + 2(PG_{Qs} + ys) +
    \\lVert a y\\rVert^2`, it returns

    .. math:: \\tfrac12\\big[(e^{t}\\,\\Sigma v + \\lVert\\delta\\rVert^2 - u^\\top C^{-1} u)/\\sigma^2
              - D t - y g\\big]

    (the constant :math:`\\tfrac12(\\log|\\Sigma| - \\sum_d f_d - D)` is added by the caller;
    :math:`u^\\top C^{-1}u = \\lVert L^{-1}u\\rVert^2`). Checked against the dense form and by
    gradcheck in tests/test_likelihoods.py.
    """

    @staticmethod
    def forward(ctx, left, G, yM, y_sq, var_sum, t, C_inv, noise_variance, D):
        k = C_inv.shape[0]
        m = G.shape[0] - k - 1
        LG = left @ G[:m]  # (B, m + k + 1): [P QᵀQ | P QᵀW | P Qᵀs]
        yQ, yW, ys, yg = yM[:, :m], yM[:, m:m + k], yM[:, m + k], yM[:, m + k + 1]
        u = LG[:, m:m + k] + yW + G[m:m + k, -1]  # (B, k) Wᵀδ
        uC = u @ C_inv
        delta_sq = (torch.linalg.vecdot(LG[:, :m] + 2.0 * yQ, left) + 2.0 * (LG[:, -1] + ys)
                    + G[-1, -1] + y_sq)  # (B,) ‖δ‖²
        e_t = torch.exp(t)
        quad = (var_sum * e_t + delta_sq - torch.linalg.vecdot(uC, u)) / noise_variance
        ctx.save_for_backward(left, G, LG, yQ, u, uC, var_sum, e_t, quad, noise_variance)
        ctx.m, ctx.k, ctx.D = m, k, D
        return 0.5 * (quad - yg - D * t)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, c):
        left, G, LG, yQ, u, uC, var_sum, e_t, quad, noise_variance = ctx.saved_tensors
        m, k = ctx.m, ctx.k
        h = 0.5 * c / noise_variance  # (B,) the upstream gradient of quad, over σ²
        hP = h[:, None] * left  # (B, m)
        du = uC * (-2.0 * h[:, None])  # ∂/∂u of −h uᵀC⁻¹u (C⁻¹ symmetric), (B, k)
        # ‖δ‖²: ∂/∂P = 2(P QᵀQ + Qᵀs + yQ) (QᵀQ symmetric); u: ∂/∂P = du (QᵀW)ᵀ
        g_left = 2.0 * (LG[:, :m] + G[:m, -1] + yQ) * h[:, None] + du @ G[:m, m:m + k].T
        g_G = torch.zeros_like(G)  # at the entries read, as autograd would (Gram backward
        g_G[:m, :m] = left.T @ hP  # symmetrises)
        g_G[:m, m:m + k] = left.T @ du
        g_G[:m, -1] = 2.0 * hP.sum(0)
        g_G[m:m + k, -1] = du.sum(0)
        g_G[-1, -1] = h.sum()
        g_yM = torch.cat([2.0 * hP, du, 2.0 * h[:, None], -0.5 * c[:, None]], dim=1)
        g_C = -(u * h[:, None]).T @ u
        g_t = h * var_sum * e_t - 0.5 * ctx.D * c
        g_sigma = -(0.5 * c * quad).sum() / noise_variance
        return g_left, g_G, g_yM, h, h * e_t, g_t, g_C, g_sigma, None


def factored_gram(right: torch.Tensor, loadings: torch.Tensor,
                  shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """M = [Q, W, s] (D, m + k + 1) and its Gram matrix MᵀM, whose inner products
    :func:`kl_factored_to_lowrank` needs; the W block is the WᵀW of :class:`LowRankPrior` (pass it
    as ``gram`` there to form it once)."""
    M = torch.cat([right, loadings, shift[:, None]], dim=1)
    return M, _Gram.apply(M)


def kl_factored_to_lowrank(shift: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                           skip: torch.Tensor, y: torch.Tensor, log_scale: torch.Tensor,
                           feature_log_var: torch.Tensor, skip_log_var: torch.Tensor,
                           prior: LowRankPrior,
                           gram: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """:func:`kl_diag_to_lowrank` for a posterior kept in factored form, without any (B, D) pass
    when y is sparse.

    The posterior is :math:`N(b + \\delta, \\operatorname{diag} v)` with

    .. math::

        \\delta_{bd} = s_d + (PQ^\\top)_{bd} + a_d\\,y_{bd}, \\qquad
        \\log v_{bd} = t_b + f_d + g_d\\,y_{bd},

    P (B, m) per sample, Q (D, m), s, a, f, g per feature, t per sample and y (B, D) a dense or
    sparse input. Expanding :math:`\\lVert\\delta\\rVert^2`, :math:`U^\\top\\delta` and
    :math:`v^\\top(1 - \\lambda)` (see :func:`kl_diag_to_lowrank`) leaves the Gram matrix of
    :math:`[Q, W, s]`, the leverages :math:`\\lambda`, one product of y with the (D, m + k + 3)
    matrix :math:`[aQ, aW, a s, g, a]` and sums over the non-zeros of y: O(D (m + k)² + nnz (m + k))
    per step instead of a dozen passes over (B, D) buffers and their gradients. Like
    :func:`kl_diag_to_lowrank` it is the KL on the ILR subspace: the slack of the component
    along 1 needs :math:`1^\\top\\delta = 1^\\top s + P Q^\\top 1 + y a` and the sums
    :math:`\\sum_d e^{\\pm(f_d + g_d y_{bd})}`, again O(nnz + D) per row for a sparse y.

    Parameters
    ----------
    shift : torch.Tensor, shape (D,)
        s.
    left : torch.Tensor, shape (B, m)
        P.
    right : torch.Tensor, shape (D, m)
        Q.
    skip : torch.Tensor, shape (D,)
        a.
    y : torch.Tensor, shape (B, D), dense or sparse COO (coalesced)
        The per-feature input (no gradient flows to it).
    log_scale : torch.Tensor, shape (B,)
        t.
    feature_log_var, skip_log_var : torch.Tensor, shape (D,)
        f and g.
    prior : LowRankPrior
        :math:`N(b, WW^\\top + \\sigma^2 I)`.
    gram : tuple of torch.Tensor, optional
        ``factored_gram(right, prior.loadings, shift)`` when already formed.

    Returns
    -------
    torch.Tensor, shape (B,)

    Examples
    --------
    Equal to the dense form on the materialised mean and log-variance:

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> B, D, m, k = 3, 6, 2, 2
    >>> r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    >>> W = r(D, k)
    >>> prior = LowRankPrior(W - W.mean(0), r(D), torch.tensor(0.3, dtype=torch.float64))
    >>> s, P, Q, a, y, t, f, gg = r(D), r(B, m), r(D, m), r(D), r(B, D).relu(), r(B), r(D), r(D)
    >>> mean = prior.bias + s + P @ Q.T + a * y
    >>> log_var = t[:, None] + f + gg * y
    >>> bool(torch.allclose(kl_factored_to_lowrank(s, P, Q, a, y, t, f, gg, prior),
    ...                     kl_diag_to_lowrank(mean, log_var, prior)))
    True
    """
    from .sparse_ops import row_sums, sparse_dense_mm

    D = prior.loadings.shape[0]
    W = prior.loadings
    # Every D-wide inner product of the mean's parts is an entry of one Gram matrix: one
    # (D, m + k + 1) pass forward and one back, where separate thin products were a dozen
    M, G = gram if gram is not None else factored_gram(right, W, shift)  # M = [Q, W, s]
    # leverage λ_d = w_dᵀ C⁻¹ w_d = ‖U_d‖², C = σ²I + WᵀW = LLᵀ
    feature_var = feature_log_var.exp()  # (D,) e^f
    inv_feature_var = torch.exp(-feature_log_var)  # (D,) e^{−f}
    base_var = feature_var * (1.0 - prior.leverages)  # (D,) e^f (1 − λ)
    # the y-terms of Qᵀδ, Wᵀδ, sᵀδ, Σ log v and 1ᵀδ in one product: (B, D) @ (D, m + k + 3)
    cols = torch.cat([M * skip[:, None], skip_log_var[:, None], skip[:, None]], dim=1)
    yM = sparse_dense_mm(y, cols)  # [aQ, aW, a s, g, a]
    yM, y_skip = yM[:, :-1], yM[:, -1]
    if y.is_sparse:
        _, idx, vals = _coo_parts(y)
        vals = vals.to(right.dtype)
        y_sq = (skip.index_select(0, idx) * vals).pow(2)  # (nnz,) (a_d y_bd)²
        # e^{±g y} − 1 at the non-zeros: the zeros' variance is the base e^{t + f}
        gy = skip_log_var.index_select(0, idx) * vals
        up, down = torch.expm1(gy), torch.expm1(-gy)
        sums = row_sums(y, torch.stack([y_sq, base_var.index_select(0, idx) * up,
                                        feature_var.index_select(0, idx) * up,
                                        inv_feature_var.index_select(0, idx) * down], dim=1))
        y_sq = sums[:, 0]  # (B,)
        var_sum = base_var.sum() + sums[:, 1]  # Σ_d e^{f + g y} (1 − λ)
        plain_sum = feature_var.sum() + sums[:, 2]  # Σ_d e^{f + g y}
        inv_sum = inv_feature_var.sum() + sums[:, 3]  # Σ_d e^{−f − g y}
    else:
        y_sq = y.pow(2) @ skip.pow(2)  # (B,)
        sums = _ExpSums.apply(y, skip_log_var, torch.stack([base_var, feature_var], dim=1),
                              inv_feature_var)  # (B, 3)
        var_sum, plain_sum, inv_sum = sums[:, 0], sums[:, 1], sums[:, 2]
    # the (B,)-sized rest, with its gradient by hand (autograd made ~80 small operations of it)
    per_sample = _FactoredKLTail.apply(left, G, yM, y_sq, var_sum, log_scale,
                                       prior.core_inverse, prior.noise_variance, D)
    kl_full = per_sample + 0.5 * (prior.logdet() - feature_log_var.sum() - D)
    # the slack of the component along 1 (kl_diag_to_lowrank): with v = e^{t + f + g y},
    # mean(v) = e^t Σ e^{f + g y} / D, log hmean(v) = log D + t − log Σ e^{−f − g y}, and
    # 1ᵀδ = 1ᵀs + P (Qᵀ1) + Σ_d a_d y_d
    total = shift.sum() + left @ right.sum(0) + y_skip  # (B,)
    s2 = prior.noise_variance
    slack = 0.5 * ((torch.exp(log_scale) * plain_sum + total.pow(2)) / (D * s2)
                   - log_scale + torch.log(inv_sum) + (torch.log(s2) - 1.0 - math.log(D)))
    return kl_full - slack
