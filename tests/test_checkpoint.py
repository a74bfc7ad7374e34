"""Crash-safe checkpoints, bitwise resume after SIGTERM, safe loading and the NaN guard."""

import os
import pickle
import signal

import numpy as np
import pytest
import torch

from mvae import MultinomialVAE
from mvae.training.checkpoint import TMP_PREFIX, atomic_write_bytes, load_checkpoint, save_checkpoint
from mvae.errors import InputError, ModelFileError, TrainingError, TrainingInterrupted

# 54 training samples, batch 16 -> 3 steps per epoch; 4 epochs -> 12 steps
SETTINGS = dict(n_latent=2, n_hidden=8, batch_size=16, max_epochs=4, early_stopping=True,
                patience=50, dropout=0.1, random_state=3, threads=1)


def _table(n=60, D=10, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(D), size=n)
    return np.stack([rng.multinomial(300, pi) for pi in p])


@pytest.fixture(scope="module")
def reference():
    X = _table()
    m = MultinomialVAE(**SETTINGS).fit(X)
    return X, m


def _interrupt_at(target_epoch, target_step):
    def on_step(epoch, step):
        if (epoch, step) == (target_epoch, target_step):
            os.kill(os.getpid(), signal.SIGTERM)
    return on_step


@pytest.mark.parametrize("epoch,step", [(1, 1), (2, 2), (2, 3), (4, 3)],
                         ids=["first-step", "mid-epoch", "epoch-boundary", "last-step"])
def test_sigterm_then_resume_is_bitwise_equal(reference, tmp_path, monkeypatch, epoch, step):
    X, ref = reference
    ck = tmp_path / "checkpoint.pt"
    import mvae.training.loop as train

    original = train.train_module

    def patched(*args, **kwargs):
        kwargs["on_step"] = _interrupt_at(epoch, step)
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "train_module", patched)
    with pytest.raises(TrainingInterrupted) as info:
        MultinomialVAE(**SETTINGS).fit(X, checkpoint=ck)
    assert info.value.exit_code == 143
    assert ck.is_file()
    monkeypatch.setattr(train, "train_module", original)
    resumed = MultinomialVAE(**SETTINGS).fit(X, checkpoint=ck, resume=True)
    np.testing.assert_array_equal(resumed.transform(X), ref.transform(X))
    np.testing.assert_array_equal(resumed.history_.train_loss, ref.history_.train_loss)
    np.testing.assert_array_equal(resumed.history_.validation_loss, ref.history_.validation_loss)
    assert not list(tmp_path.glob("*" + TMP_PREFIX + "*"))


def test_resume_refuses_other_data_or_settings(tmp_path):
    X = _table()
    ck = tmp_path / "ck.pt"
    MultinomialVAE(**SETTINGS).fit(X, checkpoint=ck, checkpoint_every=1)
    with pytest.raises(InputError, match="different data or settings"):
        MultinomialVAE(**SETTINGS).fit(_table(seed=1), checkpoint=ck, resume=True)
    with pytest.raises(InputError, match="different data or settings"):
        MultinomialVAE(**{**SETTINGS, "n_hidden": 9}).fit(X, checkpoint=ck, resume=True)
    with pytest.raises(InputError, match="random_state"):
        MultinomialVAE(**{**SETTINGS, "random_state": None}).fit(X, checkpoint=ck, resume=True)


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old contents")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new contents that never land")
    assert target.read_bytes() == b"old contents"
    assert not list(tmp_path.glob("*" + TMP_PREFIX + "*"))


class _Payload:
    """Unpickling this runs os.system: the classic malicious pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def force_unsafe_env(monkeypatch):
    # with this set, a plain torch.load unpickles anything; our loader must still refuse
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_checkpoint_never_runs(tmp_path, force_unsafe_env):
    marker = tmp_path / "pwned"
    bad = tmp_path / "checkpoint.pt"
    torch.save({"module": _Payload(marker)}, bad)  # a real torch zip file with a payload inside
    with pytest.raises(ModelFileError, match="checkpoint.pt"):
        load_checkpoint(bad)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelFileError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_malicious_model_file_never_runs(reference, tmp_path, force_unsafe_env):
    X, m = reference
    d = tmp_path / "model"
    m.save(d)
    marker = tmp_path / "pwned"
    (d / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelFileError, match="model.safetensors"):
        MultinomialVAE.load(d)
    buf = d / "model.safetensors"
    torch.save({"x": _Payload(marker)}, buf)
    with pytest.raises(ModelFileError):
        MultinomialVAE.load(d)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, b"garbage" * 50],
                         ids=["empty", "zeros", "garbage"])
def test_bad_checkpoint_bytes_are_model_file_errors(tmp_path, content):
    p = tmp_path / "ck.pt"
    p.write_bytes(content)
    with pytest.raises(ModelFileError, match="ck.pt"):
        load_checkpoint(p)


def test_truncated_checkpoint_is_a_model_file_error(tmp_path):
    p = tmp_path / "ck.pt"
    save_checkpoint(p, {"a": torch.arange(1000)})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        load_checkpoint(p)


def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    X = _table()
    ck = tmp_path / "ck.pt"
    from mvae.counts import module as mod

    original = mod.MultinomialVAEModule.loss
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        terms = original(self, *a, **k)
        calls["n"] += self.training
        if self.training and calls["n"] == 8:  # epoch 3, step 2
            return mod.LossTerms(terms.reconstruction * float("nan"), terms.kl)
        return terms

    monkeypatch.setattr(mod.MultinomialVAEModule, "loss", poisoned)
    with pytest.raises(TrainingError, match="epoch 3, step 2"):
        MultinomialVAE(**SETTINGS).fit(X, checkpoint=ck, checkpoint_every=1)
    state = load_checkpoint(ck)
    assert state["epoch"] == 2 and not state["finished"]


def test_inf_gradient_is_caught(monkeypatch):
    X = _table()
    from mvae.counts import module as mod

    original = mod.MultinomialVAEModule.loss

    def poisoned(self, *a, **k):
        terms = original(self, *a, **k)
        if self.training:
            # finite value, infinite gradient: d/dx sqrt(x) at 0
            bad = torch.sqrt(self.log_sigma * 0.0)
            return mod.LossTerms(terms.reconstruction - bad, terms.kl)
        return terms

    monkeypatch.setattr(mod.MultinomialVAEModule, "loss", poisoned)
    with pytest.raises(TrainingError, match="non-finite gradient.*epoch 1, step 1"):
        MultinomialVAE(**SETTINGS).fit(X)


@pytest.mark.slow
def test_cli_subprocess_sigterm_then_resume(tmp_path):
    """A real `mvae fit` process killed with SIGTERM exits 143 and --resume finishes the same fit."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    import pandas as pd

    table = Path(__file__).resolve().parent.parent / "data" / "pbmc68k_reduced_counts.h5ad"
    args = [sys.executable, "-m", "mvae", "fit", str(table), "-k", "3", "--epochs", "400",
            "--threads", "1", "-q", "--seed", "5"]
    ref = subprocess.run(args + ["-o", str(tmp_path / "ref")], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "run"
    proc = subprocess.Popen(args + ["-o", str(out), "--checkpoint-every", "5"],
                            stderr=subprocess.PIPE, text=True)
    ck = tmp_path / "run.checkpoint.pt"
    deadline = time.time() + 120
    while not ck.exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "resume" in err and not out.exists()
    done = subprocess.run(args + ["-o", str(out), "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a = pd.read_csv(tmp_path / "ref" / "embeddings.tsv", sep="\t", index_col=0)
    b = pd.read_csv(out / "embeddings.tsv", sep="\t", index_col=0)
    pd.testing.assert_frame_equal(a, b)
    assert not ck.exists()


def test_sigint_gives_exit_code_130_and_resumes(reference, tmp_path, monkeypatch):
    X, ref = reference
    ck = tmp_path / "ck.pt"
    import mvae.training.loop as train

    original = train.train_module

    def patched(*args, **kwargs):
        kwargs["on_step"] = lambda e, s: (e, s) == (3, 1) and os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "train_module", patched)
    with pytest.raises(TrainingInterrupted) as info:
        MultinomialVAE(**SETTINGS).fit(X, checkpoint=ck)
    assert info.value.exit_code == 130
    monkeypatch.setattr(train, "train_module", original)
    resumed = MultinomialVAE(**SETTINGS).fit(X, checkpoint=ck, resume=True)
    np.testing.assert_array_equal(resumed.transform(X), ref.transform(X))


def test_a_fit_sweeps_only_its_own_checkpoints_stale_temporary_files(tmp_path):
    """A killed writer's temporary file of this checkpoint is removed when a fit starts; another
    process's temporary file in the same directory (another fit's checkpoint being written at
    that moment) is left alone."""
    from mvae.training.checkpoint import sweep_temporary

    X = _table()
    ck = tmp_path / "ck.pt"
    stale = tmp_path / f".ck.pt{TMP_PREFIX}abc123"
    other = tmp_path / f".other.checkpoint.pt{TMP_PREFIX}def456"
    stale.write_bytes(b"half a checkpoint")
    other.write_bytes(b"another fit's checkpoint, mid-write")
    MultinomialVAE(**SETTINGS).fit(X, checkpoint=ck, checkpoint_every=1)
    assert ck.is_file() and not stale.exists()
    assert other.read_bytes() == b"another fit's checkpoint, mid-write"
    # names with glob characters are matched literally
    odd = tmp_path / "run[1].pt"
    (tmp_path / f".run[1].pt{TMP_PREFIX}x").write_bytes(b"")
    (tmp_path / f".run1.pt{TMP_PREFIX}y").write_bytes(b"")
    assert sweep_temporary(odd) == 1
    assert (tmp_path / f".run1.pt{TMP_PREFIX}y").exists()
    assert sweep_temporary(tmp_path / "missing" / "ck.pt") == 0
