"""Pieces of the training loop checked against torch's own implementations."""

import numpy as np
import pytest
import torch

from mvae.training.loop import _clip_gradients


def _params(seed, scale):
    rng = np.random.default_rng(seed)
    ps = [torch.nn.Parameter(torch.tensor(rng.normal(size=s))) for s in [(5, 3), (3,), ()]]
    for p in ps:
        p.grad = torch.tensor(rng.normal(size=p.shape) * scale)
    return ps


@pytest.mark.parametrize("scale", [0.01, 1.0, 50.0])
def test_clipping_matches_clip_grad_norm(scale):
    """Same result as torch.nn.utils.clip_grad_norm_ below and above the threshold."""
    ours, theirs = _params(0, scale), _params(0, scale)
    before = [p.grad.clone() for p in ours]
    assert _clip_gradients(ours, 2.0)
    torch.nn.utils.clip_grad_norm_(theirs, 2.0)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-12, atol=1e-15)
    total = float(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in before])))
    if total <= 2.0:  # untouched, bit for bit, when no clipping is needed
        assert all(torch.equal(a.grad, b) for a, b in zip(ours, before))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_clipping_reports_non_finite_gradients(bad):
    ps = _params(1, 1.0)
    ps[0].grad[1, 2] = bad
    assert not _clip_gradients(ps, 2.0)


def test_the_library_changes_no_process_wide_allocator_or_c_state():
    """Training used to switch glibc's malloc settings for the whole process (mallopt through
    ctypes) and keep tensors alive past the interpreter through ctypes; neither is the library's
    to do (the allocator's figures and the environment variables that set it are in
    benchmarks/results/allocator/README.md)."""
    from pathlib import Path

    import mvae

    package = Path(mvae.__file__).parent
    found = [f"{path.relative_to(package)}: {word}" for path in sorted(package.rglob("*.py"))
             for word in ("ctypes", "mallopt", "malloc_trim")
             if word in path.read_text(encoding="utf-8")]
    assert found == []


def test_progress_bar_shows_epochs_and_losses_after_its_delay(monkeypatch, capsys):
    """The bar (tqdm, standard error) appears once a fit has run PROGRESS_DELAY seconds, and
    shows the epochs with the training and validation loss; a shorter fit prints nothing."""
    import numpy as np

    import mvae.training.loop as loop
    from mvae.training.batches import CountData

    rng = np.random.default_rng(0)
    X = rng.poisson(5.0, size=(60, 12)).astype(float)
    X[:, 0] += 1
    data = CountData(X)

    import tqdm.auto

    from mvae.counts import MultinomialVAEModule, MVAEConfig

    class EveryUpdate(tqdm.auto.tqdm):  # tqdm redraws at most every 0.1 s; this fit is faster
        def __init__(self, *args, **kwargs):
            super().__init__(*args, mininterval=0, miniters=1, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", EveryUpdate)

    def fit(delay):
        monkeypatch.setattr(loop, "PROGRESS_DELAY", delay)
        torch.manual_seed(0)
        module = MultinomialVAEModule(MVAEConfig(n_features=X.shape[1], n_latent=2, n_hidden=8))
        loop.train_module(module, data, data, loop.TrainConfig(max_epochs=3, batch_size=20,
                                                               progress=True, seed=0),
                          handle_signals=False)
        return capsys.readouterr().err

    shown = fit(0.0)
    assert "fit:" in shown and "3/3" in shown and "loss=" in shown and "valid=" in shown
    assert fit(3600.0) == ""


def test_progress_is_automatic_only_where_a_person_sees_it(monkeypatch):
    import io

    import mvae.training.loop as loop

    monkeypatch.setattr("sys.stderr", io.StringIO())  # a log file or a pipe
    monkeypatch.delitem(__import__("sys").modules, "IPython", raising=False)
    assert loop.progress_visible() is False

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    assert loop.progress_visible() is True
