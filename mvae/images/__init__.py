"""Images: convolutional VAE, autoencoder and denoising autoencoder, with readers, grids and a
landscape set that works offline.

>>> from mvae.images import ConvVAE, read_images          # doctest: +SKIP
>>> digits = read_images("data/mnist_5k.csv.gz")          # doctest: +SKIP
>>> vae = ConvVAE(n_latent=16, binarize=True, max_epochs=30).fit(digits)  # doctest: +SKIP
>>> vae.bits_per_dim(digits)                              # doctest: +SKIP

The models (``mvae.images.model``) keep the conventions of :class:`mvae.MultinomialVAE`:
``__init__`` stores, ``fit`` checks and trains with :func:`mvae.training.loop.train_module`, learned state
ends in ``_``, ``save``/``load`` write safetensors and JSON. torch is imported on first use.

Everything image-specific lives in this package: the torch modules (``modules``), the per-pixel
likelihoods (``likelihoods``), the models (``model``), readers (``data``), PNG grids (``grids``),
the offline landscape set (``landscapes``) and the ``mvae images`` command group (``cli``). From
the count side it uses only the training loop, the model-file and output helpers, the plots, the
errors and :func:`mvae.maths.likelihoods.kl_normal_standard`; ``mvae fit`` never imports it.
"""

from importlib import import_module

_LAZY = {
    "ConvVAE": "mvae.images.model",
    "ConvAutoencoder": "mvae.images.model",
    "DenoisingAutoencoder": "mvae.images.model",
    "load_model": "mvae.images.model",
    "ImageSet": "mvae.images.data",
    "ImageData": "mvae.images.data",
    "read_images": "mvae.images.data",
    "as_image_set": "mvae.images.data",
    "split_indices": "mvae.images.data",
    "image_grid": "mvae.images.grids",
    "comparison_grid": "mvae.images.grids",
    "save_grid": "mvae.images.grids",
    "procedural_landscapes": "mvae.images.landscapes",
    "photo_crops": "mvae.images.landscapes",
    "landscape_set": "mvae.images.landscapes",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'mvae.images' has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
