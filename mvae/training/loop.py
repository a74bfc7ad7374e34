"""One training loop for every mvae module.

A module is trainable here if calling it, ``module(batch, generator=...)`` (its ``forward``),
returns a :class:`~mvae.counts.LossTerms` of per-sample ``reconstruction`` and ``kl`` tensors, and
``module.loss(batch, generator=...)`` does the same (validation calls it); data comes from any object
with ``len()`` and ``batch(index) -> Tensor`` (see :class:`mvae.training.batches.CountData`). The loop knows
nothing of AnnData, files or the command line.

What it does: shuffled minibatches from a seeded generator, Adam (:mod:`mvae.training.optim`),
KL warm-up, gradient clipping that raises on a non-finite gradient, a per-step finiteness check of
the loss, validation after every epoch with fixed noise, early stopping that restores the best
weights, and an optional progress bar.
Under ``torch.distributed`` (a process group of more than one rank, e.g. launched by ``torchrun``)
the module is wrapped in :class:`torch.nn.parallel.DistributedDataParallel`, which starts every
rank from rank 0's parameters and buffers and averages the gradients over the ranks during the
backward pass (see :mod:`mvae.training.distributed`).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import TrainingError
from .optim import Adam

__all__ = ["TrainConfig", "History", "train_module", "torch_threads", "default_threads",
           "resolve_device"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every module."""

    max_epochs: int = 300
    batch_size: int = 128
    learning_rate: float = 1e-3
    early_stopping: bool = True
    patience: int = 20
    min_delta: float = 0.0
    kl_warmup_epochs: int = 0
    max_grad_norm: float = 1e3
    progress: bool = False
    seed: int = 0


@dataclass
class History:
    """Per-epoch record of a fit (mean per-sample values, nats)."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_reconstruction: list[float] = field(default_factory=list)
    train_kl: list[float] = field(default_factory=list)
    kl_weight: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    def to_frame(self):
        """The record as a pandas DataFrame, one row per epoch."""
        import pandas as pd

        return pd.DataFrame({
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "train_reconstruction": self.train_reconstruction,
            "train_kl": self.train_kl,
            "kl_weight": self.kl_weight,
            "validation_loss": self.validation_loss,
            "seconds": self.seconds,
        })


def default_threads() -> int:
    """A thread count that does not collapse on shared cores: half the usable cores, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores // 2))


#: Seconds a fit runs before its progress bar appears.
PROGRESS_DELAY = 2.0


def progress_visible() -> bool:
    """Whether a progress bar would reach a person: standard error is a terminal, or the code
    runs in a Jupyter kernel (where tqdm draws a widget); not a log file, a pipe or a test."""
    import sys

    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # a closed or unusual stream
        pass
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except AttributeError:  # pragma: no cover
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the system tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` threads for torch and for numpy/scipy's BLAS (OpenBLAS, MKL...),
    restoring the previous values after.

    BLAS matters too: the PCA initialisation, covariance outputs and baselines run in numpy,
    and an unlimited OpenBLAS on busy shared cores was measured 13-23x slower on an 845 x 845
    eigendecomposition (9-16 s against 0.7 s single-threaded)."""
    from threadpoolctl import threadpool_limits

    # more threads than cores only slows down, and a saved model may ask for a huge number
    n = min(int(n or default_threads()), usable_cores())
    previous = torch.get_num_threads()
    with threadpool_limits(limits=n, user_api="blas"):
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def resolve_device(device: str | torch.device, *, option: bool = False) -> torch.device:
    """``"auto"`` → cuda when available, else cpu; otherwise the device named, checked.

    The one place that decides where to train, for the Python API and the command line alike;
    ``option=True`` words the error for the ``--device`` option instead of ``device=``.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from ..errors import InputError

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        given, cpu, auto = (f"--device {device}", "--device cpu", "--device auto") if option \
            else (f"device={str(device)!r}", "device='cpu'", "device='auto'")
        raise InputError(f"{given}: CUDA is not available here (torch {torch.__version__}). Use "
                         f"{cpu}, or {auto} to take a GPU only when there is one.")
    return dev


def _kl_weight(epoch: int, warmup: int) -> float:
    return 1.0 if warmup <= 0 else min(1.0, (epoch + 1) / warmup)


@torch.no_grad()
def evaluate(module, data, batch_size: int, seed: int) -> float:
    """Mean per-sample negative ELBO (KL weight 1) over ``data`` with noise fixed by ``seed``."""
    was_training = module.training
    module.eval()
    gen = torch.Generator(device=data.device).manual_seed(seed)
    total = 0.0
    for batch in data.chunks(batch_size):
        total += float(module.loss(batch, generator=gen).negative_elbo().sum())
    module.train(was_training)
    return total / len(data)


def _kept(checkpoint_path, finished: bool = False) -> str:
    """Where the interrupted work is, for the interruption's message."""
    if checkpoint_path is None:
        return "no checkpoint was asked for, so the work is lost (fit with a checkpoint to keep it)"
    if finished:
        return f"the finished state is in {checkpoint_path}"
    return f"checkpoint written to {checkpoint_path}"


def validation_sum(module, data, score, seed: int, dist=None) -> tuple[float, int]:
    """(sum of the per-sample validation −ELBO, number of samples): from ``score`` when given,
    else :func:`evaluate` with noise fixed by ``seed``; this rank's, or every rank's added up
    when ``dist`` (a :class:`~mvae.training.distributed.DistInfo`) is given."""
    if data is None or not len(data):
        total, count = 0.0, 0
    elif score is not None:
        total, count = score(module) * len(score), len(score)
    else:
        total, count = evaluate(module, data, 1024, seed) * len(data), len(data)
    if dist is not None:
        total, count = dist.sum([total, count])
    return total, count


class _SignalFlag:
    """Record SIGTERM/SIGINT during training instead of dying mid-step (main thread only)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool):
        self.received: int | None = None
        self._previous = {}
        self.enabled = enabled and threading.current_thread() is threading.main_thread()

    def _handler(self, signum, frame):
        self.received = signum

    def __enter__(self):
        if self.enabled:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


CHECKPOINT_FORMAT = "mvae-checkpoint"
CHECKPOINT_VERSION = 2


def _history_state(history: History) -> dict:
    return {name: list(getattr(history, name)) for name in _HISTORY_FIELDS}


def _history_from(state: dict, best_epoch, stopped) -> History:
    h = History(**{name: list(state[name]) for name in _HISTORY_FIELDS})
    h.best_epoch = best_epoch
    h.stopped_early = stopped
    return h


_HISTORY_FIELDS = ("epoch", "train_loss", "train_reconstruction", "train_kl", "kl_weight",
                   "validation_loss", "seconds")


def _clip_gradients(params: list[torch.Tensor], max_norm: float) -> bool:
    """Scale the gradients down to a total 2-norm of ``max_norm`` when above it; False if the norm
    is not finite. The same rule as ``torch.nn.utils.clip_grad_norm_``, but the gradients are
    touched only when clipping happens (that function multiplies every gradient by a factor of
    1.0 at every step: a pass over all of them, ~7% of a step at D = 2,000)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    total = torch.nn.utils.get_total_norm(grads)
    if not math.isfinite(float(total)):
        return False
    if float(total) > max_norm:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return True


def _data_parallel(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel over the current process group.

    Every parameter gets a gradient at every step (tests/test_distributed.py checks each
    objective on dense and sparse batches), so DDP need not search the graph for unused ones.
    The buffers (the encoder's input centre and scale) are set before training and never change:
    DDP copies rank 0's once, at construction, not before every forward. ``device_ids`` stays
    None: the module and its batches are already on this rank's device.
    """
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, find_unused_parameters=False,
                                   forward_sync_buffers=False)


def train_module(module: torch.nn.Module, train_data, validation_data=None,
                 config: TrainConfig = TrainConfig(), *, checkpoint_path=None,
                 checkpoint_every: int = 0, fingerprint: str = "", resume: bool = False,
                 handle_signals: bool = True, on_step=None, sharded: bool = False,
                 validation_score=None) -> History:
    """Fit ``module`` by stochastic gradient descent on the negative ELBO.

    Parameters
    ----------
    module : torch.nn.Module
        ``module(batch, generator=...)`` and ``module.loss(batch, generator=...)`` return
        per-sample LossTerms. Under ``torch.distributed`` every parameter that requires a
        gradient must get one at every step (see :func:`_data_parallel`).
    train_data, validation_data
        Objects with ``len()``, ``device``, ``batch(index)`` and ``chunks(size)``.
    config : TrainConfig
    checkpoint_path : path, optional
        Where to keep the checkpoint (model, optimiser, epoch and step, the epoch's shuffle order,
        every random generator's state, history and early-stopping state), written atomically.
    checkpoint_every : int
        Write it every this many epochs (0: only when interrupted).
    fingerprint : str
        Identifies the data and settings; a checkpoint with another fingerprint is not resumed.
    resume : bool
        Continue from ``checkpoint_path`` if it exists; the result is bitwise equal to an
        uninterrupted run with the same thread count.
    handle_signals : bool
        On SIGTERM/SIGINT finish the current step, write the checkpoint and raise
        :class:`~mvae.errors.TrainingInterrupted`.
    on_step : callable(epoch, step), optional
        Called after every optimiser step (epochs and steps counted from 1); for progress and tests.
    sharded : bool
        Under ``torch.distributed`` only: ``train_data`` and ``validation_data`` are this rank's
        own shards (equal-sized training shards, e.g. :meth:`StreamingCounts.shard`). Each rank
        shuffles its shard and takes ``batch_size // world`` rows per step, so a step still sees a
        global batch of ``batch_size``; the validation loss is averaged over all shards. Without
        it every rank holds the whole table and takes rows ``rank::world`` of a shared shuffle.
    validation_score : callable, optional
        ``validation_score(module)`` -> mean validation −ELBO per sample over ``len(
        validation_score)`` samples, called after every epoch in place of :func:`evaluate` (e.g.
        :class:`mvae.training.selection.RefinedValidation`); if it has ``state_dict`` and
        ``load_state_dict(module, state)``, its state goes into checkpoints.

    Returns
    -------
    History
        With ``best_epoch`` set; when early stopping is on, the module ends at the best epoch's weights.

    Raises
    ------
    TrainingError
        On a non-finite loss or gradient, naming the epoch and step (no checkpoint is written then,
        so the last good one survives).
    TrainingInterrupted
        After a signal, once the checkpoint is written.
    """
    from .checkpoint import load_checkpoint, save_checkpoint, sweep_temporary
    from .distributed import current
    from ..errors import InputError, TrainingInterrupted

    dist = current()  # None unless torch.distributed is initialised with more than one rank
    # rank 0 alone writes checkpoints; every rank reads one to resume (a shared filesystem)
    writes_checkpoints = dist is None or dist.rank == 0
    sharded = bool(sharded and dist is not None)
    device = train_data.device
    # the Monte Carlo noise differs per rank; the shuffle is shared unless each rank has a shard
    rank = dist.rank if dist else 0
    gen = torch.Generator(device=device).manual_seed(config.seed + rank)
    shuffle = torch.Generator().manual_seed(config.seed + 1 + (7919 * rank if sharded else 0))
    # our Adam, not torch.optim's: every torch.optim optimiser imports torch._dynamo on first use
    optimiser = Adam(module.parameters(), lr=config.learning_rate)
    trainable = [p for p in module.parameters() if p.requires_grad]
    history = History()
    best = reference = math.inf  # the lowest score, and the last one that improved by min_delta
    best_state = None
    since_best = 0  # epochs since the reference last improved
    n = len(train_data)
    bs = min(config.batch_size, n * dist.world if sharded else n)
    if dist is not None and bs < dist.world:
        raise InputError(f"batch_size={bs} is smaller than the number of ranks ({dist.world})")
    if sharded:
        bs //= dist.world  # this rank's rows per step; the shards are equal, so are the steps
    n_steps = max(1, n // bs)  # drop the ragged last batch: equal-sized steps
    start_epoch, start_step = 0, 0
    order = None
    sums = np.zeros(3)

    if checkpoint_path is not None and writes_checkpoints:
        sweep_temporary(checkpoint_path)
    ck = None
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        ck = load_checkpoint(checkpoint_path)
        if ck.get("format") != CHECKPOINT_FORMAT or ck.get("version") != CHECKPOINT_VERSION:
            raise InputError(f"{checkpoint_path}: not an mvae checkpoint of version "
                             f"{CHECKPOINT_VERSION}")
        if ck.get("fingerprint") != fingerprint:
            raise InputError(f"{checkpoint_path}: was written for different data or settings; "
                             "refusing to resume (start afresh without resume, or use the "
                             "original table and options)")
        module.load_state_dict(ck["module"])
        optimiser.load_state_dict(ck["optimiser"])
        gen.set_state(ck["gen_state"])
        shuffle.set_state(ck["shuffle_state"])
        torch.set_rng_state(ck["torch_rng"])
        history = _history_from(ck["history"], ck["best_epoch"], False)
        best = float(ck["best"])
        reference = float(ck["reference"])
        best_state = ck["best_state"] or None
        since_best = int(ck["since_best"])
        if validation_score is not None and hasattr(validation_score, "load_state_dict"):
            validation_score.load_state_dict(module, ck["validation_state"])
        start_epoch, start_step = int(ck["epoch"]), int(ck["step"])
        order = ck["order"] if start_step > 0 else None
        sums = ck["sums"].numpy().copy()
        if rank != 0:  # the checkpoint holds rank 0's generators: give this rank its own
            offset = 7919 * (start_epoch * n_steps + start_step + 1)
            gen.manual_seed(config.seed + rank + offset)
            if sharded:
                shuffle.manual_seed(config.seed + 1 + 7919 * rank + offset)
    if dist is not None:  # every rank must continue from the same point, or none may
        here = np.array([start_epoch, start_step], dtype=np.float64)
        if not np.array_equal(dist.sum(here), here * dist.world):
            raise InputError(f"{checkpoint_path}: not every rank could read the checkpoint to "
                             "resume (it must be on a filesystem all ranks share)")
    if ck is not None and ck.get("finished"):
        module.load_state_dict(ck["final_module"])
        module.eval()
        history.stopped_early = bool(ck.get("stopped_early"))
        return history

    def checkpoint(epoch: int, step: int, finished: bool = False, stopped: bool = False):
        if checkpoint_path is None or not writes_checkpoints:
            return
        save_checkpoint(checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "fingerprint": fingerprint,
            "module": module.state_dict(), "optimiser": optimiser.state_dict(),
            "gen_state": gen.get_state(), "shuffle_state": shuffle.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": epoch, "step": step,
            "order": order if order is not None else torch.empty(0, dtype=torch.int64),
            "sums": torch.as_tensor(sums), "history": _history_state(history),
            "best": best, "reference": reference, "best_epoch": history.best_epoch,
            "best_state": best_state or {},
            "since_best": since_best, "finished": finished, "stopped_early": stopped,
            "validation_state": (validation_score.state_dict()
                                 if hasattr(validation_score, "state_dict") else {}),
            "final_module": module.state_dict() if finished else {},
        })

    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        # shown only once the fit has run for PROGRESS_DELAY seconds: short fits stay quiet
        bar = tqdm(total=config.max_epochs, initial=start_epoch, desc="fit", unit="epoch",
                   leave=False, delay=PROGRESS_DELAY)
    module.train()
    stopped = False
    # under torch.distributed, DDP broadcasts rank 0's parameters and buffers here and averages
    # the gradients in every backward pass; each step calls the wrapper (the module's forward)
    model = _data_parallel(module) if dist is not None else module
    with _SignalFlag(handle_signals) as flag:
        for epoch in range(start_epoch, config.max_epochs):
            t0 = time.perf_counter()
            w = _kl_weight(epoch, config.kl_warmup_epochs)
            first = start_step if epoch == start_epoch else 0
            if first == 0:
                order = (train_data.epoch_order(shuffle) if hasattr(train_data, "epoch_order")
                         else torch.randperm(n, generator=shuffle))
                sums = np.zeros(3)
            for step in range(first, n_steps):
                index = order[step * bs:(step + 1) * bs]
                if dist is not None and not sharded:  # this rank's share of the global batch
                    index = index[dist.rank::dist.world]
                batch = train_data.batch(index)
                terms = model(batch, generator=gen)
                loss = terms.negative_elbo(w).mean()
                if not torch.isfinite(loss):
                    raise TrainingError(f"the loss became {loss.item()} at epoch {epoch + 1}, step "
                                        f"{step + 1}; try a lower learning rate")
                optimiser.zero_grad(set_to_none=True)
                loss.backward()  # under DDP the gradients are averaged over the ranks here
                if not _clip_gradients(trainable, config.max_grad_norm):
                    raise TrainingError(f"a non-finite gradient appeared at epoch {epoch + 1}, "
                                        f"step {step + 1}; try a lower learning rate")
                optimiser.step()
                sums += torch.stack([loss.detach(), terms.reconstruction.detach().mean(),
                                     terms.kl.detach().mean()]).tolist()
                if dist is not None and step + 1 == n_steps:
                    sums = dist.average(sums)  # all ranks report the global epoch means
                if on_step is not None:
                    on_step(epoch + 1, step + 1)
                if flag.received is not None and step + 1 < n_steps:
                    checkpoint(epoch, step + 1)
                    raise TrainingInterrupted(
                        f"interrupted by signal {flag.received} at epoch {epoch + 1}, step "
                        f"{step + 1}; {_kept(checkpoint_path)}",
                        flag.received, checkpoint_path)
            mean = [float(v) for v in sums / n_steps]  # plain floats: checkpoints hold no numpy
            # sharded: the mean over every rank's validation shard
            total, count = validation_sum(module, validation_data, validation_score,
                                          config.seed + 2 + (rank if sharded else 0),
                                          dist if sharded else None)
            valid = float(total / count) if count else math.nan
            history.epoch.append(epoch + 1)
            history.train_loss.append(mean[0])
            history.train_reconstruction.append(mean[1])
            history.train_kl.append(mean[2])
            history.kl_weight.append(float(w))
            history.validation_loss.append(valid)
            history.seconds.append(float(time.perf_counter() - t0))
            if bar is not None:
                # no refresh of its own: tqdm then draws only after its delay
                bar.set_postfix(loss=f"{mean[0]:.4g}", valid=f"{valid:.4g}", refresh=False)
                bar.update(1)
            monitored = valid if not math.isnan(valid) else mean[0]
            # Only count improvement once the KL weight is 1: earlier losses are not comparable.
            if w >= 1.0 and monitored < best:  # the weights to restore: the lowest score
                best = monitored
                history.best_epoch = epoch + 1
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            # Converged when no epoch of the last `patience` has improved on the reference by
            # more than min_delta (relative); a slow creep below that does not keep it going.
            if w >= 1.0 and monitored < reference - config.min_delta * abs(
                    reference if math.isfinite(reference) else 1):
                reference = monitored
                since_best = 0
            elif w >= 1.0:
                since_best += 1
                if config.early_stopping and since_best >= config.patience:
                    stopped = True
            order = None
            if stopped or epoch + 1 == config.max_epochs:
                break
            if flag.received is not None:
                checkpoint(epoch + 1, 0)
                raise TrainingInterrupted(
                    f"interrupted by signal {flag.received} after epoch {epoch + 1}; "
                    f"{_kept(checkpoint_path)}", flag.received, checkpoint_path)
            if checkpoint_every and (epoch + 1) % checkpoint_every == 0:
                checkpoint(epoch + 1, 0)
        if bar is not None:
            bar.close()
        history.stopped_early = stopped
        if config.early_stopping and best_state is not None:
            module.load_state_dict(best_state)
        module.eval()
        # the finished state: a resume after this point returns the same result without training
        checkpoint(len(history.epoch), 0, finished=True, stopped=stopped)
        if flag.received is not None:  # the signal came during the last step: work is complete
            raise TrainingInterrupted(
                f"interrupted by signal {flag.received} at the end of training; "
                f"{_kept(checkpoint_path, finished=True)}", flag.received, checkpoint_path)
    return history
