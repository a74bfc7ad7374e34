"""Make the figures and numbers of docs/tutorial.md on the Wirbel colorectal-cancer table.

The tutorial fits mvae to 566 shotgun metagenomes (mOTUs v2 profiles of 845 species; Wirbel et
al. 2019) with the command line, reads the results back in Python, and compares the embedding with
clr + PCA on the same table by a cross-validated k-nearest-neighbour accuracy for two labels:
Country (5 studies) and Group (colorectal cancer, CRC, or control, CTR).

Usage (from the repository root)::

    python docs/tutorial.py --out results/tutorial --figures docs/img   # full run, ~3 CPU-min
    python docs/tutorial.py --out results/tutorial --figures docs/img --extra-seeds 1 2  # ~7
    python docs/tutorial.py --smoke --out /tmp/tutorial                 # tiny epochs, < 30 s

``main(config)`` is what ``tests/test_docs.py`` calls (in smoke mode). It writes into
``config.out_dir``: ``fit/`` (the ``mvae fit`` results directory), ``summary.md`` (every number
quoted in the tutorial) and ``numbers.json``; the figures go to ``config.figures_dir``. The smoke
mode also fits the same model from Python and checks that it equals the command line's.

The k-nearest-neighbour cross-validation is ``mvae.evaluation.knn`` (numpy, no scikit-learn; the
benchmark against other methods uses the same): seeded, stratified folds; a majority vote among
the k nearest training samples (Euclidean distance in the embedding), ties going to the tied class
with the nearest neighbour; accuracy averaged over repeated fold assignments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from mvae.evaluation.knn import knn_cv_accuracy, knn_predict, stratified_folds  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


@dataclass(frozen=True)
class Config:
    """Settings of one run of the tutorial."""

    out_dir: Path
    figures_dir: Path | None = None  # default: out_dir / "img"
    table: Path = DATA / "wirbel_crc_shotgun_motus_table.biom"
    metadata: Path = DATA / "wirbel_crc_shotgun_metadata.tsv"
    labels: tuple[str, ...] = ("Country", "Group")
    # the model (command-line defaults except threads; epochs None = automatic budget)
    latent_dim: int = 10
    encoder_depth: int = 2
    hidden: int = 128
    epochs: int | None = None
    seed: int = 0
    threads: int = 1
    # the comparison
    n_neighbors: int = 10
    n_folds: int = 5
    n_repeats: int = 20
    cv_seed: int = 0
    top_edges: int = 10
    top_scores: int = 5
    marker_species: tuple[str, ...] = (
        "Fusobacterium nucleatum s. animalis",
        "Parvimonas micra",
        "Peptostreptococcus stomatis",
        "Porphyromonas asaccharolytica",
        "Gemella morbillorum",
    )
    extra_seeds: tuple[int, ...] = ()  # refit from Python with these seeds for the kNN table
    smoke: bool = False
    check_python_fit: bool = False  # also fit from Python and compare with the CLI fit

    @property
    def figures(self) -> Path:
        return self.figures_dir if self.figures_dir is not None else self.out_dir / "img"


def smoke_config(out_dir) -> Config:
    """Tiny epochs and few CV repeats: exercises every step in well under 30 s."""
    return Config(out_dir=Path(out_dir), epochs=2, hidden=16, n_repeats=2, extra_seeds=(1,),
                  smoke=True, check_python_fit=True)


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------


def _scatter_by(ax, x, y, labels, title, order=None):
    from matplotlib import colormaps

    cats = order if order is not None else sorted(set(labels))
    cmap = colormaps["tab10"]
    for i, cat in enumerate(cats):
        m = labels == cat
        ax.scatter(x[m], y[m], s=9, alpha=0.75, color=cmap(i), edgecolors="none",
                   label=f"{cat} ({m.sum()})")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False, markerscale=1.5, handletextpad=0.2, loc="best")
    ax.tick_params(labelsize=7)


def plot_embeddings(path, embeddings: dict, ratios: dict, md, labels) -> None:
    """One row per method, one column per label: axis 1 against axis 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(embeddings), len(labels),
                             figsize=(4.2 * len(labels), 3.6 * len(embeddings)), squeeze=False)
    for row, (name, emb) in enumerate(embeddings.items()):
        for col, label in enumerate(labels):
            ax = axes[row, col]
            values = md[label].astype(str).to_numpy()
            order = sorted(set(values), key=lambda v: (-np.sum(values == v), v))
            _scatter_by(ax, emb[:, 0], emb[:, 1], values, f"{name}, coloured by {label}", order)
            r = ratios[name]
            ax.set_xlabel(f"axis 1 ({100 * r[0]:.1f}% of clr variance)", fontsize=8)
            ax.set_ylabel(f"axis 2 ({100 * r[1]:.1f}%)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scores(path, scores, md, top: int) -> None:
    """Per-read anomaly score against depth, the highest-scoring samples numbered 1, 2, ..."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    countries = md["Country"].astype(str).to_numpy()
    order = sorted(set(countries), key=lambda v: (-np.sum(countries == v), v))
    _scatter_by(ax, scores["depth"].to_numpy(), scores["negative_elbo_per_read"].to_numpy(),
                countries, "anomaly score per read (mvae fit, scores.tsv)", order)
    held = scores["held_out"].to_numpy()
    ax.scatter(scores["depth"].to_numpy()[held], scores["negative_elbo_per_read"].to_numpy()[held],
               s=30, facecolors="none", edgecolors="black", linewidths=0.7,
               label=f"held out during fit ({held.sum()})")
    ax.legend(fontsize=7, frameon=False, markerscale=1.5, handletextpad=0.2, loc="upper right")
    ax.set_xscale("log")
    ax.set_xlabel("reads in the sample (depth)", fontsize=8)
    ax.set_ylabel("negative ELBO per read (nats)", fontsize=8)
    best = scores.sort_values("negative_elbo_per_read", ascending=False).head(top)
    for rank, (_, row) in enumerate(best.iterrows(), start=1):  # numbered as in the tutorial
        ax.annotate(str(rank), (row["depth"], row["negative_elbo_per_read"]), fontsize=8,
                    xytext=(4, 2), textcoords="offset points")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# the tutorial
# ------------------------------------------------------------------------------------------------


def cli_arguments(config: Config, out: Path, *, shown: bool = False) -> list[str]:
    """The ``mvae fit`` command line of the tutorial (without the program name).

    With ``shown``, paths inside the repository are written relative to its root (for printing).
    """
    p = _shown if shown else str
    args = ["fit", p(config.table), "-o", p(out), "--metadata", p(config.metadata),
            "--color", "Country", "--threads", str(config.threads), "--seed", str(config.seed)]
    if config.latent_dim != 10:
        args += ["--latent-dim", str(config.latent_dim)]
    if config.encoder_depth != 2:
        args += ["--encoder-depth", str(config.encoder_depth)]
    if config.hidden != 128:
        args += ["--hidden", str(config.hidden)]
    if config.epochs is not None:
        args += ["--epochs", str(config.epochs)]
    return args


def _shown(path: Path) -> str:
    """A path relative to the repository root when it lies inside it (for printed commands)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _markdown_table(frame, floatfmt="{:.3f}") -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join([frame.index.name or ""] + cols) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for idx, row in frame.iterrows():
        cells = [floatfmt.format(v) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join([str(idx)] + cells) + " |")
    return "\n".join(lines)


def _blas_threads(n: int):
    """Limit numpy/scipy's BLAS threads as ``threads`` limits torch's (threadpoolctl if present).

    On shared cores a threaded OpenBLAS eigendecomposition of the 845 x 845 clr covariance was
    measured 20x slower in wall time than a single-threaded one.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scipy's usual installs
        return contextlib.nullcontext()
    import scipy.linalg  # noqa: F401 - load scipy's own OpenBLAS first: only loaded ones are limited

    return threadpool_limits(limits=n)


def main(config: Config) -> dict:
    """Run the tutorial: fit with the CLI, analyse in Python, compare with clr + PCA.

    Returns
    -------
    dict
        The numbers written to ``numbers.json``.
    """
    with _blas_threads(config.threads):
        return _run(config)


def _run(config: Config) -> dict:
    import pandas as pd
    from click.testing import CliRunner

    import mvae
    from mvae.evaluation.baselines import clr_pca
    from mvae.cli import main as mvae_cli
    from mvae.maths.compositions import clr_pseudocount
    from mvae.io.metadata import align_metadata, read_metadata

    t_start, cpu_start = time.perf_counter(), time.process_time()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = config.figures
    figures.mkdir(parents=True, exist_ok=True)
    fit_dir = out / "fit"
    if fit_dir.exists():
        shutil.rmtree(fit_dir)

    # 1. fit with the command line (in-process, exactly what `mvae fit ...` runs)
    command = "mvae " + " ".join(cli_arguments(config, fit_dir, shown=True))
    t0, c0 = time.perf_counter(), time.process_time()
    result = CliRunner().invoke(mvae_cli, cli_arguments(config, fit_dir) + ["--quiet"])
    if result.exit_code != 0:
        raise RuntimeError(f"{command} failed ({result.exit_code}): {result.output}"
                           ) from result.exception
    fit_seconds, fit_cpu = time.perf_counter() - t0, time.process_time() - c0

    # 2. read the table and the results back in Python
    adata = mvae.read_counts(config.table)
    md = align_metadata(read_metadata(config.metadata), list(adata.obs_names))
    model = mvae.MultinomialVAE.load(fit_dir)
    model.threads = config.threads
    z_mvae = model.transform(adata)
    depth = np.asarray(adata.X.sum(axis=1)).ravel()

    numbers: dict = {
        "command": command,
        "table": {"samples": int(adata.n_obs), "features": int(adata.n_vars),
                  "density": float(adata.X.nnz / np.prod(adata.shape)),
                  "depth_min": int(depth.min()), "depth_median": float(np.median(depth)),
                  "depth_max": int(depth.max())},
        "fit": {"epochs": int(len(model.history_)), "best_epoch": model.best_epoch_,
                "final_train_loss": float(model.history_.train_loss.iloc[-1]),
                "best_validation_loss": float(np.nanmin(model.history_.validation_loss)),
                "noise_variance": float(model.noise_variance_),
                "explained_variance_ratio": [float(v) for v in model.explained_variance_ratio_],
                "wall_seconds": round(fit_seconds, 1), "cpu_seconds": round(fit_cpu, 1)},
        "labels": {label: md[label].astype(str).value_counts().to_dict() for label in config.labels},
    }

    if config.check_python_fit:
        # the same model fitted from Python, with the CLI run's settings
        py = mvae.MultinomialVAE(n_latent=config.latent_dim, encoder_depth=config.encoder_depth,
                                 n_hidden=config.hidden, max_epochs=config.epochs,
                                 random_state=config.seed,
                                 threads=config.threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            py.fit(adata)
        diff = float(np.abs(adata.obsm["X_mvae"] - z_mvae).max())
        numbers["python_fit_max_abs_difference"] = diff
        if diff > 1e-5:
            raise AssertionError(f"the Python fit differs from the CLI fit by {diff}")

    # 3. strongest co-occurrences (correlations.tsv holds the top 1000; network() recomputes)
    edges = model.network(top=config.top_edges)
    cli_edges = pd.read_csv(fit_dir / "correlations.tsv", sep="\t").head(config.top_edges)
    if not np.allclose(edges.correlation.to_numpy(), cli_edges.correlation.to_numpy()):
        raise AssertionError("model.network() and correlations.tsv disagree")
    numbers["top_edges"] = edges.to_dict(orient="list")
    corr = model.correlation()  # 845 x 845 is small enough to form densely
    ids = list(model.feature_ids_)
    markers = [next((f for f in ids if f.startswith(name + " [")), None)
               for name in config.marker_species]
    markers = [m for m in markers if m is not None]
    pos = [ids.index(m) for m in markers]
    marker_corr = corr[np.ix_(pos, pos)]
    iu = np.triu_indices(len(pos), 1)
    numbers["marker_correlations"] = {"species": markers, "matrix": marker_corr.tolist()}
    off = corr[np.triu_indices(len(ids), 1)]
    numbers["all_pairs"] = {"mean": float(off.mean()), "q99": float(np.quantile(off, 0.99)),
                            "marker_pairs_mean": float(marker_corr[iu].mean()) if len(pos) > 1
                            else None}

    # how the marker pairs rank among all D (D - 1) / 2 pairs
    numbers["marker_pair_percentiles"] = [float((off < v).mean()) for v in marker_corr[iu]]

    # 4. anomaly scores: the CLI's scores.tsv equals model.score_samples (same seed, 16 draws)
    scores = pd.read_csv(fit_dir / "scores.tsv", sep="\t", index_col=0)
    if not np.allclose(scores["negative_elbo"].to_numpy(), model.score_samples(adata)):
        raise AssertionError("scores.tsv and model.score_samples disagree")
    scores = scores.join(md[list(config.labels)])
    # Which samples fit() held out for early stopping: scores.tsv's split column, checked
    # against the training depths the model stores.
    held = (scores["split"] == "validation").to_numpy()
    if not np.array_equal(np.sort(depth[~held]), np.sort(model.train_depths_)):
        raise AssertionError("scores.tsv's split does not match the fit's training samples")
    scores["held_out"] = held
    top = scores.sort_values("negative_elbo_per_read", ascending=False).head(config.top_scores)
    numbers["top_scores"] = top.reset_index().to_dict(orient="list")
    top_train = (scores[~scores.held_out].sort_values("negative_elbo_per_read", ascending=False)
                 .head(config.top_scores))
    numbers["top_scores_training_samples"] = top_train.reset_index().to_dict(orient="list")
    per_read = scores["negative_elbo_per_read"].to_numpy()
    ranks = scores["negative_elbo_per_read"].rank(ascending=False).to_numpy()
    numbers["score_per_read"] = {
        "median": float(np.median(per_read)),
        "spearman_with_depth": float(pd.Series(per_read).corr(pd.Series(depth), "spearman")),
        "median_by_group": scores.groupby("Group")["negative_elbo_per_read"].median().to_dict(),
        "median_held_out": float(np.median(per_read[held])),
        "median_training": float(np.median(per_read[~held])),
        "held_out_in_top_10": int((ranks[held] <= 10).sum()),
        "held_out_in_top_57": int((ranks[held] <= held.sum()).sum()),
        "n_held_out": int(held.sum()),
    }

    # 5. clr + PCA on the same table, and the full clr table (Aitchison distance), for comparison
    pca = clr_pca(adata.X, config.latent_dim, pseudocount=1.0)
    clr_full = clr_pseudocount(adata.X, 1.0)
    embeddings = {"mvae": z_mvae, "clr + PCA": pca.embeddings}
    ratios = {"mvae": model.explained_variance_ratio_,
              "clr + PCA": pca.explained_variance / np.trace(np.cov(clr_full.T))}
    rows = []
    for label in config.labels:
        y = md[label].astype(str).to_numpy()
        majority = float(pd.Series(y).value_counts(normalize=True).iloc[0])
        candidates = [(f"mvae, {config.latent_dim} axes", z_mvae),
                      ("mvae, axes 1-2", z_mvae[:, :2]),
                      (f"clr + PCA, {config.latent_dim} axes", pca.embeddings),
                      ("clr + PCA, axes 1-2", pca.embeddings[:, :2]),
                      (f"clr, all {adata.n_vars} features (Aitchison distance)", clr_full)]
        for name, x in candidates:
            acc = knn_cv_accuracy(x, y, k=config.n_neighbors, n_folds=config.n_folds,
                                  n_repeats=config.n_repeats, seed=config.cv_seed)
            rows.append({"label": label, "embedding": name, "mean": float(acc.mean()),
                         "sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                         "majority_class": majority})
    for seed in config.extra_seeds:  # the same fit from Python with other seeds
        other = mvae.MultinomialVAE(n_latent=config.latent_dim, encoder_depth=config.encoder_depth,
                                    n_hidden=config.hidden, max_epochs=config.epochs,
                                    random_state=seed,
                                    threads=config.threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            other.fit(adata.X)  # a bare matrix: adata.obsm["X_mvae"] is left alone
        z = other.transform(adata.X)
        for label in config.labels:
            y = md[label].astype(str).to_numpy()
            acc = knn_cv_accuracy(z, y, k=config.n_neighbors, n_folds=config.n_folds,
                                  n_repeats=config.n_repeats, seed=config.cv_seed)
            rows.append({"label": label,
                         "embedding": f"mvae seed {seed}, {config.latent_dim} axes",
                         "mean": float(acc.mean()),
                         "sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                         "majority_class": float(pd.Series(y).value_counts(normalize=True)
                                                 .iloc[0])})
    knn = pd.DataFrame(rows)
    numbers["knn"] = knn.to_dict(orient="list")
    numbers["knn_settings"] = {"k": config.n_neighbors, "folds": config.n_folds,
                               "repeats": config.n_repeats, "seed": config.cv_seed}

    # 6. figures
    plot_embeddings(figures / "tutorial_embeddings.png", embeddings, ratios, md, config.labels)
    plot_scores(figures / "tutorial_scores.png", scores, md, config.top_scores)
    shutil.copyfile(fit_dir / "loss.png", figures / "tutorial_loss.png")

    numbers["total_wall_seconds"] = round(time.perf_counter() - t_start, 1)
    numbers["total_cpu_seconds"] = round(time.process_time() - cpu_start, 1)
    numbers["config"] = {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in asdict(config).items()}
    (out / "numbers.json").write_text(json.dumps(numbers, indent=1, default=_json), "utf-8")
    (out / "summary.md").write_text(
        _summary(numbers, knn, edges, top, top_train, markers, marker_corr), "utf-8")
    return numbers


def _json(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _summary(numbers, knn, edges, top, top_train, markers, marker_corr) -> str:
    import pandas as pd

    fit = numbers["fit"]
    sr = numbers["score_per_read"]
    table = knn.pivot(index="embedding", columns="label", values="mean")
    sd = knn.pivot(index="embedding", columns="label", values="sd")
    cells = table.copy().astype(object)
    for label in table.columns:
        cells[label] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(table[label], sd[label])]
    order = list(dict.fromkeys(knn.embedding))
    cells = cells.loc[order]
    majority = knn.groupby("label")["majority_class"].first()
    cells.loc["majority class (chance)"] = [f"{majority[c]:.3f}" for c in cells.columns]
    cells.index.name = "embedding"
    s = numbers["knn_settings"]
    short = [m.split(" [")[0] for m in markers]
    mc = pd.DataFrame(np.round(marker_corr, 2), index=short, columns=short)
    mc.index.name = "species"
    lines = [
        "# Tutorial numbers", "",
        f"Command: `{numbers['command']}`", "",
        f"Fit: {fit['epochs']} epochs (best {fit['best_epoch']}), train loss "
        f"{fit['final_train_loss']:.1f} and best validation loss "
        f"{fit['best_validation_loss']:.1f} nats/sample, σ² = {fit['noise_variance']:.3f}, "
        f"{fit['cpu_seconds']:.0f} CPU-s ({fit['wall_seconds']:.0f} s wall).", "",
        "Proportion of clr variance per axis: "
        + ", ".join(f"{v:.3f}" for v in fit["explained_variance_ratio"]), "",
        f"## kNN accuracy (k = {s['k']}, {s['folds']}-fold stratified CV, mean ± sd over "
        f"{s['repeats']} fold assignments)", "",
        _markdown_table(cells), "",
        "## Strongest co-occurrences", "",
        _markdown_table(edges.set_index("feature_a")[["feature_b", "correlation"]], "{:.3f}"), "",
        "## CRC marker species: clr correlations", "",
        _markdown_table(mc, "{:.2f}"), "",
        f"Mean over all pairs {numbers['all_pairs']['mean']:.4f}; 99th percentile "
        f"{numbers['all_pairs']['q99']:.3f}. Percentiles of the marker pairs among all pairs: "
        + ", ".join(f"{100 * p:.1f}" for p in numbers["marker_pair_percentiles"]) + ".", "",
        "## Highest anomaly scores per read", "",
        _markdown_table(top, "{:.4f}"), "",
        "Among the samples the model was trained on:", "",
        _markdown_table(top_train, "{:.4f}"), "",
        f"Median score per read {sr['median']:.4f} (held out {sr['median_held_out']:.4f}, "
        f"training {sr['median_training']:.4f}); {sr['held_out_in_top_10']} of the top 10 and "
        f"{sr['held_out_in_top_57']} of the top {sr['n_held_out']} are among the "
        f"{sr['n_held_out']} held-out samples. Spearman with depth "
        f"{sr['spearman_with_depth']:.3f}; median by Group "
        + ", ".join(f"{k} {v:.4f}" for k, v in sr["median_by_group"].items()),
        "",
        f"Total: {numbers['total_cpu_seconds']:.0f} CPU-s, {numbers['total_wall_seconds']:.0f} s "
        "wall.", "",
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "tutorial",
                        help="Output directory (fit results, summary.md, numbers.json).")
    parser.add_argument("--figures", type=Path, default=None,
                        help="Where the PNGs go [default: OUT/img]; docs/img for the docs.")
    parser.add_argument("--smoke", action="store_true", help="Tiny epochs; under 30 s.")
    parser.add_argument("--extra-seeds", type=int, nargs="*", default=[],
                        help="Refit from Python with these seeds and add their kNN accuracies "
                             "(about 2 CPU-minutes each).")
    parser.add_argument("--check-python-fit", action="store_true",
                        help="Also fit from Python and check it equals the CLI fit.")
    args = parser.parse_args(argv)
    config = smoke_config(args.out) if args.smoke else Config(out_dir=args.out)
    if args.extra_seeds:
        config = replace(config, extra_seeds=tuple(args.extra_seeds))
    config = replace(config, figures_dir=args.figures,
                     check_python_fit=config.check_python_fit or args.check_python_fit)
    return config


if __name__ == "__main__":
    numbers = main(parse_args())
    print((Path(numbers["config"]["out_dir"]) / "summary.md").read_text())
    sys.exit(0)
