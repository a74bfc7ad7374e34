"""A landscape image set that needs no download: procedural scenes plus crops of bundled photos.

No collection of landscape photographs ships with any package here, so the set has two parts:

**Procedural scenes** (:func:`procedural_landscapes`): a sky whose colour runs from zenith to
horizon (day, sunset or dusk palettes), a sun with a soft glow, two to four ridges drawn as sums of
sinusoids with 1/f amplitudes, paler and bluer with distance (aerial perspective), and a ground band
with a gradient and fine texture. Image ``i`` of seed ``s`` is drawn from
``numpy.random.default_rng([s, part, i])``, so it does not depend on how many images are asked
for, and training (``part=0``) and test (``part=1``) scenes never coincide.

**Photo crops** (:func:`photo_crops`): random square crops of the natural photographs bundled with
scikit-learn (``load_sample_images``: china.jpg, flower.jpg) and scikit-image (``skimage.data``:
rocket, grass, gravel), resized with Pillow. The right-hand ``held_out`` fraction of every photo's
columns is reserved: training crops lie wholly to its left, test crops wholly inside it, so no test
pixel was seen in training. Both packages are optional; without them the set is procedural only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .data import ImageSet

__all__ = ["procedural_landscapes", "natural_photos", "photo_crops", "landscape_set",
           "PHOTO_NAMES"]

#: Bundled photographs used for crops: (package, name).
PHOTO_NAMES = (("sklearn", "china.jpg"), ("sklearn", "flower.jpg"), ("skimage", "rocket"),
               ("skimage", "grass"), ("skimage", "gravel"))

_PALETTES = {
    # zenith, horizon, sun colours (RGB 0–1) and the range of their random jitter
    "day": ((0.22, 0.45, 0.85), (0.75, 0.85, 0.95), (1.0, 0.98, 0.85)),
    "sunset": ((0.20, 0.22, 0.50), (0.98, 0.62, 0.38), (1.0, 0.80, 0.45)),
    "dusk": ((0.08, 0.10, 0.25), (0.55, 0.40, 0.55), (0.95, 0.75, 0.60)),
}
_GROUNDS = ((0.25, 0.45, 0.18), (0.45, 0.38, 0.22), (0.70, 0.62, 0.42), (0.18, 0.30, 0.20))
_RIDGES = ((0.20, 0.28, 0.35), (0.25, 0.35, 0.22), (0.35, 0.28, 0.25), (0.15, 0.18, 0.28))


def _smoothstep(edge0, edge1, x):
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _jitter(rng, colour, amount=0.08):
    return np.clip(np.asarray(colour) + rng.uniform(-amount, amount, 3), 0.0, 1.0)


def _profile(rng, x, n_waves=6):
    """A ridge line over x in [0, 1): sinusoids with amplitude ∝ 1/frequency, values in ~[-1, 1]."""
    freqs = rng.uniform(0.6, 1.4, n_waves) * 2.0 ** np.arange(n_waves)  # octaves, jittered
    phases = rng.uniform(0, 2 * np.pi, n_waves)
    amps = 1.0 / freqs
    y = (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * x[None, :] + phases[:, None])).sum(0)
    return y / amps.sum()


def _scene(rng, size: int) -> np.ndarray:
    """One procedural landscape, float (size, size, 3) in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size] / size  # (H, W) coordinates in [0, 1)
    x = np.arange(size) / size
    pix = 1.0 / size  # one pixel, for soft edges
    palette = _PALETTES[rng.choice(list(_PALETTES), p=[0.5, 0.3, 0.2])]
    zenith, horizon_c, sun_c = (_jitter(rng, c) for c in palette)
    horizon = rng.uniform(0.45, 0.70)  # height of the far horizon, from the top

    # sky: zenith -> horizon colour, curved
    t = np.clip(yy / horizon, 0, 1)[..., None] ** rng.uniform(0.6, 1.6)
    img = zenith * (1 - t) + horizon_c * t  # (H, W, 3)

    # sun with glow, somewhere above the horizon (may be partly hidden by ridges)
    cx, cy = rng.uniform(0.1, 0.9), rng.uniform(0.08, horizon - 0.05)
    r = rng.uniform(0.04, 0.10)
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    glow = 0.45 * np.exp(-0.5 * (d / (3 * r)) ** 2)[..., None]
    img = img * (1 - glow) + sun_c * glow
    disc = (1 - _smoothstep(r - pix, r + pix, d))[..., None]
    img = img * (1 - disc) + sun_c * disc

    # ridges, far to near: lower on the image, taller, darker and more saturated
    n_ridges = int(rng.integers(2, 5))
    base_colour = _jitter(rng, _RIDGES[rng.integers(len(_RIDGES))], 0.05)
    ground_top = rng.uniform(horizon + 0.12, 0.92)
    for j in range(n_ridges):
        near = (j + 1) / n_ridges  # 0 far .. 1 near
        level = horizon + (ground_top - horizon) * (j / n_ridges)
        amp = rng.uniform(0.05, 0.18) * (0.6 + 0.8 * near)
        line = level - amp * (0.5 + 0.5 * _profile(rng, x))  # (W,) height of the ridge top
        haze = 0.75 * (1 - near) ** 1.2
        colour = base_colour * (0.6 + 0.4 * near) * (1 - haze) + horizon_c * haze
        mask = _smoothstep(line[None, :] - pix, line[None, :] + pix, yy)[..., None]
        shade = 1 - 0.25 * np.clip((yy - line[None, :]) / 0.3, 0, 1)[..., None]  # darker below
        img = img * (1 - mask) + colour * shade * mask

    # ground band: gradient towards the bottom, with fine texture
    ground = _jitter(rng, _GROUNDS[rng.integers(len(_GROUNDS))], 0.06)
    g = _smoothstep(ground_top - pix, ground_top + pix, yy)[..., None]
    depth = np.clip((yy - ground_top) / max(1e-6, 1 - ground_top), 0, 1)[..., None]
    texture = rng.normal(0, 0.03, (size, size, 1))
    ground_img = ground * (0.75 + 0.35 * depth) + texture
    img = img * (1 - g) + ground_img * g
    return np.clip(img + rng.normal(0, 0.008, img.shape), 0.0, 1.0)


def procedural_landscapes(n: int, size: int = 32, seed: int = 0, part: int = 0) -> np.ndarray:
    """``n`` procedural landscapes as uint8 (n, size, size, 3).

    Parameters
    ----------
    n : int
    size : int
        Side in pixels.
    seed : int
    part : int
        Independent streams of scenes for one seed: 0 for training, 1 for testing.
    """
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        rng = np.random.default_rng([seed, part, i])
        out[i] = np.round(_scene(rng, size) * 255)
    return out


#: Where each photo lies inside its package (read with Pillow, so that neither package has to be
#: imported: importing scikit-learn takes seconds).
_PHOTO_FILES = {("sklearn", "china.jpg"): "datasets/images/china.jpg",
                ("sklearn", "flower.jpg"): "datasets/images/flower.jpg",
                ("skimage", "rocket"): "data/rocket.jpg",
                ("skimage", "grass"): "data/grass.png",
                ("skimage", "gravel"): "data/gravel.png"}


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _load_photo(package: str, name: str) -> np.ndarray | None:
    """One bundled photo as uint8 (H, W, 3), or None when its package is not installed."""
    from PIL import Image

    root = _package_dir(package)
    if root is None:
        return None
    path = root / _PHOTO_FILES[(package, name)]
    if path.is_file():
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    # another layout: ask the package itself
    try:
        if package == "sklearn":
            from sklearn.datasets import load_sample_image

            img = np.asarray(load_sample_image(name))
        else:
            import skimage.data as skdata

            img = np.asarray(getattr(skdata, name)())
    except Exception:  # noqa: BLE001 - a missing or undownloadable image is skipped
        return None
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img[..., :3].astype(np.uint8)


def natural_photos() -> dict[str, np.ndarray]:
    """The bundled photographs of :data:`PHOTO_NAMES` that can be loaded, as uint8 (H, W, 3).

    Grey textures are repeated over three channels. Photos of packages that are not installed
    (scikit-learn, scikit-image) are skipped; the result may be empty.
    """
    photos = {}
    for package, name in PHOTO_NAMES:
        img = _load_photo(package, name)
        if img is not None:
            photos[name.rsplit(".", 1)[0]] = img
    return photos


def photo_crops(n: int, size: int = 32, seed: int = 0, part: str = "train",
                held_out: float = 0.25, min_side: int = 64, max_side: int = 160,
                photos: dict | None = None) -> ImageSet:
    """Random square crops of bundled photographs, resized to ``size``.

    Parameters
    ----------
    n : int
        Number of crops, spread evenly over the photos.
    size : int
        Output side in pixels (Pillow, Lanczos).
    seed : int
    part : {"train", "test"}
        Crops from the left ``1 − held_out`` of each photo's columns, or from the right
        ``held_out`` (never overlapping).
    held_out : float
        Fraction of each photo's width kept for testing.
    min_side, max_side : int
        Range of crop sides in pixels (capped by the region's size).
    photos : dict, optional
        name -> uint8 (H, W, 3); default :func:`natural_photos`.

    Returns
    -------
    ImageSet
        ids ``photo:NAME:x,y,side``, labels the photo names. Empty when no photo is available.
    """
    from PIL import Image

    if part not in ("train", "test"):
        raise ValueError(f"part={part!r}; choose 'train' or 'test'")
    photos = natural_photos() if photos is None else photos
    names = sorted(photos)
    if not names or n <= 0:
        return ImageSet(np.zeros((0, size, size, 3), np.uint8), [], np.array([], dtype=object),
                        "photos")
    rng = np.random.default_rng([seed, 0 if part == "train" else 1, 7])
    images, ids, labels = [], [], []
    for i in range(n):
        name = names[i % len(names)]
        photo = photos[name]
        H, W = photo.shape[:2]
        split = int(round(W * (1 - held_out)))
        x0, x1 = (0, split) if part == "train" else (split, W)
        hi = min(max_side, H, x1 - x0)
        side = int(rng.integers(min(min_side, hi), hi + 1))
        x = int(rng.integers(x0, x1 - side + 1))
        y = int(rng.integers(0, H - side + 1))
        crop = Image.fromarray(photo[y:y + side, x:x + side])
        images.append(np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS)))
        ids.append(f"photo:{name}:{x},{y},{side}")
        labels.append(name)
    return ImageSet(np.stack(images).astype(np.uint8), ids, np.array(labels, dtype=object),
                    "photos")


def landscape_set(n_train: int = 4000, n_test: int = 1000, size: int = 32, seed: int = 0,
                  photo_fraction: float = 0.25, photos: bool = True) -> tuple[ImageSet, ImageSet]:
    """Training and held-out landscape images: procedural scenes plus photo crops.

    Parameters
    ----------
    n_train, n_test : int
    size : int
    seed : int
    photo_fraction : float
        Share of photo crops in each part (0 when no photo is available or ``photos=False``).
    photos : bool
        Use the bundled photos when scikit-learn / scikit-image are installed.

    Returns
    -------
    (ImageSet, ImageSet)
        uint8 (n, size, size, 3), labels ``procedural`` or the photo's name.
    """
    available = natural_photos() if photos else {}
    parts = []
    for n, part, tag in ((n_train, 0, "train"), (n_test, 1, "test")):
        n_photo = int(round(n * photo_fraction)) if available else 0
        proc = procedural_landscapes(n - n_photo, size, seed, part)
        crops = photo_crops(n_photo, size, seed, tag, photos=available)
        images = np.concatenate([proc, crops.images]) if n_photo else proc
        ids = [f"procedural:{part}:{i}" for i in range(len(proc))] + list(crops.ids)
        labels = np.array(["procedural"] * len(proc) + list(crops.labels), dtype=object)
        parts.append(ImageSet(images, ids, labels, f"landscapes ({tag})"))
    return parts[0], parts[1]
