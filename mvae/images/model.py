"""User-facing image models: ConvVAE, ConvAutoencoder and DenoisingAutoencoder.

Same conventions as :class:`mvae.MultinomialVAE`: ``__init__`` only stores its arguments, ``fit``
checks them and trains with the shared loop (:func:`mvae.training.loop.train_module`), learned state ends
in ``_``, and ``save``/``load`` write ``model.safetensors`` + ``config.json`` (never a pickle). The
maths lives in :mod:`mvae.images.modules`.

Images go in as an :class:`~mvae.images.data.ImageSet`, a channels-last array ``(n, H, W[, C])``
(``uint8`` 0–255 or float 0–1) or a path (folder of PNG/JPEG, ``.npy``/``.npz``, CSV of pixel
rows); images come out channels-last as float32 in [0, 1].

Scores (:meth:`score_samples`) are in nats per image, higher = less like the training images: the
negative ELBO for the VAE (an upper bound on −log p(x)), the negative log-likelihood of the
reconstruction for the autoencoders.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelFileError
from ..params import constructor_params, is_int, require
from .data import ImageSet, as_image_set, split_indices

__all__ = ["ConvVAE", "ConvAutoencoder", "DenoisingAutoencoder", "load_model", "MODEL_KINDS"]

SCHEMA_VERSION = 1
_LIKELIHOODS = ("auto", "bernoulli", "logistic", "gaussian")


class _ImageModel:
    """Shared fit / inference / persistence; subclasses set ``_kind`` and their ``__init__``."""

    _kind = ""

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict:
        """The constructor arguments, by name."""
        return constructor_params(self)

    def _check_params(self) -> None:
        p = self.get_params()

        def need(cond, name, allowed):
            require(cond, name, p[name], allowed)

        for name in ("n_latent", "n_filters", "depth", "n_hidden", "batch_size", "max_epochs",
                     "patience"):
            need(is_int(p[name]) and p[name] >= 1, name, "need an integer >= 1")
        need(is_int(p["n_blocks"]) and p["n_blocks"] >= 0, "n_blocks", "need an integer >= 0")
        need(p["likelihood"] in _LIKELIHOODS, "likelihood", f"choose one of {_LIKELIHOODS}")
        need(not p["binarize"] or p["likelihood"] in ("auto", "bernoulli"), "binarize",
             "binarize=True needs likelihood='bernoulli' (or 'auto')")
        need(p["activation"] in ("relu", "elu", "gelu", "silu"), "activation",
             "choose 'relu', 'elu', 'gelu' or 'silu'")
        need(isinstance(p["learning_rate"], (int, float)) and p["learning_rate"] > 0,
             "learning_rate", "need a number > 0")
        need(0 <= p["validation_fraction"] < 1, "validation_fraction", "need 0 <= value < 1")
        need(p["threads"] is None or (is_int(p["threads"]) and p["threads"] >= 1), "threads",
             "need None or an integer >= 1")
        need(str(p["device"]) in ("cpu", "cuda", "auto") or str(p["device"]).startswith("cuda:"),
             "device", "choose 'cpu', 'cuda' or 'auto'")
        if "beta" in p:
            need(isinstance(p["beta"], (int, float)) and p["beta"] > 0, "beta", "need a number > 0")
            need(is_int(p["kl_warmup_epochs"]) and p["kl_warmup_epochs"] >= 0,
                 "kl_warmup_epochs", "need an integer >= 0")
            need(is_int(p["context"]) and (p["context"] == 0 or
                                            (p["context"] >= 3 and p["context"] % 2 == 1)),
                 "context", "need 0 (a factorised decoder) or an odd integer >= 3")
        if "noise" in p:
            need(p["noise"] in ("gaussian", "salt_pepper", "masking"), "noise",
                 "choose 'gaussian', 'salt_pepper' or 'masking'")
            top = math.inf if p["noise"] == "gaussian" else 1.0
            need(isinstance(p["noise_level"], (int, float)) and 0 < p["noise_level"] <= top,
                 "noise_level", "need a number > 0 (and <= 1 for salt_pepper and masking)")

    def _resolve_likelihood(self, images: ImageSet) -> str:
        if self.likelihood != "auto":
            return self.likelihood
        if self.binarize:
            return "bernoulli"
        a = images.images
        binary = a.dtype != np.uint8 and np.isin(a, (0.0, 1.0)).all()
        if binary or (a.dtype == np.uint8 and np.isin(a, (0, 255)).all()):
            return "bernoulli"
        return "logistic" if a.dtype == np.uint8 else "gaussian"

    # ------------------------------------------------------------------ fit
    def _module_class(self):
        from .modules import (
            ConvAutoencoderModule,
            ConvVAEModule,
            DenoisingAutoencoderModule,
        )

        return {"vae": ConvVAEModule, "ae": ConvAutoencoderModule,
                "dae": DenoisingAutoencoderModule}[self._kind]

    def _module_config(self, shape: tuple[int, int, int], likelihood: str):
        from .modules import ConvConfig

        H, W, C = shape
        p = self.get_params()
        return ConvConfig(
            channels=C, height=H, width=W, n_latent=int(self.n_latent),
            n_filters=int(self.n_filters), depth=int(self.depth), n_hidden=int(self.n_hidden),
            n_blocks=int(self.n_blocks), context=int(p.get("context", 0)), likelihood=likelihood,
            beta=float(p.get("beta", 1.0)), binarize=bool(self.binarize),
            noise=p.get("noise", "gaussian"), noise_level=float(p.get("noise_level", 0.3)),
            activation=self.activation)

    def fit(self, X) -> "_ImageModel":
        """Train on images X (ImageSet, array (n, H, W[, C]) or path).

        A seeded ``validation_fraction`` of the images is held out for early stopping (when there
        are at least 10). Returns self.
        """
        import torch

        from ..training.loop import TrainConfig, resolve_device, torch_threads, train_module
        from .data import ImageData

        self._check_params()
        images = as_image_set(X, size=self.image_size, mode=self.mode)
        n = len(images)
        if n < 2:
            raise InputError(f"{images.source}: {n} image(s); need at least 2 to fit")
        likelihood = self._resolve_likelihood(images)
        device = resolve_device(self.device)
        seed = (int(self.random_state) if self.random_state is not None
                else int(np.random.default_rng().integers(2**31 - 1)))
        n_valid = int(round(self.validation_fraction * n)) if n >= 10 else 0
        train_idx, valid_idx = split_indices(n, n_valid, seed)
        train = images.images[train_idx]
        config = self._module_config(images.shape, likelihood)
        try:
            config.check()
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        mean_image = images.subset(train_idx).as_float().mean(axis=0)  # (H, W, C)
        with torch_threads(self.threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = self._module_class()(config)
            module.initialise_from_data(torch.as_tensor(mean_image).permute(2, 0, 1))
            module.to(device)
            train_data = ImageData(train, device)
            valid_data = ImageData(images.images[valid_idx], device) if n_valid else None
            tconf = TrainConfig(max_epochs=int(self.max_epochs), batch_size=int(self.batch_size),
                                learning_rate=float(self.learning_rate),
                                early_stopping=bool(self.early_stopping),
                                patience=int(self.patience),
                                kl_warmup_epochs=int(getattr(self, "kl_warmup_epochs", 0)),
                                progress=bool(self.progress), seed=seed)
            history = train_module(module, train_data, valid_data, tconf)
        self.module_ = module.cpu().eval()
        self.seed_ = seed
        self.likelihood_ = likelihood
        self.image_shape_ = images.shape
        self.n_train_ = len(train_idx)
        self.history_ = history.to_frame()
        self.best_epoch_ = history.best_epoch
        self._after_fit(train)
        return self

    def _after_fit(self, train_images: np.ndarray) -> None:
        """Hook for state learned after training (the autoencoders' code distribution)."""

    # ------------------------------------------------------------------ inference helpers
    def _check_fitted(self) -> None:
        if not hasattr(self, "module_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit(X) or "
                               "load(path)")

    def _prepare(self, X) -> ImageSet:
        """New images as an ImageSet of the fitted shape (files are resized/converted to it)."""
        self._check_fitted()
        H, W, C = self.image_shape_
        if isinstance(X, (str, Path)):
            return as_image_set(X, size=(W, H), mode="L" if C == 1 else "RGB")
        s = as_image_set(X)
        if s.shape != tuple(self.image_shape_):
            raise InputError(f"{s.source}: images are {s.shape[0]}x{s.shape[1]} with {s.shape[2]} "
                             f"channel(s) but the model was fitted on {H}x{W} with {C}; resize "
                             "them (e.g. read_images(path, size=..., mode=...))")
        return s

    def _chunks(self, images: ImageSet, size: int = 256):
        from .data import ImageData

        return ImageData(images.images, "cpu").chunks(size)

    def _run(self, func, X, size: int = 256) -> np.ndarray:
        """Apply ``func`` to batches (B, C, H, W) of X under no_grad and the model's threads."""
        import torch

        from ..training.loop import torch_threads

        images = self._prepare(X)
        with torch_threads(self.threads), torch.no_grad():
            parts = [func(b) for b in self._chunks(images, size)]
        return np.concatenate(parts)

    @staticmethod
    def _to_hwc(t) -> np.ndarray:
        return t.permute(0, 2, 3, 1).float().numpy()  # (B, C, H, W) -> (B, H, W, C)

    # ------------------------------------------------------------------ inference
    def transform(self, X) -> np.ndarray:
        """Latent codes of X: posterior means E[z | x] (VAE) or bottleneck codes, shape (n, k)."""
        return self._run(lambda b: self.module_.embed(b).double().numpy(), X)

    def reconstruct(self, X) -> np.ndarray:
        """Reconstructions of X, (n, H, W, C) float32 in [0, 1]: the decoder's mean image at the
        code of each image (a VAE with ``context`` draws pixel by pixel with the model's seed and
        shows each pixel's conditional mean)."""
        import torch

        gen = torch.Generator().manual_seed(self.seed_ + 5)
        if getattr(self.module_.config, "context", 0):
            return self._run(lambda b: self._to_hwc(self.module_.reconstruct(b, generator=gen)), X)
        return self._run(lambda b: self._to_hwc(self.module_.reconstruct(b)), X)

    def reconstruction_error(self, X, clean=None) -> np.ndarray:
        """Mean squared error per pixel between ``reconstruct(X)`` and ``clean`` (default X), (n,).

        For a denoising test pass corrupted images as X and the originals as ``clean``.
        """
        rec = self.reconstruct(X).astype(np.float64)
        target = self._prepare(X if clean is None else clean).as_float().astype(np.float64)
        if target.shape != rec.shape:
            raise InputError(f"clean has shape {target.shape} but X gives {rec.shape}")
        return ((rec - target) ** 2).reshape(len(rec), -1).mean(axis=1)

    def bits_per_dim(self, X, **kw) -> float:
        """Mean of :meth:`score_samples` over X in bits per dimension: nats / (C·H·W·log 2)."""
        from .likelihoods import bits_per_dim

        scores = self.score_samples(X, **kw)
        return float(bits_per_dim(scores.mean(), int(np.prod(self.image_shape_))))

    # ------------------------------------------------------------------ persistence
    def _extra_tensors(self) -> dict:
        return {}

    def _load_extra(self, tensors: dict) -> None:
        """Restore what :meth:`_extra_tensors` wrote."""

    def save(self, path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into directory ``path`` (no pickle)."""
        from ..training.checkpoint import write_model_files
        from ..io.outputs import package_versions

        self._check_fitted()
        tensors = {f"module.{k}": v.detach().cpu().contiguous()
                   for k, v in self.module_.state_dict().items()}
        tensors.update(self._extra_tensors())
        config = {
            "format": _format(type(self)),
            "schema_version": SCHEMA_VERSION,
            "params": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in self.get_params().items()},
            "module_config": asdict(self.module_.config),
            "seed": self.seed_,
            "likelihood": self.likelihood_,
            "image_shape": list(self.image_shape_),
            "n_train": self.n_train_,
            "best_epoch": self.best_epoch_,
            "history": self.history_.to_dict(orient="list"),
            "versions": package_versions(),
        }
        # atomic, as for MultinomialVAE: an interrupted save never leaves a half-written file
        write_model_files(path, tensors, config)

    @classmethod
    def load(cls, path) -> "_ImageModel":
        """Load a model written by :meth:`save` (safetensors + JSON; never unpickles)."""
        model = load_model(path)
        if not isinstance(model, cls):
            raise ModelFileError(f"{path}: holds a {type(model).__name__}, not a {cls.__name__}; "
                                 "use mvae.images.load_model to load any image model")
        return model


class ConvVAE(_ImageModel):
    """Convolutional variational autoencoder for images.

    Parameters
    ----------
    n_latent : int
        Latent dimensions k.
    n_filters, depth, n_hidden, n_blocks
        Filters of the first stage (doubled per stage), number of stride-2 stages, width of the
        dense layers, extra 3x3 convolutions per stage (see :class:`mvae.images.modules.ConvConfig`).
    likelihood : {"auto", "bernoulli", "logistic", "gaussian"}
        p(x | z). ``auto``: Bernoulli for binary images or ``binarize``, discretised logistic for
        8-bit images, Gaussian for other float images.
    binarize : bool
        Dynamic binarisation: a fresh x ~ Bernoulli(intensity) at every step (and, with a fixed
        seed, when scoring).
    beta : float
        KL weight; 1 gives the ELBO (scores and bits/dim always use β = 1).
    context : int
        0: the decoder is factorised over pixels given z. An odd K ≥ 3: each pixel also depends on
        the pixels before it in a causal K x K window (a one-layer PixelCNN term). Much better
        likelihoods for binary images; sampling and reconstruction then go pixel by pixel.
    activation : {"relu", "elu", "gelu", "silu"}
    image_size : int or (width, height), optional
        Resize images read from files (required for a folder of mixed sizes).
    mode : {"L", "RGB"}, optional
        Convert images read from files to grey or colour.
    batch_size, max_epochs, learning_rate, early_stopping, patience, validation_fraction,
    kl_warmup_epochs
        Optimisation settings; early stopping watches the held-out negative ELBO.
    random_state : int or None
        Seed of the initialisation, validation split, shuffling and noise.
    threads : int or None
        torch threads (default: half the usable cores, at most 8).
    device : {"cpu", "cuda", "auto"}
    progress : bool

    Attributes
    ----------
    module_ : mvae.images.modules.ConvVAEModule
    likelihood_ : str
    image_shape_ : (H, W, C)
    history_ : pandas.DataFrame
        Per-epoch train and validation loss (nats per image).
    """

    _kind = "vae"

    def __init__(self, n_latent: int = 16, *, n_filters: int = 32, depth: int = 2,
                 n_hidden: int = 256, n_blocks: int = 0, likelihood: str = "auto",
                 binarize: bool = False, beta: float = 1.0, context: int = 0,
                 activation: str = "silu", image_size=None, mode: str | None = None,
                 batch_size: int = 128, max_epochs: int = 100, learning_rate: float = 1e-3,
                 early_stopping: bool = True, patience: int = 10,
                 validation_fraction: float = 0.1, kl_warmup_epochs: int = 0,
                 random_state: int | None = None, threads: int | None = None,
                 device: str = "cpu", progress: bool = False):
        self.n_latent = n_latent
        self.n_filters = n_filters
        self.depth = depth
        self.n_hidden = n_hidden
        self.n_blocks = n_blocks
        self.likelihood = likelihood
        self.binarize = binarize
        self.beta = beta
        self.context = context
        self.activation = activation
        self.image_size = image_size
        self.mode = mode
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.learning_rate = learning_rate
        self.early_stopping = early_stopping
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.kl_warmup_epochs = kl_warmup_epochs
        self.random_state = random_state
        self.threads = threads
        self.device = device
        self.progress = progress

    def score_samples(self, X, *, n_samples: int = 16) -> np.ndarray:
        """Negative ELBO (β = 1) of every image in nats, shape (n,); higher = more anomalous.

        A Monte Carlo estimate with ``n_samples`` draws of z; noise (and binarisation) is fixed by
        the model's seed, so repeated calls agree.
        """
        import torch

        gen = torch.Generator().manual_seed(self.seed_ + 3)
        return self._run(lambda b: self.module_.loss(b, generator=gen, n_samples=n_samples,
                                                     beta=1.0).negative_elbo().double().numpy(),
                         X, size=max(1, 4096 // n_samples))

    def log_likelihood(self, X, *, n_samples: int = 256) -> np.ndarray:
        """Importance-weighted estimate of log p(x) in nats (Burda et al. 2016), shape (n,).

        A lower bound that tightens as ``n_samples`` grows; always at least the ELBO on average.
        """
        import torch

        gen = torch.Generator().manual_seed(self.seed_ + 4)
        return self._run(lambda b: self.module_.importance_log_likelihood(
            b, n_samples=n_samples, generator=gen).double().numpy(), X,
            size=max(1, 8192 // n_samples))

    def sample(self, n: int, *, random_state=None) -> np.ndarray:
        """``n`` new images from z ~ N(0, I), (n, H, W, C) float32 in [0, 1].

        Without ``context``: the decoder's mean image for each z. With it: pixels drawn one by one,
        each shown as its conditional mean given the pixels drawn before it.
        """
        import torch

        from ..training.loop import torch_threads

        self._check_fitted()
        gen = torch.Generator().manual_seed(int(np.random.default_rng(random_state)
                                                .integers(2**31 - 1)))
        with torch_threads(self.threads), torch.no_grad():
            z = torch.randn(n, self.module_.config.n_latent, generator=gen)
            out = self.module_.decode(z, generator=gen, greedy=False)
        return self._to_hwc(out)


class ConvAutoencoder(_ImageModel):
    """Convolutional autoencoder with a deterministic bottleneck of ``n_latent`` units.

    Trained on the negative log-likelihood of its reconstruction (cross-entropy for Bernoulli,
    discretised logistic for 8-bit images, Gaussian for float images). Same parameters as
    :class:`ConvVAE` without the VAE-only ones (beta, context, kl_warmup_epochs).

    :meth:`sample` draws codes from a Gaussian fitted to the training codes (``code_mean_``,
    ``code_covariance_``) and decodes them: a crude generator, not a probabilistic model.
    """

    _kind = "ae"

    def __init__(self, n_latent: int = 16, *, n_filters: int = 32, depth: int = 2,
                 n_hidden: int = 256, n_blocks: int = 0, likelihood: str = "auto",
                 binarize: bool = False, activation: str = "silu", image_size=None,
                 mode: str | None = None, batch_size: int = 128, max_epochs: int = 100,
                 learning_rate: float = 1e-3, early_stopping: bool = True, patience: int = 10,
                 validation_fraction: float = 0.1, random_state: int | None = None,
                 threads: int | None = None, device: str = "cpu", progress: bool = False):
        self.n_latent = n_latent
        self.n_filters = n_filters
        self.depth = depth
        self.n_hidden = n_hidden
        self.n_blocks = n_blocks
        self.likelihood = likelihood
        self.binarize = binarize
        self.activation = activation
        self.image_size = image_size
        self.mode = mode
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.learning_rate = learning_rate
        self.early_stopping = early_stopping
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.threads = threads
        self.device = device
        self.progress = progress

    def _after_fit(self, train_images: np.ndarray) -> None:
        codes = self.transform(train_images)  # (n, k)
        self.code_mean_ = codes.mean(axis=0)
        self.code_covariance_ = np.atleast_2d(np.cov(codes, rowvar=False))

    def _extra_tensors(self) -> dict:
        import torch

        return {"code_mean": torch.as_tensor(self.code_mean_),
                "code_covariance": torch.as_tensor(self.code_covariance_)}

    def _load_extra(self, tensors: dict) -> None:
        self.code_mean_ = tensors["code_mean"].numpy()
        self.code_covariance_ = tensors["code_covariance"].numpy()

    def score_samples(self, X) -> np.ndarray:
        """Reconstruction error in nats per image, −log p(x | f(x)), shape (n,); higher = more
        anomalous. Inputs are used as given (no corruption, no binarisation)."""
        return self._run(lambda b: (-self.module_.reconstruction_log_prob(b)).double().numpy(), X)

    def sample(self, n: int, *, random_state=None) -> np.ndarray:
        """Decode ``n`` codes drawn from N(code_mean_, code_covariance_), (n, H, W, C)."""
        import torch

        from ..training.loop import torch_threads

        self._check_fitted()
        rng = np.random.default_rng(random_state)
        z = rng.multivariate_normal(self.code_mean_, self.code_covariance_, size=n,
                                    method="eigh")
        with torch_threads(self.threads), torch.no_grad():
            out = self.module_.decode(torch.as_tensor(z, dtype=torch.float32))
        return self._to_hwc(out)


class DenoisingAutoencoder(ConvAutoencoder):
    """Convolutional autoencoder trained to restore images from corrupted copies.

    Parameters
    ----------
    noise : {"gaussian", "salt_pepper", "masking"}
        Corruption drawn afresh at every step: Gaussian noise of standard deviation
        ``noise_level`` (clipped to [0, 1]), or a fraction ``noise_level`` of the values set to
        0/1 (salt and pepper) or to 0 (masking).
    noise_level : float
    **others
        As :class:`ConvAutoencoder`.

    :meth:`reconstruct` and :meth:`score_samples` use their input as given: pass a corrupted image
    to denoise it.
    """

    _kind = "dae"

    def __init__(self, n_latent: int = 16, *, noise: str = "gaussian", noise_level: float = 0.3,
                 n_filters: int = 32, depth: int = 2, n_hidden: int = 256, n_blocks: int = 0,
                 likelihood: str = "auto", binarize: bool = False, activation: str = "silu",
                 image_size=None, mode: str | None = None, batch_size: int = 128,
                 max_epochs: int = 100, learning_rate: float = 1e-3, early_stopping: bool = True,
                 patience: int = 10, validation_fraction: float = 0.1,
                 random_state: int | None = None, threads: int | None = None,
                 device: str = "cpu", progress: bool = False):
        super().__init__(n_latent, n_filters=n_filters, depth=depth, n_hidden=n_hidden,
                         n_blocks=n_blocks, likelihood=likelihood, binarize=binarize,
                         activation=activation, image_size=image_size, mode=mode,
                         batch_size=batch_size, max_epochs=max_epochs,
                         learning_rate=learning_rate, early_stopping=early_stopping,
                         patience=patience, validation_fraction=validation_fraction,
                         random_state=random_state, threads=threads, device=device,
                         progress=progress)
        self.noise = noise
        self.noise_level = noise_level


MODEL_KINDS = {"vae": ConvVAE, "ae": ConvAutoencoder, "dae": DenoisingAutoencoder}


def _format(cls) -> str:
    return f"mvae.images.{cls.__name__}"


_BY_FORMAT = {_format(c): c for c in MODEL_KINDS.values()}


def load_model(path):
    """Load any image model saved by ``save`` (ConvVAE, ConvAutoencoder or DenoisingAutoencoder).

    ``path`` is the model directory or a file inside it. Reads JSON and safetensors only.
    """
    import pandas as pd

    from ..training.checkpoint import read_model_files
    from .modules import ConvConfig

    path = Path(path)
    if path.is_file() and path.name in ("config.json", "model.safetensors"):
        path = path.parent
    config, tensors = read_model_files(
        path, formats=_BY_FORMAT, schema_version=SCHEMA_VERSION, what="image model",
        wrong_format=lambda fmt: (f"format {fmt!r} is not an mvae image model (one of "
                                  f"{sorted(_BY_FORMAT)}); a count model loads with "
                                  "mvae.MultinomialVAE.load"))
    cls = _BY_FORMAT[config["format"]]
    try:
        params = dict(config["params"])
        if isinstance(params.get("image_size"), list):
            params["image_size"] = tuple(params["image_size"])
        model = cls(**params)
        module = model._module_class()(ConvConfig(**config["module_config"]))
        state = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
        module.load_state_dict(state, strict=True)
        model.module_ = module.eval()
        model.seed_ = int(config["seed"])
        model.likelihood_ = str(config["likelihood"])
        model.image_shape_ = tuple(int(s) for s in config["image_shape"])
        model.n_train_ = int(config["n_train"])
        model.best_epoch_ = config.get("best_epoch")
        model.history_ = pd.DataFrame(config["history"])
        model._load_extra(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: the config and tensors do not describe a valid "
                             f"{cls.__name__} ({type(exc).__name__}: {exc})") from exc
    return model
