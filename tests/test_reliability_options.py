"""Options are bounded and named in their errors; checkpoints never overwrite a user's file
(issue 20, item 4 and "bounded options and clean exits")."""

import warnings

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from mvae import MultinomialVAE
from mvae.training.checkpoint import load_checkpoint, save_checkpoint
from mvae.cli import main
from mvae.errors import InputError, ModelFileError
from mvae.io.tables import read_counts
from mvae.io.validation import MAX_SEED
from mvae.training.loop import usable_cores


def _table(seed=0):
    return np.random.default_rng(seed).poisson(20, size=(30, 6))


def _fit(**kw):
    opts = dict(n_latent=2, max_epochs=2, random_state=0, threads=1)
    fit_kw = {k: kw.pop(k) for k in ("checkpoint", "checkpoint_every", "resume") if k in kw}
    opts.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MultinomialVAE(**opts).fit(_table(), **fit_kw)


def test_checkpoint_never_overwrites_a_users_file(tmp_path):
    precious = tmp_path / "precious.tsv"
    precious.write_text("sample\tf1\ns1\t3\n")
    with pytest.raises(ModelFileError, match="precious.tsv: exists and is not an mvae checkpoint"):
        _fit(checkpoint=precious, checkpoint_every=1)
    assert precious.read_text() == "sample\tf1\ns1\t3\n"
    # a torch file that is not ours either
    other = tmp_path / "other.pt"
    save_checkpoint(other, {"weights": np.zeros(2).tolist()})
    before = other.read_bytes()
    with pytest.raises(ModelFileError, match="not an mvae checkpoint"):
        _fit(checkpoint=other)
    assert other.read_bytes() == before


def test_an_mvae_checkpoint_may_be_replaced(tmp_path):
    ck = tmp_path / "ck.pt"
    _fit(checkpoint=ck, checkpoint_every=1)
    assert load_checkpoint(ck)["format"] == "mvae-checkpoint"
    _fit(checkpoint=ck, checkpoint_every=1, random_state=1)  # a fresh fit over our own file


@pytest.mark.parametrize("kw, match", [
    (dict(checkpoint_every=-1, checkpoint="x.pt"), "checkpoint_every=-1"),
    (dict(checkpoint_every=2), "checkpoint_every=2 needs checkpoint=PATH"),
    (dict(resume=True), "resume=True needs checkpoint=PATH"),
    (dict(random_state=-1), "random_state=-1 is not allowed"),
    (dict(random_state=2**70), "random_state=1180591620717411303424 is not allowed"),
    (dict(random_state=np.random.default_rng(0)), "random_state=Generator.*integer seed"),
    (dict(threads=10**6), "threads=1000000 is not allowed"),
    (dict(threads=0), "threads=0 is not allowed"),
    (dict(n_hidden=10**9), "n_hidden=1000000000 is not allowed"),
])
def test_out_of_range_options_are_input_errors_naming_the_value(tmp_path, kw, match, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=match):
        _fit(**kw)


def test_resume_without_a_checkpoint_yet_warns(tmp_path):
    with pytest.warns(UserWarning, match="no checkpoint at .* yet: starting from the beginning"):
        MultinomialVAE(n_latent=2, max_epochs=2, random_state=0, threads=1).fit(
            _table(), checkpoint=tmp_path / "ck.pt", resume=True)


def test_threads_above_the_cores_are_clamped_with_a_warning():
    cores = usable_cores()
    with pytest.warns(UserWarning, match=f"threads={cores + 1} is more than the {cores} cores"):
        MultinomialVAE(n_latent=2, max_epochs=1, random_state=0, threads=cores + 1).fit(_table())


def test_loaded_model_with_more_threads_than_cores_transforms(tmp_path):
    m = _fit()
    m.threads = 1000  # saved on a large machine
    m.save(tmp_path / "m")
    loaded = MultinomialVAE.load(tmp_path / "m")
    assert np.isfinite(loaded.transform(_table())).all()


@pytest.mark.parametrize("args, match", [
    (["--seed", "99999999999999999999"], "--seed"),
    (["--threads", "1000000"], "--threads"),
    (["--hidden", "1000000000"], "--hidden"),
])
def test_cli_bounds(tmp_path, args, match):
    table = tmp_path / "t.tsv"
    X = _table()
    table.write_text("s\t" + "\t".join(f"f{j}" for j in range(6)) + "\n" + "".join(
        f"s{i}\t" + "\t".join(map(str, row)) + "\n" for i, row in enumerate(X)))
    r = CliRunner().invoke(main, ["fit", str(table), "--orientation", "samples-as-rows", "-o",
                                  str(tmp_path / "o"), *args])
    assert r.exit_code == 2 and match in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_seed_at_the_bound_is_accepted():
    _fit(random_state=MAX_SEED)


def test_all_zero_h5ad_x_points_to_the_counts_layer(tmp_path):
    counts = sp.csr_matrix(_table().astype(np.float32))
    ad = anndata.AnnData(X=sp.csr_matrix(counts.shape, dtype=np.float32))
    ad.layers["counts"] = counts
    p = tmp_path / "a.h5ad"
    ad.write_h5ad(p)
    with pytest.raises(InputError, match="X holds no reads.*--layer.*'counts'"):
        read_counts(p)
    assert read_counts(p, layer="counts").X.nnz == counts.nnz


def test_collapse_advice_never_suggests_zero_latent_dimensions(recwarn):
    X = np.tile(np.array([[50, 50, 50, 50]]), (30, 1))  # no structure at all
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        MultinomialVAE(n_latent=1, max_epochs=3, random_state=0, threads=1).fit(X)
    assert not any("n_latent=0" in str(w.message) for w in recwarn.list)


def test_truncated_and_planted_checkpoints_give_advice_not_torchs(tmp_path):
    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, {"format": "mvae-checkpoint", "x": list(range(1000))})
    ck.write_bytes(ck.read_bytes()[:300])
    with pytest.raises(ModelFileError, match="not a checkpoint mvae wrote, or a truncated") as e:
        load_checkpoint(ck)
    assert "Errno" not in str(e.value)
    import pickle

    class Planted:
        def __reduce__(self):
            return (print, ("never",))

    bad = tmp_path / "bad.pt"
    bad.write_bytes(pickle.dumps(Planted()))
    with pytest.raises(ModelFileError) as e:
        load_checkpoint(bad)
    assert "weights_only" not in str(e.value) and "mvae does not read it" in str(e.value)


def test_ctrl_c_outside_training_exits_130_with_a_message(tmp_path, monkeypatch):
    import mvae.cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mvae.cli, "_read_table", interrupted)
    table = tmp_path / "t.tsv"
    table.write_text("s\tf\n")
    r = CliRunner().invoke(main, ["fit", str(table), "--orientation", "samples-as-rows", "-o",
                                  str(tmp_path / "o")])
    assert r.exit_code == 130 and "Interrupted (Ctrl-C)" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.tsv"]  # nothing left behind
