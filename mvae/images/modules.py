"""Convolutional image models as torch modules: a VAE, an autoencoder and a denoising autoencoder.

All three share one encoder and one decoder shape:

- encoder: ``depth`` stride-2 4x4 convolutions (filters ``n_filters``, doubled at each stage), each
  followed by ``n_blocks`` 3x3 convolutions, then a dense layer of ``n_hidden`` units;
- decoder: the mirror image, with stride-2 4x4 transposed convolutions (``output_padding`` chosen so
  that any height and width come back exactly), a 3x3 convolution to the likelihood's parameters
  and a per-pixel bias started at the training data's mean image; optionally (VAE, ``context``)
  a causal window of already-seen pixels, see :class:`ConvDecoder`.

There are no skip connections from encoder to decoder: everything the decoder knows about an image
passes through the bottleneck, so an input unlike the training data cannot simply be copied
through, which is what makes reconstruction error and the ELBO usable as anomaly scores.

Every module has ``loss(x, generator=...) -> LossTerms`` with per-image ``reconstruction`` (log-
likelihood, nats) and ``kl`` (nats; zero for the autoencoders), so
:func:`mvae.training.loop.train_module` trains all three. For the VAE,

.. math:: \\mathrm{ELBO}(x) = E_{q(z\\mid x)}[\\log p(x \\mid z)] - \\beta\\,
          \\mathrm{KL}(q(z \\mid x) \\,\\|\\, N(0, I)),

a true lower bound on log p(x) when β = 1. With β ≠ 1 the ``kl`` term holds β·KL, so the loop
optimises the β-objective; :meth:`ConvVAEModule.loss` with ``beta=1`` in the config is the ELBO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..maths.likelihoods import kl_normal_standard
from .likelihoods import LIKELIHOODS, MIN_LOG_SCALE, log_prob, mean_image, n_parameters

__all__ = [
    "LossTerms",
    "Posterior",
    "ConvConfig",
    "ConvEncoder",
    "ConvDecoder",
    "ConvVAEModule",
    "ConvAutoencoderModule",
    "DenoisingAutoencoderModule",
    "NOISES",
    "ACTIVATIONS",
    "corrupt",
    "stage_sizes",
]

NOISES = ("gaussian", "salt_pepper", "masking")
ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}


# The image modules keep their own two small result types rather than borrowing the count model's:
# the training loop (mvae.training.loop.train_module) needs only the attributes ``reconstruction`` and
# ``kl`` and the method ``negative_elbo``, so the two model families stay independent.
@dataclass(frozen=True)
class LossTerms:
    """Per-image terms of the objective, each of shape (B,), in nats.

    Attributes
    ----------
    reconstruction : torch.Tensor
        Monte Carlo estimate of :math:`E_q[\\log p(x \\mid z)]` (the autoencoders:
        :math:`\\log p(x \\mid f(x))`).
    kl : torch.Tensor
        KL divergence of q(z | x) from N(0, I), already multiplied by β; zero for the
        autoencoders.
    """

    reconstruction: torch.Tensor
    kl: torch.Tensor

    def negative_elbo(self, kl_weight: float = 1.0) -> torch.Tensor:
        """:math:`w\\,\\mathrm{kl} - \\text{reconstruction}` per image, shape (B,).

        ``kl_weight`` is the training loop's KL warm-up factor w in [0, 1].
        """
        return kl_weight * self.kl - self.reconstruction


@dataclass(frozen=True)
class Posterior:
    """q(z | x) = N(mean, diag exp(log_var)) of the convolutional VAE, each field (B, k)."""

    mean: torch.Tensor
    log_var: torch.Tensor


@dataclass(frozen=True)
class ConvConfig:
    """Shapes and choices of a convolutional module (everything needed to rebuild it).

    Attributes
    ----------
    channels, height, width : int
        Image shape C x H x W.
    n_latent : int
        Latent (bottleneck) size k.
    n_filters : int
        Filters of the first stage; doubled at every further stage.
    depth : int
        Stride-2 stages; the feature map shrinks to ⌊H / 2^depth⌋ x ⌊W / 2^depth⌋ (at least 1).
    n_hidden : int
        Width of the dense layer on each side of the bottleneck.
    n_blocks : int
        Extra 3x3 convolutions at every stage, in encoder and decoder (0 for the lightest model).
    context : int
        0 for a decoder that is factorised over pixels given z; an odd K ≥ 3 adds a causal K x K
        window of the pixels already seen (see :class:`ConvDecoder`). VAE only.
    likelihood : {"bernoulli", "logistic", "gaussian"}
    beta : float
        KL weight of the VAE objective (1 = ELBO). Ignored by the autoencoders.
    binarize : bool
        Draw binary images x ~ Bernoulli(intensity) afresh at every step (dynamic binarisation);
        only with the Bernoulli likelihood.
    noise, noise_level
        Corruption of the denoising autoencoder: ``gaussian`` (standard deviation, result clipped
        to [0, 1]), ``salt_pepper`` or ``masking`` (fraction of values replaced by 0/1 or by 0).
    activation : {"relu", "elu", "gelu", "silu"}
    """

    channels: int
    height: int
    width: int
    n_latent: int = 16
    n_filters: int = 32
    depth: int = 2
    n_hidden: int = 256
    n_blocks: int = 1
    context: int = 0
    likelihood: str = "bernoulli"
    beta: float = 1.0
    binarize: bool = False
    noise: str = "gaussian"
    noise_level: float = 0.3
    activation: str = "silu"

    def check(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        for name in ("channels", "height", "width", "n_latent", "n_filters", "depth", "n_hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}; need an integer >= 1")
        if not isinstance(self.context, int) or not (self.context == 0 or (
                self.context >= 3 and self.context % 2 == 1)):
            raise ValueError(f"context={self.context!r}; need 0 (none) or an odd integer >= 3")
        if not isinstance(self.n_blocks, int) or self.n_blocks < 0:
            raise ValueError(f"n_blocks={self.n_blocks!r}; need an integer >= 0")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood={self.likelihood!r}; choose one of {LIKELIHOODS}")
        if self.binarize and self.likelihood != "bernoulli":
            raise ValueError("binarize=True needs likelihood='bernoulli'")
        if self.noise not in NOISES:
            raise ValueError(f"noise={self.noise!r}; choose one of {NOISES}")
        if not self.beta > 0:
            raise ValueError(f"beta={self.beta!r}; need a number > 0")
        if not 0 <= self.noise_level <= (1 if self.noise != "gaussian" else float("inf")):
            raise ValueError(f"noise_level={self.noise_level!r}; need >= 0 (and <= 1 for "
                             "salt_pepper and masking)")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}; choose one of "
                             f"{sorted(ACTIVATIONS)}")


def stage_sizes(n: int, depth: int) -> list[int]:
    """Side lengths after each stride-2 4x4 convolution (padding 1): n, ⌊n/2⌋, ⌊n/4⌋, ...

    Stops halving at 1, so a small image with a large ``depth`` still works.
    """
    sizes = [n]
    for _ in range(depth):
        sizes.append(max(1, sizes[-1] // 2))
    return sizes


def _down(c_in: int, c_out: int, halve_h: bool, halve_w: bool) -> nn.Conv2d:
    """4x4 stride-2 convolution along the sides that halve (⌊n/2⌋), 3x3 stride 1 along a side
    already down to 1 pixel."""
    k = (4 if halve_h else 3, 4 if halve_w else 3)
    stride = (2 if halve_h else 1, 2 if halve_w else 1)
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=1)


def _up(c_in: int, c_out: int, h: tuple[int, int], w: tuple[int, int]) -> nn.ConvTranspose2d:
    """The inverse of :func:`_down` from side ``h[0]`` to ``h[1]`` (and ``w``), exactly.

    A 4x4 stride-2 transposed convolution gives (n − 1)·2 − 2 + 4 + p = 2n + p, so
    ``output_padding`` p = target − 2n (0 or 1) brings back an odd side.
    """
    halve_h, halve_w = h[0] < h[1], w[0] < w[1]
    k = (4 if halve_h else 3, 4 if halve_w else 3)
    stride = (2 if halve_h else 1, 2 if halve_w else 1)
    pad = (h[1] - 2 * h[0] if halve_h else 0, w[1] - 2 * w[0] if halve_w else 0)
    return nn.ConvTranspose2d(c_in, c_out, k, stride=stride, padding=1, output_padding=pad)


class ConvEncoder(nn.Module):
    """Images (B, C, H, W) -> features (B, n_hidden)."""

    def __init__(self, config: ConvConfig):
        super().__init__()
        act = ACTIVATIONS[config.activation]
        layers: list[nn.Module] = []
        c_in = config.channels
        hs, ws = stage_sizes(config.height, config.depth), stage_sizes(config.width, config.depth)
        for i in range(config.depth):
            c_out = config.n_filters * 2**i
            layers += [_down(c_in, c_out, hs[i + 1] < hs[i], ws[i + 1] < ws[i]), act()]
            for _ in range(config.n_blocks):
                layers += [nn.Conv2d(c_out, c_out, 3, padding=1), act()]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.flat_shape = (c_in, hs[-1], ws[-1])
        flat = c_in * hs[-1] * ws[-1]
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(flat, config.n_hidden), act())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x)  # (B, C, H, W) -> (B, F·2^(depth-1), H', W')
        return self.dense(h)  # -> (B, n_hidden)


class CausalConv2d(nn.Conv2d):
    """A k x k convolution that sees only pixels before the centre in raster order (PixelCNN's
    mask "A", van den Oord et al. 2016): the rows above and the pixels to the left.

    Every channel of the centre pixel is hidden, so the channels of one pixel are conditionally
    independent given the pixels before it.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__(c_in, c_out, kernel, padding=kernel // 2)
        c = kernel // 2
        mask = torch.ones_like(self.weight)  # (c_out, c_in, k, k)
        mask[:, :, c, c:] = 0  # the centre and everything right of it
        mask[:, :, c + 1:] = 0  # the rows below
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class ConvDecoder(nn.Module):
    """Latents (..., k) -> likelihood parameters (..., C·P, H, W), P = 1 (Bernoulli) or 2.

    With ``config.context = K > 0`` the parameters of pixel i also depend on the pixels before it
    in raster order within a K x K window (a one-layer PixelCNN term, as in PixelVAE, Gulrajani et
    al. 2017): p(x | z) = ∏_i p(x_i | x_<i, z). Evaluating it needs the image itself
    (``forward(z, x)``, one parallel pass); drawing from it is sequential (:meth:`generate`).
    """

    def __init__(self, config: ConvConfig):
        super().__init__()
        act = ACTIVATIONS[config.activation]
        self.config = config
        hs, ws = stage_sizes(config.height, config.depth), stage_sizes(config.width, config.depth)
        c_top = config.n_filters * 2 ** (config.depth - 1)
        self.top_shape = (c_top, hs[-1], ws[-1])
        flat = c_top * hs[-1] * ws[-1]
        self.dense = nn.Sequential(nn.Linear(config.n_latent, config.n_hidden), act(),
                                   nn.Linear(config.n_hidden, flat), act())
        layers: list[nn.Module] = []
        c_in = c_top
        for i in reversed(range(config.depth)):
            c_out = config.n_filters * 2 ** max(i - 1, 0)
            for _ in range(config.n_blocks):
                layers += [nn.Conv2d(c_in, c_in, 3, padding=1), act()]
            layers += [_up(c_in, c_out, (hs[i + 1], hs[i]), (ws[i + 1], ws[i])), act()]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.n_out = out = config.channels * n_parameters(config.likelihood)
        self.head = nn.Conv2d(c_in, out, 3, padding=1)
        # per-pixel offset of every output map; set from the data by `initialise_from_data`
        self.pixel_bias = nn.Parameter(torch.zeros(out, config.height, config.width))
        self.act = act()
        if config.context:
            A = config.n_filters
            self.causal = CausalConv2d(config.channels, A, config.context)
            self.condition = nn.Conv2d(c_in, A, 1)
            self.mix = nn.Conv2d(A, A, 1)
            self.causal_out = nn.Conv2d(A, out, 1)

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, k) -> feature maps (N, F, H, W) before the output layer."""
        h = self.dense(z)  # (N, k) -> (N, F·H'·W')
        return self.convs(h.reshape(-1, *self.top_shape))  # -> (N, F', H, W)

    def forward(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Parameters for latents z (..., k); ``x`` (B, C, H, W) is needed when ``context > 0``.

        Leading axes of z beyond the batch (Monte Carlo draws, shape (S, B, k)) share the same x.
        """
        lead = z.shape[:-1]
        h = self.features(z.reshape(-1, z.shape[-1]))  # (N, F', H, W)
        out = self.head(h) + self.pixel_bias  # -> (N, C·P, H, W)
        if self.config.context:
            if x is None:
                raise ValueError("a decoder with context > 0 needs the image x to evaluate "
                                 "p(x | z); use generate() to draw from it")
            reps = h.shape[0] // x.shape[0]
            xs = x.repeat(reps, 1, 1, 1) if reps > 1 else x  # (S·B, C, H, W), z's order
            a = self.act(self.causal(xs) + self.condition(h))  # (N, A, H, W)
            out = out + self.causal_out(self.act(self.mix(a)))
        return out.reshape(*lead, *out.shape[1:])

    @torch.no_grad()
    def generate(self, z: torch.Tensor, generator: torch.Generator | None = None,
                 greedy: bool = False) -> torch.Tensor:
        """Images for latents z (N, k), pixel by pixel when ``context > 0``.

        Returns the conditional mean of every pixel given the pixels drawn before it, (N, C, H, W)
        in [0, 1]. Each pixel fed forward is a random draw, or with ``greedy`` the most likely
        value (Bernoulli) or the location (logistic, Gaussian). Without context this is the mean
        image of p(x | z).
        """
        h = self.features(z)
        base = self.head(h) + self.pixel_bias  # (N, C·P, H, W)
        lik = self.config.likelihood
        if not self.config.context:
            return mean_image(lik, base)
        N, C = z.shape[0], self.config.channels
        H, W, k = self.config.height, self.config.width, self.config.context
        c = k // 2
        cond = self.condition(h)  # (N, A, H, W)
        weight = self.causal.weight * self.causal.mask  # (A, C, k, k)
        mix_w, mix_b = self.mix.weight[:, :, 0, 0], self.mix.bias  # (A, A), (A,)
        out_w, out_b = self.causal_out.weight[:, :, 0, 0], self.causal_out.bias  # (out, A)
        padded = base.new_zeros(N, C, H + 2 * c, W + 2 * c)  # drawn pixels, zero-padded
        means = base.new_zeros(N, C, H, W)
        for i in range(H):
            for j in range(W):
                patch = padded[:, :, i:i + k, j:j + k]  # (N, C, k, k), window centred on (i, j)
                a = torch.einsum("nckl,ackl->na", patch, weight) + self.causal.bias  # (N, A)
                a = self.act(a + cond[:, :, i, j])
                a = self.act(a @ mix_w.T + mix_b)
                o = a @ out_w.T + out_b + base[:, :, i, j]  # (N, C·P)
                mean, value = _draw_pixel(lik, o, C, generator, greedy)
                means[:, :, i, j] = mean
                padded[:, :, i + c, j + c] = value
        return means


def _draw_pixel(likelihood: str, o: torch.Tensor, C: int, generator, greedy: bool):
    """(conditional mean, value fed forward) of one pixel from its parameters o (N, C·P)."""
    if likelihood == "bernoulli":
        p = torch.sigmoid(o)
        if greedy:
            return p, (p > 0.5).to(p.dtype)
        u = torch.rand(p.shape, dtype=p.dtype, device=p.device, generator=generator)
        return p, (u < p).to(p.dtype)
    mu, log_s = o[:, :C], o[:, C:].clamp(min=MIN_LOG_SCALE)
    mean = mu.clamp(0.0, 1.0)
    if greedy:
        value = mu
    else:
        u = torch.rand(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
        u = u.clamp(1e-6, 1 - 1e-6)
        if likelihood == "logistic":
            value = mu + torch.exp(log_s) * (torch.log(u) - torch.log1p(-u))
        else:
            value = mu + torch.exp(log_s) * torch.randn(mu.shape, dtype=mu.dtype,
                                                        device=mu.device, generator=generator)
    value = value.clamp(0.0, 1.0)
    if likelihood == "logistic":  # back onto the 8-bit grid the model was trained on
        value = torch.round(value * 255) / 255
    return mean, value


def corrupt(x: torch.Tensor, noise: str, level: float,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """A corrupted copy of images x (B, C, H, W) in [0, 1].

    ``gaussian``: x + level·ε clipped to [0, 1]; ``salt_pepper``: a fraction ``level`` of the values
    set to 0 or 1 with equal chance; ``masking``: a fraction ``level`` set to 0.
    """
    if noise == "gaussian":
        eps = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        return (x + level * eps).clamp(0.0, 1.0)
    u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    hit = u < level
    if noise == "masking":
        return torch.where(hit, torch.zeros_like(x), x)
    if noise == "salt_pepper":
        # u is uniform on [0, level) where hit: its lower half is pepper, upper half salt
        salt = (u >= 0.5 * level).to(x.dtype)
        return torch.where(hit, salt, x)
    raise ValueError(f"noise={noise!r}; choose one of {NOISES}")


def _he_init(layer: nn.Module) -> None:
    """He (Kaiming) normal weights and zero biases for convolutions and dense layers.

    torch's default (uniform with a = √5) shrinks activations by about √3 per layer, so after the
    dozen layers of encoder and decoder the signal has all but vanished and the VAE starts
    collapsed onto its prior.
    """
    if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        mode = "fan_out" if isinstance(layer, nn.ConvTranspose2d) else "fan_in"
        nn.init.kaiming_normal_(layer.weight, mode=mode, nonlinearity="relu")
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def _binarized(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    return (u < x).to(x.dtype)


class _ConvBase(nn.Module):
    def __init__(self, config: ConvConfig):
        super().__init__()
        config.check()
        self.config = config
        self.encoder = ConvEncoder(config)
        self.decoder = ConvDecoder(config)
        self.apply(_he_init)

    @property
    def n_dims(self) -> int:
        """C·H·W, the number of values per image."""
        c = self.config
        return c.channels * c.height * c.width

    @torch.no_grad()
    def initialise_from_data(self, mean: torch.Tensor) -> None:
        """Start the decoder's per-pixel bias at the training mean image (C, H, W) in [0, 1].

        Bernoulli: logit of the mean; logistic / Gaussian: the mean as location and a log-scale
        of log 0.1. The decoder then starts at the best image-independent model instead of grey.
        """
        mean = mean.to(self.decoder.pixel_bias)
        if self.config.likelihood == "bernoulli":
            p = mean.clamp(1e-3, 1 - 1e-3)
            self.decoder.pixel_bias.copy_(torch.log(p) - torch.log1p(-p))
        else:
            C = self.config.channels
            self.decoder.pixel_bias[:C].copy_(mean)
            self.decoder.pixel_bias[C:].fill_(-2.3)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> LossTerms:
        """Per-image loss terms, ``loss(x, generator)``: what the training loop calls
        (``.negative_elbo()`` of it is the per-image negative β-ELBO, shape (B,))."""
        return self.loss(x, generator=generator)

    def prepare(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The training target: x, or a fresh binary draw when ``binarize`` is on."""
        return _binarized(x, generator) if self.config.binarize else x

    def decode(self, z: torch.Tensor, generator: torch.Generator | None = None,
               greedy: bool = True) -> torch.Tensor:
        """Mean images (N, C, H, W) in [0, 1] for latents (N, k) (see ConvDecoder.generate)."""
        return self.decoder.generate(z, generator=generator, greedy=greedy)


class ConvVAEModule(_ConvBase):
    """Convolutional VAE: q(z|x) = N(μ(x), diag σ²(x)), p(z) = N(0, I), p(x|z) per ``likelihood``.

    Parameters
    ----------
    config : ConvConfig
    """

    def __init__(self, config: ConvConfig):
        super().__init__(config)
        self.mean_head = nn.Linear(config.n_hidden, config.n_latent)
        self.log_var_head = nn.Linear(config.n_hidden, config.n_latent)
        with torch.no_grad():  # start near the prior with small posterior variances
            self.log_var_head.bias.fill_(-2.0)

    def encode(self, x: torch.Tensor) -> Posterior:
        """q(z | x) for images (B, C, H, W): mean and log-variance, each (B, k)."""
        h = self.encoder(x)
        return Posterior(self.mean_head(h), self.log_var_head(h).clamp(-12.0, 8.0))

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None,
             n_samples: int = 1, beta: float | None = None) -> LossTerms:
        """Per-image ELBO terms with ``n_samples`` reparameterised draws of z.

        ``kl`` is β·KL (β from the config unless ``beta`` is given) so that the training loop's
        ``negative_elbo`` optimises the β-objective; with β = 1 it is the KL itself and the
        negative ELBO is a bound on −log p(x) in nats. Scores and bits/dim pass ``beta=1``.
        """
        x = self.prepare(x, generator)
        post = self.encode(x)
        eps = torch.randn((n_samples, *post.mean.shape), dtype=x.dtype, device=x.device,
                          generator=generator)
        z = post.mean + eps * torch.exp(0.5 * post.log_var)  # (S, B, k)
        params = self.decoder(z, x)  # (S, B, C·P, H, W)
        S, B = params.shape[:2]
        target = x.expand(S, *x.shape).reshape(S * B, *x.shape[1:])
        recon = log_prob(self.config.likelihood, params.reshape(S * B, *params.shape[2:]), target)
        kl = kl_normal_standard(post.mean, post.log_var)  # (B,)
        weight = self.config.beta if beta is None else beta
        return LossTerms(reconstruction=recon.reshape(S, B).mean(0), kl=weight * kl)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior means E[z | x], shape (B, k)."""
        return self.encode(x).mean

    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images decoded from z = E[z | x], shape (B, C, H, W).

        Without context, the mean image of p(x | z). With it, pixels are drawn one by one (with
        ``generator``) and each is shown as its conditional mean: greedy decoding, feeding every
        pixel its most likely value, tends to switch strokes off for good once a pixel falls
        below ½ and gives near-blank digits.
        """
        z = self.embed(x)
        if self.config.context:
            return self.decode(z, generator=generator, greedy=False)
        return self.decode(z)

    @torch.no_grad()
    def importance_log_likelihood(self, x: torch.Tensor, n_samples: int = 64,
                                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Importance-sampled estimate of log p(x) (Burda et al. 2016), shape (B,).

        .. math:: \\log p(x) \\ge \\log \\frac1S \\sum_s
                  \\frac{p(x \\mid z_s) p(z_s)}{q(z_s \\mid x)},
                  \\quad z_s \\sim q(z \\mid x)

        A tighter bound than the ELBO for S > 1 (equal to it for S = 1). Binary images are
        binarised first when ``binarize`` is on, as in :meth:`loss`.
        """
        import math

        x = self.prepare(x, generator)
        post = self.encode(x)
        std = torch.exp(0.5 * post.log_var)
        eps = torch.randn((n_samples, *post.mean.shape), dtype=x.dtype, device=x.device,
                          generator=generator)
        z = post.mean + eps * std  # (S, B, k)
        params = self.decoder(z, x)
        S, B = params.shape[:2]
        target = x.expand(S, *x.shape).reshape(S * B, *x.shape[1:])
        log_px_z = log_prob(self.config.likelihood, params.reshape(S * B, *params.shape[2:]),
                            target).reshape(S, B)
        log_pz = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)  # (S, B)
        log_qz = (-0.5 * eps.pow(2) - 0.5 * math.log(2 * math.pi) - 0.5 * post.log_var).sum(-1)
        return torch.logsumexp(log_px_z + log_pz - log_qz, dim=0) - math.log(S)


class ConvAutoencoderModule(_ConvBase):
    """Deterministic convolutional autoencoder: x -> z = f(x) (B, k) -> p(x | z).

    Trained on the negative log-likelihood of the reconstruction (``kl`` is zero).
    """

    def __init__(self, config: ConvConfig):
        if config.context:
            raise ValueError(f"context={config.context}: an autoencoder's decoder must not see "
                             "the input pixels (it would copy them); use context=0")
        super().__init__(config)
        self.code_head = nn.Linear(config.n_hidden, config.n_latent)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck codes, shape (B, k)."""
        return self.code_head(self.encoder(x))

    def _input(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return x

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> LossTerms:
        """Per-image reconstruction log-likelihood; the KL term is zero."""
        x = self.prepare(x, generator)
        params = self.decoder(self.embed(self._input(x, generator)))
        recon = log_prob(self.config.likelihood, params, x)
        return LossTerms(reconstruction=recon, kl=torch.zeros_like(recon))

    @torch.no_grad()
    def reconstruction_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z = f(x)) of uncorrupted images (B,): minus the reconstruction error."""
        return log_prob(self.config.likelihood, self.decoder(self.embed(x)), x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean images of p(x | f(x)), shape (B, C, H, W)."""
        return self.decode(self.embed(x))


class DenoisingAutoencoderModule(ConvAutoencoderModule):
    """Autoencoder trained to reconstruct x from a corrupted copy (Vincent et al. 2008).

    The loss is log p(x | f(corrupt(x))) with fresh noise at every step (``noise``,
    ``noise_level`` of the config). At inference the input is used as given.
    """

    def _input(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return corrupt(x, self.config.noise, self.config.noise_level, generator)
