"""The command line: every command through click's CliRunner, one real `python -m mvae fit`
subprocess per shipped table, and every bad input answered with exit code 2 and one line.

Outputs are read back with independent readers (pandas, biom-format, scikit-bio, anndata, PIL,
hashlib) rather than with mvae's own.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import anndata
import biom
import h5py
import numpy as np
import pandas as pd
import pytest
import skbio
from click.testing import CliRunner
from PIL import Image

import mvae
from mvae.cli import main

DATA = Path(__file__).resolve().parent.parent / "data"
MP = DATA / "moving_pictures_16s_table.biom"
MP_META = DATA / "moving_pictures_16s_metadata.tsv"

FIT_FILES = ["model.safetensors", "config.json", "embeddings.tsv", "ordination.txt",
             "loadings_clr.tsv", "loadings_ilr.tsv", "correlations.tsv", "scores.tsv",
             "history.tsv", "filtered.tsv", "loss.png", "embedding.png"]
FAST = ["--epochs", "3", "-k", "2", "--hidden", "16", "--threads", "1"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def read_tsv(path, **kw):
    """pandas with ids kept as text ('0003' stays '0003', 'NA' stays 'NA')."""
    return pd.read_csv(path, sep="\t", dtype={0: str}, keep_default_na=False,
                       na_values=[""], **kw)


def reference_table(path):
    """(sample ids, feature ids, samples x features dense counts) from biom-format / anndata."""
    if str(path).endswith(".h5ad"):
        ad = anndata.read_h5ad(path)
        X = ad.X.toarray() if hasattr(ad.X, "toarray") else np.asarray(ad.X)
        return list(ad.obs_names), list(ad.var_names), X.astype(float)
    t = biom.load_table(str(path))
    return list(t.ids(axis="sample")), list(t.ids(axis="observation")), t.matrix_data.T.toarray()


def check_fit_outputs(out, table, k, top):
    """Every file of `mvae fit` checked for content against the input table."""
    samples, features, X = reference_table(table)
    n, d = X.shape
    assert sorted(p.name for p in out.iterdir()) == sorted(FIT_FILES)
    assert not [p for p in out.parent.iterdir() if ".mvae-tmp-" in p.name]

    emb = read_tsv(out / "embeddings.tsv", index_col=0)
    assert emb.index.name == "sample_id" and list(emb.index) == samples
    assert list(emb.columns) == [f"axis{i + 1}" for i in range(k)]
    assert np.isfinite(emb.to_numpy()).all()

    ordn = skbio.OrdinationResults.read(str(out / "ordination.txt"))
    assert list(ordn.samples.index) == samples and list(ordn.features.index) == features
    assert ordn.samples.shape == (n, k) and ordn.features.shape == (d, k)
    np.testing.assert_allclose(ordn.samples.to_numpy(), emb.to_numpy(), rtol=1e-12)
    eig, prop = ordn.eigvals.to_numpy(), ordn.proportion_explained.to_numpy()
    assert len(eig) == k and (eig > 0).all() and (np.diff(eig) <= 0).all()
    assert ((prop > 0) & (prop < 1)).all() and prop.sum() < 1

    clr = read_tsv(out / "loadings_clr.tsv", index_col=0)
    assert list(clr.index) == features and clr.shape == (d, k)
    np.testing.assert_allclose(clr.to_numpy(), ordn.features.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(clr.sum(axis=0), 0, atol=1e-8)
    ilr = read_tsv(out / "loadings_ilr.tsv", index_col=0)
    assert ilr.shape == (d - 1, k) and np.isfinite(ilr.to_numpy()).all()

    corr = pd.read_csv(out / "correlations.tsv", sep="\t", dtype={"feature_a": str,
                                                                    "feature_b": str},
                       keep_default_na=False)
    assert list(corr.columns) == ["feature_a", "feature_b", "correlation", "covariance"]
    assert len(corr) == min(top, d * (d - 1) // 2)
    mags = corr["correlation"].abs().to_numpy()
    assert (np.diff(mags) <= 0).all() and (mags <= 1).all()
    assert set(corr.feature_a) | set(corr.feature_b) <= set(features)
    assert (corr.feature_a != corr.feature_b).all()
    assert np.isfinite(corr[["correlation", "covariance"]].to_numpy()).all()

    scores = read_tsv(out / "scores.tsv", index_col=0)
    assert list(scores.index) == samples
    np.testing.assert_array_equal(scores["depth"].to_numpy(), X.sum(axis=1))
    assert set(scores.pop("split")) <= {"train", "validation"}
    assert np.isfinite(scores.to_numpy()).all() and (scores["negative_elbo"] > 0).all()
    np.testing.assert_allclose(scores["negative_elbo_per_read"],
                               scores["negative_elbo"] / scores["depth"])

    hist = pd.read_csv(out / "history.tsv", sep="\t")
    assert list(hist["epoch"]) == [1, 2, 3] and np.isfinite(hist["train_loss"]).all()
    filt = pd.read_csv(out / "filtered.tsv", sep="\t")
    assert list(filt.columns) == ["axis", "id", "reason"] and len(filt) == 0
    for png in ("loss.png", "embedding.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 300

    run = json.loads((out / "config.json").read_text())["run"]
    assert run["input"]["sha256"] == hashlib.sha256(Path(table).read_bytes()).hexdigest()
    assert run["seed"] == 0 and run["threads"] == 1 and run["versions"]["torch"]
    return emb


# --------------------------------------------------------------------------------------------
# CliRunner: each command
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """`mvae fit` on moving pictures (in-process), shared by the commands that use a model."""
    out = tmp_path_factory.mktemp("fit") / "mp"
    r = invoke("fit", MP, "-o", out, *FAST, "--top", "50", "--metadata", MP_META,
               "--color", "Subject", "-q")
    assert r.exit_code == 0, r.output
    return out


def test_fit_writes_model_and_embeddings(fitted):
    emb = check_fit_outputs(fitted, MP, k=2, top=50)
    table = mvae.read_counts(MP)
    model = mvae.MultinomialVAE.load(fitted)
    np.testing.assert_allclose(model.transform(table), emb.to_numpy(), rtol=1e-5, atol=1e-6)
    config = json.loads((fitted / "config.json").read_text())
    assert config["params"]["n_latent"] == 2 and config["params"]["threads"] == 1
    assert config["params"]["progress"] is False  # not a terminal
    assert config["run"]["metadata"]["color"] == "Subject"
    assert config["run"]["parameters"]["epochs"] == 3


def test_fit_text_table_needs_orientation(tmp_path):
    samples, features, X = reference_table(MP)
    tsv = tmp_path / "mp.tsv"
    pd.DataFrame(X[:, :60].astype(int), index=pd.Index(samples, name="sample-id"),
                 columns=features[:60]).to_csv(tsv, sep="\t")
    r = invoke("fit", tsv, "-o", tmp_path / "out", *FAST)
    assert r.exit_code == 2
    assert "mp.tsv: a text table needs its orientation" in r.output
    assert "suggests orientation='samples-as-rows'" in r.output
    r = invoke("fit", tsv, "-o", tmp_path / "out", *FAST, "--orientation", "samples-as-rows",
               "-q")
    assert r.exit_code == 0, r.output
    emb = read_tsv(tmp_path / "out" / "embeddings.tsv", index_col=0)
    assert list(emb.index) == samples


def test_fit_with_tree_names_balances(tmp_path):
    table = tmp_path / "t.tsv"
    rng = np.random.default_rng(0)
    X = rng.poisson(20, size=(12, 4))
    pd.DataFrame(X, index=[f"s{i}" for i in range(12)], columns=["a", "b", "c", "d"]).to_csv(
        table, sep="\t")
    tree = tmp_path / "tree.nwk"
    tree.write_text("((a,b)ab,(c,d)cd)root;\n")
    r = invoke("fit", table, "-o", tmp_path / "out", "--orientation", "samples-as-rows",
               "--tree", tree, "-k", "1", "--epochs", "2", "--threads", "1", "-q")
    assert r.exit_code == 0, r.output
    ilr = read_tsv(tmp_path / "out" / "loadings_ilr.tsv", index_col=0)
    assert sorted(ilr.index) == ["ab", "cd", "root"]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["params"]["basis"] == "tree"
    assert config["run"]["tree"]["sha256"] == hashlib.sha256(tree.read_bytes()).hexdigest()


def _tiny_table(path, n=12, d=6, seed=0):
    rng = np.random.default_rng(seed)
    pd.DataFrame(rng.poisson(20, size=(n, d)), index=[f"s{i}" for i in range(n)],
                 columns=[f"f{j}" for j in range(d)]).to_csv(path, sep="\t")
    return [path, "--orientation", "samples-as-rows"]


def test_fit_force_replaces_and_verbosity(tmp_path):
    table = _tiny_table(tmp_path / "t.tsv")
    out = tmp_path / "res"
    r = invoke("fit", *table, "-o", out, *FAST, "-q")
    assert r.exit_code == 0, r.output
    (out / "embeddings.tsv").write_text("old")
    r = invoke("fit", *table, "-o", out, *FAST, "--force", "-v")
    assert r.exit_code == 0, r.output
    assert (out / "embeddings.tsv").read_text() != "old"
    assert "fitted 12 samples x 6 features in 3 epochs" in r.output
    assert "proportion of clr variance per axis" in r.output
    r = invoke("fit", *table, "-o", out, *FAST, "--force", "-q")
    assert r.exit_code == 0 and r.output == ""
    r = invoke("fit", *table, "-o", out, *FAST, "--force", "-q", "-v")
    assert r.exit_code == 2 and "--quiet and --verbose cannot be used together" in r.output


def test_unicode_and_numeric_looking_ids_kept_exactly(tmp_path):
    samples = ["0003", "3.0", "ñandú", "α β", "NA", "S-1;x", "s7", "s8", "s9", "s10"]
    features = ["g__Bacteroides_α", "007", "OTU 1", "nan", "µ-7"]
    rng = np.random.default_rng(1)
    lines = ["#SampleID\t" + "\t".join(features)]
    lines += [s + "\t" + "\t".join(str(v) for v in rng.poisson(9, 5)) for s in samples]
    (tmp_path / "u.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = invoke("fit", tmp_path / "u.tsv", "--orientation", "samples-as-rows", "-o",
               tmp_path / "out", "-k", "1", "--epochs", "2", "--threads", "1", "-q")
    assert r.exit_code == 0, r.output
    emb = read_tsv(tmp_path / "out" / "embeddings.tsv", index_col=0)
    assert list(emb.index) == samples
    assert list(read_tsv(tmp_path / "out" / "loadings_clr.tsv", index_col=0).index) == features
    ordn = skbio.OrdinationResults.read(str(tmp_path / "out" / "ordination.txt"))
    assert [str(s) for s in ordn.samples.index] == samples


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch):
    table = _tiny_table(tmp_path / "t.tsv")
    monkeypatch.setattr("mvae.cli._stderr_is_tty", lambda: True)
    r = invoke("fit", *table, "-o", tmp_path / "a", *FAST)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "a" / "config.json").read_text())["params"]["progress"] is True
    r = invoke("fit", *table, "-o", tmp_path / "b", *FAST, "-q")
    assert json.loads((tmp_path / "b" / "config.json").read_text())["params"]["progress"] is False


def _shuffled_tsv(tmp_path, drop=(), extra=False):
    """Moving pictures as features-as-rows TSV, features reversed, some dropped, one unknown."""
    samples, features, X = reference_table(MP)
    frame = pd.DataFrame(X.T.astype(int), index=pd.Index(features, name="#OTU ID"),
                         columns=samples).iloc[::-1]
    frame = frame.drop(index=list(drop))
    if extra:
        frame.loc["unknown-feature"] = 1
    path = tmp_path / "new.tsv"
    frame.to_csv(path, sep="\t")
    return path, samples


def test_transform_matches_fit_embeddings(tmp_path, fitted):
    path, samples = _shuffled_tsv(tmp_path, extra=True)
    r = invoke("transform", fitted, path, "-o", tmp_path / "emb.tsv", "--orientation",
               "features-as-rows", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert "Warning: 1 features unknown to the model were dropped" in r.output
    got = read_tsv(tmp_path / "emb.tsv", index_col=0)
    ref = read_tsv(fitted / "embeddings.tsv", index_col=0)
    assert list(got.index) == samples and list(got.columns) == ["axis1", "axis2"]
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=1e-6, atol=1e-9)
    # a subset of the features: zero-filled with a warning
    clr = read_tsv(fitted / "loadings_clr.tsv", index_col=0)
    path, _ = _shuffled_tsv(tmp_path, drop=clr.index[:3])
    r = invoke("transform", fitted / "config.json", path, "-o", tmp_path / "emb2.tsv",
               "--orientation", "features-as-rows")
    assert r.exit_code == 0, r.output
    assert "3 of the model's features are missing from the table and were filled with zeros" \
        in r.output
    assert np.isfinite(read_tsv(tmp_path / "emb2.tsv", index_col=0).to_numpy()).all()


def test_score_matches_fit_scores(tmp_path, fitted):
    r = invoke("score", fitted, MP, "-o", tmp_path / "s.tsv")
    assert r.exit_code == 0, r.output
    got = read_tsv(tmp_path / "s.tsv", index_col=0)
    ref = read_tsv(fitted / "scores.tsv", index_col=0)
    assert list(got.columns) == ["depth", "negative_elbo", "negative_elbo_per_read"]
    pd.testing.assert_frame_equal(got, ref.drop(columns="split"), rtol=1e-6)


def test_sample_writes_biom_2_1(tmp_path, fitted):
    features = list(read_tsv(fitted / "loadings_clr.tsv", index_col=0).index)
    out = tmp_path / "new.biom"
    r = invoke("sample", fitted, "-n", 7, "-o", out, "--depth", 500, "--seed", 1)
    assert r.exit_code == 0, r.output
    t = biom.load_table(str(out))
    assert list(t.ids(axis="sample")) == [f"synthetic{i}" for i in range(1, 8)]
    assert list(t.ids(axis="observation")) == features
    np.testing.assert_array_equal(t.sum(axis="sample"), 500)
    with h5py.File(out, "r") as f:
        assert tuple(f.attrs["format-version"]) == (2, 1)
    assert (out.stat().st_mode & 0o044) == 0o044 or os.umask(0o022) & 0o044  # not private
    again = tmp_path / "again.biom"
    invoke("sample", fitted, "-n", 7, "-o", again, "--depth", 500, "--seed", 1)
    other = tmp_path / "other.biom"
    invoke("sample", fitted, "-n", 7, "-o", other, "--depth", 500, "--seed", 2)
    m = t.matrix_data.toarray()
    np.testing.assert_array_equal(biom.load_table(str(again)).matrix_data.toarray(), m)
    assert (biom.load_table(str(other)).matrix_data.toarray() != m).any()


def test_network_top_and_min_abs(tmp_path, fitted):
    r = invoke("network", fitted, "-o", tmp_path / "e.tsv", "--top", 5)
    assert r.exit_code == 0, r.output
    got = pd.read_csv(tmp_path / "e.tsv", sep="\t", dtype=str)
    ref = pd.read_csv(fitted / "correlations.tsv", sep="\t", dtype=str)
    pd.testing.assert_frame_equal(got, ref.head(5))
    cut = float(ref["correlation"].astype(float).abs().iloc[9])
    r = invoke("network", fitted, "-o", tmp_path / "m.tsv", "--top", 1000, "--min-abs", cut)
    m = pd.read_csv(tmp_path / "m.tsv", sep="\t")
    assert len(m) >= 10 and (m["correlation"].abs() >= cut * (1 - 1e-9)).all()


def test_simulate_writes_table_and_truth(tmp_path):
    out = tmp_path / "sim"
    r = invoke("simulate", "-o", out, "-n", 30, "-d", 12, "-k", 2, "--depth", 400, "--seed", 5,
               "--eigenvalues", "3,1")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["table.biom", "loadings_clr.tsv", "bias_clr.tsv", "z.tsv", "depths.tsv",
         "simulation.json"])
    t = biom.load_table(str(out / "table.biom"))
    assert t.shape == (12, 30)
    depths = read_tsv(out / "depths.tsv", index_col=0)
    assert list(depths.index) == list(t.ids(axis="sample"))
    np.testing.assert_array_equal(depths["depth"].to_numpy(), t.sum(axis="sample"))
    load = read_tsv(out / "loadings_clr.tsv", index_col=0)
    assert list(load.index) == list(t.ids(axis="observation")) and load.shape == (12, 2)
    np.testing.assert_allclose(load.sum(axis=0), 0, atol=1e-12)
    gram = load.to_numpy().T @ load.to_numpy()  # W~ = Q diag(sqrt(lambda)): W~'W~ = diag(lambda)
    np.testing.assert_allclose(gram, np.diag([3.0, 1.0]), atol=1e-10)
    bias = read_tsv(out / "bias_clr.tsv", index_col=0)
    assert abs(bias["bias_clr"].sum()) < 1e-10
    z = read_tsv(out / "z.tsv", index_col=0)
    assert z.shape == (30, 2) and list(z.columns) == ["z1", "z2"]
    config = json.loads((out / "simulation.json").read_text())
    assert config["sigma"] == pytest.approx(0.316) and config["eigenvalues"] == [3.0, 1.0]
    assert config["seed"] == 5
    # same seed, same table
    r = invoke("simulate", "-o", tmp_path / "sim2", "-n", 30, "-d", 12, "-k", 2, "--depth", 400,
               "--seed", 5, "--eigenvalues", "3,1", "-q")
    t2 = biom.load_table(str(tmp_path / "sim2" / "table.biom"))
    np.testing.assert_array_equal(t2.matrix_data.toarray(), t.matrix_data.toarray())
    r = invoke("simulate", "-o", out, "-n", 30)
    assert r.exit_code == 2 and "already exists" in r.output


def test_info_table_and_model(fitted):
    samples, features, X = reference_table(MP)
    r = invoke("info", MP, "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert got["samples"] == len(samples) and got["features"] == len(features)
    assert got["density"] == pytest.approx((X > 0).mean())
    depth = X.sum(axis=1)
    assert got["reads per sample (min, median, max)"] == [depth.min(), np.median(depth),
                                                          depth.max()]
    r = invoke("info", fitted, "--json")
    model = json.loads(r.output)
    assert model["latent dim"] == 2 and model["features"] == len(features)
    assert model["epochs"] == 3 and len(model["proportion explained"]) == 2
    assert model["input sha256"] == hashlib.sha256(MP.read_bytes()).hexdigest()
    r = invoke("info", fitted)
    assert r.exit_code == 0 and "latent dim" in r.output and "noise variance" in r.output


def test_help_is_fast_and_lists_commands():
    r = subprocess.run([sys.executable, "-m", "mvae", "--help"], capture_output=True, text=True,
                       check=True)
    for command in ("fit", "transform", "score", "sample", "network", "simulate", "info"):
        assert command in r.stdout
    # not a timing test: just that no heavy module was needed to answer
    code = ("import sys, mvae.cli; print(sorted(m for m in ('torch', 'skbio', 'anndata', "
            "'pandas', 'matplotlib', 'biom') if m in sys.modules))")
    r2 = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r2.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["fit", "transform", "score", "sample", "network",
                                     "simulate", "info"])
def test_command_help_shows_defaults(command):
    r = invoke(command, "--help")
    assert r.exit_code == 0
    if command in ("fit", "simulate", "network", "sample", "score"):
        assert "[default:" in r.output


# --------------------------------------------------------------------------------------------
# bad input: exit code 2, one line naming the file or value, no traceback
# --------------------------------------------------------------------------------------------


def _mp_tsv(path, mutate=None):
    """A small samples-as-rows table (text written by hand)."""
    rows = [["id", "a", "b", "c"], ["s1", "1", "2", "3"], ["s2", "4", "5", "6"],
            ["s3", "0", "7", "1"]]
    if mutate:
        mutate(rows)
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _set(i, j, value):
    def mutate(rows):
        rows[i][j] = value
    return mutate


def _case_missing(tmp):
    return ["fit", tmp / "nope.biom"], "nope.biom: no such file"


def _case_directory(tmp):
    (tmp / "adir").mkdir()
    return ["fit", tmp / "adir"], "adir: is a directory"


def _case_empty(tmp):
    (tmp / "empty.biom").touch()
    return ["fit", tmp / "empty.biom"], "empty.biom: the file is empty"


def _case_truncated_hdf5(tmp):
    raw = MP.read_bytes()
    (tmp / "cut.biom").write_bytes(raw[: len(raw) // 2])
    return ["fit", tmp / "cut.biom"], "cut.biom: the HDF5 file is truncated or corrupt"


def _case_corrupt_h5ad(tmp):
    raw = bytearray((DATA / "pbmc68k_reduced_counts.h5ad").read_bytes())
    raw[2000:60000] = bytes(58000)  # zero out the superblock's surroundings
    (tmp / "bad.h5ad").write_bytes(bytes(raw))
    return ["fit", tmp / "bad.h5ad"], "bad.h5ad: the HDF5 file is truncated or corrupt"


def _case_not_a_table(tmp):
    (tmp / "notes.tsv").write_text("hello world\nthis is not a table\n")
    return (["fit", tmp / "notes.tsv", "--orientation", "samples-as-rows"],
            "notes.tsv: not a tab-separated table")


def _case_bad_utf8(tmp):
    (tmp / "latin1.tsv").write_bytes("id\ta\tb\nsa\xf1o\t1\t2\ns2\t3\t4\n".encode("latin-1"))
    return (["fit", tmp / "latin1.tsv", "--orientation", "samples-as-rows"],
            "latin1.tsv: line 2 is not valid UTF-8")


def _case_short_row(tmp):
    path = _mp_tsv(tmp / "short.tsv", lambda rows: rows[2].pop())
    return (["fit", path, "--orientation", "samples-as-rows"],
            "short.tsv: line 3 (sample 's2') has 2 fields after the id but the header (line 1) "
            "names 3 columns")


def _case_duplicate_samples(tmp):
    path = _mp_tsv(tmp / "dup.tsv", _set(2, 0, "s1"))
    return (["fit", path, "--orientation", "samples-as-rows"],
            "dup.tsv: duplicate sample ids: 's1' (x2)")


def _case_duplicate_features(tmp):
    path = _mp_tsv(tmp / "dupf.tsv", _set(0, 3, "a"))
    return (["fit", path, "--orientation", "samples-as-rows"],
            "dupf.tsv: duplicate feature ids: 'a' (x2)")


def _value_case(name, value, message):
    def case(tmp):
        path = _mp_tsv(tmp / f"{name}.tsv", _set(2, 2, value))
        return (["fit", path, "--orientation", "samples-as-rows"],
                f"{name}.tsv: sample 's2' (row 1), feature 'b' (column 1): value {message}")
    return case


def _case_all_zero(tmp):
    path = tmp / "zero.tsv"
    path.write_text("id\ta\tb\ns1\t0\t0\ns2\t0\t0\n")
    return (["fit", path, "--orientation", "samples-as-rows"],
            "zero.tsv: after dropping 2 all-zero samples (of 2), only 0 sample(s) remain")


def _case_single_sample(tmp):
    path = tmp / "one.tsv"
    path.write_text("id\ta\tb\tc\ns1\t1\t2\t3\n")
    return (["fit", path, "--orientation", "samples-as-rows"],
            "one.tsv: after dropping 0 all-zero samples (of 1), only 1 sample(s) remain; mvae "
            "needs at least 2")


def _case_single_feature(tmp):
    path = tmp / "onef.tsv"
    path.write_text("id\ta\ns1\t1\ns2\t4\n")
    return (["fit", path, "--orientation", "samples-as-rows"],
            "onef.tsv: after dropping 0 all-zero features (of 1), only 1 feature(s) remain")


def _case_latent_too_large(tmp):
    path = _mp_tsv(tmp / "small.tsv")
    return (["fit", path, "--orientation", "samples-as-rows", "-k", "3"],
            "small.tsv: --latent-dim 3 is too large: the table has 3 features with reads")


def _case_metadata_without_ids(tmp):
    md = tmp / "md.tsv"
    md.write_text("sample-id\tsite\nL1S8\tgut\nL1S57\tgut\n")
    return (["fit", MP, "--metadata", md],
            "md.tsv: 32 of 34 samples of")


def _case_metadata_column(tmp):
    return (["fit", MP, "--metadata", MP_META, "--color", "bodysite"],
            "no column 'bodysite'. Did you mean 'BodySite'?")


def _case_tree_without_features(tmp):
    tree = tmp / "tree.nwk"
    tree.write_text("((a,b),(x,y));")
    path = _mp_tsv(tmp / "t.tsv")
    return (["fit", path, "--orientation", "samples-as-rows", "--tree", tree, "-k", "1"],
            "tree.nwk: 1 of 3 features are not tips of the tree: 'c'")


def _case_not_newick(tmp):
    tree = tmp / "tree.nwk"
    tree.write_text("this is not a tree")
    return (["fit", _mp_tsv(tmp / "t.tsv"), "--orientation", "samples-as-rows", "--tree", tree,
             "-k", "1"], "tree.nwk: not a Newick tree")


def _case_unwritable_output(tmp):
    (tmp / "blocker").write_text("a file, not a directory")
    return (["fit", MP, "-o", tmp / "blocker" / "out"],
            "blocker/out: cannot create the output directory")


def _case_existing_outdir(tmp):
    (tmp / "out").mkdir()
    return ["fit", MP, "-o", tmp / "out"], "out: already exists. Pass --force"


def _case_no_orientation(tmp):
    return (["fit", _mp_tsv(tmp / "t.tsv")], "t.tsv: a text table needs its orientation")


def _case_model_missing(tmp):
    return (["transform", tmp / "nomodel", MP, "-o", tmp / "e.tsv"],
            "nomodel/config.json: not found")


def _case_model_corrupt(tmp):
    d = tmp / "badmodel"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    (d / "model.safetensors").write_bytes(b"\x00" * 10)
    return ["network", d, "-o", tmp / "e.tsv"], "config.json: not valid JSON"


def _case_sample_unwritable(tmp):
    (tmp / "blocker").write_text("x")
    return (["sample", tmp / "nomodel", "-n", "3", "-o", tmp / "blocker" / "x.biom"],
            "blocker/x.biom: cannot write here")


BAD_INPUTS = {
    "missing-file": _case_missing,
    "directory": _case_directory,
    "empty-file": _case_empty,
    "truncated-hdf5": _case_truncated_hdf5,
    "corrupt-hdf5": _case_corrupt_h5ad,
    "not-a-table": _case_not_a_table,
    "bad-utf8": _case_bad_utf8,
    "short-row": _case_short_row,
    "duplicate-samples": _case_duplicate_samples,
    "duplicate-features": _case_duplicate_features,
    "negative": _value_case("neg", "-5", "-5 is negative (normalised data? mvae needs raw "
                                         "counts)"),
    "non-integer": _value_case("frac", "0.3", "0.3 is not a whole number (normalised data? "
                                              "mvae needs raw counts)"),
    "nan": _value_case("nan", "NaN", "nan is missing (NaN)"),
    "inf": _value_case("inf", "inf", "inf is infinite (normalised data? mvae needs raw counts)"),
    "all-zero": _case_all_zero,
    "single-sample": _case_single_sample,
    "single-feature": _case_single_feature,
    "latent-too-large": _case_latent_too_large,
    "metadata-without-ids": _case_metadata_without_ids,
    "metadata-column": _case_metadata_column,
    "tree-without-features": _case_tree_without_features,
    "tree-not-newick": _case_not_newick,
    "unwritable-output": _case_unwritable_output,
    "existing-outdir": _case_existing_outdir,
    "no-orientation": _case_no_orientation,
    "model-missing": _case_model_missing,
    "model-corrupt": _case_model_corrupt,
    "sample-unwritable": _case_sample_unwritable,
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exit_code_2_and_one_line(tmp_path, case):
    args, message = BAD_INPUTS[case](tmp_path)
    if args[0] == "fit" and "-o" not in args:
        args = [*args, "-o", tmp_path / "res"]
    if args[0] == "fit":
        args = [*args, "--epochs", "1", "--threads", "1", "-q"]
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception,
                                                                             SystemExit)
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, r.output
    assert message in errors[0], r.output
    if args[0] == "fit":  # nothing half-written, nothing trained
        assert not [p for p in tmp_path.rglob("*") if ".mvae-tmp-" in p.name]
        assert not (tmp_path / "res").exists()
        assert "fitted" not in r.output


def test_bad_input_is_one_line_and_exit_code_2(tmp_path):
    bad = tmp_path / "x.biom"
    bad.write_text("")
    r = CliRunner().invoke(main, ["fit", str(bad), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "x.biom" in r.output and "Traceback" not in r.output


def test_existing_outdir_is_refused_before_training(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    r = subprocess.run([sys.executable, "-m", "mvae", "fit", str(MP), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("Error: ") and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
    assert (out / "keep.txt").read_text() == "precious"


def test_cuda_unavailable_is_an_input_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    r = invoke("fit", MP, "-o", tmp_path / "o", "--device", "cuda", *FAST)
    assert r.exit_code == 2 and "--device cuda: CUDA is not available here" in r.output


# --------------------------------------------------------------------------------------------
# one real subprocess fit per shipped table
# --------------------------------------------------------------------------------------------

REAL = [
    pytest.param("moving_pictures_16s_table.biom", ["--metadata", MP_META, "--color", "BodySite"],
                 id="moving-pictures"),
    pytest.param("ecam_16s_table.biom", [], id="ecam", marks=pytest.mark.slow),
    pytest.param("wirbel_crc_shotgun_motus_table.biom",
                 ["--metadata", DATA / "wirbel_crc_shotgun_metadata.tsv", "--color", "Age"],
                 id="wirbel"),
    pytest.param("pbmc68k_reduced_counts.h5ad", ["--color", "bulk_labels"], id="pbmc68k"),
]


@pytest.fixture(scope="module", autouse=True)
def real_fits(request, tmp_path_factory):
    """Start the selected real-table fits at once, in the background, when this module starts
    (each on one thread): most of a run is importing torch and scikit-bio, which overlaps well
    with the in-process tests. The tests that check them come last in the module."""
    selected = {item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_subprocess_fit_real_table"}
    runs = {}
    for param in REAL:
        name, extra = param.values
        if name not in selected:
            continue
        work = tmp_path_factory.mktemp("real")
        out = work / "results"
        cmd = [sys.executable, "-m", "mvae", "fit", str(DATA / name), "-o", str(out), *FAST,
               "--top", "50", *map(str, extra)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=work)
        runs[name] = (proc, out)
    yield runs
    for proc, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize(("name", "extra"), REAL)
def test_subprocess_fit_real_table(real_fits, name, extra):
    proc, out = real_fits[name]
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "wrote" in stderr
    check_fit_outputs(out, DATA / name, k=2, top=50)
