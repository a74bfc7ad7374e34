"""MultinomialVAE: the user-facing API on numpy, scipy and AnnData input."""

import json
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from mvae import MultinomialVAE
from mvae.errors import InputError, ModelFileError

FAST = dict(n_hidden=16, max_epochs=15, batch_size=32, threads=1)


def _table(n=60, D=12, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 2)) @ rng.normal(size=(2, D)) + rng.normal(size=D)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    return np.stack([rng.multinomial(200, pi) for pi in p]).astype(np.int64)


@pytest.fixture(scope="module")
def fitted():
    X = _table()
    return X, MultinomialVAE(n_latent=3, random_state=0, **FAST).fit(X)


def test_shapes_and_outputs(fitted):
    X, m = fitted
    n, D = X.shape
    z = m.transform(X)
    assert z.shape == (n, 3) and np.isfinite(z).all()
    assert m.loadings("clr").shape == (D, 3)
    assert m.loadings("ilr").shape == (D - 1, 3)
    np.testing.assert_allclose(m.loadings("clr").sum(axis=0), 0, atol=1e-9)
    comp = m.denoise(X)
    assert comp.shape == (n, D)
    np.testing.assert_allclose(comp.sum(axis=1), 1, rtol=1e-12)
    s = m.score_samples(X)
    assert s.shape == (n,) and np.isfinite(s).all() and (s > 0).all()
    np.testing.assert_array_equal(s, m.score_samples(X))  # fixed noise: repeatable
    new = m.sample(7, depth=500, random_state=1)
    assert new.shape == (7, D) and new.dtype == np.int64
    np.testing.assert_array_equal(new.sum(axis=1), 500)
    assert m.sample(3, random_state=1).sum(axis=1).min() > 0  # depths drawn from training depths
    hist = m.history_
    assert list(hist.columns[:3]) == ["epoch", "train_loss", "train_reconstruction"]
    assert len(hist) == 15 and np.isfinite(hist.train_loss).all()
    assert (np.diff(m.explained_variance_) <= 1e-12).all()  # axes ordered by variance


def test_ordered_form_is_a_rotation_of_the_module_loadings(fitted):
    _, m = fitted
    W = m.module_.loadings_raw.detach().double().numpy()
    W = W - W.mean(axis=0)
    np.testing.assert_allclose(m.components_ @ m.components_.T, W @ W.T, atol=1e-10)
    np.testing.assert_allclose(m.rotation_.T @ m.rotation_, np.eye(3), atol=1e-10)


def test_ilr_loadings_match_skbio(fitted):
    from skbio.stats.composition import ilr

    _, m = fitted
    clr = m.loadings("clr").to_numpy()
    # columns sum to zero, so ilr(exp(v)) = Ψᵀ clr(exp(v)) = Ψᵀ v
    want = ilr(np.exp(clr.T)).T
    np.testing.assert_allclose(m.loadings("ilr").to_numpy(), want, atol=1e-10)


def test_covariance_is_low_rank_plus_isotropic_clr(fitted):
    _, m = fitted
    cov = m.covariance("clr")
    W = m.components_
    D = W.shape[0]
    want = W @ W.T + m.noise_variance_ * (np.eye(D) - 1.0 / D)
    np.testing.assert_allclose(cov.dense(), want, atol=1e-10)
    corr = m.correlation()
    d = np.sqrt(np.diag(want))
    np.testing.assert_allclose(corr, want / np.outer(d, d), atol=1e-10)
    edges = m.network(top=5)
    assert len(edges) == 5
    assert (np.diff(edges.correlation.abs().to_numpy()) <= 1e-12).all()


def test_same_seed_same_threads_bitwise_equal():
    X = _table(seed=3)
    a = MultinomialVAE(n_latent=2, random_state=7, **FAST).fit(X)
    b = MultinomialVAE(n_latent=2, random_state=7, **FAST).fit(X)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    np.testing.assert_array_equal(a.history_.train_loss, b.history_.train_loss)
    c = MultinomialVAE(n_latent=2, random_state=8, **FAST).fit(X)
    assert not np.array_equal(a.transform(X), c.transform(X))


def test_basis_choice_does_not_change_the_fit():
    """Training runs in clr coordinates: the fitted Σ_clr is the same for any ILR basis."""
    X = _table(seed=4)
    a = MultinomialVAE(n_latent=2, random_state=1, basis="helmert", **FAST).fit(X)
    b = MultinomialVAE(n_latent=2, random_state=1, basis="balanced", **FAST).fit(X)
    np.testing.assert_allclose(a.covariance("clr").dense(), b.covariance("clr").dense(),
                               rtol=1e-12)
    assert not np.allclose(a.loadings("ilr").to_numpy(), b.loadings("ilr").to_numpy())


def test_save_load_round_trip(fitted, tmp_path):
    X, m = fitted
    m.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json",
                                                                    "model.safetensors"]
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cfg["schema_version"] == 1 and cfg["params"]["n_latent"] == 3
    m2 = MultinomialVAE.load(tmp_path / "model")
    np.testing.assert_array_equal(m2.transform(X), m.transform(X))
    np.testing.assert_array_equal(m2.score_samples(X), m.score_samples(X))
    np.testing.assert_array_equal(m2.denoise(X), m.denoise(X))
    np.testing.assert_array_equal(m2.sample(4, random_state=2), m.sample(4, random_state=2))
    pd.testing.assert_frame_equal(m2.history_, m.history_)
    pd.testing.assert_frame_equal(m2.loadings("ilr"), m.loadings("ilr"))


def test_load_refuses_future_schema_and_garbage(fitted, tmp_path):
    _, m = fitted
    d = tmp_path / "model"
    m.save(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["schema_version"] = 99
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="newer"):
        MultinomialVAE.load(d)
    m.save(d)
    (d / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFileError, match="model.safetensors"):
        MultinomialVAE.load(d)
    with pytest.raises(ModelFileError, match="not found"):
        MultinomialVAE.load(tmp_path / "nowhere")


def test_anndata_in_and_out_with_layer_and_dropped_rows():
    X = _table(n=40, D=10, seed=5)
    X[3] = 0  # an all-zero sample
    X[:, 4] = 0  # an all-zero feature
    ad = anndata.AnnData(X=np.zeros(X.shape), layers={"counts": sp.csr_matrix(X)})
    ad.obs_names = [f"s{i}" for i in range(40)]
    ad.var_names = [f"f{j}" for j in range(10)]
    m = MultinomialVAE(n_latent=2, random_state=0, **FAST)
    with pytest.warns(UserWarning, match="1 all-zero sample"):
        m.fit(ad, layer="counts")
    emb = ad.obsm["X_mvae"]
    assert emb.shape == (40, 2)
    assert np.isnan(emb[3]).all() and np.isfinite(np.delete(emb, 3, axis=0)).all()
    assert np.isnan(ad.varm["mvae_loadings"][4]).all()
    assert ad.uns["mvae"]["params"]["n_latent"] == 2
    assert m.feature_ids_ == [f"f{j}" for j in range(10) if j != 4]
    assert set(m.filtered_.id) == {"s3", "f4"}
    # transform of the same AnnData: all samples, dropped one embedded from its zeros
    np.testing.assert_allclose(m.transform(ad, layer="counts")[0], emb[0], rtol=1e-6)


def test_transform_aligns_features_by_name():
    X = _table(n=50, D=8, seed=6)
    ids = [f"f{j}" for j in range(8)]
    df = pd.DataFrame(X, columns=ids, index=[f"s{i}" for i in range(50)])
    m = MultinomialVAE(n_latent=2, random_state=0, **FAST).fit(df)
    base = m.transform(df)
    shuffled = df[ids[::-1]]
    np.testing.assert_allclose(m.transform(shuffled), base, rtol=1e-6)
    extra = df.assign(unknown=1)
    with pytest.warns(UserWarning, match="unknown"):
        np.testing.assert_allclose(m.transform(extra), base, rtol=1e-6)
    subset = df.drop(columns=["f2"])
    with pytest.warns(UserWarning, match="filled with zeros"):
        got = m.transform(subset)
    zeroed = df.copy()
    zeroed["f2"] = 0
    np.testing.assert_allclose(got, m.transform(zeroed), rtol=1e-6)


def test_embeddings_do_not_depend_on_sample_order(fitted):
    X, m = fitted
    perm = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_allclose(m.transform(X[perm]), m.transform(X)[perm], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_latent=0), "n_latent=0"),
    (dict(n_latent=12), "n_latent=12.*between 1 and 11"),
    (dict(n_latent=2.5), "n_latent"),
    (dict(encoder_depth=0), "encoder_depth"),
    (dict(pseudocount=0), "pseudocount"),
    (dict(pseudocount=float("nan")), "pseudocount"),
    (dict(objective="elbo"), "objective"),
    (dict(basis="tree"), "tree"),
    (dict(basis="pca"), "basis"),
    (dict(dropout=1.0), "dropout"),
    (dict(learning_rate=-1), "learning_rate"),
    (dict(validation_fraction=1.0), "validation_fraction"),
])
def test_bad_parameters_name_themselves(kwargs, match):
    X = _table(n=20, D=12)
    with pytest.raises(InputError, match=match):
        MultinomialVAE(**{**FAST, **kwargs}).fit(X)


@pytest.mark.parametrize("value,match", [
    (-1, "negative"), (0.5, "integer"), (np.nan, "NaN|nan"), (np.inf, "inf"),
])
def test_bad_counts_are_reported_with_position(value, match):
    X = _table(n=10, D=5).astype(float)
    X[2, 3] = value
    with pytest.raises(InputError, match=match):
        MultinomialVAE(n_latent=2, **FAST).fit(X)


def test_too_few_samples_or_features_after_dropping():
    X = np.zeros((5, 4))
    X[0, :] = 3
    with pytest.raises(InputError, match="sample"):
        MultinomialVAE(n_latent=1, **FAST).fit(X)
    Y = np.zeros((6, 4))
    Y[:, 1] = 5
    with pytest.raises(InputError, match="feature"):
        MultinomialVAE(n_latent=1, **FAST).fit(Y)


def test_unfitted_model_says_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        MultinomialVAE().transform(np.ones((2, 3)))


def test_fit_does_not_modify_input_or_global_torch_state():
    import torch

    X = _table(n=30, D=6)
    before = X.copy()
    threads = torch.get_num_threads()
    state = torch.random.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warnings on clean input
        MultinomialVAE(n_latent=2, random_state=0, **{**FAST, "threads": 1}).fit(X)
    np.testing.assert_array_equal(X, before)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), state)


def test_warns_about_shallow_samples_but_not_huge_counts():
    """Counts above 2**24 are exact in training (float64 sums for deep samples), so they earn no
    warning; a sample with 7 reads does."""
    from mvae.model import CountsWarning

    X = _table(n=30, D=6).astype(np.int64)
    X[4] = [3, 2, 1, 0, 0, 1]
    X[7, 2] = 2**25
    with pytest.warns(CountsWarning) as rec:
        MultinomialVAE(n_latent=1, random_state=0, **{**FAST, "max_epochs": 2}).fit(X)
    text = " ".join(str(w.message) for w in rec)
    assert "sample4" in text and "(7)" in text
    assert "2**24" not in text and "sample7" not in text


def test_collapsed_dimensions_are_reported():
    from mvae.model import CollapsedDimensionsWarning

    rng = np.random.default_rng(0)
    # pure multinomial noise around one composition: no latent structure to find
    X = rng.multinomial(2000, np.full(8, 1 / 8), size=80)
    with pytest.warns(CollapsedDimensionsWarning, match="collapsed"):
        m = MultinomialVAE(n_latent=4, random_state=0, threads=1, max_epochs=150).fit(X)
    assert len(m.collapsed_dims_) >= 1


def test_threads_limit_numpy_blas_too():
    """torch_threads caps the BLAS under numpy/scipy as well as torch (read back by threadpoolctl,
    an independent observer), and restores both afterwards."""
    import torch
    from threadpoolctl import threadpool_info

    from mvae.training.loop import torch_threads

    np.ones((4, 4)) @ np.ones((4, 4))  # make sure numpy's BLAS is loaded
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    if not blas:
        pytest.skip("no BLAS library that threadpoolctl can see")
    before = [i["num_threads"] for i in blas]
    torch_before = torch.get_num_threads()
    with torch_threads(1):
        assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
        assert torch.get_num_threads() == 1
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before
    assert torch.get_num_threads() == torch_before



@pytest.mark.filterwarnings("ignore:.*(all-zero|fewer than 50 reads)")
@pytest.mark.parametrize("objective", ["marginal", "sampled"])
@pytest.mark.parametrize("density", [0.02, 0.5])
def test_fit_sparse_and_dense_tables_and_score_them_alike(objective, density):
    """Tables below 5% density train on sparse batches (the estimator follows the layout), denser
    ones on dense batches; either way the anomaly score is the Monte Carlo ELBO, the same for
    the table given as a dense array or as a sparse matrix."""
    rng = np.random.default_rng(1)
    X = sp.random(80, 200, density=density, format="lil", random_state=rng)
    X[:, 0] = 5.0  # no empty samples
    X = X.tocsr()
    X.data = rng.integers(1, 20, size=X.nnz).astype(float)
    m = MultinomialVAE(n_latent=2, objective=objective, random_state=0, **FAST).fit(X)
    assert np.all(np.isfinite(m.history_.train_loss))
    np.testing.assert_allclose(m.score_samples(X), m.score_samples(X.toarray()), rtol=1e-5)
    assert not hasattr(m, "posterior") and not hasattr(m, "reconstruction")


def _saved_config(tmp_path, **params):
    """Fit and save a small model, then write ``params`` into its config.json as 0.1.0 did."""
    X = _table()
    m = MultinomialVAE(n_latent=3, random_state=0, **FAST).fit(X)
    m.save(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    cfg = json.loads(path.read_text())
    cfg["params"].update(params)
    cfg["module_config"].update(params)
    path.write_text(json.dumps(cfg))
    return X, m


@pytest.mark.parametrize("setting", [dict(posterior="full"), dict(posterior="hybrid"),
                                     dict(posterior="lowrank"), dict(reconstruction="bound"),
                                     dict(reconstruction="mc")])
def test_model_files_recording_a_retired_setting_are_refused(setting, tmp_path):
    _saved_config(tmp_path, **setting)
    (name, value), = setting.items()
    with pytest.raises(ModelFileError, match=rf"{name}='{value}'.*mvae 0\.1\.0 is the last"):
        MultinomialVAE.load(tmp_path / "m")


def test_model_files_of_0_1_0_defaults_load(tmp_path):
    """0.1.0 wrote posterior='factored' and reconstruction='auto' (resolved to 'mc' or 'mixed'
    in the module's config): that is the model this version fits, and it loads unchanged."""
    X, m = _saved_config(tmp_path, posterior="factored", reconstruction="auto")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["module_config"]["reconstruction"] = "mc"
    cfg_path.write_text(json.dumps(cfg))
    old = MultinomialVAE.load(tmp_path / "m")
    np.testing.assert_array_equal(old.transform(X), m.transform(X))
    with pytest.raises(InputError, match="posterior_rank"):
        MultinomialVAE(posterior_rank=0).fit(_table())
    with pytest.raises(TypeError, match="posterior"):
        MultinomialVAE(posterior="full")
