"""Image sets: reading folders, arrays and pixel tables, seeded splits, minibatches for training.

An :class:`ImageSet` holds ``n`` images of one shape as a channels-last array ``(n, H, W, C)``,
``uint8`` (0–255) or ``float32`` (0–1), with optional labels and one id per image. Sources read by
:func:`read_images`:

- a folder of PNG/JPEG files (Pillow; searched recursively, sorted by path). Images in subfolders
  get the subfolder's name as label, as in ``digits/0/a.png``. ``size`` resizes every image,
  ``mode`` converts to grey (``"L"``) or colour (``"RGB"``);
- ``.npy`` (an array ``(n, H, W)`` or ``(n, H, W, C)``) or ``.npz`` (arrays named ``images`` or
  ``x``, and ``labels`` or ``y``);
- a CSV/TSV of pixel rows, optionally gzipped, such as ``data/mnist_5k.csv.gz`` (784 pixels then a
  label, no header). The label column is found by name (``label``) in a header, or is the last
  column when a row holds one value more than a square number of pixels.

:class:`ImageData` serves an image set to :func:`mvae.training.loop.train_module` as float tensors
``(B, C, H, W)`` in [0, 1]; 8-bit images stay ``uint8`` on the device until a batch is taken.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["ImageSet", "ImageData", "read_images", "as_image_set", "split_indices",
           "IMAGE_SUFFIXES", "MODES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Pillow modes accepted for ``mode``: grey or colour.
MODES = ("L", "RGB")


@dataclass
class ImageSet:
    """Images of one shape with ids and optional labels.

    Attributes
    ----------
    images : numpy.ndarray, shape (n, H, W, C)
        ``uint8`` (0–255) or ``float32`` (0–1).
    ids : list of str
        One per image (file path relative to the folder, or ``row1``, ``image0``...).
    labels : numpy.ndarray of shape (n,) or None
    source : str
        Where the images came from, for messages.
    """

    images: np.ndarray
    ids: list
    labels: np.ndarray | None = None
    source: str = "array"

    def __post_init__(self):
        if self.images.ndim != 4:
            raise InputError(f"{self.source}: images must be (n, H, W, C); got shape "
                             f"{self.images.shape}")
        if len(self.ids) != len(self.images):
            raise InputError(f"{self.source}: {len(self.ids)} ids for {len(self.images)} images")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise InputError(f"{self.source}: {len(self.labels)} labels for "
                             f"{len(self.images)} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(int(s) for s in self.images.shape[1:])

    def subset(self, index) -> "ImageSet":
        """The images at ``index`` (integer positions or a boolean mask), in that order."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return ImageSet(self.images[index], [self.ids[i] for i in index],
                        None if self.labels is None else self.labels[index], self.source)

    def split(self, n_validation: int, seed: int) -> tuple["ImageSet", "ImageSet"]:
        """Seeded (train, validation) split with ``n_validation`` images held out."""
        train, valid = split_indices(len(self), n_validation, seed)
        return self.subset(train), self.subset(valid)

    def as_float(self) -> np.ndarray:
        """The images as float32 in [0, 1], shape (n, H, W, C)."""
        if self.images.dtype == np.uint8:
            return self.images.astype(np.float32) / 255.0
        return self.images.astype(np.float32, copy=False)


def split_indices(n: int, n_validation: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, validation) positions of a seeded random split of ``n`` items.

    The same ``n``, ``n_validation`` and ``seed`` give the same split on every machine
    (``numpy.random.default_rng(seed).permutation``).
    """
    if not 0 <= n_validation <= n:
        raise InputError(f"n_validation={n_validation} is not between 0 and the {n} images")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_validation:]), np.sort(perm[:n_validation])


# ------------------------------------------------------------------------------------------------
# arrays
# ------------------------------------------------------------------------------------------------


def _check_array(a: np.ndarray, source: str) -> np.ndarray:
    """(n, H, W) or (n, H, W, C) with C in {1, 3} -> (n, H, W, C) uint8 or float32 in [0, 1]."""
    a = np.asarray(a)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3) or min(a.shape) < 1:
        raise InputError(f"{source}: need images as an array (n, H, W) or (n, H, W, C) with C = 1 "
                         f"or 3, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.float32)
    if not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{source}: image values must be numbers, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise InputError(f"{source}: the images contain NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if np.issubdtype(a.dtype, np.integer) or (hi > 1.0 and np.array_equal(a, np.round(a))):
        if lo < 0 or hi > 255:
            raise InputError(f"{source}: integer intensities must lie in 0..255, found {lo:g}.."
                             f"{hi:g}")
        return a.astype(np.uint8)
    if lo < 0 or hi > 1:
        raise InputError(f"{source}: float intensities must lie in [0, 1] (or be whole numbers "
                         f"0..255), found {lo:g}..{hi:g}")
    return a.astype(np.float32)


def _resize_array(a: np.ndarray, size: tuple[int, int], mode: str | None) -> np.ndarray:
    """Resize/convert every image of (n, H, W, C) with Pillow; returns uint8 (n, h, w, C').

    Returns ``a`` itself when it already has that size and mode.
    """
    from PIL import Image

    same_size = tuple(size) == (a.shape[2], a.shape[1])
    same_mode = mode is None or (mode == "L") == (a.shape[-1] == 1)
    if same_size and same_mode:
        return a
    out = []
    for img in a:
        u8 = img if img.dtype == np.uint8 else np.round(img * 255).astype(np.uint8)
        pil = Image.fromarray(u8[..., 0] if u8.shape[-1] == 1 else u8)
        out.append(_to_array(_convert(pil, size, mode or pil.mode)))
    return np.stack(out)


# ------------------------------------------------------------------------------------------------
# folders of image files
# ------------------------------------------------------------------------------------------------


def _convert(pil, size: tuple[int, int] | None, mode: str):
    """Pillow image -> ``mode`` ("L"/"RGB"), resized to ``size`` = (width, height) if given."""
    from PIL import Image

    if pil.mode in ("RGBA", "LA", "P", "PA"):
        # composite transparency onto white rather than dropping alpha (black background)
        rgba = pil.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        pil = Image.alpha_composite(bg, rgba)
    pil = pil.convert(mode)
    if size is not None and pil.size != tuple(size):
        pil = pil.resize(tuple(size), Image.Resampling.LANCZOS)
    return pil


def _to_array(pil) -> np.ndarray:
    a = np.asarray(pil, dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a


def _read_folder(folder: Path, size, mode) -> ImageSet:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise InputError(f"{folder}: no PNG or JPEG files (*.png, *.jpg, *.jpeg) in this folder "
                         "or its subfolders")
    pils = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                pils.append(im.copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{f}: not a readable image ({exc})") from exc
    if mode is None:
        grey = all(p.mode in ("1", "L", "LA", "I", "I;16", "F") for p in pils)
        mode = "L" if grey else "RGB"
    if size is None:
        sizes = {p.size for p in pils}
        if len(sizes) > 1:
            eg = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
            raise InputError(f"{folder}: the images differ in size ({eg}...); pass a size "
                             "(e.g. size=32 or --size 32) to resize them all")
    arrays = [_to_array(_convert(p, size, mode)) for p in pils]
    rel = [f.relative_to(folder) for f in files]
    labels = None
    if any(len(r.parts) > 1 for r in rel):
        labels = np.array([r.parts[0] if len(r.parts) > 1 else "" for r in rel], dtype=object)
    return ImageSet(np.stack(arrays), [r.as_posix() for r in rel], labels, str(folder))


# ------------------------------------------------------------------------------------------------
# pixel tables
# ------------------------------------------------------------------------------------------------


def _square_shape(n_pixels: int) -> tuple[int, int, int] | None:
    """(H, W, C) of a square grey (n = s²) or colour (n = 3s²) image, or None."""
    s = math.isqrt(n_pixels)
    if s * s == n_pixels:
        return s, s, 1
    if n_pixels % 3 == 0:
        s = math.isqrt(n_pixels // 3)
        if 3 * s * s == n_pixels:
            return s, s, 3
    return None


def _read_table(path: Path, shape, label_column) -> ImageSet:
    import pandas as pd

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read as a text table ({exc})") from exc
    sep = "\t" if "\t" in first else ","
    tokens = [t.strip().strip('"') for t in first.rstrip("\n").split(sep)]

    def numeric(t):
        try:
            float(t)
            return True
        except ValueError:
            return False

    header = not all(numeric(t) for t in tokens if t)
    try:
        frame = pd.read_csv(path, sep=sep, header=0 if header else None)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: cannot be read as a pixel table ({exc})") from exc
    n_cols = frame.shape[1]
    label_at = None
    if label_column == "auto":
        if header and "label" in frame.columns:
            label_at = list(frame.columns).index("label")
        elif not header and shape is None and _square_shape(n_cols) is None \
                and _square_shape(n_cols - 1) is not None:
            label_at = n_cols - 1
        elif not header and shape is not None and int(np.prod(shape)) == n_cols - 1:
            label_at = n_cols - 1
    elif label_column is not None:
        if isinstance(label_column, (int, np.integer)):
            label_at = int(label_column) % n_cols
        elif header and label_column in frame.columns:
            label_at = list(frame.columns).index(label_column)
        else:
            have = list(frame.columns)[:10] if header else "none (no header row)"
            raise InputError(f"{path}: no label column {label_column!r}; column names: {have}")
    labels = None
    if label_at is not None:
        labels = frame.iloc[:, label_at].to_numpy()
        frame = frame.drop(columns=frame.columns[label_at])
    n_pixels = frame.shape[1]
    if shape is None:
        shape = _square_shape(n_pixels)
        if shape is None:
            raise InputError(f"{path}: rows hold {n_pixels} pixel values, which is not a square "
                             "image (s² grey or 3·s² colour); pass shape=(H, W) or (H, W, C)")
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    if int(np.prod(shape)) != n_pixels:
        raise InputError(f"{path}: rows hold {n_pixels} pixel values but shape={shape} needs "
                         f"{int(np.prod(shape))}")
    try:
        values = frame.to_numpy(dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{path}: pixel columns must be numbers ({exc})") from exc
    images = _check_array(values.reshape(len(frame), *shape), str(path))
    ids = [f"row{i + 1}" for i in range(len(frame))]
    return ImageSet(images, ids, labels, str(path))


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            key = next((k for k in ("images", "x", "X") if k in names),
                       names[0] if len(names) == 1 else None)
            if key is None:
                raise InputError(f"{path}: holds arrays {names}; name the images 'images' or 'x'")
            lab = next((k for k in ("labels", "y", "label") if k in names), None)
            return z[key], (z[lab] if lab else None)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from exc


# ------------------------------------------------------------------------------------------------
# public readers
# ------------------------------------------------------------------------------------------------


def _size_pair(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise InputError(f"size={size!r}; need an integer >= 1 or (width, height)")
    return size


def _check_mode(mode):
    if mode is None:
        return None
    aliases = {"grey": "L", "gray": "L", "l": "L", "rgb": "RGB", "colour": "RGB", "color": "RGB"}
    mode = aliases.get(str(mode).lower(), mode)
    if mode not in MODES:
        raise InputError(f"mode={mode!r}; choose 'L' (grey) or 'RGB' (colour)")
    return mode


def read_images(path, *, size=None, mode=None, shape=None, label_column="auto") -> ImageSet:
    """Read images from a folder, ``.npy``/``.npz`` array or CSV/TSV of pixel rows.

    Parameters
    ----------
    path : str or Path
    size : int or (width, height), optional
        Resize every image (Pillow, Lanczos). Required for a folder of images of several sizes.
    mode : {"L", "RGB"} or None
        Convert to grey or colour; default: grey when every image is grey, else colour.
    shape : (H, W) or (H, W, C), optional
        Image shape of a pixel table (default: square, grey or colour from the row length).
    label_column : "auto", str, int or None
        Label column of a pixel table (see the module docstring); None for no labels.

    Returns
    -------
    ImageSet
    """
    path = Path(path)
    size, mode = _size_pair(size), _check_mode(mode)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_folder(path, size, mode)
    name = path.name.lower()
    if name.endswith(".npy"):
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable .npy file ({exc})") from exc
        return _finish(_check_array(a, str(path)), None, path, size, mode)
    if name.endswith(".npz"):
        a, labels = _read_npz(path)
        return _finish(_check_array(a, str(path)), labels, path, size, mode)
    if name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")):
        s = _read_table(path, shape, label_column)
        if size is not None or mode is not None:
            s.images = _resize_array(s.images, size or s.shape[1::-1], mode)
        return s
    if name.endswith(IMAGE_SUFFIXES):
        raise InputError(f"{path}: a single image; put the images in a folder and pass the folder")
    raise InputError(f"{path}: unknown image source; give a folder of PNG/JPEG files, a .npy or "
                     ".npz array, or a .csv(.gz) of pixel rows")


def _finish(images, labels, path, size, mode) -> ImageSet:
    if size is not None or mode is not None:
        images = _resize_array(images, size or images.shape[2:0:-1], mode)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(images),):
            raise InputError(f"{path}: labels have shape {labels.shape}, need ({len(images)},)")
    return ImageSet(images, [f"image{i}" for i in range(len(images))], labels, str(path))


def as_image_set(X, *, size=None, mode=None) -> ImageSet:
    """An ImageSet from an ImageSet, an array (n, H, W[, C]) or a path (see :func:`read_images`)."""
    if isinstance(X, ImageSet):
        if size is not None or mode is not None:
            return ImageSet(_resize_array(X.images, _size_pair(size) or X.shape[1::-1],
                                          _check_mode(mode)), X.ids, X.labels, X.source)
        return X
    if isinstance(X, (str, Path)):
        return read_images(X, size=size, mode=mode)
    return _finish(_check_array(X, "array"), None, "array", _size_pair(size), _check_mode(mode))


class ImageData:
    """Images on a device, served as float (B, C, H, W) batches in [0, 1] for ``train_module``.

    Parameters
    ----------
    images : numpy.ndarray, shape (n, H, W, C)
        ``uint8`` (divided by 255 per batch) or float in [0, 1].
    device : torch.device or str
    """

    def __init__(self, images: np.ndarray, device="cpu"):
        import torch

        self.device = torch.device(device)
        chw = np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2))  # (n, C, H, W)
        self._scale = 1.0 / 255.0 if chw.dtype == np.uint8 else None
        if self._scale is None:
            chw = chw.astype(np.float32, copy=False)
        self._x = torch.as_tensor(chw, device=self.device)

    def __len__(self) -> int:
        return self._x.shape[0]

    def batch(self, index):
        """Images ``index`` (LongTensor, shape (B,)) as float32 (B, C, H, W)."""
        x = self._x.index_select(0, index.to(self.device))
        return x.float() * self._scale if self._scale is not None else x

    def chunks(self, size: int):
        """Consecutive batches of at most ``size`` images, in order."""
        import torch

        for start in range(0, len(self), size):
            yield self.batch(torch.arange(start, min(start + size, len(self))))
