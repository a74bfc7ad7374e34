"""The throughput benchmark's bookkeeping (benchmarks/throughput.py), on hand-made runs."""

import pytest

from benchmarks.throughput import CASES, select_cases, summarise


def _run(order, method, rate, repeat=0, D=10):
    return dict(order=order, method=method, samples_per_cpu_s=rate, repeat=repeat, D=D,
                density=1.0, cpu_s=1.0, wall_s=1.0, peak_rss_mb=1.0, page_faults_per_step=0.0)


pytestmark = pytest.mark.benchmark

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


def test_compiled_prototype_runs_eagerly_and_its_loss_is_a_negative_elbo():
    """The prototype of benchmarks/compiled_prototype.py trains (eager only: the compiler is not
    needed here), and its loss at a point equals the ELBO written out with torch.distributions
    (the KL by a dense covariance, the reconstruction by the multinomial's log-probability)."""
    import numpy as np
    import torch

    from benchmarks.compiled_prototype import main, prototype

    rows = main(D=30, steps=2, rounds=1, compile_=False)
    assert set(rows[0]) == {"round", "reference", "eager"} and rows[0]["eager"] > 0

    torch.manual_seed(0)
    D = 6
    model = prototype(D).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.poisson(5.0, size=(3, D)), dtype=torch.float64)
    eps = torch.tensor(rng.normal(size=(3, D)))
    with torch.no_grad():
        got = model.loss(x, eps)
        y = torch.log1p(x)
        h = model.encoder(y)
        left, t = model.left_head(h), model.scale_head(h)[:, 0]
        mean = model.bias + left @ model.right.T + model.skip * y
        var = torch.exp(t[:, None] + model.feature_log_var + model.skip_log_var * y)
        cov = model.loadings @ model.loadings.T + model.log_noise.exp() * torch.eye(D)
        q = torch.distributions.Normal(mean, var.sqrt())
        prior = torch.distributions.MultivariateNormal(model.bias, covariance_matrix=cov)
        kl = torch.stack([torch.distributions.kl_divergence(
            torch.distributions.MultivariateNormal(mean[b], torch.diag(var[b])), prior)
            for b in range(3)])
        logits = q.mean + eps * q.stddev
        recon = torch.distributions.Multinomial(probs=torch.softmax(logits, 1),
                                                validate_args=False).log_prob(x)
        recon = recon - (torch.lgamma(x.sum(1) + 1) - torch.lgamma(x + 1).sum(1))
    assert float(got) == pytest.approx(float((kl - recon).mean()), rel=1e-8)


def test_device_throughput_script_runs_on_the_cpu(tmp_path):
    """benchmarks/device_throughput.py (written for a GPU session) runs its whole path on the CPU
    at a small size and writes its table; the reference is its own ratio 1."""
    from benchmarks.device_throughput import main

    rows = main("cpu", cases=[(300, 0.05, 256)], epochs=1, repeats=1, out=str(tmp_path))
    by = {r["method"]: r for r in rows}
    assert set(by) == {"reference", "mvae-default", "mvae-sampled"}
    assert by["reference"]["ratio"] == 1.0
    assert all(r["samples_per_s"] > 0 and r["peak_gpu_mb"] is None for r in rows)
    table = (tmp_path / "device_throughput.md").read_text()
    assert "| 300 (5%) | mvae-default |" in table
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 3
