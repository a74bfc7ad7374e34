"""No tensor outlives a fit: a sparse batch's cached non-zeros must not keep the batch alive.

``mvae.maths.sparse_ops.row_bags`` keeps a batch's non-zeros grouped by row on the batch tensor for the
next product. Keeping ``y.values()`` there (a view whose base is ``y``) made a reference cycle
through torch's C++ side that Python's garbage collector cannot see: one (batch, D) tensor per
training step stayed alive for the life of the process (issue 20, item 5).
"""

import gc
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mvae import MultinomialVAE
from mvae.maths.sparse_ops import column_bags, row_bags, row_sums


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def _sparse_table(seed: int = 0) -> sp.csr_matrix:
    """120 samples x 300 features at ~2.5% density (kept sparse in training)."""
    rng = np.random.default_rng(seed)
    n, D = 120, 300
    X = sp.random(n, D, density=0.02, random_state=rng,
                  data_rvs=lambda k: rng.integers(1, 40, size=k)).tocsr()
    # every sample and feature gets a read, so nothing is dropped
    X = X + sp.csr_matrix((np.ones(D), (np.arange(D) % n, np.arange(D))), shape=(n, D))
    return X.astype(np.int64).tocsr()


def test_cached_bags_do_not_keep_a_sparse_batch_alive():
    before = _live_tensors()
    for _ in range(5):
        y = torch.eye(6).to_sparse().coalesce()
        row_bags(y)
        column_bags(y)
        row_sums(y, y.values())
        del y
    assert _live_tensors() == before


def test_row_bags_values_follow_the_batch():
    """The values are taken from the batch at each call (they are not a stale copy)."""
    y = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]).to_sparse()
    cols, offsets, values = row_bags(y)
    assert cols.tolist() == [1, 2, 0] and offsets.tolist() == [0, 2]
    assert values.tolist() == [2.0, 1.0, 3.0]
    _, _, again = row_bags(y)
    assert again.data_ptr() == values.data_ptr()


def test_no_tensor_survives_two_fits_on_a_sparse_table():
    from mvae.training.batches import SPARSE_DENSITY

    X = _sparse_table()
    assert X.nnz / np.prod(X.shape) < SPARSE_DENSITY  # trained on sparse batches
    before = _live_tensors()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epochs in (3, 5):
            model = MultinomialVAE(n_latent=2, max_epochs=epochs, batch_size=32, random_state=0,
                                   threads=1).fit(X)
            del model
    # 4 training steps per epoch: the old cycle left 3 tensors per step (24 + 40 + ...)
    assert _live_tensors() == before
