"""Training: minibatches, the optimisation loop, checkpoints and resume, data parallelism.

Knows torch modules only through their ``loss(batch, generator=...)`` returning per-sample terms,
and data only through ``len()``, ``batch(index)`` and ``chunks(size)``; nothing here knows AnnData,
files of tables, or the command line.

- :mod:`~mvae.training.batches` -- minibatches sliced from a count matrix in memory;
- :mod:`~mvae.training.loop` -- the loop, early stopping, thread settings, devices;
- :mod:`~mvae.training.checkpoint` -- crash-safe checkpoints and model files;
- :mod:`~mvae.training.distributed` -- several processes under ``torchrun``.
"""
