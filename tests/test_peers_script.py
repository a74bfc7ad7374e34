"""The peers benchmark (benchmarks/peers.py, benchmarks/peer_models.py): it runs end to end on a
tiny table with every method installed here, the adapters embed new samples where the method
can, its labels come from the shipped metadata, and a re-run keeps the rows it does not redo.

The peers (scvi-tools, pyPLNmodels, gemelli) are the optional extra ``.[peers]``; what is not
installed is skipped. The k-NN evaluation itself is tested in tests/test_knn.py."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import scipy.sparse

from benchmarks import peer_models, peers
from benchmarks.shipped import TsvRows
from tests.helpers import three_groups

pytestmark = pytest.mark.benchmark

PEERS = {"linear_scvi": "scvi", "scvi": "scvi", "pln_pca": "pyPLNmodels",
         "gemelli_rpca": "gemelli"}


def _write_h5ad(path, x):
    import anndata

    anndata.AnnData(X=scipy.sparse.csr_matrix(x.astype(np.int32))).write_h5ad(path)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_runs_end_to_end_on_a_tiny_table_with_the_installed_methods(tmp_path):
    rng = np.random.default_rng(0)
    x, y = three_groups(rng)
    path = tmp_path / "tiny.h5ad"
    _write_h5ad(path, x)
    # subjects of 3 samples each, all of one type
    groups = np.repeat(np.arange(len(y) // 3), 3).astype(str)
    methods = [m for m in peer_models.METHODS if peer_models.installed(m)]
    assert methods[:2] == ["mvae", "clr_pca"]  # always there
    fits, knn = TsvRows(tmp_path / "fits.tsv", "{:.4g}"), TsvRows(tmp_path / "knn.tsv", "{:.4f}")
    peers.run_table("tiny", path, {"type": y}, groups, methods, [0], 3, fits, knn)
    fits.close()
    knn.close()
    fit_rows = _rows(tmp_path / "fits.tsv")
    assert [r["method"] for r in fit_rows] == methods
    for r in fit_rows:
        assert r["error"] == "", r
        assert (r["n"], r["d"], r["k"], r["threads"]) == ("45", "25", "3", "1")
        assert float(r["fit_cpu_s"]) > 0 and float(r["peak_rss_mb"]) >= float(r["rss_before_fit_mb"])
    knn_rows = _rows(tmp_path / "knn.tsv")
    assert [r["method"] for r in knn_rows] == methods
    for r in knn_rows:
        assert r["grouped"] == "True" and r["n_labelled"] == "45"
        assert float(r["majority"]) == pytest.approx(1 / 3, abs=1e-4)  # written to 4 places
    # three well-separated compositions: clr + PCA places every sample with its own type
    assert float(next(r for r in knn_rows if r["method"] == "clr_pca")["knn_accuracy"]) >= 0.95
    text = peers.summarise(tmp_path)
    assert "## tiny (45 x 25)" in text and "| clr_pca | 1 |" in text


def test_a_failing_fit_is_recorded_and_the_run_goes_on(tmp_path):
    path = tmp_path / "missing.h5ad"  # the child cannot read it
    fits, knn = TsvRows(tmp_path / "fits.tsv"), TsvRows(tmp_path / "knn.tsv")
    peers.run_table("gone", path, {}, None, ["clr_pca"], [0, 1], 3, fits, knn)
    fits.close()
    rows = _rows(tmp_path / "fits.tsv")
    assert len(rows) == 2 and all(r["error"] for r in rows)


def test_clr_pca_places_new_samples_on_the_training_axes():
    rng = np.random.default_rng(1)
    x, _ = three_groups(rng)
    fitted = peer_models.fit("clr_pca", x[:40], n_latent=4)
    # the training samples, projected as new ones, land where the fit put them
    np.testing.assert_allclose(fitted.embed(x[:40]), fitted.embedding, atol=1e-9)
    # a new sample: its clr, centred by the training mean, on the principal axes (numpy's SVD)
    clr = np.log(x + 1) - np.log(x + 1).mean(axis=1, keepdims=True)
    centred = clr[:40] - clr[:40].mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    want = (clr[40:] - clr[:40].mean(axis=0)) @ vt[:4].T
    got = fitted.embed(x[40:])
    np.testing.assert_allclose(np.abs(got), np.abs(want), atol=1e-8)  # axes up to sign


def test_mvae_embeds_new_samples_as_its_transform_does():
    import mvae

    rng = np.random.default_rng(2)
    x, _ = three_groups(rng)
    fitted = peer_models.fit("mvae", x[:40], n_latent=2, seed=0)
    ref = mvae.MultinomialVAE(n_latent=2, random_state=0, threads=1, progress=False).fit(x[:40])
    np.testing.assert_allclose(fitted.embedding, ref.transform(x[:40]), atol=1e-6)
    np.testing.assert_allclose(fitted.embed(x[40:]), ref.transform(x[40:]), atol=1e-6)
    assert fitted.epochs == len(ref.history_)


@pytest.mark.parametrize("method", sorted(PEERS))
def test_each_installed_peer_embeds_the_table(method):
    pytest.importorskip(PEERS[method])
    rng = np.random.default_rng(3)
    x, _ = three_groups(rng)
    fitted = peer_models.fit(method, x[:40], n_latent=3, seed=0)
    assert fitted.embedding.shape == (40, 3) and np.isfinite(fitted.embedding).all()
    if method in ("linear_scvi", "scvi"):  # scvi-tools embeds new cells with the fitted encoder
        new = fitted.embed(x[40:])
        assert new.shape == (5, 3) and np.isfinite(new).all()
        # and a training cell the same whether given with the others or alone
        np.testing.assert_allclose(fitted.embed(x[:1]), fitted.embedding[:1], atol=1e-5)
    else:  # PLN-PCA: each new sample's multinomial posterior given depth, parameters frozen;
        # gemelli: its rpca_transform (benchmarks/peer_models.py)
        new = fitted.embed(x[40:])
        assert new.shape == (5, 3) and np.isfinite(new).all()
        # the training samples through the same map land about where the fit put them
        from scipy.spatial.distance import pdist

        again = fitted.embed(x[:40])
        if method == "pln_pca":
            assert np.corrcoef(pdist(again), pdist(fitted.embedding))[0, 1] > 0.9
        else:  # gemelli's projection scales axis j by s_j / |s| where its scores have unit norm
            for j in range(3):
                assert abs(np.corrcoef(again[:, j], fitted.embedding[:, j])[0, 1]) > 0.9
    if method == "pln_pca":  # a held-out count likelihood: multinomial, with its coefficient
        scores = fitted.score(x[40:])
        assert set(scores) == {"optimised"} and scores["optimised"].shape == (5,)
        assert (scores["optimised"] > 0).all() and np.isfinite(scores["optimised"]).all()
    else:
        assert fitted.score is None


def test_labels_come_from_the_shipped_metadata():
    import mvae

    adata = mvae.read_counts(peers.ROOT / peers.TABLES["ecam"])
    labels, groups = peers.table_labels("ecam", adata.obs_names, adata.obs)
    assert set(labels) == {"delivery", "diet"}
    # two ECAM samples have no metadata row: fitted with the rest, left out of the scoring
    assert sum(v is None for v in labels["delivery"]) == 2
    assert set(labels["delivery"]) - {None} == {"Vaginal", "Cesarean"}
    assert groups is not None and len(set(groups[[v is not None for v in labels["delivery"]]])) == 42
    adata = mvae.read_counts(peers.ROOT / peers.TABLES["pbmc"])
    labels, groups = peers.table_labels("pbmc", adata.obs_names, adata.obs)
    assert groups is None and len(set(labels["bulk_labels"])) == 10


def test_a_rerun_keeps_the_rows_it_does_not_redo(tmp_path):
    args = ["-o", str(tmp_path), "--tables", "moving_pictures", "--methods", "clr_pca"]
    peers.main(args + ["--seeds", "0", "1"])
    first = _rows(tmp_path / "fits.tsv")
    peers.main(args + ["--seeds", "1"])
    rows = _rows(tmp_path / "fits.tsv")
    assert sorted(r["seed"] for r in rows) == ["0", "1"]
    assert next(r for r in rows if r["seed"] == "0") == next(r for r in first if r["seed"] == "0")
    assert len(_rows(tmp_path / "knn.tsv")) == 2
    assert "| clr_pca | 2 |" in (tmp_path / "summary.md").read_text()
