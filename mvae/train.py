"""One training loop for every mvae module.

A module is trainable here if it has ``loss(batch, generator=...) -> LossTerms`` returning per-sample
``reconstruction`` and ``kl`` tensors; data comes from any object with ``len()`` and
``batch(index) -> Tensor`` (see :class:`mvae.data.CountData`). The loop knows nothing of AnnData,
files or the command line.

What it does: shuffled minibatches from a seeded generator, Adam, KL warm-up, gradient clipping that
raises on a non-finite gradient, a per-step finiteness check of the loss, validation after every
epoch with fixed noise, early stopping that restores the best weights, and an optional progress bar.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import TrainingError

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


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with ``torch.set_num_threads(n)`` and restore the previous value after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n or default_threads()))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → cuda when available, else cpu; otherwise the device named (checked)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but CUDA is not available; "
                         "use device='cpu' or 'auto'")
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


def train_module(module: torch.nn.Module, train_data, validation_data=None,
                 config: TrainConfig = TrainConfig()) -> History:
    """Fit ``module`` by stochastic gradient descent on the negative ELBO.

    Parameters
    ----------
    module : torch.nn.Module
        Has ``loss(batch, generator=...)`` returning per-sample LossTerms.
    train_data, validation_data
        Objects with ``len()``, ``device``, ``batch(index)`` and ``chunks(size)``.
    config : TrainConfig

    Returns
    -------
    History
        With ``best_epoch`` set; when early stopping is on, the module ends at the best epoch's weights.

    Raises
    ------
    TrainingError
        On a non-finite loss or gradient, naming the epoch and step.
    """
    device = train_data.device
    gen = torch.Generator(device=device).manual_seed(config.seed)
    shuffle = torch.Generator().manual_seed(config.seed + 1)
    optimiser = torch.optim.Adam(module.parameters(), lr=config.learning_rate)
    history = History()
    best = math.inf
    best_state = None
    since_best = 0
    n = len(train_data)
    bs = min(config.batch_size, n)
    n_steps = max(1, n // bs)  # drop the ragged last batch: equal-sized steps
    epochs = range(config.max_epochs)
    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_epochs, desc="fit", unit="epoch", leave=False)
    module.train()
    for epoch in epochs:
        t0 = time.perf_counter()
        w = _kl_weight(epoch, config.kl_warmup_epochs)
        order = torch.randperm(n, generator=shuffle)
        sums = np.zeros(3)
        for step in range(n_steps):
            batch = train_data.batch(order[step * bs:(step + 1) * bs])
            terms = module.loss(batch, generator=gen)
            loss = terms.negative_elbo(w).mean()
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {float(loss)} at epoch {epoch + 1}, step "
                                    f"{step + 1}; try a lower learning rate")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            try:
                torch.nn.utils.clip_grad_norm_(module.parameters(), config.max_grad_norm,
                                               error_if_nonfinite=True)
            except RuntimeError as exc:
                raise TrainingError(f"a non-finite gradient appeared at epoch {epoch + 1}, step "
                                    f"{step + 1}; try a lower learning rate") from exc
            optimiser.step()
            sums += (loss.item(), terms.reconstruction.detach().mean().item(),
                     terms.kl.detach().mean().item())
        sums /= n_steps
        valid = (evaluate(module, validation_data, 1024, config.seed + 2)
                 if validation_data is not None and len(validation_data) else math.nan)
        history.epoch.append(epoch + 1)
        history.train_loss.append(sums[0])
        history.train_reconstruction.append(sums[1])
        history.train_kl.append(sums[2])
        history.kl_weight.append(w)
        history.validation_loss.append(valid)
        history.seconds.append(time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{sums[0]:.4g}", valid=f"{valid:.4g}")
        monitored = valid if not math.isnan(valid) else sums[0]
        # Only count improvement once the KL weight is 1: earlier losses are not comparable.
        if w >= 1.0 and monitored < best - config.min_delta * abs(best if math.isfinite(best) else 1):
            best = monitored
            history.best_epoch = epoch + 1
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            since_best = 0
        elif w >= 1.0:
            since_best += 1
            if config.early_stopping and since_best >= config.patience:
                history.stopped_early = True
                break
    if bar is not None:
        bar.close()
    if config.early_stopping and best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return history
