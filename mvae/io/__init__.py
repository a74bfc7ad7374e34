"""Readers and writers at the edge of the package: count tables (biom, h5ad, text), sample
metadata, streamed tables larger than memory, the results directory of ``mvae fit`` and its plots.

- :mod:`~mvae.io.tables` -- :func:`read_counts` and the table writers;
- :mod:`~mvae.io.validation` -- checks of count matrices, dropping all-zero samples and features;
- :mod:`~mvae.io.streaming` -- :class:`~mvae.io.streaming.StreamingCounts`, chunked HDF5 tables;
- :mod:`~mvae.io.metadata` -- QIIME 2 style sample metadata;
- :mod:`~mvae.io.outputs` -- the results directory and the files in it;
- :mod:`~mvae.io.plots` -- the loss curve and the embedding scatter.

Heavy dependencies are imported inside the functions that need them.
"""

import sys

from .tables import read_counts

__all__ = ["read_counts", "is_streamed"]


def is_streamed(X) -> bool:
    """Whether ``X`` is a :class:`~mvae.io.streaming.StreamingCounts`, without importing the
    streaming module: a program that made one has imported it already, and a fit of a table in
    memory need not load it."""
    module = sys.modules.get("mvae.io.streaming")
    return module is not None and isinstance(X, module.StreamingCounts)
