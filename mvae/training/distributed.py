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

import atexit
import collections
import os
from dataclasses import dataclass

import numpy as np

__all__ = ["DistInfo", "current", "init_from_env", "is_writer"]

# The tensors of the recent collectives, kept referenced from Python past the interpreter's end.
# A gloo worker thread can hold a finished collective's work, with its tensors, until the group's
# teardown; after destroy_process_group the group (and its workers) can outlive the interpreter
# (creating any torch optimiser in the process kept it alive here), so a worker may drop a work
# only at exit. If Python had dropped that tensor, the drop must take the GIL, the worker thread
# is torn down inside a destructor and the process aborts ("terminate called without an active
# exception", SIGABRT, after every output was written: 7 of ~200 runs of
# test_two_ranks_resume_from_rank_0s_checkpoint's script; the core dump showed
# ProcessGroupGloo::runLoop -> ~AsyncAllreduceWork -> decref_pyobject -> take_gil ->
# pthread_exit; holding only the last tensor did not help, 2 of ~40). A tensor that Python still
# references needs no GIL to be dropped by a worker: the last 64 are held here (the gradient
# buffers emptied, so they cost no memory) and leaked at exit by _leave_process_group (0 aborts
# in 100 runs); older ones are dropped while training goes on, when a worker taking the GIL is
# harmless.
_RECENT: collections.deque = collections.deque(maxlen=64)


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
        _RECENT.append(flat)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            size = g.numel()
            p.grad = flat[offset:offset + size].view_as(p).clone()
            offset += size
        flat.set_()  # its memory is freed now; the (empty) tensor stays in _RECENT

    def average(self, values: np.ndarray) -> np.ndarray:
        """Mean over the ranks of a small float array (every rank gets the result)."""
        return self.sum(values) / self.world

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Elementwise sum over the ranks of a float array (float64; every rank gets it)."""
        import torch
        import torch.distributed as dist

        t = torch.as_tensor(np.array(values, dtype=np.float64))
        _RECENT.append(t)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.numpy()

    def broadcast_module(self, module) -> None:
        """Give every rank rank 0's parameters and buffers (as DDP does when it wraps a model)."""
        import torch.distributed as dist

        for t in [*module.parameters(), *module.buffers()]:
            data = t.data
            _RECENT.append(data)
            dist.broadcast(data, src=0)

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


def init_from_env(device: str = "cpu") -> DistInfo | None:
    """Join the process group torchrun describes in the environment (no-op when already joined).

    Returns this rank's :class:`DistInfo` (None for a group of one); raises InputError when the
    environment names no process group (not launched by torchrun).
    """
    import torch.distributed as dist

    from ..errors import InputError

    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        raise InputError("--distributed needs to be launched by torchrun (RANK and WORLD_SIZE are "
                         "not set); e.g. torchrun --nproc_per_node=2 -m mvae fit ...")
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        # leave the group before the interpreter tears down, and keep the collectives' recent
        # tensors alive past it: leaving alone did not stop the abort at exit (see _RECENT)
        atexit.register(_leave_process_group)
    return current()


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    # a deliberate leak of at most 64 small or emptied tensors: they must outlive the
    # interpreter's teardown, during which a gloo worker may still drop them (see _RECENT)
    try:
        import ctypes

        for t in _RECENT:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(t))
    except (ImportError, AttributeError):  # not CPython: nothing to keep alive this way
        pass


def is_writer() -> bool:
    """True on rank 0 or when not distributed: the process that writes files."""
    info = current()
    return info is None or info.rank == 0
