"""The scanpy path on the PBMC table: mvae's embedding against scanpy's default PCA, by Leiden
clusters and their agreement with the cell types (the numbers and figure of docs/single_cell.md).

For every method and seed the cells are embedded, then go through the same scanpy steps:
``sc.pp.neighbors(use_rep=...)`` → ``sc.tl.umap`` → ``sc.tl.leiden`` (igraph flavour), and the
Leiden clusters are scored against the cell types (``obs["bulk_labels"]``, 10 types) by the
adjusted Rand index (ARI) and the normalised mutual information (NMI). Leiden is run twice: at
its default resolution 1, and at the resolution that gives as many clusters as there are cell
types (found by bisection, the same rule for every embedding), so that a difference is not just
one of cluster counts.

Methods (``--methods``):

``mvae``
    ``mvae.read_counts`` → ``MultinomialVAE(random_state=seed, threads=1).fit(adata)`` (its
    defaults otherwise) → ``use_rep="X_mvae"``.
``scanpy``
    scanpy's default recipe on the same counts: ``normalize_total`` → ``log1p`` →
    ``pca`` (50 components, its default) → ``use_rep="X_pca"``. The table is already the 765
    highly variable genes chosen by its makers (data/README.md), so no gene selection is run.
``scanpy_k10``
    The same with 10 principal components, the dimension of mvae's default embedding.

Usage (from the repository root; needs ``pip install torch==2.13.0 -e ".[scanpy]"``)::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/single_cell.py
    python benchmarks/single_cell.py --methods mvae     # refit mvae only; other rows are kept
    python benchmarks/single_cell.py --smoke --out /tmp/sc --figures /tmp/sc   # 2 epochs, 1 seed

Writes into ``--out`` (default ``benchmarks/results/single_cell/``): ``clusters.tsv`` (one row
per method, seed and resolution rule, with ``embed_cpu_s``: the CPU seconds of the embedding
alone, i.e. the fit or normalisation and PCA, after an untimed warm-up on 100 cells), ``umap_<method>.tsv`` (the first seed's UMAP coordinates
and clusters per cell, which the figure is drawn from), ``runs.tsv`` (per method: the command,
machine, date, commit and package versions of its last run) and ``summary.md``; the figure
``single_cell_umap.png`` goes to ``--figures`` (default ``docs/img/``). A run with some methods
replaces those methods' rows and keeps the others, so the figure and summary always show every
method that has been run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "data" / "pbmc68k_reduced_counts.h5ad"
LABEL = "bulk_labels"
METHODS = ("mvae", "scanpy", "scanpy_k10")
TITLES = {"mvae": "mvae (X_mvae, k = 10)", "scanpy": "scanpy default (log-normalised PCA, 50 PCs)",
          "scanpy_k10": "scanpy, 10 PCs"}
VERSIONS = ("mvae", "torch", "numpy", "scipy", "anndata", "scanpy", "leidenalg", "igraph",
            "umap-learn", "pynndescent", "scikit-learn")


# ------------------------------------------------------------------------------------------------
# embeddings
# ------------------------------------------------------------------------------------------------


def embed(method: str, adata, seed: int, *, smoke: bool) -> str:
    """Add the method's embedding to ``adata.obsm`` (in place); returns its key."""
    import scanpy as sc

    if method == "mvae":
        import mvae

        model = mvae.MultinomialVAE(random_state=seed, threads=1,
                                    max_epochs=2 if smoke else None, progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # CollapsedDimensionsWarning in smoke
            model.fit(adata)                                 # writes adata.obsm["X_mvae"]
        return "X_mvae"
    n_comps = {"scanpy": 50, "scanpy_k10": 10}[method]
    sc.pp.normalize_total(adata)  # each cell to the median depth
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=n_comps, random_state=seed)
    return "X_pca"


# ------------------------------------------------------------------------------------------------
# clusters
# ------------------------------------------------------------------------------------------------


def leiden(adata, resolution: float, seed: int) -> np.ndarray:
    """Leiden clusters (igraph flavour, scanpy's recommended settings) on the neighbour graph."""
    import scanpy as sc

    sc.tl.leiden(adata, resolution=resolution, random_state=seed, flavor="igraph",
                 n_iterations=2, directed=False, key_added="_leiden")
    return adata.obs["_leiden"].to_numpy().astype(str)


def matched_resolution(adata, n_target: int, seed: int, *, lo: float = 0.01, hi: float = 5.0,
                       steps: int = 25) -> tuple[float, np.ndarray]:
    """The Leiden resolution whose clustering has ``n_target`` clusters, by bisection in log space.

    Resolution 1 (the default) is tried first. The number of clusters grows with the resolution
    (not strictly, hence the fallback): the resolution whose count is nearest ``n_target`` (the
    lower one on a tie) is returned if no resolution tried hits it.
    """
    best = None
    for step in range(steps):
        mid = 1.0 if step == 0 else float(np.sqrt(lo * hi))  # the default resolution first
        labels = leiden(adata, mid, seed)
        n = len(set(labels))
        key = (abs(n - n_target), mid)
        if best is None or key < best[0]:
            best = (key, mid, labels)
        if n == n_target:
            break
        lo, hi = (mid, hi) if n < n_target else (lo, mid)
    return best[1], best[2]


def run_one(method: str, counts, seed: int, *, smoke: bool) -> tuple[list[dict], dict]:
    """Embed, build the graph, UMAP and cluster one method with one seed; score the clusters."""
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    adata = counts.copy()
    t0 = time.process_time()
    rep = embed(method, adata, seed, smoke=smoke)
    embed_cpu = time.process_time() - t0
    sc.pp.neighbors(adata, use_rep=rep, random_state=seed)
    sc.tl.umap(adata, random_state=seed)
    truth = adata.obs[LABEL].to_numpy().astype(str)
    n_types = len(set(truth))
    at_default = leiden(adata, 1.0, seed)
    res, at_matched = matched_resolution(adata, n_types, seed)
    rows = []
    for rule, r, labels in (("default", 1.0, at_default), ("matched", res, at_matched)):
        rows.append({"method": method, "seed": seed, "rule": rule, "resolution": round(r, 4),
                     "n_clusters": len(set(labels)), "n_cell_types": n_types,
                     "ari": round(float(adjusted_rand_score(truth, labels)), 4),
                     "nmi": round(float(normalized_mutual_info_score(truth, labels)), 4),
                     "dims": adata.obsm[rep].shape[1], "embed_cpu_s": round(embed_cpu, 1)})
    cells = {"cell": adata.obs_names.to_numpy(), "umap1": adata.obsm["X_umap"][:, 0],
             "umap2": adata.obsm["X_umap"][:, 1], "cell_type": truth, "leiden": at_default}
    return rows, cells


# ------------------------------------------------------------------------------------------------
# provenance, tables, figure
# ------------------------------------------------------------------------------------------------


def provenance(argv) -> dict:
    """Command, machine, date, commit and package versions of this run."""
    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               text=True, capture_output=True, check=True).stdout.strip()
        commit += "+changes" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    env = " ".join(f"{k}={v}" for k, v in threads.items() if v is not None)
    return {"command": " ".join([env, "python", "benchmarks/single_cell.py", *argv]).strip(),
            "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()}",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit,
            "versions": ", ".join([f"python {platform.python_version()}"]
                                  + [f"{n} {version(n)}" for n in VERSIONS])}


def merge_tsv(path: Path, new_rows: list[dict], methods) -> "pd.DataFrame":
    """Rows of ``path`` for other methods, then ``new_rows``; written back to ``path``."""
    import pandas as pd

    new = pd.DataFrame(new_rows)
    if path.exists():
        old = pd.read_csv(path, sep="\t", dtype={"commit": str})
        new = pd.concat([old[~old["method"].isin(methods)], new], ignore_index=True)
    new = new.sort_values(["method", "seed"] if "seed" in new else ["method"],
                          key=lambda c: c.map(METHODS.index) if c.name == "method" else c,
                          kind="stable")
    new.to_csv(path, sep="\t", index=False)
    return new


def summary_md(table) -> str:
    """Per method and resolution rule: ARI and NMI per seed, and the cluster counts."""
    lines = ["| method | Leiden resolution | ARI per seed | mean ARI | NMI per seed | clusters |",
             "|---|---|---|---|---|---|"]
    for (method, rule), g in table.groupby(["method", "rule"], sort=False):
        res = ("1 (default)" if rule == "default" else
               "matched: " + " / ".join(f"{r:.3g}" for r in g["resolution"]))
        lines.append(f"| {method} | {res} | {' / '.join(f'{a:.3f}' for a in g['ari'])} | "
                     f"{g['ari'].mean():.3f} | {' / '.join(f'{a:.3f}' for a in g['nmi'])} | "
                     f"{' / '.join(str(n) for n in g['n_clusters'])} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, umaps: dict, table) -> None:
    """UMAP per method (columns): coloured by cell type (top) and by Leiden cluster (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colormaps

    methods = [m for m in METHODS if m in umaps]
    fig, axes = plt.subplots(2, len(methods), figsize=(4.6 * len(methods), 8.4), squeeze=False)
    types = sorted(set(np.concatenate([u["cell_type"].to_numpy() for u in umaps.values()])))
    for col, method in enumerate(methods):
        u = umaps[method]
        seed = int(u["seed"].iloc[0])
        row = table[(table.method == method) & (table.seed == seed) & (table.rule == "default")]
        ari = float(row["ari"].iloc[0])
        for r, (column, cats, cmap) in enumerate(
                (("cell_type", types, "tab10"),
                 ("leiden", sorted(set(u["leiden"]), key=int), "tab20"))):
            ax = axes[r, col]
            values = u[column].astype(str).to_numpy()
            colours = colormaps[cmap]
            for i, cat in enumerate(cats):
                m = values == str(cat)
                ax.scatter(u["umap1"][m], u["umap2"][m], s=6, color=colours(i % colours.N),
                           edgecolors="none", label=f"{cat} ({m.sum()})")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{TITLES[method]}\ncoloured by cell type", fontsize=9)
            else:
                ax.set_title(f"Leiden clusters (resolution 1, seed {seed}): "
                             f"{len(cats)}, ARI {ari:.3f}", fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, [lab.rsplit(" (", 1)[0] for lab in labels], loc="lower center",
               ncol=5, fontsize=7.5, frameon=False, markerscale=2.5)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> "pd.DataFrame":
    """Run the methods and seeds asked for; update the tables and the figure; return all rows."""
    import pandas as pd

    import mvae

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "single_cell")
    p.add_argument("--figures", type=Path, default=ROOT / "docs" / "img")
    p.add_argument("--smoke", action="store_true", help="mvae fits of 2 epochs, the first seed")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    seeds = args.seeds[:1] if args.smoke else args.seeds
    args.out.mkdir(parents=True, exist_ok=True)
    args.figures.mkdir(parents=True, exist_ok=True)

    counts = mvae.read_counts(TABLE)  # AnnData 700 x 765, raw counts in X, obs["bulk_labels"]
    # one untimed pass on a few cells first: imports and numba's compilation are not the method's
    for method in args.methods:
        embed(method, counts[:100].copy(), 0, smoke=True)
    rows, runs = [], []
    for method in args.methods:
        for seed in seeds:
            new, cells = run_one(method, counts, seed, smoke=args.smoke)
            rows += new
            for r in new:
                print(json.dumps(r), flush=True)
            if seed == seeds[0]:
                pd.DataFrame(cells).assign(seed=seed).to_csv(
                    args.out / f"umap_{method}.tsv", sep="\t", index=False, float_format="%.5g")
        runs.append({"method": method, "seeds": " ".join(map(str, seeds)),
                     "smoke": args.smoke, **provenance(argv)})
    table = merge_tsv(args.out / "clusters.tsv", rows, args.methods)
    merge_tsv(args.out / "runs.tsv", runs, args.methods)
    (args.out / "summary.md").write_text(summary_md(table))
    umaps = {m: pd.read_csv(args.out / f"umap_{m}.tsv", sep="\t")
             for m in METHODS if (args.out / f"umap_{m}.tsv").exists()}
    plot(args.figures / "single_cell_umap.png", umaps, table)
    print(summary_md(table))
    return table


if __name__ == "__main__":
    main()
