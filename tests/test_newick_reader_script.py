"""benchmarks/newick_reader.py runs and reads the trees it builds (a smoke run, no timings checked)."""

import pytest

from benchmarks.newick_reader import balanced, caterpillar, main

pytestmark = pytest.mark.benchmark


def test_trees_are_what_they_claim():
    assert caterpillar(3) == "((t0,t1),t2);"
    assert balanced(4) == "((t0,t1),(t2,t3));"
    assert balanced(3) == "((t0,t1),t2);"


def test_smoke_run_gives_one_row_per_tree():
    rows = main({"runs": 1, "sizes": [50]})
    assert [(r["tree"], r["tips"]) for r in rows] == [("caterpillar", 50), ("balanced", 50)]
    assert all(r["parse_s"] >= 0 and r["from_tree_s"] >= 0 for r in rows)
