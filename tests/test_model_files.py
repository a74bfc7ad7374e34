"""Every way a saved model directory can be broken becomes one ModelFileError naming the file."""

import json
import shutil
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mvae import MultinomialVAE
from mvae.errors import ModelFileError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.poisson(20, size=(40, 8))
    m = MultinomialVAE(n_latent=2, max_epochs=2, random_state=0, threads=1).fit(X)
    d = tmp_path_factory.mktemp("models") / "ok"
    m.save(d)
    return d


def _bytes_case(fn):
    def apply(d):
        p = d / "model.safetensors"
        p.write_bytes(fn(p.read_bytes()))
    return apply


def _tensor_case(fn):
    def apply(d):
        p = d / "model.safetensors"
        t = load_file(str(p))
        fn(t)
        save_file(t, str(p))
    return apply


def _config_case(fn):
    def apply(d):
        p = d / "config.json"
        c = json.loads(p.read_text())
        fn(c)
        p.write_text(json.dumps(c))
    return apply


CASES = {
    "truncated": (_bytes_case(lambda b: b[: len(b) // 2]), "model.safetensors"),
    "empty": (_bytes_case(lambda b: b""), "model.safetensors"),
    "garbage": (_bytes_case(lambda b: b"\x89garbage" * 100), "model.safetensors"),
    "oversized-header": (_bytes_case(lambda b: struct.pack("<Q", 2**62) + b"{}"),
                         "model.safetensors"),
    "wrong-shape": (_tensor_case(lambda t: t.update({"module.loadings_raw": torch.zeros(3, 3)})),
                    "size mismatch"),
    "missing-tensor": (_tensor_case(lambda t: t.pop("module.bias_raw")), "Missing"),
    "unexpected-tensor": (_tensor_case(lambda t: t.update({"module.extra": torch.zeros(1)})),
                          "Unexpected"),
    "feature-count": (_config_case(lambda c: c.update(feature_ids=c["feature_ids"][:-1])),
                      "feature ids"),
    "bad-param": (_config_case(lambda c: c["params"].update(n_latent="x")), "n_latent"),
    "params-disagree": (_config_case(lambda c: c["params"].update(n_hidden=7)), "disagree"),
    "missing-key": (_config_case(lambda c: c.pop("basis")), "basis"),
    "future-schema": (_config_case(lambda c: c.update(schema_version=2)), "newer"),
    "not-mvae": (_config_case(lambda c: c.update(format="something else")), "not an mvae"),
    "config-not-json": (lambda d: (d / "config.json").write_bytes(b"\xff\xfe{{"), "JSON"),
    "config-missing": (lambda d: (d / "config.json").unlink(), "config.json: not found"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_model_files_raise_model_file_error(saved, tmp_path, case):
    breaker, match = CASES[case]
    d = tmp_path / case
    shutil.copytree(saved, d)
    breaker(d)
    with pytest.raises(ModelFileError, match=match) as info:
        MultinomialVAE.load(d)
    assert str(d) in str(info.value)
    assert "\n" not in str(info.value)
