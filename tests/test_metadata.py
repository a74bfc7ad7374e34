"""Tests for mvae.io.metadata: the QIIME 2 style sample metadata reader.

References are independent of mvae: pandas' own TSV reader on the real metadata files, and values
written out by hand for the small cases.
"""

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mvae.errors import InputError
from mvae.io.metadata import align_metadata, metadata_column, read_metadata

DATA = Path(__file__).resolve().parent.parent / "data"

REAL = [
    # file, id header, rows (q2:types line excluded), a categorical and a numeric column
    ("moving_pictures_16s_metadata.tsv", "#SampleID", 34, "BodySite", "DaysSinceExperimentStart"),
    ("ecam_16s_metadata.tsv", "sampleid", 741, "delivery", "day_of_life"),
    ("wirbel_crc_shotgun_metadata.tsv", "sample_id", 566, "Group", "Age"),
]


def _write(tmp_path, text, name="md.tsv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("name", "header", "n", "cat", "num"), REAL)
def test_real_metadata_matches_pandas(name, header, n, cat, num):
    md = read_metadata(DATA / name)
    ref = pd.read_csv(DATA / name, sep="\t", dtype=str, keep_default_na=False)
    ref = ref[~ref.iloc[:, 0].str.startswith("#")]  # the '#q2:types' line
    assert md.shape == (n, ref.shape[1] - 1)
    assert md.index.name == header
    assert list(md.index) == list(ref.iloc[:, 0])
    assert list(md.columns) == list(ref.columns[1:])
    assert md.attrs["column_types"][cat] == "categorical"
    assert md.attrs["column_types"][num] == "numeric"
    assert md[num].dtype == np.float64
    expected = pd.to_numeric(ref[num].replace("", np.nan)).to_numpy(dtype=float)
    np.testing.assert_array_equal(md[num].to_numpy(), expected)
    assert list(md[cat].fillna("")) == list(ref[cat])


def test_q2_types_declare_numeric_and_categorical(tmp_path):
    path = _write(tmp_path, (
        "sample-id\tsubject\tdays\tcode\n"
        "#q2:types\tcategorical\tnumeric\tcategorical\n"
        "# a comment line\n"
        "\n"
        "a\t1\t0\t007\n"
        "b\t2\t3.5\t8\n"
    ))
    md = read_metadata(path)
    assert md.attrs["column_types"] == {"subject": "categorical", "days": "numeric",
                                        "code": "categorical"}
    assert list(md["subject"]) == ["1", "2"]  # declared categorical: kept as text
    assert list(md["code"]) == ["007", "8"]
    np.testing.assert_array_equal(md["days"].to_numpy(), [0.0, 3.5])


@pytest.mark.parametrize("header", ["id", "ID", "sampleid", "SampleID", "sample id", "sample-id",
                                    "feature-id", "#SampleID", "#Sample ID", "#OTUID",
                                    "sample_name", "sample_id"])
def test_accepted_id_headers(tmp_path, header):
    md = read_metadata(_write(tmp_path, f"{header}\tx\ns1\t1\n"))
    assert list(md.index) == ["s1"] and md.index.name == header


def test_unicode_ids_and_missing_values(tmp_path):
    path = _write(tmp_path, (
        "id\tsite\tph\n"
        "Bacteroides_ñ_α\tgut\t7.1\n"
        "0003\t\t\n"  # short row and empty cells: missing
        "  x y  \tskin \t6\n"  # surrounding whitespace removed (QIIME 2 does the same)
    ))
    md = read_metadata(path)
    assert list(md.index) == ["Bacteroides_ñ_α", "0003", "x y"]
    assert md.loc["0003", "site"] is np.nan or pd.isna(md.loc["0003", "site"])
    assert md.loc["x y", "site"] == "skin"
    assert np.isnan(md.loc["0003", "ph"]) and md.loc["x y", "ph"] == 6.0


def test_gzipped(tmp_path):
    path = tmp_path / "md.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("id\tgroup\na\tCRC\nb\tCTR\n")
    assert list(read_metadata(path)["group"]) == ["CRC", "CTR"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("name\tx\na\t1\n", r"line 1: the first column must be the sample id column",
                     id="no-id-header"),
        pytest.param("id\tx\na\t1\na\t2\n", r"line 3: id 'a' is repeated \(first on line 2\)",
                     id="duplicate-id"),
        pytest.param("id\tx\tx\na\t1\t2\n", r"line 1: repeated column names: 'x'",
                 id="duplicate-column"),
        pytest.param("id\tx\na\t1\t2\n", r"line 2 \(id 'a'\) has 2 values but the header \(line 1\)"
                     r" names 1 columns", id="long-row"),
        pytest.param("id\tx\n#q2:types\tnumeric\na\tfive\n",
                     r"line 3, id 'a', column 'x': value 'five' is not a number, but the column "
                     r"is declared numeric", id="declared-numeric"),
        pytest.param("id\tx\n#q2:types\tnumber\n", r"line 2: column 'x' has type 'number'",
                     id="bad-type"),
        pytest.param("# only comments\n", r"no header line found", id="no-header"),
    ],
)
def test_bad_metadata(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(InputError, match=r"md\.tsv: " + message):
        read_metadata(path)


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match=r"nope\.tsv: no such metadata file"):
        read_metadata(tmp_path / "nope.tsv")
    with pytest.raises(InputError, match=r"is a directory"):
        read_metadata(tmp_path)
    (tmp_path / "empty.tsv").touch()
    with pytest.raises(InputError, match=r"empty\.tsv: the metadata file is empty"):
        read_metadata(tmp_path / "empty.tsv")
    (tmp_path / "latin1.tsv").write_bytes("id\tsite\nb\tpi\xf1a\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.tsv: line 2 is not valid UTF-8"):
        read_metadata(tmp_path / "latin1.tsv")


def test_align_ignores_extra_rows_and_reorders(tmp_path):
    md = read_metadata(_write(tmp_path, "id\tg\na\t1\nb\t2\nc\t3\nextra\t4\n"))
    out = align_metadata(md, ["c", "a", "b"])
    assert list(out.index) == ["c", "a", "b"]
    np.testing.assert_array_equal(out["g"].to_numpy(), [3.0, 1.0, 2.0])


def test_align_lists_missing_ids(tmp_path):
    md = read_metadata(_write(tmp_path, "id\tsample_alias\na\tS1\nb\tS2\nc\tS3\n"))
    with pytest.raises(InputError, match=r"md\.tsv: 2 of 3 samples of t\.biom are not in the "
                       r"metadata: 'x', 'y'\."):
        align_metadata(md, ["a", "x", "y"], table="t.biom")
    # the table's ids sit in another column: say which
    with pytest.raises(InputError, match=r"The table's ids appear in column 'sample_alias'"):
        align_metadata(md, ["S1", "S2", "S3"])


def test_align_real_ecam_lists_the_two_missing_samples():
    import mvae

    table = mvae.read_counts(DATA / "ecam_16s_table.biom")
    md = read_metadata(DATA / "ecam_16s_metadata.tsv")
    ref = set(pd.read_csv(DATA / "ecam_16s_metadata.tsv", sep="\t", dtype=str).iloc[:, 0])
    missing = [s for s in table.obs_names if s not in ref]
    assert len(missing) == 2
    with pytest.raises(InputError, match=rf"2 of 743 samples are not in the metadata: "
                       rf"'{missing[0]}', '{missing[1]}'"):
        align_metadata(md, list(table.obs_names))


def test_metadata_column(tmp_path):
    md = read_metadata(_write(tmp_path, "id\tBodySite\tage\na\tgut\t3\nb\ttongue\t4\n"))
    site = metadata_column(md, "BodySite")
    assert site.attrs["kind"] == "categorical" and list(site) == ["gut", "tongue"]
    assert metadata_column(md, "age").attrs["kind"] == "numeric"
    with pytest.raises(InputError, match=r"no column 'bodysite'\. Did you mean 'BodySite'\? "
                       r"Columns: 'BodySite', 'age'"):
        metadata_column(md, "bodysite")
