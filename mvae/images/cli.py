"""``mvae images``: fit, sample, reconstruct and score convolutional image models.

A click group that :mod:`mvae.cli` loads only when ``mvae images`` is invoked (or ``mvae --help``
lists its commands), also usable on its own. No model logic lives here: the commands parse and check their arguments, then call
:mod:`mvae.images`. torch, PIL and pandas are imported inside the commands so that ``--help``
answers at once.

DATA is a folder of PNG/JPEG images (searched recursively; a subfolder name becomes the label),
a ``.npy``/``.npz`` array, or a CSV of pixel rows such as ``data/mnist_5k.csv.gz``. MODEL is a
directory written by ``mvae images fit``.

As in the rest of mvae, a problem the user can fix ends the command with one line ``Error: ...``
and exit code 2; single files are written beside their target and renamed onto it, the fit
directory appears only once complete.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import click

__all__ = ["images"]

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


class _ImagesGroup(click.Group):
    """Turn the errors mvae raises on purpose into one line and exit code 2."""

    def invoke(self, ctx):
        from ..errors import MVAEError

        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except MVAEError as exc:
                click.echo(f"Error: {' '.join(str(exc).split())}", err=True)
                sys.exit(2)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"Warning: {message}", err=True)


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        click.echo(message, err=True)


def _parse_size(ctx, param, value):
    """``32`` or ``WIDTHxHEIGHT`` -> (width, height)."""
    if value is None:
        return None
    try:
        parts = [int(p) for p in value.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise click.BadParameter(f"{value!r}: give a side such as 32, or WIDTHxHEIGHT such as "
                                 "64x48")
    return tuple(parts)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _check_device(device: str) -> str:
    """The device to train on, as a string; an InputError when CUDA is asked for but absent."""
    from ..training.loop import resolve_device

    return str(resolve_device(device, option=True))


def _load(model_dir: Path, threads):
    from .model import load_model

    model = load_model(model_dir)
    if threads is not None:
        model.threads = threads
    return model


_threads = click.option("--threads", default=None, type=click.IntRange(min=1),
                        help="torch threads [default: half the usable cores, at most 8].")
_quiet = click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")


@click.group(name="images", cls=_ImagesGroup, context_settings=CONTEXT)
def images():
    """Convolutional VAE, autoencoder and denoising autoencoder for images.

    Fit with `mvae images fit DATA -o DIR`, then draw, reconstruct or score with the
    directory it writes. DATA: a folder of PNG/JPEG files, a .npy/.npz array or a CSV of
    pixel rows (e.g. data/mnist_5k.csv.gz).
    """


@images.command(context_settings=CONTEXT)
@click.argument("data", type=click.Path(path_type=Path))
@click.option("-o", "--output", "outdir", required=True, type=click.Path(path_type=Path),
              help="Output directory (must not exist unless --force).")
@click.option("--model", "kind", default="vae", type=click.Choice(["vae", "ae", "dae"]),
              help="Variational, plain or denoising autoencoder.")
@click.option("--latent-dim", "-k", default=16, type=click.IntRange(min=1),
              help="Latent (bottleneck) size.")
@click.option("--filters", default=32, type=click.IntRange(min=1),
              help="Filters of the first convolution stage (doubled per stage).")
@click.option("--depth", default=2, type=click.IntRange(min=1), help="Stride-2 stages.")
@click.option("--hidden", default=256, type=click.IntRange(min=1), help="Dense layer width.")
@click.option("--blocks", default=0, type=click.IntRange(min=0),
              help="Extra 3x3 convolutions per stage.")
@click.option("--likelihood", default="auto",
              type=click.Choice(["auto", "bernoulli", "logistic", "gaussian"]),
              help="p(x|z): auto = Bernoulli for binary images or --binarize, discretised "
                   "logistic for 8-bit images, Gaussian otherwise.")
@click.option("--binarize", is_flag=True,
              help="Dynamic binarisation (Bernoulli likelihood on grey images such as MNIST).")
@click.option("--beta", default=1.0, type=click.FloatRange(min=0, min_open=True),
              help="KL weight of the VAE (1 = ELBO).")
@click.option("--context", default=0, type=click.IntRange(min=0),
              help="VAE only: causal KxK window of already-seen pixels in the decoder "
                   "(odd K >= 3; 0 = factorised decoder).")
@click.option("--noise", default="gaussian",
              type=click.Choice(["gaussian", "salt_pepper", "masking"]),
              help="DAE corruption.")
@click.option("--noise-level", default=0.3, type=click.FloatRange(min=0, min_open=True),
              help="DAE: Gaussian standard deviation, or fraction of corrupted values.")
@click.option("--size", default=None, callback=_parse_size,
              help="Resize images to SIDE or WIDTHxHEIGHT (needed when sizes differ).")
@click.option("--mode", default=None, type=click.Choice(["grey", "rgb"]),
              help="Convert to grey or colour [default: grey if all images are grey].")
@click.option("--epochs", default=100, type=click.IntRange(min=1), help="Maximum epochs.")
@click.option("--batch-size", default=128, type=click.IntRange(min=1))
@click.option("--lr", default=1e-3, type=click.FloatRange(min=0, min_open=True),
              help="Adam learning rate.")
@click.option("--patience", default=10, type=click.IntRange(min=1),
              help="Early-stopping patience in epochs (validation loss).")
@click.option("--seed", default=0, type=click.IntRange(min=0), help="Random seed.")
@_threads
@click.option("--device", default="cpu", type=click.Choice(["cpu", "cuda", "auto"]))
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@_quiet
@click.pass_context
def fit(ctx, data, outdir, kind, latent_dim, filters, depth, hidden, blocks, likelihood,
        binarize, beta, context, noise, noise_level, size, mode, epochs, batch_size, lr, patience,
        seed, threads, device, force, quiet):
    """Fit a model to the images in DATA and write it to OUTDIR.

    OUTDIR receives model.safetensors + config.json (load with
    mvae.images.load_model), history.tsv, loss.png, samples.png (64 draws),
    reconstructions.png (images and their reconstructions in alternating rows) and
    scores.tsv (per-image score of DATA).
    """
    from ..errors import InputError

    if kind != "vae" and (context or beta != 1.0):
        raise click.UsageError("--context and --beta are for --model vae only.")
    if kind != "dae" and ctx.get_parameter_source("noise").name != "DEFAULT":
        raise click.UsageError("--noise is for --model dae only.")
    from ..io.outputs import ResultsDirectory, add_run_info, write_tsv
    from ..io.plots import plot_loss

    started, cpu0 = time.time(), time.process_time()
    with ResultsDirectory(outdir, force=force) as results:
        from .data import read_images
        from .grids import comparison_grid, save_grid
        from .model import ConvVAE, MODEL_KINDS

        pil_mode = {"grey": "L", "rgb": "RGB", None: None}[mode]
        images_in = read_images(data, size=size, mode=pil_mode)
        device = _check_device(device)
        common = dict(n_filters=filters, depth=depth, n_hidden=hidden, n_blocks=blocks,
                      likelihood=likelihood, binarize=binarize, max_epochs=epochs,
                      batch_size=batch_size, learning_rate=lr, patience=patience,
                      random_state=seed, threads=threads, device=device,
                      progress=not quiet and _stderr_is_tty())
        if kind == "vae":
            model = ConvVAE(latent_dim, beta=beta, context=context, **common)
        elif kind == "dae":
            model = MODEL_KINDS["dae"](latent_dim, noise=noise, noise_level=noise_level, **common)
        else:
            model = MODEL_KINDS["ae"](latent_dim, **common)
        try:
            model.fit(images_in)
        except ValueError as exc:  # a config the modules reject (InputError is a ValueError)
            if isinstance(exc, InputError):
                raise
            raise InputError(f"{data}: {exc}") from exc
        out = results.path
        model.save(out)
        model.history_.to_csv(out / "history.tsv", sep="\t", index=False)
        plot_loss(model.history_, out / "loss.png", best_epoch=model.best_epoch_)
        save_grid(model.sample(64, random_state=seed), out / "samples.png", n_cols=8,
                  scale=_scale(model))
        shown = images_in.subset(range(min(32, len(images_in))))
        comparison_grid(shown.images, model.reconstruct(shown), n_cols=8,
                        scale=_scale(model)).save(out / "reconstructions.png", format="PNG")
        write_tsv(_score_frame(model, images_in), out / "scores.tsv", index=False)
        add_run_info(out, {
            "command": ctx.command_path,
            "parameters": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in ctx.params.items()},
            "input": {"path": str(data.absolute()), "n_images": len(images_in),
                      "image_shape": list(images_in.shape)},
            "seed": seed, "device": device,
            "fit_seconds": round(time.time() - started, 3),
            "cpu_seconds": round(time.process_time() - cpu0, 3),
        })
    hist = model.history_
    _say(quiet, f"fitted a {type(model).__name__} on {len(images_in)} images "
                f"{'x'.join(map(str, images_in.shape))} in {len(hist)} epochs (best "
                f"{model.best_epoch_}); validation loss "
                f"{hist['validation_loss'].min():.4g} nats/image; wrote {outdir}/")


def _scale(model) -> int:
    """Enlarge small images in grids so that they can be seen."""
    H = model.image_shape_[0]
    return max(1, 64 // max(H, 1))


def _score_frame(model, images_in, n_samples: int = 16):
    import numpy as np
    import pandas as pd

    from .likelihoods import bits_per_dim
    from .model import ConvVAE

    if isinstance(model, ConvVAE):
        scores = model.score_samples(images_in, n_samples=n_samples)
        name = "negative_elbo"
    else:
        scores = model.score_samples(images_in)
        name = "reconstruction_nll"
    frame = pd.DataFrame({"image_id": images_in.ids})
    if images_in.labels is not None:
        frame["label"] = images_in.labels
    frame[name] = scores
    frame["bits_per_dim"] = bits_per_dim(np.asarray(scores), int(np.prod(model.image_shape_)))
    return frame


@images.command(context_settings=CONTEXT)
@click.argument("model_dir", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("-n", "--n-images", "n", default=64, type=click.IntRange(min=1),
              help="Number of images to draw.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output PNG grid (replaced if it exists).")
@click.option("--cols", default=8, type=click.IntRange(min=1), help="Images per row.")
@click.option("--scale", default=None, type=click.IntRange(min=1),
              help="Enlarge every image by this factor [default: to about 64 pixels].")
@click.option("--seed", default=0, type=click.IntRange(min=0), help="Random seed.")
@_threads
@_quiet
def sample(model_dir, n, output, cols, scale, seed, threads, quiet):
    """Draw N new images from a fitted MODEL into a PNG grid."""
    from ..io.outputs import atomic_path
    from .grids import save_grid

    with atomic_path(output) as tmp:
        model = _load(model_dir, threads)
        save_grid(model.sample(n, random_state=seed), tmp, n_cols=cols,
                  scale=scale or _scale(model))
    _say(quiet, f"drew {n} images; wrote {output}")


def _read_for(model, data: Path):
    """DATA read at the model's image shape (resized / converted as needed)."""
    from .data import read_images

    H, W, C = model.image_shape_
    return read_images(data, size=(W, H), mode="L" if C == 1 else "RGB")


@images.command(context_settings=CONTEXT)
@click.argument("model_dir", metavar="MODEL", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output PNG grid (replaced if it exists).")
@click.option("-n", "--n-images", "n", default=32, type=click.IntRange(min=1),
              help="Show the first N images of DATA.")
@click.option("--corrupt", default=None, type=click.Choice(["gaussian", "salt_pepper", "masking"]),
              help="Corrupt the images first (to see a denoising autoencoder at work); the grid "
                   "then shows corrupted images and their reconstructions.")
@click.option("--noise-level", default=0.3, type=click.FloatRange(min=0, min_open=True),
              help="Strength of --corrupt.")
@click.option("--cols", default=8, type=click.IntRange(min=1), help="Images per row.")
@click.option("--scale", default=None, type=click.IntRange(min=1),
              help="Enlarge every image by this factor [default: to about 64 pixels].")
@click.option("--seed", default=0, type=click.IntRange(min=0), help="Seed of --corrupt.")
@_threads
@_quiet
def reconstruct(model_dir, data, output, n, corrupt, noise_level, cols, scale, seed, threads,
                quiet):
    """Images of DATA and their reconstructions by MODEL, in alternating rows of a PNG grid."""
    from ..io.outputs import atomic_path
    from .grids import comparison_grid

    with atomic_path(output) as tmp:
        model = _load(model_dir, threads)
        shown = _read_for(model, data)
        shown = shown.subset(range(min(n, len(shown))))
        inputs = shown.as_float()
        if corrupt is not None:
            inputs = _corrupted(inputs, corrupt, noise_level, seed)
        comparison_grid(inputs, model.reconstruct(inputs), n_cols=cols,
                        scale=scale or _scale(model)).save(tmp, format="PNG")
    _say(quiet, f"reconstructed {len(shown)} images; wrote {output}")


def _corrupted(images, noise: str, level: float, seed: int):
    """Corrupt (n, H, W, C) float images with the DAE's noise, seeded."""
    import numpy as np
    import torch

    from ..errors import InputError
    from .modules import corrupt as corrupt_fn

    if noise != "gaussian" and level > 1:
        raise InputError(f"--noise-level {level}: {noise} needs a fraction between 0 and 1")
    x = torch.as_tensor(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    out = corrupt_fn(x, noise, level, torch.Generator().manual_seed(seed))
    return out.permute(0, 2, 3, 1).numpy()


@images.command(context_settings=CONTEXT)
@click.argument("model_dir", metavar="MODEL", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output TSV (replaced if it exists).")
@click.option("--n-samples", default=16, type=click.IntRange(min=1),
              help="VAE: Monte Carlo draws of z per image.")
@_threads
@_quiet
def score(model_dir, data, output, n_samples, threads, quiet):
    """Per-image anomaly scores of DATA under MODEL (higher = less like the training images).

    Writes image_id, label (when DATA has labels), then negative_elbo (VAE) or
    reconstruction_nll (autoencoders) in nats, and the same in bits per dimension.
    """
    from ..io.outputs import atomic_path, write_tsv

    with atomic_path(output) as tmp:
        model = _load(model_dir, threads)
        frame = _score_frame(model, _read_for(model, data), n_samples)
        write_tsv(frame, tmp, index=False)
    _say(quiet, f"scored {len(frame)} images; wrote {output}")
