"""Tests for mvae.io.outputs (the results directory) and mvae.io.plots.

Outputs are read back with independent readers: pandas, scikit-bio, json, PIL.
"""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skbio
from PIL import Image

import mvae
from mvae.errors import InputError
from mvae.io.outputs import (
    FIT_FILES,
    ResultsDirectory,
    atomic_path,
    write_fit_results,
    write_ordination,
)
from mvae.io.plots import plot_embedding, plot_loss


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# --------------------------------------------------------------------------------------------
# ResultsDirectory
# --------------------------------------------------------------------------------------------


def test_results_directory_appears_only_when_complete(tmp_path):
    out = tmp_path / "deep" / "res"  # missing parents are created
    with ResultsDirectory(out) as results:
        staging = results.path
        assert staging.parent == out.parent and staging.name.startswith(".res.mvae-tmp-")
        (staging / "a.tsv").write_text("x\n")
        assert not out.exists()
    assert (out / "a.tsv").read_text() == "x\n"
    assert _siblings(out) == ["res"]  # no staging directory left
    mask = os.umask(0o022)
    os.umask(mask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~mask  # not mkdtemp's private 0700
    assert ((out / "a.tsv").stat().st_mode & 0o777) == 0o666 & ~mask


def test_results_directory_failure_leaves_nothing(tmp_path):
    out = tmp_path / "res"
    with pytest.raises(RuntimeError, match="boom"):
        with ResultsDirectory(out) as results:
            (results.path / "half.tsv").write_text("x")
            raise RuntimeError("boom")
    assert _siblings(out) == []


def test_results_directory_refuses_existing_unless_force(tmp_path):
    out = tmp_path / "res"
    out.mkdir()  # an earlier mvae result (only such a directory may be replaced)
    (out / "config.json").write_text(json.dumps({"format": "mvae.MultinomialVAE", "run": {}}))
    with pytest.raises(InputError, match=r"res: already exists\. Pass --force"):
        ResultsDirectory(out).open()
    # --force: a failed run keeps the old results
    with pytest.raises(KeyboardInterrupt):
        with ResultsDirectory(out, force=True) as results:
            (results.path / "new.txt").write_text("new")
            raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    # a complete run replaces them
    with ResultsDirectory(out, force=True) as results:
        (results.path / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert _siblings(out) == ["res"]


def test_results_directory_unwritable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(InputError, match=r"file/res: cannot create the output directory"):
        ResultsDirectory(blocker / "res").open()
    with pytest.raises(InputError, match=r"file: exists and is not a directory"):
        ResultsDirectory(blocker, force=True).open()


def test_atomic_path(tmp_path):
    target = tmp_path / "out.tsv"
    target.write_text("previous")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise ValueError
    assert target.read_text() == "previous" and _siblings(target) == ["out.tsv"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and _siblings(target) == ["out.tsv"]
    with pytest.raises(InputError, match="is a directory"):
        with atomic_path(tmp_path):
            pass


# --------------------------------------------------------------------------------------------
# ordination and plots
# --------------------------------------------------------------------------------------------


def test_ordination_reads_back_with_skbio(tmp_path):
    rng = np.random.default_rng(0)
    axes = ["axis1", "axis2", "axis3"]
    emb = pd.DataFrame(rng.normal(size=(5, 3)), index=["s1", "s 2", "ñ", "0003", "x"],
                       columns=axes)
    load = pd.DataFrame(rng.normal(size=(4, 3)), index=["f1", "g__α", "f3", "f4"], columns=axes)
    write_ordination(tmp_path / "o.txt", emb, load, [3.0, 2.0, 1.0], [0.5, 0.3, 0.1])
    res = skbio.OrdinationResults.read(str(tmp_path / "o.txt"))
    np.testing.assert_allclose(res.eigvals.to_numpy(), [3.0, 2.0, 1.0])
    np.testing.assert_allclose(res.proportion_explained.to_numpy(), [0.5, 0.3, 0.1])
    assert list(res.samples.index) == list(emb.index)
    assert list(res.features.index) == list(load.index)
    np.testing.assert_allclose(res.samples.to_numpy(), emb.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(res.features.to_numpy(), load.to_numpy(), rtol=1e-12)


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.mark.parametrize("colour", [None, "numeric", "categorical", "many", "one-axis"])
def test_plot_embedding(tmp_path, colour):
    rng = np.random.default_rng(1)
    k = 1 if colour == "one-axis" else 2
    emb = pd.DataFrame(rng.normal(size=(40, k)), index=[f"s{i}" for i in range(40)],
                       columns=[f"axis{i + 1}" for i in range(k)])
    values = None
    if colour == "numeric":
        values = pd.Series(np.r_[rng.normal(size=39), np.nan], index=emb.index, name="age")
    elif colour == "categorical":
        values = pd.Series(["gut", "tongue", None, "palm"] * 10, index=emb.index, name="site",
                           dtype=object)
    elif colour == "many":  # more categories than the legend shows
        values = pd.Series([f"c{i}" for i in range(40)], index=emb.index, name="subject")
    plot_embedding(emb, tmp_path / "e.png", colour=values, proportion_explained=[0.3, 0.1])
    w, h = _png_size(tmp_path / "e.png")
    assert w > 300 and h > 300


def test_plot_loss(tmp_path):
    hist = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3.0, 2.0, 1.5],
                         "validation_loss": [np.nan] * 3})
    plot_loss(hist, tmp_path / "loss.png", best_epoch=3)
    assert _png_size(tmp_path / "loss.png")[0] > 300


def test_plots_do_not_use_pyplot(tmp_path, monkeypatch):
    # pyplot would pick a GUI backend from the environment; the Agg canvas needs none.
    # A None entry in sys.modules makes any `import matplotlib.pyplot` fail.
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    monkeypatch.setenv("MPLBACKEND", "TkAgg")
    hist = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5], "validation_loss": [1.0, 0.7]})
    plot_loss(hist, tmp_path / "l.png")
    emb = pd.DataFrame({"axis1": [0.0, 1.0], "axis2": [1.0, 0.0]}, index=["a", "b"])
    plot_embedding(emb, tmp_path / "e.png", colour=pd.Series([1.0, 2.0], index=["a", "b"],
                                                              name="x"))
    assert _png_size(tmp_path / "l.png")[0] > 300 and _png_size(tmp_path / "e.png")[0] > 300


# --------------------------------------------------------------------------------------------
# every file of a fit
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    import anndata

    from mvae.evaluation.simulate import simulate

    sim = simulate(60, 25, 2, depth=300, random_state=3)
    counts = sim.counts.toarray().astype(float)
    counts = np.vstack([counts, np.zeros((1, 25))])  # an all-zero sample: filtered out
    sample_ids = [f"smp_{i}" for i in range(60)] + ["empty sample"]
    feature_ids = [f"OTU_{j}" for j in range(25)]
    import scipy.sparse as sp

    adata = anndata.AnnData(sp.csr_matrix(counts),
                            obs=pd.DataFrame(index=pd.Index(sample_ids, dtype=object)),
                            var=pd.DataFrame(index=pd.Index(feature_ids, dtype=object)))
    model = mvae.MultinomialVAE(n_latent=2, n_hidden=16, max_epochs=4, random_state=0, threads=1)
    with pytest.warns(UserWarning, match="all-zero"):
        model.fit(adata)
    return model, adata


def test_write_fit_results(tmp_path, fitted):
    model, adata = fitted
    colour = pd.Series(["a", "b"] * 30 + ["a"], index=adata.obs_names, name="group")
    files = write_fit_results(tmp_path, model, adata, run={"seed": 0, "threads": 1}, top=7,
                              colour=colour, colour_kind="categorical")
    assert files == list(FIT_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FIT_FILES)
    kept = [s for s in adata.obs_names if s != "empty sample"]

    emb = pd.read_csv(tmp_path / "embeddings.tsv", sep="\t", index_col=0)
    assert emb.index.name == "sample_id" and list(emb.index) == kept
    assert list(emb.columns) == ["axis1", "axis2"] and np.isfinite(emb.to_numpy()).all()
    np.testing.assert_allclose(emb.to_numpy(), model.transform(adata[kept]), rtol=1e-6,
                               atol=1e-9)

    ordn = skbio.OrdinationResults.read(str(tmp_path / "ordination.txt"))
    assert list(ordn.samples.index) == kept
    np.testing.assert_allclose(ordn.eigvals.to_numpy(), model.explained_variance_)
    np.testing.assert_allclose(ordn.proportion_explained.to_numpy(),
                               model.explained_variance_ratio_)

    clr = pd.read_csv(tmp_path / "loadings_clr.tsv", sep="\t", index_col=0)
    assert clr.index.name == "feature_id" and list(clr.index) == list(adata.var_names)
    np.testing.assert_allclose(clr.sum(axis=0).to_numpy(), 0, atol=1e-9)  # clr columns
    ilr = pd.read_csv(tmp_path / "loadings_ilr.tsv", sep="\t", index_col=0)
    assert ilr.shape == (24, 2) and ilr.index.name == "balance"
    # the Helmert ILR loadings are scikit-bio's ilr of the clr loadings (an independent basis)
    from skbio.stats.composition import ilr as skbio_ilr

    ref = skbio_ilr(np.exp(clr.to_numpy().T))
    np.testing.assert_allclose(ilr.to_numpy().T, ref, atol=1e-8)

    corr = pd.read_csv(tmp_path / "correlations.tsv", sep="\t")
    assert list(corr.columns) == ["feature_a", "feature_b", "correlation", "covariance"]
    assert len(corr) == 7
    assert (np.diff(corr["correlation"].abs().to_numpy()) <= 1e-15).all()
    dense = model.correlation("clr")
    idx = {f: i for i, f in enumerate(model.feature_ids_)}
    np.testing.assert_allclose(
        corr["correlation"],
        [dense[idx[a], idx[b]] for a, b in zip(corr.feature_a, corr.feature_b)],
        atol=1e-10)
    off = np.abs(dense[np.triu_indices_from(dense, 1)])
    assert np.isclose(corr["correlation"].abs().iloc[0], off.max())

    scores = pd.read_csv(tmp_path / "scores.tsv", sep="\t", index_col=0)
    assert list(scores.index) == kept
    assert list(scores.columns) == ["depth", "negative_elbo", "negative_elbo_per_read", "split"]
    depth = np.asarray(adata[kept].X.sum(axis=1)).ravel()
    np.testing.assert_array_equal(scores["depth"], depth)
    np.testing.assert_allclose(scores["negative_elbo_per_read"],
                               scores["negative_elbo"] / depth)
    assert np.isfinite(scores.drop(columns="split").to_numpy()).all()
    held_out = scores.index[scores["split"] == "validation"]
    assert set(scores["split"]) == {"train", "validation"}
    assert sorted(held_out) == sorted(model.validation_samples_)
    assert len(held_out) == round(model.validation_fraction * len(kept))

    hist = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    assert list(hist["epoch"]) == [1, 2, 3, 4]
    filt = pd.read_csv(tmp_path / "filtered.tsv", sep="\t")
    assert filt.to_dict("records") == [{"axis": "sample", "id": "empty sample",
                                        "reason": "all-zero"}]
    for png in ("loss.png", "embedding.png"):
        assert _png_size(tmp_path / png)[0] > 300

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["run"]["outputs"] == list(FIT_FILES) and config["run"]["threads"] == 1
    again = mvae.MultinomialVAE.load(tmp_path)  # still loadable with the "run" section
    np.testing.assert_allclose(again.transform(adata[kept]), emb.to_numpy(), rtol=1e-6,
                               atol=1e-9)
