"""Small facts about table files that the readers share: the orientations of a text table, the
warning when its ids look like the other axis, and HDF5 and gzip told by their magic bytes."""

from __future__ import annotations

import gzip
from pathlib import Path

from mvae.errors import InputError

ORIENTATIONS = ("samples-as-rows", "features-as-rows")

#: Trailing columns of a features-as-rows table that hold feature annotation, not a sample.
_ANNOTATION_COLUMNS = ("taxonomy", "taxon", "consensus lineage", "consensuslineage")


class OrientationWarning(UserWarning):
    """The ids of a text table look like the other axis than the ``orientation`` given says."""


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_GZIP_MAGIC = b"\x1f\x8b"


def _is_hdf5(p: Path) -> bool:
    with open(p, "rb") as fh:
        return fh.read(len(_HDF5_MAGIC)) == _HDF5_MAGIC


def _is_gzip(p: Path) -> bool:
    with open(p, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _gzip_is_hdf5(p: Path, shown: str) -> bool:
    try:
        with gzip.open(p, "rb") as gz:
            return gz.read(len(_HDF5_MAGIC)) == _HDF5_MAGIC
    except (OSError, EOFError) as exc:
        raise InputError(
            f"{shown}: corrupt gzip file ({exc}). Re-download or re-export it."
        ) from exc
