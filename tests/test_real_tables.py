"""The real tables shipped in data/ fit without error and give sane outputs."""

from pathlib import Path

import numpy as np
import pytest

import mvae

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.mark.parametrize("name", ["moving_pictures_16s_table.biom", "pbmc68k_reduced_counts.h5ad"])
def test_real_table_fits(name):
    adata = mvae.read_counts(DATA / name)
    model = mvae.MultinomialVAE(n_latent=4, n_hidden=32, max_epochs=8, random_state=0, threads=1)
    model.fit(adata)
    emb = adata.obsm["X_mvae"]
    assert emb.shape == (adata.n_obs, 4)
    kept = ~np.isnan(emb).any(axis=1)
    assert kept.sum() >= adata.n_obs - len(model.filtered_)
    assert np.isfinite(emb[kept]).all()
    assert np.isfinite(model.history_.train_loss).all()
    # the loss went down over the epochs
    assert model.history_.train_loss.iloc[-1] < model.history_.train_loss.iloc[0]
    scores = model.score_samples(adata)
    assert np.isfinite(scores[kept]).all()
    assert np.isfinite(model.loadings("ilr").to_numpy()).all()
    edges = model.network(top=10)
    assert set(edges.feature_a) <= set(adata.var_names)
