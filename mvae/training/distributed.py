"""Data-parallel training over several processes or machines with ``torch.distributed``.

Launch with ``torchrun`` (which sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)::

    torchrun --nproc_per_node=2 -m mvae fit table.biom -o results --distributed

Every rank holds the same model and trains on its own contiguous block of the table's samples
(its shard), in memory or streamed, taking the same number of steps.
The training loop (:func:`mvae.training.loop.train_module`) wraps the module in
:class:`torch.nn.parallel.DistributedDataParallel`: it copies rank 0's parameters and buffers to
every rank when training starts and averages the gradients over the ranks during each backward
pass (gloo on CPU, nccl on GPU), so all ranks take identical optimiser steps. With equal shards the
averaged gradient is the gradient of the global batch mean, as in a single-process run with the
same global batch; the Monte Carlo noise differs per rank, so results agree to within that noise,
not bitwise. Rank 0 alone writes checkpoints and outputs.

This module joins and leaves the process group (:func:`process_group`), says where this process
stands in it (:func:`current`, :func:`is_writer`) and adds up small arrays over the ranks
(:class:`DistInfo`), with which the table's scan and input statistics are summed over the
ranks' shards (:mod:`mvae.io.sources`).
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
