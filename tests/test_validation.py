"""Tests for mvae.io.validation: check_counts and drop_empty."""

import re
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from mvae.errors import InputError
from mvae.io.validation import DroppedWarning, Filtered, check_counts, drop_empty

SAMPLES = ["S0", "S1", "S2", "S3"]
FEATURES = ["F0", "F1", "F2", "F3", "F4"]

# dense / sparse containers every value check must behave the same for
CONTAINERS = {
    "ndarray": lambda a: a,
    "csr_matrix": sp.csr_matrix,
    "csc_matrix": sp.csc_matrix,
    "coo_matrix": sp.coo_matrix,
    "csr_array": sp.csr_array,
    "dataframe": lambda a: pd.DataFrame(a),
}

RAW_HINT = re.escape("(normalised data? mvae needs raw counts)")

# value placed in the table, how the message must print it, what it must say about it
BAD_VALUES = [
    pytest.param(-1.0, "-1", "is negative " + RAW_HINT, id="negative"),
    pytest.param(1.5, "1.5", "is not a whole number " + RAW_HINT, id="non-integer"),
    pytest.param(np.nan, "nan", r"is missing \(NaN\)", id="nan"),
    pytest.param(np.inf, "inf", "is infinite " + RAW_HINT, id="inf"),
    pytest.param(-np.inf, "-inf", "is infinite " + RAW_HINT, id="-inf"),
    pytest.param(2.0**54, str(2**54), r"is above 2\*\*53", id="above-2**53"),
]


def _counts(rng, shape=(4, 5)):
    return rng.integers(0, 20, size=shape).astype(np.float64)


def _with_bad(rng, value):
    """A table whose first bad value (row-major) is at (2, 3); another one at (3, 0).

    (3, 0) comes first in column-major order, so a CSC input checked in storage order would
    report the wrong cell.
    """
    X = _counts(rng)
    X[2, 3] = value
    X[3, 0] = -7.0
    return X


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize(("value", "shown", "problem"), BAD_VALUES)
def test_bad_value_names_sample_feature_value(container, value, shown, problem):
    rng = np.random.default_rng(0)
    X = CONTAINERS[container](_with_bad(rng, value))
    pattern = (
        r"^counts\.biom: sample 'S2' \(row 2\), feature 'F3' \(column 3\): "
        rf"value {re.escape(shown)} {problem}.*\(1 more invalid value in the table\.\)$"
    )
    with pytest.raises(InputError, match=pattern):
        check_counts(X, sample_ids=SAMPLES, feature_ids=FEATURES, source="counts.biom")


@pytest.mark.parametrize("container", ["ndarray", "csr_matrix", "csc_matrix"])
@pytest.mark.parametrize(("value", "shown", "problem"), BAD_VALUES)
def test_bad_value_without_ids_gives_positions(container, value, shown, problem):
    rng = np.random.default_rng(1)
    X = CONTAINERS[container](_with_bad(rng, value))
    pattern = rf"^sample at row 2, feature at column 3: value {re.escape(shown)} {problem}"
    with pytest.raises(InputError, match=pattern):
        check_counts(X)


@pytest.mark.parametrize("container", ["ndarray", "csr_matrix"])
def test_int64_above_2_pow_53_reported_exactly(container):
    # float64 would round 2**53 + 1 to 2**53: the check must see the integer itself
    X = np.zeros((2, 3), dtype=np.int64)
    X[1, 2] = 2**53 + 1
    with pytest.raises(InputError, match=r"sample 'b' \(row 1\), feature 'z' \(column 2\): "
                       r"value 9007199254740993 is above 2\*\*53"):
        check_counts(CONTAINERS[container](X), sample_ids=["a", "b"], feature_ids=["x", "y", "z"])


def test_2_pow_53_itself_is_accepted():
    X = np.array([[2.0**53, 1.0], [0.0, 3.0]])
    assert check_counts(X)[0, 0] == 2**53


def test_dataframe_ids_used_when_none_given():
    df = pd.DataFrame([[1, 2], [3, -4]], index=["s_a", "s_b"], columns=["taxon_1", "taxon_2"])
    with pytest.raises(InputError, match=r"sample 's_b' \(row 1\), feature 'taxon_2' "
                       r"\(column 1\): value -4 is negative"):
        check_counts(df)


def test_nullable_dataframe_missing_value_reported_as_nan():
    df = pd.DataFrame({"f1": pd.array([1, None], dtype="Int64"), "f2": [2, 3]}, index=["a", "b"])
    with pytest.raises(InputError, match=r"sample 'b' \(row 1\), feature 'f1' \(column 0\): "
                       r"value nan is missing"):
        check_counts(df)


def test_text_value_named():
    df = pd.DataFrame({"f1": [1, 2], "f2": [3, "k__Bacteria"]}, index=["a", "b"])
    with pytest.raises(InputError, match=r"^t\.tsv: sample 'b' \(row 1\), feature 'f2' "
                       r"\(column 1\): value 'k__Bacteria' is not a number"):
        check_counts(df, source="t.tsv")


def test_complex_rejected():
    with pytest.raises(InputError, match="complex"):
        check_counts(np.ones((2, 2), dtype=complex))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_not_2d(shape):
    with pytest.raises(InputError, match=r"expected a 2-D count table .*shape"):
        check_counts(np.ones(shape), source="x.biom")


def test_1d_sparse_array_rejected():
    with pytest.raises(InputError, match="2-D"):
        check_counts(sp.coo_array(np.ones(4)))


@pytest.mark.parametrize("shape", [(0, 3), (3, 0)])
def test_empty_table(shape):
    with pytest.raises(InputError, match=rf"empty \({shape[0]} samples x {shape[1]} features\)"):
        check_counts(np.zeros(shape))


def test_duplicate_ids_listed():
    X = np.ones((4, 3))
    with pytest.raises(InputError, match=r"^t\.biom: duplicate sample ids: 'a' \(x2\), 'b' \(x2\)"):
        check_counts(X, sample_ids=["a", "b", "a", "b"], source="t.biom")
    with pytest.raises(InputError, match=r"duplicate feature ids: 'OTU_1' \(x3\)"):
        check_counts(X, feature_ids=["OTU_1"] * 3)


def test_ids_length_mismatch_suggests_transpose():
    with pytest.raises(InputError, match=r"got 3 sample ids for a table with 4 rows.*transposed"):
        check_counts(np.ones((4, 3)), sample_ids=["a", "b", "c"])


@pytest.mark.parametrize("container", CONTAINERS)
def test_returns_float64_csr_equal_to_input(container):
    rng = np.random.default_rng(2)
    dense = rng.integers(0, 5, size=(6, 7))
    out = check_counts(CONTAINERS[container](dense))
    assert isinstance(out, sp.csr_matrix)
    assert out.dtype == np.float64
    assert out.has_canonical_format
    np.testing.assert_array_equal(out.toarray(), dense)


def test_explicit_zeros_and_duplicate_entries():
    # COO with a duplicate (summed) and an explicitly stored zero
    X = sp.coo_matrix(([2.0, 3.0, 0.0], ([0, 0, 1], [1, 1, 0])), shape=(2, 2))
    out = check_counts(X)
    np.testing.assert_array_equal(out.toarray(), [[0, 5], [0, 0]])
    assert out.nnz == 1


def test_bool_and_unsigned_accepted():
    np.testing.assert_array_equal(check_counts(np.eye(2, dtype=bool)).toarray(), np.eye(2))
    np.testing.assert_array_equal(check_counts(np.eye(2, dtype=np.uint8)).toarray(), np.eye(2))


def test_input_not_modified():
    rng = np.random.default_rng(3)
    dense = _counts(rng)
    dense_before = dense.copy()
    check_counts(dense)
    np.testing.assert_array_equal(dense, dense_before)

    # CSR with unsorted indices and a duplicate entry: canonicalising must happen on a copy
    data = np.array([3.0, 1.0, 2.0, 4.0])
    indices = np.array([2, 0, 0, 1])
    indptr = np.array([0, 3, 4])
    X = sp.csr_matrix((data, indices, indptr), shape=(2, 3))
    before = (X.data.copy(), X.indices.copy(), X.indptr.copy())
    out = check_counts(X)
    for a, b in zip((X.data, X.indices, X.indptr), before):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(out.toarray(), [[3, 0, 3], [0, 4, 0]])
    assert not np.shares_memory(out.data, X.data)

    df = pd.DataFrame(dense_before.copy())
    check_counts(df)
    np.testing.assert_array_equal(df.to_numpy(), dense_before)


def test_a_clean_float64_csr_is_checked_but_not_copied():
    """A table already in the returned form (float64 CSR, canonical, no stored zero) is not
    copied, and is still checked; anything else is copied before it is canonicalised."""
    rng = np.random.default_rng(5)
    X = sp.csr_matrix(_counts(rng).astype(np.float64))
    before = (X.data.copy(), X.indices.copy(), X.indptr.copy())
    out = check_counts(X)
    assert np.shares_memory(out.data, X.data)
    np.testing.assert_array_equal(out.toarray(), X.toarray())
    for a, b in zip((X.data, X.indices, X.indptr), before):
        np.testing.assert_array_equal(a, b)
    for bad, match in ((0.5, "not a whole number"), (-1.0, "negative")):
        Y = X.copy()
        Y.data[-1] = bad  # in the last block of the check
        with pytest.raises(InputError, match=match):
            check_counts(Y)
    zeros = X.copy()
    zeros.data[0] = 0.0  # a stored zero: the result drops it, on a copy
    out = check_counts(zeros)
    assert zeros.data[0] == 0.0 and zeros.nnz == X.nnz and out.nnz == X.nnz - 1
    assert not np.shares_memory(out.data, zeros.data)
    wide = X.astype(np.int64)  # another dtype: converted, never shared
    assert not np.shares_memory(check_counts(wide).data, wide.data)


def test_an_invalid_value_far_into_a_large_table_is_found_and_counted():
    """The values are checked block by block; the first bad entry in row-major order is named
    and the others are counted, wherever the blocks fall."""
    n, D = 400, 1000
    X = sp.csr_matrix(np.ones((n, D)))  # 400,000 stored entries: several blocks
    X.data[[150_123, 150_124, 399_999]] = [2.5, -3.0, np.nan]
    i, j = divmod(150_123, D)
    with pytest.raises(InputError, match=rf"row {i}\), .*column {j}\): value 2.5 is not a "
                                         r"whole number.*2 more invalid values"):
        check_counts(X, sample_ids=[f"s{k}" for k in range(n)],
                     feature_ids=[f"f{k}" for k in range(D)])


def test_large_sparse_table():
    # 2000 x 100000 at 1% density: 2 million stored values; the check is O(nnz)
    rng = np.random.default_rng(4)
    X = sp.random_array(
        (2000, 100_000), density=0.01, format="csr", rng=rng,
        data_sampler=lambda size: rng.integers(1, 50, size).astype(np.float64),
    )
    sample_ids = [f"s{i}" for i in range(X.shape[0])]
    feature_ids = [f"f{j}" for j in range(X.shape[1])]
    out = check_counts(X, sample_ids=sample_ids, feature_ids=feature_ids)
    assert out.shape == X.shape and out.nnz == X.nnz

    # a bad value in the last stored entry is still found and named
    X.data[-1] = 0.25
    i = X.shape[0] - 1
    j = X.indices[-1]
    with pytest.raises(InputError, match=rf"sample 's{i}' \(row {i}\), feature 'f{j}' "
                       rf"\(column {j}\): value 0.25 is not a whole number"):
        check_counts(X, sample_ids=sample_ids, feature_ids=feature_ids)


# --------------------------------------------------------------------------------------------
# drop_empty
# --------------------------------------------------------------------------------------------


def _table_with_empties():
    rng = np.random.default_rng(5)
    X = rng.integers(1, 9, size=(5, 6)).astype(np.float64)
    X[[1, 3], :] = 0  # samples S1, S3 empty
    X[:, [0, 4]] = 0  # features F0, F4 empty
    return X, [f"S{i}" for i in range(5)], [f"F{j}" for j in range(6)]


def test_drop_empty_drops_and_warns_once():
    X, s, f = _table_with_empties()
    with pytest.warns(DroppedWarning) as record:
        out = drop_empty(sp.csr_matrix(X), s, f)
    assert len(record) == 1
    msg = str(record[0].message)
    assert msg.startswith(
        "dropped 2 all-zero samples ('S1', 'S3') and 2 all-zero features ('F0', 'F4')"
    )
    assert issubclass(DroppedWarning, UserWarning)

    assert isinstance(out, Filtered)
    assert out.sample_ids == ["S0", "S2", "S4"]
    assert out.feature_ids == ["F1", "F2", "F3", "F5"]
    assert out.dropped_samples == ["S1", "S3"]
    assert out.dropped_features == ["F0", "F4"]
    np.testing.assert_array_equal(out.kept_sample_index, [0, 2, 4])
    np.testing.assert_array_equal(out.kept_feature_index, [1, 2, 3, 5])
    assert isinstance(out.X, sp.csr_matrix)
    np.testing.assert_array_equal(out.X.toarray(), X[np.ix_([0, 2, 4], [1, 2, 3, 5])])
    assert out.X.sum() == X.sum()  # only zeros went


def test_drop_empty_report():
    X, s, f = _table_with_empties()
    with pytest.warns(DroppedWarning):
        out = drop_empty(X, s, f)
    report = out.report()
    assert list(report.columns) == ["axis", "id", "reason"]
    assert report.to_dict("records") == [
        {"axis": "sample", "id": "S1", "reason": "all-zero"},
        {"axis": "sample", "id": "S3", "reason": "all-zero"},
        {"axis": "feature", "id": "F0", "reason": "all-zero"},
        {"axis": "feature", "id": "F4", "reason": "all-zero"},
    ]


def test_drop_empty_lists_at_most_five_ids():
    X = np.zeros((3, 10))
    X[:, :2] = 1  # features F2..F9 (8 of them) empty
    s = ["a", "b", "c"]
    f = [f"F{j}" for j in range(10)]
    with pytest.warns(DroppedWarning, match=re.escape(
        "dropped 0 all-zero samples and 8 all-zero features ('F2', 'F3', 'F4', 'F5', 'F6', ...)"
    )):
        out = drop_empty(X, s, f)
    assert out.dropped_features == f[2:]
    assert out.report().shape == (8, 3)


def test_drop_empty_nothing_to_drop_no_warning():
    X = np.ones((3, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = drop_empty(X, ["a", "b", "c"], ["x", "y", "z"])
    assert out.dropped_samples == [] and out.dropped_features == []
    assert out.report().empty
    np.testing.assert_array_equal(out.X.toarray(), X)


def test_drop_empty_explicit_zeros_count_as_empty_and_input_kept():
    X = sp.csr_matrix(([0.0, 2.0, 3.0], ([0, 1, 2], [0, 1, 1])), shape=(3, 2))
    assert X.nnz == 3
    before = X.toarray().copy()
    with pytest.warns(DroppedWarning, match=r"1 all-zero sample \('a'\) and 1 all-zero feature "
                      r"\('x'\)"):
        out = drop_empty(X, ["a", "b", "c"], ["x", "y"], min_features=1)
    assert out.sample_ids == ["b", "c"] and out.feature_ids == ["y"]
    assert X.nnz == 3
    np.testing.assert_array_equal(X.toarray(), before)


def test_drop_empty_one_pass_is_stable():
    # random sparse tables with many empties: nothing all-zero is left after one pass
    rng = np.random.default_rng(6)
    for _ in range(5):
        X = sp.random_array((40, 60), density=0.03, format="csr", rng=rng,
                            data_sampler=lambda size: rng.integers(1, 5, size).astype(float))
        s = [f"s{i}" for i in range(40)]
        f = [f"f{j}" for j in range(60)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DroppedWarning)
            out = drop_empty(X, s, f)
        assert (np.asarray(out.X.sum(axis=1)).ravel() > 0).all()
        assert (np.asarray(out.X.sum(axis=0)).ravel() > 0).all()
        assert out.X.sum() == X.sum()


def test_drop_empty_too_few_samples():
    X = np.zeros((4, 3))
    X[2] = [1, 2, 3]
    with pytest.raises(InputError, match=r"^after dropping 3 all-zero samples \(of 4\), only 1 "
                       r"sample\(s\) remain; mvae needs at least 2"):
        drop_empty(X, list("abcd"), list("xyz"))


def test_drop_empty_too_few_features():
    X = np.zeros((3, 4))
    X[:, 1] = 1
    with pytest.raises(InputError, match=r"^after dropping 3 all-zero features \(of 4\), only 1 "
                       r"feature\(s\) remain; mvae needs at least 2"):
        drop_empty(X, list("abc"), list("wxyz"))
    with pytest.raises(InputError, match=r"only 3 sample\(s\) remain; mvae needs at least 5"):
        drop_empty(X, list("abc"), list("wxyz"), min_samples=5, min_features=1)


def test_drop_empty_ids_must_match():
    with pytest.raises(InputError, match=r"got 2 feature ids for a table with 3 columns"):
        drop_empty(np.ones((2, 3)), ["a", "b"], ["x", "y"])
