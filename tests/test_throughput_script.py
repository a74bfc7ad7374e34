"""The throughput benchmark's bookkeeping (benchmarks/throughput.py), on hand-made runs."""

import pytest

from benchmarks.throughput import CASES, select_cases, summarise


def _run(order, method, rate, repeat=0, D=10):
    return dict(order=order, method=method, samples_per_cpu_s=rate, repeat=repeat, D=D,
                density=1.0, cpu_s=1.0, wall_s=1.0, peak_rss_mb=1.0, page_faults_per_step=0.0)


def test_each_run_is_compared_with_the_reference_runs_beside_it():
    # round 0: the machine slows down half way; round 1: steady
    runs = [_run(0, "reference", 100), _run(1, "a", 80), _run(2, "reference", 60),
            _run(3, "b", 30), _run(4, "reference", 60),
            _run(5, "reference", 100, 1), _run(6, "a", 90, 1), _run(7, "reference", 100, 1),
            _run(8, "b", 50, 1), _run(9, "reference", 100, 1)]
    rows = {r["method"]: r for r in summarise(runs)}
    # a: 80 / mean(100, 60) = 1.0 and 90 / 100 = 0.9; b: 30 / 60 = 0.5 and 50 / 100 = 0.5
    assert rows["a"]["ratio_to_reference"] == pytest.approx(0.95)
    assert (rows["a"]["ratio_min"], rows["a"]["ratio_max"]) == pytest.approx((0.9, 1.0))
    assert rows["b"]["ratio_to_reference"] == pytest.approx(0.5)
    assert rows["reference"]["ratio_to_reference"] == 1.0
    # the rates themselves are still medians over the runs
    assert rows["a"]["samples_per_cpu_s"] == pytest.approx(85.0)


def test_runs_without_an_order_fall_back_to_the_ratio_of_medians():
    runs = [_run(0, "reference", 100), _run(1, "a", 80)]
    for r in runs:
        del r["order"]
    rows = {r["method"]: r for r in summarise(runs)}
    assert rows["a"]["ratio_to_reference"] == pytest.approx(0.8)


def test_cases_are_chosen_by_their_number_of_features():
    assert select_cases(CASES, None) == CASES
    assert [c[0] for c in select_cases(CASES, [100_000, 200])] == [200, 100_000]
    with pytest.raises(SystemExit, match="no such case"):
        select_cases(CASES, [5_000])
