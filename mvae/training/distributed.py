"""Data-parallel training over several processes or machines with ``torch.distributed``.

Launch with ``torchrun`` (which sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)::

    torchrun --nproc_per_node=2 -m mvae fit table.biom -o results --distributed

Every rank holds the same model and draws the same shuffled order of samples; each takes the
rows ``rank::world`` of every global minibatch (or, for a streamed table, its own block of rows).
The training loop (:func:`mvae.training.loop.train_module`) wraps the module in
:class:`torch.nn.parallel.DistributedDataParallel`: it copies rank 0's parameters and buffers to
every rank when training starts and averages the gradients over the ranks during each backward
pass (gloo on CPU, nccl on GPU), so all ranks take identical optimiser steps. With equal shards the
averaged gradient is the gradient of the global batch mean, as in a single-process run with the
same global batch; the Monte Carlo noise differs per rank, so results agree to within that noise,
not bitwise. Rank 0 alone writes checkpoints and outputs.

This module joins and leaves the process group (:func:`process_group`), says where this process
stands in it (:func:`current`, :func:`is_writer`) and adds up what a streamed fit reads before
training (:class:`DistInfo`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np

__all__ = ["DistInfo", "current", "is_writer", "process_group"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in an initialised process group."""

    rank: int
    world: int

    def average(self, values: np.ndarray) -> np.ndarray:
        """Mean over the ranks of a small float array (every rank gets the result)."""
        return self.sum(values) / self.world

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Elementwise sum over the ranks of a float array (float64; every rank gets it)."""
        import torch
        import torch.distributed as dist

        t = torch.as_tensor(np.array(values, dtype=np.float64))
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.numpy()

    def scan(self, stream):
        """:meth:`StreamingCounts.scan` of the whole of ``stream``, each rank reading only its own
        contiguous block of rows; the totals are added up over the ranks."""
        from ..io.streaming import TableScan

        n = stream.n_samples
        shard = stream.shard(self.rank, self.world, equal=False)
        start = (n // self.world) * self.rank + min(self.rank, n % self.world)  # array_split's
        part = shard.scan()
        D = stream.n_features
        flat = np.zeros(2 * D + 2 * n)
        flat[:D], flat[D:2 * D] = part.feature_totals, part.feature_nnz
        flat[2 * D + start:2 * D + start + shard.n_samples] = part.depths
        flat[2 * D + n + start:2 * D + n + start + shard.n_samples] = part.sample_nnz
        flat = self.sum(flat)
        best = np.zeros((self.world, 3))
        best[self.rank] = (part.max_count, start + part.max_at[0], part.max_at[1])
        best = self.sum(best)
        r = int(np.argmax(best[:, 0]))  # the first rank holding the largest count
        return TableScan(flat[:D], flat[D:2 * D].astype(np.int64), flat[2 * D:2 * D + n],
                         flat[2 * D + n:].astype(np.int64), float(best[r, 0]),
                         (int(best[r, 1]), int(best[r, 2])))

    def input_statistics(self, stream, pseudocount: float):
        """:meth:`StreamingCounts.input_statistics` of ``stream``, each rank reading its block."""
        from ..io.streaming import finish_input_statistics

        shard = stream.shard(self.rank, self.world, equal=False)
        return finish_input_statistics(self.sum(shard.input_sums(pseudocount)), pseudocount,
                                       stream.n_features)


def current() -> DistInfo | None:
    """The process group's rank and size when one is initialised with more than one rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    return DistInfo(dist.get_rank(), world) if world > 1 else None


@contextlib.contextmanager
def process_group(device: str = "cpu"):
    """Join the process group torchrun describes for the duration of a ``with`` block.

    Yields this rank's :class:`DistInfo` (None for a group of one). On leaving the block the group
    is destroyed (``torch.distributed.destroy_process_group``) if this call created it, so the
    backend's threads end while the interpreter is still running; a group that was already
    initialised is used as it is and left alone.

    Raises
    ------
    InputError
        When the environment names no process group (not launched by torchrun).
    """
    import torch.distributed as dist

    from ..errors import InputError

    if dist.is_available() and dist.is_initialized():
        yield current()
        return
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        raise InputError("--distributed needs to be launched by torchrun (RANK and WORLD_SIZE are "
                         "not set); e.g. torchrun --nproc_per_node=2 -m mvae fit ...")
    dist.init_process_group(backend="nccl" if str(device).startswith("cuda") else "gloo")
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def is_writer() -> bool:
    """True on rank 0 or when not distributed: the process that writes files."""
    info = current()
    return info is None or info.rank == 0
