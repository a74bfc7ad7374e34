"""The paired step benchmark (benchmarks/paired_steps.py): its variant syntax and bookkeeping."""

import pytest

from benchmarks.paired_steps import parse_variant, run


pytestmark = pytest.mark.benchmark

def test_variants_are_config_fields_with_numbers_converted():
    assert parse_variant("") == {}
    assert parse_variant("activation=relu posterior_rank=16 dropout=0.1") == dict(
        activation="relu", posterior_rank=16, dropout=0.1)
    with pytest.raises(SystemExit, match="field=value"):
        parse_variant("mc")


def test_a_tiny_run_reports_every_variant_against_the_first():
    rows = run({"default": {}, "rank16": dict(posterior_rank=16)}, (50, None, 256, 1),
               steps=1, rounds=2)
    assert [r["variant"] for r in rows] == ["default", "rank16"]
    first = rows[0]
    assert first["ratio"] == first["ratio_min"] == first["ratio_max"] == 1.0
    assert all(r["ms_per_step"] > 0 and r["ms_min"] <= r["ms_per_step"] for r in rows)
    assert rows[1]["ratio_min"] <= rows[1]["ratio"] <= rows[1]["ratio_max"]
