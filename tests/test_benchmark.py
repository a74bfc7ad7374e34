"""The encoder-depth benchmark (mvae.evaluation.encoder_depth, benchmarks/encoder_depth.py,
`mvae benchmark`).

The ``--smoke`` design runs here end to end (one small table, depths 1-2, both objectives, the
reference and every baseline) and must finish in under a minute; the full design is only listed.
"""

import importlib.util
import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch  # noqa: F401  (imported here so the smoke timing counts the benchmark, not imports)
from click.testing import CliRunner

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402,F401

from mvae.evaluation.encoder_depth import (
    Task,
    build_tasks,
    evaluate_estimate,
    full_config,
    make_table,
    run_encoder_depth,
    smoke_config,
)
from mvae.evaluation.cli import benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("encoder_depth_smoke")
    df = run_encoder_depth(smoke_config(), out, jobs=1, log=lambda line: None)
    return out, df, None


def test_smoke_writes_csv_markdown_and_plots(smoke):
    out, df, _ = smoke
    csv = pd.read_csv(out / "results.csv")
    assert len(csv) == len(df) > 0
    summary = (out / "summary.md").read_text()
    assert "| method |" in summary and "MVAE marginal L=2" in summary
    assert "non-amortised" in summary and "floor: PCA of true η" in summary
    for name in ("encoder_depth.png", "methods_core.png"):
        png = out / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out / "config.json").read_text())
    assert config["label"] == "smoke"


def test_smoke_runs_every_method_with_finite_metrics(smoke):
    _, df, _ = smoke
    assert (df.error == "").all(), df.loc[df.error != "", ["method", "error"]]
    methods = set(df.method)
    assert {"mvae", "nonamortised", "floor_true_eta", "clr_pca", "mr_pca", "sample_clr_cov",
            "sparcc", "rclr_pca"} <= methods  # PLN-PCA is off in the smoke design
    mv = df[df.method == "mvae"]
    assert set(mv.encoder_depth) == {1, 2} and set(mv.objective) == {"marginal", "sampled"}
    for col in ("subspace_distance", "cov_rel_frobenius", "corr_pearson", "corr_spearman",
                "corr_rmse", "angle_max_deg"):
        assert np.isfinite(df[col]).all(), col
    with_embeddings = df[~df.method.isin(["sample_clr_cov", "sparcc"])]
    assert np.isfinite(with_embeddings.embedding_r2).all()
    fitted = df[df.method.isin(["mvae", "nonamortised"])]
    for col in ("heldout_nelbo", "heldout_nelbo_refined", "heldout_nelbo_floor", "cpu_s",
                "wall_s"):
        assert np.isfinite(fitted[col]).all(), col
    assert (df.threads.dropna() == 1).all()


def test_rerun_from_the_command_line_skips_finished_tasks(smoke):
    out, df, _ = smoke
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    result = CliRunner().invoke(benchmark, ["encoder-depth", "--smoke", "-o", str(out),
                                            "--no-plots"])
    assert result.exit_code == 0, result.output
    assert f"{len(stamps)} already done, 0 to run" in result.output
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}


def test_script_main_is_importable_and_resumes(smoke):
    out, df, _ = smoke
    spec = importlib.util.spec_from_file_location("encoder_depth_script",
                                                  ROOT / "benchmarks" / "encoder_depth.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    again = script.main(smoke_config(), out, jobs=1, plots=False)
    assert len(again) == len(df)
    assert script.cli(["--smoke", "--dry-run"]) == 0


def test_full_design_is_listed_in_priority_order():
    tasks = build_tasks(full_config())
    ids = [t.task_id for t in tasks]
    assert len(ids) == len(set(ids))
    core0 = [t for t in tasks if t.block == "core" and t.seed == 0]
    assert tasks[:len(core0)] == sorted(core0, key=lambda t: -t.cost())
    mv = [t for t in core0 if t.kind == "mvae"]
    assert {(t.encoder_depth, t.objective) for t in mv} == {
        (L, o) for L in (1, 2, 3, 4, 6) for o in ("marginal", "sampled")}
    assert {t.regime for t in mv} == {"none", "moderate", "high"}
    assert any(t.block == "pseudocount" and t.pseudocount == 0.1 for t in tasks)
    assert any(t.n_features == 500 for t in tasks)


def test_dry_run_lists_the_tasks():
    result = CliRunner().invoke(benchmark, ["encoder-depth", "--smoke", "--dry-run", "-o", "x"])
    assert result.exit_code == 0
    assert result.output.split() == [t.task_id for t in build_tasks(smoke_config())]


def test_the_truth_scores_perfectly():
    config = smoke_config()
    table = make_table(Task("baselines", "core", 30, 150, "moderate", 0), config)
    sim = table.sim
    m = evaluate_estimate(table, loadings=sim.loadings_clr, noise_variance=sim.sigma**2,
                          embeddings=sim.z[:150])
    assert m["subspace_distance"] < 1e-12 and m["angle_max_deg"] < 1e-5
    assert m["cov_rel_frobenius"] < 1e-6
    assert m["corr_spearman"] == pytest.approx(1.0) and m["corr_rmse"] < 1e-9
    assert m["embedding_r2"] == pytest.approx(1.0)
    assert math.isclose(m["sigma_hat"], sim.sigma)
