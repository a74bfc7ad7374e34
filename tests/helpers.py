"""Helpers shared by several test modules: seeded count tables, reference formulas written out
densely, and editors of saved model files."""

import json
import shutil

import numpy as np
from safetensors.torch import load_file, save_file


def counts(n, d, seed, rate=5.0):
    rng = np.random.default_rng(seed)
    mean = rate * np.exp(rng.normal(0.0, 1.0, size=d) + 0.5 * rng.standard_normal((n, d)))
    return rng.poisson(mean)


def clr(table):
    """Reference clr written out: log minus the row mean of the logs."""
    logs = np.log(table)
    return logs - logs.mean(axis=1, keepdims=True)


def ppca_reference(y, k):
    """Tipping & Bishop PPCA from a dense eigendecomposition of the sample covariance."""
    d = y.shape[1]
    c = np.cov(y, rowvar=False)
    eig, vec = np.linalg.eigh(c)
    eig, vec = eig[::-1], vec[:, ::-1]  # descending; the last one is the 1 direction (~0)
    sigma2 = eig[k : d - 1].mean() if k < d - 1 else 0.0
    low = vec[:, :k] @ np.diag(eig[:k] - sigma2) @ vec[:, :k].T
    return c, eig[:k], sigma2, low, vec[:, :k]


def edit_tensors(fn):
    """A case that edits the tensors of a saved model directory in place with ``fn(dict)``."""
    def apply(d):
        p = d / "model.safetensors"
        t = load_file(str(p))
        fn(t)
        save_file(t, str(p))
    return apply


def edit_config(fn):
    """A case that edits the config.json of a saved model directory in place with ``fn(dict)``."""
    def apply(d):
        p = d / "config.json"
        c = json.loads(p.read_text())
        fn(c)
        p.write_text(json.dumps(c))
    return apply


def assert_one_model_file_error(saved, tmp_path, case, breaker, match):
    """A copy of the saved model directory ``saved``, broken by ``breaker(dir)``, fails to load
    with one ModelFileError matching ``match`` that names the directory on one line."""
    import pytest

    from mvae import MultinomialVAE
    from mvae.errors import ModelFileError

    d = tmp_path / case
    shutil.copytree(saved, d)
    breaker(d)
    with pytest.raises(ModelFileError, match=match) as info:
        MultinomialVAE.load(d)
    assert str(d) in str(info.value)
    assert "\n" not in str(info.value)


def three_groups(rng, n_per=15, d=25):
    """Three groups of samples, each with its own composition; labels follow the group."""
    base = rng.dirichlet(np.ones(d), size=3)
    x, y = [], []
    for g in range(3):
        p = rng.dirichlet(200 * base[g], size=n_per)
        x.append(np.stack([rng.multinomial(int(rng.integers(300, 900)), pi) for pi in p]))
        y += [f"type{g}"] * n_per
    return np.vstack(x).astype(np.float64), np.array(y, dtype=object)
