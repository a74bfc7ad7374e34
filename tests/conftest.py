"""Fixtures shared by several test modules."""

import numpy as np
import pytest

from mvae import MultinomialVAE


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
    """A small fitted model saved to a directory; tests break copies of it, never the original."""
    rng = np.random.default_rng(0)
    X = rng.poisson(20, size=(40, 8))
    m = MultinomialVAE(n_latent=2, max_epochs=2, random_state=0, threads=1).fit(X)
    d = tmp_path_factory.mktemp("models") / "ok"
    m.save(d)
    return d
