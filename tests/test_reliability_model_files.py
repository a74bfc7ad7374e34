"""Every broken model file is one ModelFileError (issue 20, items 3-4 and the model-file list).

Each case breaks a copy of a small saved model in one way a disk, a careless edit or a hostile
file could, then loads it; the error must be a ModelFileError naming the directory, on one line.
"""

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.helpers import assert_one_model_file_error, edit_config, edit_tensors
from mvae import MultinomialVAE
from mvae.cli import main
from mvae.errors import ModelFileError


def _nan_in(prefix):
    def fn(t):
        name = next(k for k in sorted(t) if k.startswith(prefix) and t[k].is_floating_point())
        t[name] = t[name].clone()
        t[name].view(-1)[0] = float("nan")
    return fn


def _symlink_loop(d):
    (d / "config.json").unlink()
    os.symlink("config.json", d / "config.json")


def _nested_json(d):
    (d / "config.json").write_text("[" * 100_000 + "]" * 100_000)


def _shuffle_kept(t):
    t["kept_feature_index"] = torch.tensor([0, 1, 2, 3, 4, 5, 6, 99])


def _set(key, value):
    return edit_config(lambda c: c.update({key: value}))


CASES = {
    "nan-encoder": (edit_tensors(_nan_in("module.encoder")), "NaN or infinite"),
    "nan-decoder": (edit_tensors(_nan_in("module.loadings_raw")), "NaN or infinite"),
    "inf-bias": (edit_tensors(lambda t: t["module.bias_raw"].fill_(float("inf"))), "NaN or inf"),
    "symlink-loop": (_symlink_loop, "cannot be opened"),
    "config-is-a-directory": (lambda d: ((d / "config.json").unlink(),
                                         (d / "config.json").mkdir()), "not a regular file"),
    "deeply-nested-json": (_nested_json, "nested too deeply|not valid JSON"),
    "params-a-list": (_set("params", [1, 2]), "'params' must be a JSON object"),
    "module-config-a-string": (_set("module_config", "x"), "'module_config' must be"),
    "empty-train-depths": (edit_tensors(lambda t: t.update(
        train_depths=torch.zeros(0, dtype=torch.float64))), "train_depths"),
    "nan-train-depths": (edit_tensors(lambda t: t["train_depths"].fill_(float("nan"))),
                         "NaN or infinite"),
    "negative-train-depths": (edit_tensors(lambda t: t["train_depths"].fill_(-5.0)), "train_depths"),
    "threads-a-million": (edit_config(lambda c: c["params"].update(threads=10**6)), "threads"),
    "threads-negative": (edit_config(lambda c: c["params"].update(threads=-1)), "threads"),
    "huge-latent-in-config": (edit_config(lambda c: (c["params"].update(n_latent=3 * 10**8),
                                                 c["module_config"].update(n_latent=3 * 10**8))),
                              "size mismatch|n_latent"),
    "huge-hidden-in-config": (edit_config(lambda c: (c["params"].update(n_hidden=10**9),
                                                 c["module_config"].update(n_hidden=10**9))),
                              "size mismatch"),
    "huge-features-in-config": (edit_config(lambda c: c["module_config"].update(n_features=10**9)),
                                "size mismatch|feature"),
    "duplicate-feature-ids": (edit_config(lambda c: (c["feature_ids"].__setitem__(1, c[
        "feature_ids"][0]), c["input_feature_ids"].__setitem__(1, c["input_feature_ids"][0]))),
                              "duplicates"),
    "kept-index-out-of-range": (edit_tensors(_shuffle_kept), "kept_feature_index"),
    "kept-index-reordered": (edit_tensors(lambda t: t.update(kept_feature_index=torch.tensor(
        [1, 0, 2, 3, 4, 5, 6, 7]))), "kept_feature_index"),
    "feature-ids-not-the-kept-inputs": (edit_config(lambda c: c["feature_ids"].reverse()),
                                        "not the input features"),
    "bool-n-latent": (edit_config(lambda c: c["module_config"].update(n_latent=True)), "n_latent"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_model_file_is_one_model_file_error(saved, tmp_path, case):
    assert_one_model_file_error(saved, tmp_path, case, *CASES[case])


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                    reason="root reads files whatever their permissions")
@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_unreadable_model_file_says_so(saved, tmp_path, name):
    d = tmp_path / "m"
    shutil.copytree(saved, d)
    os.chmod(d / name, 0)
    with pytest.raises(ModelFileError, match=f"{name}: cannot be read .Permission denied"):
        MultinomialVAE.load(d)


def test_unreadable_model_file_is_named_even_as_root(saved, tmp_path, monkeypatch):
    """The same path without relying on file modes: open() fails as it would for a user."""
    d = tmp_path / "m"
    shutil.copytree(saved, d)
    real_open = open

    def failing_open(file, *args, **kwargs):
        if str(file).endswith("model.safetensors"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(ModelFileError, match="model.safetensors: cannot be read .Permission"):
        MultinomialVAE.load(d)


@pytest.mark.parametrize("part", ["module.encoder", "module.loadings_raw"])
@pytest.mark.parametrize("command", ["transform", "info"])
def test_cli_on_nan_weights_exits_2_with_one_line(saved, tmp_path, part, command):
    """NaN encoder weights gave an all-empty embeddings.tsv with exit 0; NaN decoder weights a
    LinAlgError traceback."""
    d = tmp_path / "m"
    shutil.copytree(saved, d)
    edit_tensors(_nan_in(part))(d)
    table = tmp_path / "t.tsv"
    rng = np.random.default_rng(1)
    ids = json.loads((d / "config.json").read_text())["input_feature_ids"]
    lines = ["sample\t" + "\t".join(ids)] + [
        f"s{i}\t" + "\t".join(map(str, rng.poisson(20, size=len(ids)))) for i in range(5)]
    table.write_text("\n".join(lines) + "\n")
    out = tmp_path / "emb.tsv"
    args = (["transform", d, table, "--orientation", "samples-as-rows", "-o", out]
            if command == "transform" else ["info", d])
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 2, r.output
    assert "NaN or infinite" in r.output and "Traceback" not in r.output
    assert not out.exists()
