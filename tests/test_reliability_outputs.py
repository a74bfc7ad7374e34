"""The results directory never loses a user's file (issue 20, item 1 and "bounded options and
clean exits"): --force replaces only an earlier mvae result and never a directory holding an
input; a second run into the same output is refused; leftovers of interrupted runs are removed.
"""

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from mvae.cli import main
from mvae.errors import InputError
from mvae.io.outputs import ResultsDirectory, is_mvae_result

FAST = ["--epochs", "2", "-k", "2", "--hidden", "8", "--threads", "1", "-q"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _project(tmp_path: Path) -> Path:
    """A user's project folder: a table, its metadata and notes."""
    project = tmp_path / "project"
    project.mkdir()
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(12)]
    pd.DataFrame(rng.poisson(20, size=(12, 6)), index=ids,
                 columns=[f"f{j}" for j in range(6)]).to_csv(project / "table.tsv", sep="\t")
    pd.DataFrame({"group": ["a", "b"] * 6}, index=pd.Index(ids, name="sample-id")).to_csv(
        project / "metadata.tsv", sep="\t")
    (project / "notes.txt").write_text("three weeks of lab notes\n")
    return project


def _contents(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_force_never_replaces_the_folder_holding_the_table(tmp_path):
    project = _project(tmp_path)
    before = _contents(project)
    r = invoke("fit", project / "table.tsv", "--orientation", "samples-as-rows",
               "--metadata", project / "metadata.tsv", "-o", project, "--force", *FAST)
    assert r.exit_code == 2, r.output
    assert "an input of this run" in r.output and "Traceback" not in r.output
    assert _contents(project) == before


def test_force_on_the_working_directory_is_refused(tmp_path, monkeypatch):
    project = _project(tmp_path)
    before = _contents(project)
    elsewhere = tmp_path / "t.tsv"
    elsewhere.write_bytes((project / "table.tsv").read_bytes())
    monkeypatch.chdir(project)
    r = invoke("fit", elsewhere, "--orientation", "samples-as-rows", "-o", ".", "--force", *FAST)
    assert r.exit_code == 2, r.output
    assert "not an earlier mvae result" in r.output or "only an earlier mvae result" in r.output
    assert _contents(project) == before


def test_force_replaces_an_earlier_result_but_not_one_with_user_files(tmp_path):
    project = _project(tmp_path)
    out = tmp_path / "results"
    args = ["fit", project / "table.tsv", "--orientation", "samples-as-rows", "-o", out, *FAST]
    assert invoke(*args).exit_code == 0
    assert is_mvae_result(out)
    first = (out / "config.json").read_bytes()
    r = invoke(*args, "--force", "--seed", "1")
    assert r.exit_code == 0, r.output
    assert (out / "config.json").read_bytes() != first
    # a file the user added makes it theirs: refused, and the directory is untouched
    (out / "my_plot.pdf").write_bytes(b"%PDF")
    (out / "analysis").mkdir()
    assert not is_mvae_result(out)
    before = _contents(out / "analysis") , sorted(p.name for p in out.iterdir())
    r = invoke(*args, "--force")
    assert r.exit_code == 2, r.output
    assert "mvae did not write (analysis/, my_plot.pdf)" in r.output
    assert (out / "my_plot.pdf").read_bytes() == b"%PDF"
    assert (_contents(out / "analysis"), sorted(p.name for p in out.iterdir())) == before


def test_simulate_result_can_be_replaced(tmp_path):
    out = tmp_path / "sim"
    args = ["simulate", "-o", out, "-n", "20", "-d", "6", "-k", "2", "-q"]
    assert invoke(*args).exit_code == 0
    assert is_mvae_result(out)
    r = invoke(*args, "--force", "--seed", "3")
    assert r.exit_code == 0, r.output


def test_results_directory_refuses_inputs_inside_even_when_it_does_not_exist(tmp_path):
    # the output is a parent of an input (e.g. -o . with the table in ./data)
    (tmp_path / "data").mkdir()
    table = tmp_path / "data" / "t.biom"
    table.write_bytes(b"x")
    with pytest.raises(InputError, match="an input of this run"):
        ResultsDirectory(tmp_path, force=True, inputs=[table]).open()
    assert table.read_bytes() == b"x"


def test_a_second_run_into_the_same_output_is_refused(tmp_path):
    out = tmp_path / "res"
    first = ResultsDirectory(out)
    first.open()
    try:
        with pytest.raises(InputError, match="another mvae run is writing this output"):
            ResultsDirectory(out, force=True).open()
        (first.path / "a.tsv").write_text("x")
    finally:
        first.commit()
    assert (out / "a.tsv").read_text() == "x"
    # the lock is gone with the run: no file left beside the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]


def test_second_cli_fit_is_refused_while_the_first_holds_the_output(tmp_path):
    project = _project(tmp_path)
    out = tmp_path / "res"
    holder = ResultsDirectory(out)
    holder.open()
    try:
        r = invoke("fit", project / "table.tsv", "--orientation", "samples-as-rows", "-o", out,
                   "--force", *FAST)
    finally:
        holder.discard()
    assert r.exit_code == 2 and "another mvae run is writing" in r.output


def test_leftovers_of_an_interrupted_run_are_removed_and_reported(tmp_path):
    out = tmp_path / "res"
    stale = tmp_path / ".res.mvae-tmp-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    old = tmp_path / ".res.mvae-old-xyz"
    old.mkdir()
    other = tmp_path / ".other.mvae-tmp-abc123"  # another output's: not ours to remove
    other.mkdir()
    with pytest.warns(UserWarning, match=r"removed 2 unfinished output directories"):
        with ResultsDirectory(out) as results:
            (results.path / "a.tsv").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.mvae-tmp-abc123", "res"]


def test_cli_reports_removed_leftovers(tmp_path):
    project = _project(tmp_path)
    out = tmp_path / "res"
    (tmp_path / ".res.mvae-tmp-dead").mkdir()
    r = invoke("fit", project / "table.tsv", "--orientation", "samples-as-rows", "-o", out,
               *FAST)
    assert r.exit_code == 0, r.output
    assert "Warning: removed 1 unfinished output directory" in r.output
    assert not (tmp_path / ".res.mvae-tmp-dead").exists()
