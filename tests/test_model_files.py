"""Every way a saved model directory can be broken becomes one ModelFileError naming the file."""

import struct

import pytest
import torch

from tests.helpers import assert_one_model_file_error, edit_config, edit_tensors


def _bytes_case(fn):
    def apply(d):
        p = d / "model.safetensors"
        p.write_bytes(fn(p.read_bytes()))
    return apply


CASES = {
    "truncated": (_bytes_case(lambda b: b[: len(b) // 2]), "model.safetensors"),
    "empty": (_bytes_case(lambda b: b""), "model.safetensors"),
    "garbage": (_bytes_case(lambda b: b"\x89garbage" * 100), "model.safetensors"),
    "oversized-header": (_bytes_case(lambda b: struct.pack("<Q", 2**62) + b"{}"),
                         "model.safetensors"),
    "wrong-shape": (edit_tensors(lambda t: t.update({"module.loadings_raw": torch.zeros(3, 3)})),
                    "size mismatch"),
    "missing-tensor": (edit_tensors(lambda t: t.pop("module.bias_raw")), "Missing"),
    "unexpected-tensor": (edit_tensors(lambda t: t.update({"module.extra": torch.zeros(1)})),
                          "Unexpected"),
    "feature-count": (edit_config(lambda c: c.update(feature_ids=c["feature_ids"][:-1])),
                      "feature ids"),
    "bad-param": (edit_config(lambda c: c["params"].update(n_latent="x")), "n_latent"),
    "params-disagree": (edit_config(lambda c: c["params"].update(n_hidden=7)), "disagree"),
    "missing-key": (edit_config(lambda c: c.pop("basis")), "basis"),
    "future-schema": (edit_config(lambda c: c.update(schema_version=2)), "newer"),
    "not-mvae": (edit_config(lambda c: c.update(format="something else")), "not an mvae"),
    "config-not-json": (lambda d: (d / "config.json").write_bytes(b"\xff\xfe{{"), "JSON"),
    "config-missing": (lambda d: (d / "config.json").unlink(), "config.json: not found"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_model_files_raise_model_file_error(saved, tmp_path, case):
    assert_one_model_file_error(saved, tmp_path, case, *CASES[case])
