"""The documentation cannot drift from the code.

- ``docs/tutorial.py`` runs end to end in its smoke mode (CLI fit, Python analysis, the clr + PCA
  comparison and the figures), and its Python fit equals its command-line fit;
- ``docs/cli.md`` equals a fresh generation from the click definitions;
- the examples in the docstrings of every ``mvae`` module pass as doctests.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import json
import pkgutil
import sys
from pathlib import Path

import pytest

import mvae

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

def _load_script(name: str):
    """Import a script from docs/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it is executing
    spec.loader.exec_module(module)
    return module


def test_tutorial_smoke(tmp_path):
    tutorial = _load_script("tutorial")
    numbers = tutorial.main(tutorial.smoke_config(tmp_path))
    for name in ("tutorial_embeddings.png", "tutorial_scores.png", "tutorial_loss.png"):
        assert (tmp_path / "img" / name).stat().st_size > 1000
    assert (tmp_path / "fit" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "numbers.json").read_text())["command"].startswith("mvae fit ")
    assert "kNN accuracy" in (tmp_path / "summary.md").read_text()
    # the CLI fit and the Python fit of the tutorial are the same model
    assert numbers["python_fit_max_abs_difference"] <= 1e-5
    knn = numbers["knn"]
    assert len(knn["mean"]) == 12 and all(0.0 <= a <= 1.0 for a in knn["mean"])
    assert numbers["table"]["samples"] == 566 and numbers["table"]["features"] == 845


def test_cli_reference_is_generated_from_the_click_definitions():
    gen = _load_script("gen_cli_docs")
    fresh = gen.render()
    current = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert current == fresh, "docs/cli.md is out of date: run python docs/gen_cli_docs.py"
    # every command of the mvae group is documented
    import click

    from mvae.cli import main

    for name in main.list_commands(click.Context(main)):  # also the lazily loaded groups
        assert f"`mvae {name}`" in current


def _module_names() -> list[str]:
    names = ["mvae"]
    for info in pkgutil.walk_packages(mvae.__path__, "mvae."):
        if info.name.rsplit(".", 1)[-1] == "__main__":  # importing it runs the command line
            continue
        names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _module_names())
def test_doctests(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples read the tables in data/
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:  # a module that needs an optional extra
        if exc.name and exc.name.split(".")[0] != "mvae":
            pytest.skip(f"{name} needs {exc.name}, which is not installed")
        raise
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctests failed in {name}"
