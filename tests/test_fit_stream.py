"""MultinomialVAE.fit_stream: training from an HDF5 table read in chunks, never whole."""

import numpy as np
import pytest

from mvae import MultinomialVAE
from mvae.io.tables import write_biom
from mvae.evaluation.metrics import embedding_r2
from mvae.evaluation.simulate import simulate
from mvae.io.streaming import StreamingCounts


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    sim = simulate(600, 60, 3, depth=3000, abundance_spread=1.5, random_state=4)
    X = sim.counts.tolil()
    X[5, :] = 0  # an all-zero sample, dropped with a warning
    X = X.tocsr()
    path = tmp_path_factory.mktemp("stream") / "table.biom"
    write_biom(path, X, list(sim.sample_ids), list(sim.feature_ids))
    return path, X, sim


def test_fit_stream_trains_within_a_small_chunk_budget(table):
    path, X, sim = table
    budget = 64 * 1024  # far smaller than the table: many chunks
    streamed = MultinomialVAE(n_latent=3, max_epochs=30, random_state=0, threads=1)
    with pytest.warns(UserWarning, match="1 all-zero sample"):
        streamed.fit_stream(path, max_bytes=budget)
    kept = StreamingCounts(path, rows=np.flatnonzero(np.asarray(X.sum(axis=1)).ravel() > 0),
                           max_bytes=budget)
    assert kept.chunk_rows < len(kept) / 4  # the table really was read in several chunks
    z = streamed.transform(kept)
    assert z.shape == (599, 3) and np.isfinite(z).all()
    # the streamed fit finds the same latent structure as the in-memory fit of the same table
    memory = MultinomialVAE(n_latent=3, max_epochs=30, random_state=0, threads=1)
    with pytest.warns(UserWarning):
        memory.fit(X)
    z_mem = memory.transform(X[np.asarray(X.sum(axis=1)).ravel() > 0])
    assert embedding_r2(z_mem, z) > 0.9
    assert embedding_r2(np.delete(sim.z, 5, axis=0), z) > 0.8
    assert streamed.filtered_.id.tolist() == ["s5"]
    # the streamed batches follow the table's density as in-memory ones do (dense here), so the
    # model's estimator is the same streamed or not
    assert X.nnz / np.prod(X.shape) > 0.05 and not kept.sparse
