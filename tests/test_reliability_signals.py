"""SIGTERM outside training: a message and exit code 143, not a silent death (issue 20).

Training handles SIGTERM itself (a checkpoint, then TrainingInterrupted; tests/test_checkpoint.py).
Outside it, while `mvae fit` works on a table held in memory, the command says what happened,
leaves no output and no staging directory, and gives the process its previous handler back.
"""

import os
import signal

import numpy as np
from click.testing import CliRunner

from mvae.cli import main


def _write_table(path, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.poisson(20, size=(30, 8))
    lines = ["sample\t" + "\t".join(f"f{j}" for j in range(X.shape[1]))]
    lines += [f"s{i}\t" + "\t".join(str(v) for v in row) for i, row in enumerate(X)]
    path.write_text("\n".join(lines) + "\n")


def test_sigterm_before_training_says_so_exits_143_and_writes_nothing(tmp_path, monkeypatch):
    import mvae.model

    table = tmp_path / "t.tsv"
    _write_table(table)
    received = []
    # a guard: should mvae not handle SIGTERM, the test fails here instead of pytest dying
    guard = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    original = mvae.model.MultinomialVAE.fit

    def sigterm_then_fit(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered before the next bytecode
        return original(self, *args, **kwargs)

    monkeypatch.setattr(mvae.model.MultinomialVAE, "fit", sigterm_then_fit)
    try:
        r = CliRunner().invoke(main, ["fit", str(table), "-o", str(tmp_path / "out"),
                                      "--orientation", "samples-as-rows", "--epochs", "2", "-k", "2"])
        assert received == []  # mvae's handler took it, not the guard
        assert r.exit_code == 143, r.output
        assert "Terminated (SIGTERM)" in r.output and "nothing was written" in r.output
        assert not (tmp_path / "out").exists()
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]
        assert signal.getsignal(signal.SIGTERM) is not None
        handler = signal.getsignal(signal.SIGTERM)
        assert getattr(handler, "__name__", "") == "<lambda>"  # the guard is back
    finally:
        signal.signal(signal.SIGTERM, guard)
