"""Image grids as PNG files (Pillow only: no matplotlib, no display).

Images are channels-last arrays ``(n, H, W, C)`` (C = 1 or 3), ``uint8`` or float in [0, 1], the
layout every ``mvae.images`` reader and model returns.
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["image_grid", "comparison_grid", "save_grid"]


def _as_uint8(images) -> np.ndarray:
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (n, H, W) or (n, H, W, C) with C = 1 or 3, got "
                         f"shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    return np.round(np.clip(a.astype(np.float64), 0.0, 1.0) * 255).astype(np.uint8)


def image_grid(images, *, n_cols: int | None = None, padding: int = 2, scale: int = 1,
               background: int = 255):
    """Tile images into one Pillow image, row by row.

    Parameters
    ----------
    images : array, shape (n, H, W[, C])
    n_cols : int, optional
        Images per row (default ⌈√n⌉).
    padding : int
        Pixels between images and around the border.
    scale : int
        Enlarge each image by this integer factor (nearest neighbour, so pixels stay sharp).
    background : int
        Grey level (0–255) of the padding.

    Returns
    -------
    PIL.Image.Image
        Mode ``L`` for grey images, ``RGB`` for colour.
    """
    from PIL import Image

    a = _as_uint8(images)
    n, H, W, C = a.shape
    if n == 0:
        raise ValueError("no images to draw")
    if scale > 1:
        a = a.repeat(scale, axis=1).repeat(scale, axis=2)  # (n, sH, sW, C)
        H, W = H * scale, W * scale
    cols = int(n_cols or math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    canvas = np.full((padding + rows * (H + padding), padding + cols * (W + padding), C),
                     background, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = padding + r * (H + padding), padding + c * (W + padding)
        canvas[y:y + H, x:x + W] = a[i]
    return Image.fromarray(canvas[..., 0] if C == 1 else canvas)


def comparison_grid(originals, reconstructions, *, n_cols: int = 8, **kw):
    """Originals and their reconstructions in alternating rows (row 1 originals, row 2 theirs...).

    Parameters
    ----------
    originals, reconstructions : arrays of the same shape (n, H, W[, C])
    n_cols : int
        Images per row.
    **kw
        Passed to :func:`image_grid`.
    """
    a, b = _as_uint8(originals), _as_uint8(reconstructions)
    if a.shape != b.shape:
        raise ValueError(f"originals {a.shape} and reconstructions {b.shape} differ in shape")
    n = a.shape[0]
    rows = []
    for start in range(0, n, n_cols):
        block_a, block_b = a[start:start + n_cols], b[start:start + n_cols]
        if len(block_a) < n_cols:  # pad the last pair of rows so they stay aligned
            fill = np.full((n_cols - len(block_a), *a.shape[1:]), 255, dtype=np.uint8)
            block_a, block_b = np.concatenate([block_a, fill]), np.concatenate([block_b, fill])
        rows += [block_a, block_b]
    return image_grid(np.concatenate(rows), n_cols=n_cols, **kw)


def save_grid(images, path: str | os.PathLike, **kw) -> None:
    """Write :func:`image_grid` of ``images`` to ``path`` as PNG (whatever the file's suffix)."""
    image_grid(images, **kw).save(path, format="PNG")
