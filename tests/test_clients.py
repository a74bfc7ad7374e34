"""mvae's outputs read by the tools users open them with: QIIME 2's import check, Emperor and
scanpy (docs/microbiome.md, docs/single_cell.md).

QIIME 2 itself does not install from PyPI; its import of ``ordination.txt`` as ``PCoAResults``
is reproduced with the two scikit-bio calls that q2-types makes (its ``OrdinationFormat`` is
valid when scikit-bio's ``ordination`` sniffer accepts the file; the file is read with
``OrdinationResults.read(..., format="ordination", verify=False)``), so that test always runs.
The Emperor and scanpy tests skip unless the optional extras are installed
(``pip install torch==2.13.0 -e ".[emperor,scanpy]"``).
"""

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skbio

import mvae
from mvae.io.metadata import align_metadata, read_metadata
from mvae.io.outputs import write_fit_results

from tests.helpers import counts

DATA = Path(__file__).resolve().parent.parent / "data"
TABLE = DATA / "moving_pictures_16s_table.biom"
METADATA = DATA / "moving_pictures_16s_metadata.tsv"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """``mvae fit``'s files for a short fit of the moving-pictures table (34 samples)."""
    adata = mvae.read_counts(TABLE)
    model = mvae.MultinomialVAE(n_latent=3, n_hidden=16, max_epochs=2, random_state=0,
                                threads=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # few epochs: collapsed axes
        model.fit(adata)
    d = tmp_path_factory.mktemp("fit")
    write_fit_results(d, model, adata, run={"seed": 0, "threads": 1}, top=10)
    return d


def _read(path, **kw):
    return pd.read_csv(path, sep="\t", index_col=0, **kw)


def test_ordination_passes_the_qiime2_import_check(results):
    """What ``qiime tools import --type PCoAResults --input-path ordination.txt`` checks and reads."""
    path = str(results / "ordination.txt")
    accepted, _ = skbio.io.io_registry.get_sniffer("ordination")(path)
    assert accepted
    ordn = skbio.OrdinationResults.read(path, format="ordination", verify=False)
    emb = _read(results / "embeddings.tsv")
    loadings = _read(results / "loadings_clr.tsv")
    assert list(ordn.samples.index) == list(emb.index)
    assert list(ordn.features.index) == list(loadings.index)
    np.testing.assert_allclose(ordn.samples.to_numpy(), emb.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(ordn.features.to_numpy(), loadings.to_numpy(), rtol=1e-12)
    # eigenvalues in decreasing order and proportions in (0, 1], as a PCoA's are
    assert (np.diff(ordn.eigvals.to_numpy()) <= 0).all()
    assert ((ordn.proportion_explained > 0) & (ordn.proportion_explained <= 1)).all()


def _emperor_data(html: str) -> dict:
    """The plot data Emperor embeds in its page (``var data = {...};``)."""
    match = re.search(r"^\s*var data = (\{.*\});\s*$", html, flags=re.MULTILINE)
    assert match, "no plot data in Emperor's page"
    return json.loads(match.group(1))


def test_emperor_plots_the_ordination_with_metadata(results, tmp_path):
    emperor = pytest.importorskip("emperor")
    ordn = skbio.OrdinationResults.read(str(results / "ordination.txt"))
    md = read_metadata(METADATA)
    md = align_metadata(md, ordn.samples.index)
    emp = emperor.Emperor(ordn, md, remote=".")
    html = emp.make_emperor(standalone=True)
    (tmp_path / "index.html").write_text(html)
    emp.copy_support_files(str(tmp_path))
    assert (tmp_path / "js").is_dir()  # the page's scripts, loaded from beside it (offline)

    data = _emperor_data(html)
    plot = data["plot"]
    emb = _read(results / "embeddings.tsv")
    assert plot["decomposition"]["sample_ids"] == list(emb.index)
    # Emperor shows the first (up to 5) axes scaled by their largest absolute value
    shown = emb.to_numpy()[:, :5]
    np.testing.assert_allclose(plot["decomposition"]["coordinates"],
                               shown / np.abs(shown).max(), rtol=1e-12)
    # the axis labels' percentages are the file's proportions explained
    np.testing.assert_allclose(plot["decomposition"]["percents_explained"],
                               100 * ordn.proportion_explained.to_numpy()[:5], rtol=1e-12)
    assert "BodySite" in plot["metadata_headers"]
    col = plot["metadata_headers"].index("BodySite")
    sites = {row[col] for row in plot["metadata"]}
    assert sites == set(md["BodySite"])
    # the clr loadings are drawn as biplot arrows, one per feature
    loadings = _read(results / "loadings_clr.tsv")
    assert data["biplot"]["decomposition"]["sample_ids"] == list(loadings.index)


def _fit_filling(adata):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mvae.MultinomialVAE(n_latent=3, n_hidden=16, max_epochs=3, random_state=0, threads=1,
                            progress=False).fit(adata)
    return adata


def _counts_adata(n, d, seed):
    import anndata
    import scipy.sparse as sp

    X = counts(n, d, seed).astype(np.float64)
    return anndata.AnnData(sp.csr_matrix(X), obs=pd.DataFrame(index=[f"cell{i}" for i in range(n)]),
                           var=pd.DataFrame(index=[f"gene{j}" for j in range(d)]))


def _check_knn_graph(adata, n_neighbors):
    """scanpy's neighbour distances are the exact k-NN of X_mvae (scipy's KD-tree)."""
    from scipy.spatial import cKDTree

    x = np.asarray(adata.obsm["X_mvae"], dtype=np.float64)
    dist, idx = cKDTree(x).query(x, k=n_neighbors)  # each cell's first neighbour is itself
    graph = adata.obsp["distances"].tocsr()
    for i in range(adata.n_obs):
        row = graph[i]
        got = dict(zip(row.indices, row.data))
        want = dict(zip(idx[i, 1:], dist[i, 1:]))
        assert set(got) == set(want), i
        np.testing.assert_allclose([got[j] for j in want], list(want.values()), rtol=1e-5)


@pytest.mark.slow  # scanpy's first neighbour graph compiles numba code (tens of seconds)
def test_scanpy_neighbors_use_x_mvae_after_an_h5ad_round_trip(tmp_path):
    sc = pytest.importorskip("scanpy")
    adata = _fit_filling(_counts_adata(80, 30, seed=1))
    adata.write_h5ad(tmp_path / "cells.h5ad")
    back = sc.read_h5ad(tmp_path / "cells.h5ad")
    np.testing.assert_array_equal(back.obsm["X_mvae"], adata.obsm["X_mvae"])
    assert back.uns["mvae"]["params"]["n_latent"] == 3
    sc.pp.neighbors(back, use_rep="X_mvae", n_neighbors=10)
    assert back.uns["neighbors"]["params"]["use_rep"] == "X_mvae"
    _check_knn_graph(back, 10)


@pytest.mark.slow
def test_scanpy_neighbors_after_dropping_empty_cells():
    """An all-zero cell's row of X_mvae is NaN (not fitted); docs/single_cell.md drops it first."""
    sc = pytest.importorskip("scanpy")
    adata = _counts_adata(60, 20, seed=2)
    X = adata.X.toarray()
    X[[4, 17]] = 0
    adata.X = type(adata.X)(X)
    _fit_filling(adata)
    nan_rows = np.flatnonzero(np.isnan(adata.obsm["X_mvae"]).any(axis=1))
    np.testing.assert_array_equal(nan_rows, [4, 17])
    fitted = adata[~np.isnan(adata.obsm["X_mvae"]).any(axis=1)].copy()
    sc.pp.neighbors(fitted, use_rep="X_mvae", n_neighbors=8)
    assert fitted.n_obs == 58
    _check_knn_graph(fitted, 8)


@pytest.mark.slow
def test_single_cell_script_smoke(tmp_path):
    """benchmarks/single_cell.py end to end with 2-epoch fits: its tables agree with its clusters."""
    for name in ("scanpy", "leidenalg", "igraph", "sklearn"):
        pytest.importorskip(name)
    from sklearn.metrics import adjusted_rand_score

    from benchmarks import single_cell

    table = single_cell.main(["--smoke", "--methods", "mvae", "scanpy_k10", "--out",
                              str(tmp_path), "--figures", str(tmp_path)])
    assert set(table["method"]) == {"mvae", "scanpy_k10"}
    assert len(table) == 4  # 2 methods x 1 seed x 2 resolution rules
    matched = table[table["rule"] == "matched"]
    assert (matched["n_clusters"] == 10).all()  # as many clusters as cell types
    for method in ("mvae", "scanpy_k10"):
        cells = pd.read_csv(tmp_path / f"umap_{method}.tsv", sep="\t")
        row = table[(table.method == method) & (table.rule == "default")].iloc[0]
        ari = adjusted_rand_score(cells["cell_type"], cells["leiden"])
        assert abs(ari - row["ari"]) < 1e-4
        assert row["n_clusters"] == cells["leiden"].nunique()
    runs = pd.read_csv(tmp_path / "runs.tsv", sep="\t")
    assert list(runs["method"]) == ["mvae", "scanpy_k10"]
    assert {"command", "machine", "date", "versions"} <= set(runs.columns)
    # a second run of one method replaces its rows and keeps the other method's
    again = single_cell.main(["--smoke", "--methods", "scanpy_k10", "--out", str(tmp_path),
                              "--figures", str(tmp_path)])
    assert len(again) == 4 and set(again["method"]) == {"mvae", "scanpy_k10"}
    assert (tmp_path / "single_cell_umap.png").stat().st_size > 0
