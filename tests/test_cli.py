"""The minimal command line (the full CLI is a later issue): mvae fit TABLE -o DIR."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from click.testing import CliRunner

import mvae
from mvae.cli import main

DATA = Path(__file__).resolve().parent.parent / "data"


def test_fit_writes_model_and_embeddings(tmp_path):
    out = tmp_path / "res"
    r = CliRunner().invoke(main, ["fit", str(DATA / "moving_pictures_16s_table.biom"), "-o",
                                  str(out), "--epochs", "5", "-k", "3", "--threads", "1", "-q"])
    assert r.exit_code == 0, r.output
    emb = pd.read_csv(out / "embeddings.tsv", sep="\t", index_col=0)
    table = mvae.read_counts(DATA / "moving_pictures_16s_table.biom")
    assert list(emb.index) == list(table.obs_names)
    assert emb.shape == (table.n_obs, 3) and np.isfinite(emb.to_numpy()).all()
    model = mvae.MultinomialVAE.load(out)
    np.testing.assert_allclose(model.transform(table), emb.to_numpy(), rtol=1e-5, atol=1e-6)
    hist = pd.read_csv(out / "history.tsv", sep="\t")
    assert len(hist) == 5


def test_bad_input_is_one_line_and_exit_code_2(tmp_path):
    bad = tmp_path / "x.biom"
    bad.write_text("")
    r = CliRunner().invoke(main, ["fit", str(bad), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "x.biom" in r.output and "Traceback" not in r.output


def test_help_is_fast_and_lists_fit():
    r = subprocess.run([sys.executable, "-m", "mvae", "--help"], capture_output=True, text=True,
                       check=True)
    assert "fit" in r.stdout
    # not a timing test: just that torch was not needed to answer
    r2 = subprocess.run([sys.executable, "-c",
                         "import sys, mvae.cli; print('torch' in sys.modules)"],
                        capture_output=True, text=True, check=True)
    assert r2.stdout.strip() == "False"
