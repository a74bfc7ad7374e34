"""Data-parallel training over several processes or machines with ``torch.distributed``.

Launch with ``torchrun`` (which sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)::

    torchrun --nproc_per_node=2 -m mvae fit table.biom -o results --distributed

Every rank holds the same model and draws the same shuffled order of samples; each takes the
rows ``rank::world`` of every global minibatch, computes its gradient, and the gradients are
averaged with one all-reduce per step (gloo on CPU, nccl on GPU), so all ranks take identical
optimiser steps. With equal shards the averaged gradient is the gradient of the global batch
mean, as in a single-process run with the same global batch; the Monte Carlo noise differs per
rank, so results agree to within that noise, not bitwise. Rank 0 alone writes checkpoints and
outputs.

We average gradients by hand rather than wrapping the module in DistributedDataParallel because
the training loop calls ``module.loss`` (DDP only synchronises inside ``forward``); one flattened
all-reduce per step is what DDP's bucketing does for a model of this size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

__all__ = ["DistInfo", "current", "init_from_env", "is_writer"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in an initialised process group."""

    rank: int
    world: int

    def average_gradients(self, module) -> None:
        """Replace every parameter's gradient by its mean over the ranks (one all-reduce)."""
        import torch
        import torch.distributed as dist

        params = [p for p in module.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            size = g.numel()
            p.grad = flat[offset:offset + size].view_as(p).clone()
            offset += size

    def average(self, values: np.ndarray) -> np.ndarray:
        """Mean over the ranks of a small float array (every rank gets the result)."""
        import torch
        import torch.distributed as dist

        t = torch.as_tensor(np.asarray(values, dtype=np.float64))
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return (t / self.world).numpy()


def current() -> DistInfo | None:
    """The process group's rank and size when one is initialised with more than one rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    return DistInfo(dist.get_rank(), world) if world > 1 else None


def init_from_env(device: str = "cpu") -> DistInfo | None:
    """Join the process group torchrun describes in the environment (no-op when already joined).

    Returns this rank's :class:`DistInfo` (None for a group of one); raises InputError when the
    environment names no process group (not launched by torchrun).
    """
    import torch.distributed as dist

    from .errors import InputError

    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        raise InputError("--distributed needs to be launched by torchrun (RANK and WORLD_SIZE are "
                         "not set); e.g. torchrun --nproc_per_node=2 -m mvae fit ...")
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return current()


def is_writer() -> bool:
    """True on rank 0 or when not distributed: the process that writes files."""
    info = current()
    return info is None or info.rank == 0
