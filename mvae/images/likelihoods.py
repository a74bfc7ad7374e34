"""Per-image log-likelihoods for the convolutional models (torch), summed over pixels.

Images are float tensors of shape ``(B, C, H, W)`` with intensities in [0, 1]. Each function returns
the log-likelihood of every image, shape ``(B,)``, in nats, summed over all ``C·H·W`` values, so
that a KL term in nats can be subtracted to give a true ELBO. Divide by ``C·H·W·log 2`` for
bits per dimension (:func:`bits_per_dim`).

Three observation models:

``bernoulli``
    For binary images (e.g. dynamically binarised MNIST): :math:`x \\in \\{0, 1\\}`,
    :math:`\\log p(x) = x \\log\\sigma(\\ell) + (1 - x)\\log\\sigma(-\\ell)` from logits ℓ.
``logistic``
    Discretised logistic for 8-bit images (Salimans et al. 2017, PixelCNN++, eq. 2 without the
    mixture): the intensity k/255 takes the mass of a logistic(μ, s) on its bin
    [(k − ½)/255, (k + ½)/255], the end bins taking the tails to ∓∞. A true probability mass, so
    bits/dim is comparable across models.
``gaussian``
    A Normal density per pixel. A density, not a mass: its bits/dim on [0, 1] data is not a code
    length (see :func:`bits_per_dim`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "LIKELIHOODS",
    "bernoulli_log_prob",
    "discretized_logistic_log_prob",
    "gaussian_log_prob",
    "log_prob",
    "mean_image",
    "n_parameters",
    "bits_per_dim",
    "MIN_LOG_SCALE",
]

LIKELIHOODS = ("bernoulli", "logistic", "gaussian")

#: Floor on log s of the logistic and Gaussian (s ≥ e⁻⁷ ≈ 0.0009 = a quarter of one 8-bit level),
#: as in PixelCNN++: stops a pixel that is always 0 from pulling the scale to zero.
MIN_LOG_SCALE = -7.0


def _per_image(t: torch.Tensor) -> torch.Tensor:
    """Sum over every axis but the first: (B, ...) -> (B,)."""
    return t.reshape(t.shape[0], -1).sum(-1)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bernoulli log-probability of binary images from logits.

    .. math:: \\log p(x \\mid \\ell) = \\sum_i x_i \\log\\sigma(\\ell_i)
              + (1 - x_i) \\log\\sigma(-\\ell_i)

    Parameters
    ----------
    logits : torch.Tensor, shape (B, C, H, W)
    x : torch.Tensor, shape (B, C, H, W)
        Values in {0, 1}. Values in between give the cross-entropy, which is not a log-probability.

    Returns
    -------
    torch.Tensor, shape (B,)
    """
    return -_per_image(F.binary_cross_entropy_with_logits(logits, x, reduction="none"))


def _log_expm1(d: torch.Tensor) -> torch.Tensor:
    """log(e^d − 1) for d > 0 without overflow (large d) or cancellation (small d)."""
    big = d > 1.0
    small_d = torch.where(big, torch.ones_like(d), d)  # keeps the unused branch finite
    big_d = torch.where(big, d, torch.ones_like(d))
    return torch.where(big, big_d + torch.log1p(-torch.exp(-big_d)),
                       torch.log(torch.expm1(small_d)))


def discretized_logistic_log_prob(mean: torch.Tensor, log_scale: torch.Tensor, x: torch.Tensor,
                                  n_levels: int = 256) -> torch.Tensor:
    """Discretised logistic log-probability of images quantised to ``n_levels`` levels.

    With bin half-width :math:`h = 1 / (2(L − 1))`, :math:`a = (x + h − μ)/s` and
    :math:`b = (x − h − μ)/s`:

    .. math::

        \\log p(x) = \\sum_i \\begin{cases}
            \\log\\sigma(a_i) & x_i = 0 \\\\
            \\log(1 - \\sigma(b_i)) & x_i = 1 \\\\
            \\log(\\sigma(a_i) - \\sigma(b_i)) & \\text{otherwise}
        \\end{cases}

    The middle case is evaluated as :math:`b + \\log(e^{a-b} - 1) - \\operatorname{softplus}(a)
    - \\operatorname{softplus}(b)`, exact and free of cancellation for every μ and s.

    Parameters
    ----------
    mean, log_scale : torch.Tensor, shape (B, C, H, W)
        μ and log s, on the [0, 1] intensity scale; log s is floored at :data:`MIN_LOG_SCALE`.
    x : torch.Tensor, shape (B, C, H, W)
        Intensities k / (L − 1), k = 0..L−1.
    n_levels : int
        L, 256 for 8-bit images.

    Returns
    -------
    torch.Tensor, shape (B,)
    """
    half = 0.5 / (n_levels - 1)
    log_scale = log_scale.clamp(min=MIN_LOG_SCALE)
    inv_s = torch.exp(-log_scale)
    centred = x - mean
    a = (centred + half) * inv_s  # upper bin edge, standardised
    b = (centred - half) * inv_s  # lower bin edge
    lowest = -F.softplus(-a)  # log σ(a): all mass below the first bin's upper edge
    highest = -F.softplus(b)  # log(1 − σ(b))
    middle = b + _log_expm1(2 * half * inv_s) - F.softplus(a) - F.softplus(b)
    edge = 0.5 * half
    out = torch.where(x < edge, lowest, torch.where(x > 1 - edge, highest, middle))
    return _per_image(out)


def gaussian_log_prob(mean: torch.Tensor, log_scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Normal log-density of images, summed over pixels.

    .. math:: \\log p(x) = \\sum_i -\\tfrac12\\log 2\\pi - \\log s_i
              - \\frac{(x_i - μ_i)^2}{2 s_i^2}

    Parameters
    ----------
    mean, log_scale : torch.Tensor, shape (B, C, H, W)
        log s is floored at :data:`MIN_LOG_SCALE`.
    x : torch.Tensor, shape (B, C, H, W)

    Returns
    -------
    torch.Tensor, shape (B,)
    """
    log_scale = log_scale.clamp(min=MIN_LOG_SCALE)
    z = (x - mean) * torch.exp(-log_scale)
    return _per_image(-0.5 * math.log(2 * math.pi) - log_scale - 0.5 * z * z)


def n_parameters(likelihood: str) -> int:
    """Decoder output channels per image channel: 1 (logits) or 2 (mean, log-scale)."""
    _check(likelihood)
    return 1 if likelihood == "bernoulli" else 2


def _check(likelihood: str) -> None:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood={likelihood!r}; choose one of {LIKELIHOODS}")


def _split(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2C, H, W) decoder output -> mean and log-scale, each (B, C, H, W)."""
    mean, log_scale = params.chunk(2, dim=1)
    return mean, log_scale


def log_prob(likelihood: str, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Log-likelihood (B,) of images x (B, C, H, W) under decoder output ``params``.

    ``params`` has C channels (Bernoulli logits) or 2C (mean then log-scale) channels.
    """
    _check(likelihood)
    if likelihood == "bernoulli":
        return bernoulli_log_prob(params, x)
    mean, log_scale = _split(params)
    if likelihood == "logistic":
        return discretized_logistic_log_prob(mean, log_scale, x)
    return gaussian_log_prob(mean, log_scale, x)


def mean_image(likelihood: str, params: torch.Tensor) -> torch.Tensor:
    """The image a decoder output stands for, (B, C, H, W) in [0, 1].

    The Bernoulli mean σ(ℓ); for the logistic and the Gaussian the location μ clipped to [0, 1]
    (the mean of the discretised logistic differs from μ only near the ends of the range).
    """
    _check(likelihood)
    if likelihood == "bernoulli":
        return torch.sigmoid(params)
    return _split(params)[0].clamp(0.0, 1.0)


def bits_per_dim(nats, n_dims: int):
    """Negative log-likelihood in nats per image -> bits per dimension: nats / (D log 2).

    For the Bernoulli and the discretised logistic this is a code length. For the Gaussian, a
    density of intensities on [0, 1], add log₂ 256 = 8 to compare with 8-bit models only after
    uniform dequantisation; without it the number is not a code length.
    """
    return nats / (n_dims * math.log(2.0))
