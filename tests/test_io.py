"""Tests for mvae.io.tables: read_counts and write_biom.

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
from mvae.io.tables import OrientationWarning, read_counts, sha256_file, write_biom

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
    code = "import sys, mvae.io.tables; print(sorted(m for m in ('biom', 'anndata', 'h5py', 'torch') " \
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


@pytest.mark.parametrize("name", ["table.xlsx", "table.tab", "table"])
def test_unknown_extension(tmp_path, name):
    # .tsv/.csv/.txt are text tables now (see the text-table tests below)
    (tmp_path / name).write_text("#OTU ID\ts1\nf1\t1\n")
    with pytest.raises(InputError, match=r"unsupported file type\. Supported: \.biom, \.biom\.gz, "
                       r"\.h5ad, \.h5ad\.gz, \.tsv, \.tsv\.gz, \.csv, \.csv\.gz, \.txt, "
                       r"\.txt\.gz.*biom convert"):
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


# --------------------------------------------------------------------------------------------
# delimited text tables (.tsv / .csv / .txt, gzipped or not)
# --------------------------------------------------------------------------------------------


def _text(X, row_ids, col_ids, sep="\t", corner="id"):
    """A delimited table written by hand, independently of mvae."""
    lines = [sep.join([corner] + list(col_ids))]
    for rid, row in zip(row_ids, X):
        lines.append(sep.join([rid] + [str(int(v)) for v in row]))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize(
    ("suffix", "sep", "orientation"),
    [(".tsv", "\t", "samples-as-rows"), (".tsv", "\t", "features-as-rows"),
     (".csv", ",", "samples-as-rows"), (".txt", "\t", "features-as-rows")],
)
def test_text_round_trip(tmp_path, suffix, sep, orientation, gzipped):
    X = _small_counts(6)
    if orientation == "samples-as-rows":
        text = _text(X, SAMPLE_IDS, FEATURE_IDS, sep)
    else:
        text = _text(X.T, FEATURE_IDS, SAMPLE_IDS, sep)
    path = tmp_path / f"table{suffix}"
    if sep == ",":  # ids with commas need quotes in a CSV; none here
        assert not any("," in i for i in SAMPLE_IDS + FEATURE_IDS)
    if gzipped:
        path = tmp_path / f"table{suffix}.gz"
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    with warnings_as_errors():
        adata = read_counts(path, orientation=orientation)
    _assert_matches(adata, X, SAMPLE_IDS, FEATURE_IDS)  # unicode, numeric-looking ids kept


def warnings_as_errors():
    import warnings

    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("error", OrientationWarning)

    class _Exit:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            ctx.__exit__(*exc)

    return _Exit()


def test_text_csv_quoted_windows_excel(tmp_path):
    # R's write.csv: quoted ids, an empty corner; Excel: BOM, CRLF, trailing delimiters
    path = tmp_path / "r.csv"
    path.write_bytes(b'\xef\xbb\xbf"","OTU 1","OTU,2"\r\n"s 1",3,0,\r\n"s2",1,5,\r\n')
    adata = read_counts(path, orientation="samples-as-rows")
    _assert_matches(adata, [[3, 0], [1, 5]], ["s 1", "s2"], ["OTU 1", "OTU,2"])


def test_text_many_rows_across_chunks(tmp_path):
    rng = np.random.default_rng(7)
    X = rng.poisson(0.5, size=(5000, 3)).astype(float)
    ids = [f"cell{i}" for i in range(5000)]
    path = tmp_path / "cells.tsv"
    path.write_text(_text(X, ids, ["g1", "g2", "g3"]))
    _assert_matches(read_counts(path, orientation="samples-as-rows"), X, ids, ["g1", "g2", "g3"])


def test_text_biom_convert_output_with_taxonomy(tmp_path):
    X = _small_counts(8)
    table = _biom_table(X)
    table.add_metadata({f: {"taxonomy": ["k__Bacteria", f"g__{i}"]}
                        for i, f in enumerate(FEATURE_IDS)}, axis="observation")
    path = tmp_path / "feature-table.txt"
    # as `biom convert --to-tsv --header-key taxonomy` writes it
    path.write_text(table.to_tsv(header_key="taxonomy", header_value="taxonomy",
                                 metadata_formatter=lambda v: "; ".join(v)))
    with pytest.raises(InputError, match=r"feature-table\.txt: a text table needs its orientation"
                       r".*written by `biom convert --to-tsv`.*suggests "
                       r"orientation='features-as-rows'"):
        read_counts(path)
    adata = read_counts(path, orientation="features-as-rows")
    _assert_matches(adata, X, SAMPLE_IDS, FEATURE_IDS)
    assert list(adata.var["taxonomy"])[1] == "k__Bacteria; g__1"


def test_text_real_table_matches_biom(tmp_path):
    ref = biom.load_table(str(DATA / "moving_pictures_16s_table.biom"))
    dense = ref.matrix_data.toarray()  # features x samples
    path = tmp_path / "mp.tsv"
    path.write_text(_text(dense, ref.ids(axis="observation"), ref.ids(axis="sample"),
                          corner="#OTU ID"))
    adata = read_counts(path, orientation="features-as-rows")
    assert list(adata.obs_names) == list(ref.ids(axis="sample"))
    assert list(adata.var_names) == list(ref.ids(axis="observation"))
    assert (adata.X != ref.matrix_data.T).nnz == 0
    assert sha256_file(path) == __import__("hashlib").sha256(path.read_bytes()).hexdigest()


def test_text_orientation_is_never_guessed(tmp_path):
    ref = biom.load_table(str(DATA / "moving_pictures_16s_table.biom"))
    dense = ref.matrix_data.toarray().T[:5, :40]  # samples x features
    path = tmp_path / "mp.tsv"
    path.write_text(_text(dense, ref.ids(axis="sample")[:5], ref.ids(axis="observation")[:40]))
    with pytest.raises(InputError, match=r"mp\.tsv: a text table needs its orientation: pass "
                       r"orientation='samples-as-rows'.*--orientation.*40 columns after the id "
                       r"column and 5 data rows\. Here the header ids look like feature ids "
                       r"\(QIIME 2 feature hashes.*suggests orientation='samples-as-rows'"):
        read_counts(path)
    # the opposite orientation is read as asked, with a warning that names the evidence
    with pytest.warns(OrientationWarning, match=r"mp\.tsv: read with "
                      r"orientation='features-as-rows', but the header ids look like feature "
                      r"ids.*suggests orientation='samples-as-rows'"):
        adata = read_counts(path, orientation="features-as-rows")
    assert adata.shape == (40, 5)
    # no evidence either way: the message shows the ids instead
    plain = tmp_path / "plain.tsv"
    plain.write_text(_text([[1, 2]], ["alpha"], ["beta", "gamma"]))
    with pytest.raises(InputError, match=r"Its header starts 'beta', 'gamma' and its first "
                       r"column 'alpha'"):
        read_counts(plain)


def test_text_sample_like_ids_in_header_warn(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text(_text([[1, 2, 3]], ["ASV_1"], ["SRR0000001", "SRR0000002", "SRR0000003"]))
    with pytest.warns(OrientationWarning, match=r"header ids look like sample ids \(SRA/ENA "
                      r"run accessions.*first-column ids look like feature ids \(OTU/ASV ids"):
        read_counts(path, orientation="samples-as-rows")


def test_text_options_checked(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text(_text([[1, 2]], ["s1"], ["a", "b"]))
    with pytest.raises(InputError, match=r"orientation='rows' is not allowed; choose "
                       r"'samples-as-rows' or 'features-as-rows'"):
        read_counts(path, orientation="rows")
    with pytest.raises(InputError, match=r"layer='counts' only applies to \.h5ad files; a text "
                       r"file holds one table"):
        read_counts(path, layer="counts", orientation="samples-as-rows")
    with pytest.raises(InputError, match=r"orientation='samples-as-rows' only applies to text "
                       r"tables.*a BIOM file fixes which axis"):
        read_counts(DATA / "moving_pictures_16s_table.biom", orientation="samples-as-rows")


BAD_TEXT = [
    pytest.param("hello world\nthis is not a table\n",
                 r"not a tab-separated table: line 1 \('hello world'\) has no tab",
                 id="not-a-table"),
    pytest.param("id,a,b\ns1,1,2\n",
                 r"not a tab-separated table: .*has no tab.*It looks comma-separated: rename it to "
                 r"\.csv", id="csv-named-tsv"),
    pytest.param("id\ta\tb\ns1\t1\ns2\t1\t2\n",
                 r"line 2 \(sample 's1'\) has 1 field after the id but the header \(line 1\) names "
                 r"2 columns\. Write missing counts as 0", id="short-row"),
    pytest.param("id\ta\tb\ns1\t1\t2\t3\n",
                 r"line 2 \(sample 's1'\) has 3 fields after the id.*stray tab", id="long-row"),
    pytest.param("id\ta\tb\ns1\t1\tfive\n",
                 r"line 2, sample 's1', feature 'b': value 'five' is not a number",
                 id="text-value"),
    pytest.param("id\ta\tb\ns1\t\t2\n",
                 r"line 2, sample 's1', feature 'a': value '' is an empty cell", id="empty-cell"),
    pytest.param("id\ta\tb\ns1\tNA\t2\n",
                 r"line 2, sample 's1', feature 'a': value 'NA' is a missing value", id="NA"),
    pytest.param("id\ta\tb\ns1\t1\t2\ns1\t3\t4\n", r"duplicate sample ids: 's1' \(x2\)",
                 id="duplicate-sample"),
    pytest.param("id\ta\ta\ns1\t1\t2\n", r"duplicate feature ids: 'a' \(x2\)",
                 id="duplicate-feature"),
    pytest.param("id\ta\tb\ns1\t-1\t2\n",
                 r"sample 's1' \(row 0\), feature 'a' \(column 0\): value -1 is negative "
                 r"\(normalised data\? mvae needs raw counts\)", id="negative"),
    pytest.param("id\ta\tb\ns1\t0.25\t2\n",
                 r"sample 's1' \(row 0\), feature 'a' \(column 0\): value 0\.25 is not a whole "
                 r"number \(normalised data\? mvae needs raw counts\)", id="fraction"),
    pytest.param("id\ta\tb\ns1\tnan\t2\n", r"sample 's1' \(row 0\), feature 'a' \(column 0\): "
                 r"value nan is missing \(NaN\)", id="nan"),
    pytest.param("id\ta\tb\ns1\tinf\t2\n", r"sample 's1' \(row 0\), feature 'a' \(column 0\): "
                 r"value inf is infinite.*mvae needs raw counts", id="inf"),
    pytest.param("id\ta\t\tc\ns1\t1\t2\t3\n", r"line 1: column 3 of the header has no feature id",
                 id="empty-header-id"),
    pytest.param("id\ta\tb\n", r"the header \(line 1\) is followed by no data rows", id="no-rows"),
    pytest.param("\n\n", r"no table found", id="blank"),
]


@pytest.mark.parametrize(("text", "message"), BAD_TEXT)
def test_text_problems(tmp_path, text, message):
    path = tmp_path / "bad.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.tsv: " + message):
        read_counts(path, orientation="samples-as-rows")


def test_text_bad_utf8_names_line(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes("id\ta\tb\ns1\t1\t2\npi\xf1a\t3\t4\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.tsv: line 3 is not valid UTF-8 \(byte f1 at "
                       r"byte 3 of the line\)\. Save the file as UTF-8"):
        read_counts(path, orientation="samples-as-rows")


def test_text_hdf5_and_truncated_gzip(tmp_path):
    shutil.copy(DATA / "moving_pictures_16s_table.biom", tmp_path / "mp.tsv")
    with pytest.raises(InputError, match=r"mp\.tsv: this is an HDF5 file \(a BIOM 2\.1 table or "
                       r"an AnnData file\), not a text table\. Rename it to \.biom or \.h5ad"):
        read_counts(tmp_path / "mp.tsv", orientation="samples-as-rows")
    rows = "".join(f"s{i}\t{i}\t{i + 1}\n" for i in range(20000))
    raw = gzip.compress(("id\ta\tb\n" + rows).encode())
    (tmp_path / "cut.tsv.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.tsv\.gz: corrupt or truncated gzip file"):
        read_counts(tmp_path / "cut.tsv.gz", orientation="samples-as-rows")


def test_write_biom_leaves_no_temporary_file(tmp_path):
    X = _small_counts(9)
    write_biom(tmp_path / "a.biom", X, SAMPLE_IDS, FEATURE_IDS)
    X[0, 0] = -1
    with pytest.raises(InputError):
        write_biom(tmp_path / "a.biom", X, SAMPLE_IDS, FEATURE_IDS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.biom"]
    ref = biom.load_table(str(tmp_path / "a.biom"))  # the first file is intact
    assert ref.shape == (len(FEATURE_IDS), len(SAMPLE_IDS))


def test_corrupt_gzip_is_an_input_error(tmp_path):
    """Found by tests/fuzz/fuzz_readers.py: a damaged gzip stream escaped as zlib.error."""
    import gzip

    import biom

    table = biom.Table(np.arange(6.0).reshape(2, 3), ["f1", "f2"], ["s1", "s2", "s3"])
    data = bytearray(gzip.compress(table.to_json("t").encode()))
    data[len(data) // 2] ^= 0xFF  # flip a byte in the middle of the deflate stream
    path = tmp_path / "t.biom.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="t.biom.gz"):
        read_counts(path)
