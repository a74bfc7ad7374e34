"""Tests for mvae.io: read_counts and write_biom.

References are independent of mvae: biom-format's and anndata's own readers and writers.
"""

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import anndata
import biom
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from mvae.errors import InputError
from mvae.io import read_counts, write_biom

DATA = Path(__file__).parent.parent / "data"

# (file, shape as samples x features) from data/README.md
REAL_BIOM = [
    ("moving_pictures_16s_table.biom", (34, 759)),
    ("ecam_16s_table.biom", (743, 3382)),
    ("wirbel_crc_shotgun_motus_table.biom", (566, 845)),
]
PBMC = DATA / "pbmc68k_reduced_counts.h5ad"

SAMPLE_IDS = ["S1", "sample 2", "Bacteroides_ñ_α", "0003", "3.0", "P-7.d"]
FEATURE_IDS = ["Bacteroides_ñ_α", "OTU;1", "g__Prevotella", "42", "f 5", "ASV_6", "µ-7", "x8"]


def _small_counts(seed=0):
    """Samples x features, with an all-zero sample and an all-zero feature (must be kept)."""
    rng = np.random.default_rng(seed)
    X = rng.poisson(3.0, size=(len(SAMPLE_IDS), len(FEATURE_IDS))).astype(np.float64)
    X[1] = 0
    X[:, 3] = 0
    return X


def _biom_table(X, sample_ids=SAMPLE_IDS, feature_ids=FEATURE_IDS):
    return biom.Table(X.T, observation_ids=feature_ids, sample_ids=sample_ids)


def _gzip(src: Path, dst: Path) -> Path:
    with open(src, "rb") as a, gzip.open(dst, "wb") as b:
        shutil.copyfileobj(a, b)
    return dst


def _assert_matches(adata, X, sample_ids, feature_ids):
    assert isinstance(adata, anndata.AnnData)
    assert isinstance(adata.X, sp.csr_matrix)
    assert adata.X.dtype == np.float64
    assert list(adata.obs_names) == list(sample_ids)
    assert list(adata.var_names) == list(feature_ids)
    np.testing.assert_array_equal(adata.X.toarray(), X)


# --------------------------------------------------------------------------------------------
# real tables
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "shape"), REAL_BIOM)
def test_real_biom_matches_biom_format(name, shape):
    path = DATA / name
    ref = biom.load_table(str(path))
    adata = read_counts(path)
    assert adata.shape == shape == ref.shape[::-1]
    assert list(adata.obs_names) == list(ref.ids(axis="sample"))
    assert list(adata.var_names) == list(ref.ids(axis="observation"))
    assert adata.X.sum() == ref.matrix_data.sum()
    assert (adata.X != ref.matrix_data.T).nnz == 0
    assert isinstance(adata.X, sp.csr_matrix) and adata.X.dtype == np.float64


def test_real_h5ad_matches_anndata():
    ref = anndata.read_h5ad(PBMC)
    adata = read_counts(str(PBMC))  # str paths work too
    assert adata.shape == (700, 765) == ref.shape
    assert list(adata.obs_names) == list(ref.obs_names)
    assert list(adata.var_names) == list(ref.var_names)
    assert adata.X.sum() == ref.X.sum()
    assert (adata.X != ref.X).nnz == 0
    assert isinstance(adata.X, sp.csr_matrix) and adata.X.dtype == np.float64
    # annotations are kept for colouring plots
    assert list(adata.obs["bulk_labels"]) == list(ref.obs["bulk_labels"])


# --------------------------------------------------------------------------------------------
# round trips through files written by biom-format and anndata
# --------------------------------------------------------------------------------------------


def _write_hdf5(table, path):
    with h5py.File(path, "w") as f:
        table.to_hdf5(f, generated_by="test")


def _write_json(table, path):
    path.write_text(table.to_json(generated_by="test"), encoding="utf-8")


def _write_tsv(table, path):
    path.write_text(table.to_tsv(), encoding="utf-8")


WRITERS = {"hdf5": _write_hdf5, "json": _write_json, "tsv": _write_tsv}


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("form", WRITERS)
def test_biom_round_trip(tmp_path, form, gzipped):
    X = _small_counts()
    path = tmp_path / "table.biom"
    WRITERS[form](_biom_table(X), path)
    if gzipped:
        path = _gzip(path, tmp_path / "table.biom.gz")
    adata = read_counts(path)
    _assert_matches(adata, X, SAMPLE_IDS, FEATURE_IDS)  # unicode, numeric-looking ids kept


def test_tsv_with_taxonomy_column(tmp_path):
    path = tmp_path / "tax.biom"
    path.write_text(
        "# Constructed from biom file\n"
        "#OTU ID\ts1\ts2\ttaxonomy\n"
        "f1\t1\t2\tk__Bacteria; p__Firmicutes\n"
        "f2\t0\t3\tk__Bacteria; p__Bacteroidetes\n"
    )
    _assert_matches(read_counts(path), [[1, 0], [2, 3]], ["s1", "s2"], ["f1", "f2"])


@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_h5ad_layer(tmp_path, dense):
    X = _small_counts(1)
    depth = X.sum(axis=1, keepdims=True)
    normalised = np.divide(X, depth, out=np.zeros_like(X), where=depth > 0)
    adata = anndata.AnnData(
        X=normalised if dense else sp.csr_matrix(normalised),
        obs={"obs_names": SAMPLE_IDS},
        var={"var_names": FEATURE_IDS},
    )
    adata.layers["counts"] = X.astype(np.int32) if dense else sp.csc_matrix(X.astype(np.int32))
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)

    _assert_matches(read_counts(path, layer="counts"), X, SAMPLE_IDS, FEATURE_IDS)
    # X holds fractions: refused, with the file, sample, feature and value
    row = 0
    col = int(np.flatnonzero(normalised[0] % 1)[0])
    with pytest.raises(
        InputError,
        match=rf"cells\.h5ad: sample '{SAMPLE_IDS[row]}' \(row 0\), feature "
        rf"'{FEATURE_IDS[col]}' \(column {col}\): value 0\.\d+ is not a whole number "
        r"\(normalised data\? mvae needs raw counts\)",
    ):
        read_counts(path)


def test_gzipped_h5ad(tmp_path):
    X = _small_counts(2)
    path = tmp_path / "t.h5ad"
    anndata.AnnData(X=sp.csr_matrix(X), obs={"obs_names": SAMPLE_IDS},
                    var={"var_names": FEATURE_IDS}).write_h5ad(path)
    gz = _gzip(path, tmp_path / "t.h5ad.gz")
    _assert_matches(read_counts(gz), X, SAMPLE_IDS, FEATURE_IDS)


@pytest.mark.parametrize("as_sparse", [False, True], ids=["dense", "sparse"])
def test_write_biom_round_trip(tmp_path, as_sparse):
    X = _small_counts(3)
    path = tmp_path / "synthetic.biom"
    write_biom(path, sp.coo_matrix(X) if as_sparse else X, SAMPLE_IDS, FEATURE_IDS)

    ref = biom.load_table(str(path))  # independent reader
    assert list(ref.ids(axis="sample")) == SAMPLE_IDS
    assert list(ref.ids(axis="observation")) == FEATURE_IDS
    np.testing.assert_array_equal(ref.matrix_data.toarray(), X.T)
    with h5py.File(path, "r") as f:
        assert f.attrs["generated-by"] == "mvae"
        assert tuple(f.attrs["format-version"]) == (2, 1)

    _assert_matches(read_counts(path), X, SAMPLE_IDS, FEATURE_IDS)


def test_write_biom_rejects_bad_counts(tmp_path):
    X = _small_counts(4)
    X[2, 5] = 0.5
    with pytest.raises(InputError, match=r"^writing .*x\.biom: sample 'Bacteroides_ñ_α' "
                       r"\(row 2\), feature 'ASV_6' \(column 5\): value 0\.5 is not a whole "
                       r"number"):
        write_biom(tmp_path / "x.biom", X, SAMPLE_IDS, FEATURE_IDS)
    assert not (tmp_path / "x.biom").exists()


def test_write_biom_unwritable(tmp_path):
    with pytest.raises(InputError, match=r"no_such_dir/x\.biom: cannot write the BIOM file"):
        write_biom(tmp_path / "no_such_dir" / "x.biom", np.ones((2, 2)), ["a", "b"], ["x", "y"])


def test_import_is_lazy():
    code = "import sys, mvae.io; print(sorted(m for m in ('biom', 'anndata', 'h5py', 'torch') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.biom"
    with pytest.raises(InputError, match=r"nope\.biom: no such file"):
        read_counts(path)


def test_directory(tmp_path):
    with pytest.raises(InputError, match=r"is a directory; expected a count table file \(\.biom"):
        read_counts(tmp_path)


@pytest.mark.parametrize("name", ["empty.biom", "empty.h5ad"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).touch()
    with pytest.raises(InputError, match=rf"{name.replace('.', r'[.]')}: the file is empty"):
        read_counts(tmp_path / name)


@pytest.mark.parametrize("name", ["table.tsv", "table.csv", "table.txt", "table"])
def test_unknown_extension(tmp_path, name):
    (tmp_path / name).write_text("#OTU ID\ts1\nf1\t1\n")
    with pytest.raises(InputError, match=r"unsupported file type\. Supported: \.biom, \.biom\.gz, "
                       r"\.h5ad, \.h5ad\.gz.*biom convert"):
        read_counts(tmp_path / name)


@pytest.mark.parametrize("name", ["moving_pictures_16s_table.biom", "pbmc68k_reduced_counts.h5ad"])
def test_truncated_hdf5(tmp_path, name):
    raw = (DATA / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=rf"{path.name}: the HDF5 file is truncated or corrupt"
                       r".*Re-download or re-export it") as info:
        read_counts(path)
    assert info.value.__cause__ is not None  # library error chained, not swallowed


def test_truncated_gzip(tmp_path):
    raw = _gzip(DATA / "moving_pictures_16s_table.biom", tmp_path / "full.biom.gz").read_bytes()
    path = tmp_path / "cut.biom.gz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.biom\.gz: corrupt or truncated gzip file"):
        read_counts(path)


@pytest.mark.parametrize(
    "text",
    ["hello world\nthis is not a table\n", "{\"id\": \"broken json", "\x00\x01binary\xff"],
    ids=["text", "json", "binary"],
)
def test_unparsable_biom(tmp_path, text):
    path = tmp_path / "bad.biom"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(InputError, match=r"bad\.biom: could not be parsed as a BIOM table"):
        read_counts(path)


def test_h5ad_named_biom_and_biom_named_h5ad(tmp_path):
    shutil.copy(PBMC, tmp_path / "cells.biom")
    with pytest.raises(InputError, match=r"cells\.biom: this is an AnnData \(h5ad\) file, not a "
                       r"BIOM table\. Rename it to \.h5ad"):
        read_counts(tmp_path / "cells.biom")
    shutil.copy(DATA / "moving_pictures_16s_table.biom", tmp_path / "mp.h5ad")
    with pytest.raises(InputError, match=r"mp\.h5ad: this is a BIOM table, not an AnnData file\. "
                       r"Rename it to \.biom"):
        read_counts(tmp_path / "mp.h5ad")


def test_text_named_h5ad(tmp_path):
    (tmp_path / "t.h5ad").write_text("sample\tcount\n")
    with pytest.raises(InputError, match=r"t\.h5ad: not an HDF5 file"):
        read_counts(tmp_path / "t.h5ad")


def test_missing_layer_lists_available(tmp_path):
    adata = anndata.AnnData(X=sp.csr_matrix(np.ones((2, 2))))
    adata.layers["counts"] = adata.X.copy()
    adata.layers["raw"] = adata.X.copy()
    adata.write_h5ad(tmp_path / "t.h5ad")
    with pytest.raises(InputError, match=r"t\.h5ad: no layer 'umi'\. Available layers: "
                       r"'counts', 'raw'"):
        read_counts(tmp_path / "t.h5ad", layer="umi")
    with pytest.raises(InputError, match=r"no layer 'counts'\. Available layers: none"):
        read_counts(PBMC, layer="counts")


def test_layer_with_biom():
    with pytest.raises(InputError, match=r"layer='counts' only applies to \.h5ad files"):
        read_counts(DATA / "moving_pictures_16s_table.biom", layer="counts")


def test_h5ad_without_x(tmp_path):
    adata = anndata.AnnData(obs={"obs_names": ["a", "b"]}, var={"var_names": ["x", "y"]})
    adata.layers["counts"] = np.ones((2, 2))
    adata.write_h5ad(tmp_path / "t.h5ad")
    with pytest.raises(InputError, match=r"t\.h5ad: the file has no X matrix\. Pass layer= with "
                       r"one of: 'counts'"):
        read_counts(tmp_path / "t.h5ad")


def test_bad_value_in_biom_names_file_sample_feature(tmp_path):
    X = _small_counts(5)
    X[4, 6] = -3
    path = tmp_path / "neg.biom"
    _write_hdf5(_biom_table(X), path)
    with pytest.raises(InputError, match=r"^.*neg\.biom: sample '3\.0' \(row 4\), feature 'µ-7' "
                       r"\(column 6\): value -3 is negative \(normalised data\? mvae needs raw "
                       r"counts\)"):
        read_counts(path)


def test_duplicate_ids_named_hdf5(tmp_path):
    path = tmp_path / "dup.biom"
    _write_hdf5(_biom_table(_small_counts()), path)
    with h5py.File(path, "r+") as f:  # biom refuses to write duplicates, so make them by hand
        ids = f["observation/ids"][:]
        ids[2] = ids[0]
        f["observation/ids"][...] = ids
    with pytest.raises(InputError, match=r"dup\.biom: invalid BIOM table: duplicate feature ids: "
                       r"'Bacteroides_ñ_α' \(x2\)") as info:
        read_counts(path)
    assert info.value.__cause__ is not None


def test_duplicate_ids_named_json(tmp_path):
    path = tmp_path / "dup.biom"
    doc = json.loads(_biom_table(_small_counts()).to_json(generated_by="test"))
    doc["columns"][3]["id"] = doc["columns"][0]["id"]
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"dup\.biom: invalid BIOM table: duplicate sample ids: "
                       r"'S1' \(x2\)"):
        read_counts(path)


def test_duplicate_ids_h5ad(tmp_path):
    with pytest.warns(UserWarning, match="not unique"):
        adata = anndata.AnnData(X=np.ones((2, 2)), obs={"obs_names": ["a", "a"]},
                                var={"var_names": ["x", "y"]})
    adata.write_h5ad(tmp_path / "t.h5ad")
    with pytest.raises(InputError, match=r"t\.h5ad: duplicate sample ids: 'a' \(x2\)"):
        read_counts(tmp_path / "t.h5ad")


TSV_HEADER = "# Constructed from biom file\n#OTU ID\ts1\ts2\ts3\n"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        pytest.param(
            "f1\t1\t2\t3\nf2\t4\tfive\t6\n",
            r"line 4, feature 'f2', sample 's2': value 'five' is not a number",
            id="non-numeric",
        ),
        pytest.param(
            "f1\t1\t\t3\nf2\t4\t5\t6\n",
            r"line 3, feature 'f1', sample 's2': value '' is not a number",
            id="empty-value",
        ),
        pytest.param(
            "f1\t1\t2\t3\nf2\t4\t5\tn/a\n",
            r"line 4, feature 'f2', column 's3': value 'n/a' is not a number, so biom would read "
            r"the whole column as metadata and drop sample 's3'",
            id="last-column-typo",
        ),
        pytest.param(
            "f1\t1\t2\nf2\t4\t5\t6\n",
            r"line 3 \(feature 'f1'\) has 2 values but the header names 3 columns\. Fix the row: "
            r"biom would silently fill the gap with zeros",
            id="short-row",
        ),
        pytest.param(
            "f1\t1\t2\t3\t9\nf2\t4\t5\t6\n",
            r"line 3 \(feature 'f1'\) has 4 values but the header names 3 columns",
            id="long-row",
        ),
        pytest.param(
            "f1\t1\t2\t3\nf1\t4\t5\t6\n",
            r"invalid BIOM table: duplicate feature ids: 'f1' \(x2\)",
            id="duplicate-feature",
        ),
        pytest.param(
            "f1\t1\t2\t-3\nf2\t4\t5\t6\n",
            r"sample 's3' \(row 2\), feature 'f1' \(column 0\): value -3 is negative",
            id="negative",
        ),
    ],
)
def test_classic_tsv_problems(tmp_path, rows, message):
    path = tmp_path / "classic.biom"
    path.write_text(TSV_HEADER + rows, encoding="utf-8")
    with pytest.raises(InputError, match=r"classic\.biom: " + message):
        read_counts(path)
