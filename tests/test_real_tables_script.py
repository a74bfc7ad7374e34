"""The real-table benchmark (benchmarks/real_tables.py): it runs end to end on a tiny simulated
table with mvae and clr + PCA (the peers of the optional extra ``.[peers]`` are skipped where
not installed), its splits keep subjects whole, a re-run skips what is done; and the held-out
multinomial ELBO of a frozen low-rank model (PLN-PCA's, ``peer_models.
multinomial_lowrank_posterior``) against the log-evidence by quadrature."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import scipy.sparse
from scipy import integrate
from scipy.special import gammaln, logsumexp

from benchmarks import peer_models, real_tables
from tests.helpers import three_groups


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.mark.benchmark
def test_runs_end_to_end_on_a_tiny_table_and_resumes(tmp_path):
    import anndata

    rng = np.random.default_rng(0)
    x, y = three_groups(rng)
    path = tmp_path / "tiny.h5ad"
    anndata.AnnData(X=scipy.sparse.csr_matrix(x.astype(np.int32))).write_h5ad(path)
    groups = np.repeat(np.arange(len(y) // 3), 3).astype(str)  # subjects of 3 samples
    out = tmp_path / "out"
    args = ({"tiny": path}, ["mvae", "clr_pca"], [0, 1], 3, out)
    real_tables.run(*args, jobs=2, annotations={"tiny": ({"type": y}, groups)})
    fits = _rows(out / "fits.tsv")
    assert sorted((r["method"], r["seed"]) for r in fits) == [
        ("clr_pca", "0"), ("clr_pca", "1"), ("mvae", "0"), ("mvae", "1")]
    for r in fits:
        assert r["error"] == "" and r["embeds"] == "True", r
        assert int(r["n_train"]) + int(r["n_heldout"]) == 45 and int(r["n_heldout"]) % 3 == 0
        assert (r["d"], r["k"]) == ("25", "3")
        assert float(r["fit_cpu_s"]) > 0
    for r in (r for r in fits if r["method"] == "mvae"):
        for col in ("heldout_nelbo", "train_nelbo", "heldout_nelbo_encoder",
                    "train_nelbo_encoder"):
            assert np.isfinite(float(r[col])) and float(r[col]) > 0
            # per read: the same sum over the depths of the part's samples (300 to 900 reads)
            assert 0 < float(r[col + "_per_read"]) < float(r[col]) / 250
    for r in (r for r in fits if r["method"] == "clr_pca"):  # no likelihood
        assert r["heldout_nelbo"] == "" and r["train_nelbo_encoder"] == ""
    knn = _rows(out / "knn.tsv")
    assert len(knn) == 4 and {r["label"] for r in knn} == {"type"}
    for r in knn:
        assert r["grouped"] == "True" and int(r["n_heldout"]) == 45 - int(r["n_train"])
        assert 0 <= float(r["knn_accuracy"]) <= 1 and 0 <= float(r["majority"]) <= 1
    # three well-separated compositions: clr + PCA places every held-out sample with its type
    assert all(float(r["knn_accuracy"]) == 1.0 for r in knn if r["method"] == "clr_pca")
    for method in ("mvae", "clr_pca"):
        for seed in (0, 1):
            emb = np.load(out / "embeddings" / f"tiny__{method}__{seed}.npy")
            assert emb.shape == (45, 3) and np.isfinite(emb).all()
    text = real_tables.summarise(out)
    assert "## tiny (45 samples x 25 features)" in text
    assert "| clr_pca | 2 |" in text and "no likelihood" in text
    assert (out / "summary.md").read_text() == text
    # a re-run with one more seed fits only that seed and keeps the earlier rows as they were
    before = _rows(out / "fits.tsv")
    real_tables.run({"tiny": path}, ["clr_pca"], [0, 1, 2], 3, out,
                    annotations={"tiny": ({"type": y}, groups)})
    after = _rows(out / "fits.tsv")
    assert len(after) == 5 and [r for r in after if r["seed"] != "2"] == before


def test_grouped_splits_hold_out_whole_subjects():
    groups = np.repeat([f"s{i}" for i in range(20)], np.arange(20) % 4 + 1)
    for seed in (0, 1, 2):
        train, held = real_tables.split_samples(len(groups), seed, groups)
        assert not set(groups[train]) & set(groups[held])
        assert len(set(groups[held])) == 4  # 20 % of the 20 subjects
        assert sorted(np.concatenate([train, held])) == list(range(len(groups)))
    # seeded: the same split again, another with another seed
    a = real_tables.split_samples(len(groups), 0, groups)[1]
    assert np.array_equal(a, real_tables.split_samples(len(groups), 0, groups)[1])
    assert not np.array_equal(a, real_tables.split_samples(len(groups), 1, groups)[1])
    # ungrouped: 20 % of the samples
    assert len(real_tables.split_samples(50, 0)[1]) == 10
    # a sample without a subject is a subject of its own
    g = real_tables.subject_groups(np.array(["a", "nan", "a", "nan"]), 4)
    assert g[0] == g[2] and len(set(g)) == 3


def test_seed_agreement_is_one_for_rotated_and_scaled_copies():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    b = 2.0 * a @ q + 5.0
    b[4] = np.nan  # left out of both
    assert real_tables.seed_agreement([a, b]) == pytest.approx([1.0])
    assert real_tables.seed_agreement([a, rng.normal(size=(30, 3))])[0] < 0.5


def _log_joint(w, x, b, c):
    """log Mult(x | N, softmax(b + c w)) + log N(w; 0, 1), with the multinomial coefficient."""
    logits = b + c * w
    n = x.sum()
    return (gammaln(n + 1) - gammaln(x + 1).sum() + (x * logits).sum() - n * logsumexp(logits)
            - 0.5 * w**2 - 0.5 * np.log(2 * np.pi))


@pytest.mark.parametrize("x", [[5.0, 2.0, 8.0, 0.0], [40.0, 0.0, 3.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
def test_multinomial_elbo_is_a_tight_lower_bound_of_the_quadrature_evidence(x):
    x = np.array(x)
    b = np.array([0.3, -0.5, 0.1, -1.0])
    c = np.array([1.2, -0.4, 0.5, -0.9])
    # the log-evidence log p(x | N) and the posterior mean by quadrature over the one latent
    top = max(_log_joint(w, x, b, c) for w in np.linspace(-8, 8, 1601))
    evidence = integrate.quad(lambda w: np.exp(_log_joint(w, x, b, c) - top), -12, 12,
                              epsabs=1e-13, limit=200)[0]
    log_evidence = top + np.log(evidence)
    mean = integrate.quad(lambda w: w * np.exp(_log_joint(w, x, b, c) - top), -12, 12,
                          epsabs=1e-13, limit=200)[0] / evidence
    post = peer_models.multinomial_lowrank_posterior(x[None, :], b, c[:, None], seed=0,
                                                     final_draws=20000)
    elbo = float(post.elbo[0])
    # below the evidence (up to the Monte Carlo error of 20,000 draws) and close to it: the 1-D
    # posterior is near Gaussian, so the best Gaussian loses little
    assert elbo <= log_evidence + 5e-3
    assert log_evidence - elbo < 0.05
    assert post.mean[0, 0] == pytest.approx(mean, abs=0.05)
    # with the mean off by one posterior sd the bound is worse: the optimisation did its job
    off = peer_models.multinomial_lowrank_posterior(x[None, :], b, c[:, None], seed=0,
                                                    newton=0, steps=0, final_draws=20000)
    assert float(off.elbo[0]) < elbo - 1e-3 or abs(post.mean[0, 0]) < 0.05


def test_multinomial_elbo_does_not_depend_on_the_sample_batch():
    rng = np.random.default_rng(1)
    b, comp = rng.normal(size=6), rng.normal(size=(6, 2))
    x = rng.multinomial(50, np.full(6, 1 / 6), size=5).astype(float)
    together = peer_models.multinomial_lowrank_posterior(x, b, comp, seed=0)
    alone = peer_models.multinomial_lowrank_posterior(x[2:3], b, comp, seed=0)
    # the draws are shared by the samples: a sample's result is its own, to rounding
    np.testing.assert_allclose(alone.mean[0], together.mean[2], atol=1e-4)
    assert float(alone.elbo[0]) == pytest.approx(float(together.elbo[2]), abs=1e-4)
