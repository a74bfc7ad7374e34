"""mvae against what users would run instead, at defaults, on every shipped table.

    python benchmarks/peers.py -o benchmarks/results/peers                 # everything installed
    python benchmarks/peers.py -o benchmarks/results/peers --methods mvae  # re-run mvae's rows only
    python benchmarks/peers.py -o benchmarks/results/peers --summarise     # summary.md from the TSVs
    python benchmarks/peers.py -o benchmarks/results/peers --resume        # only the missing fits

For each table (``benchmarks/shipped.py``), method (``benchmarks/peer_models.py``) and seed, one
fresh child process reads the table, imports the method's package, fits it and embeds the
samples, with one thread (``torch.set_num_threads(1)``, ``OMP/MKL/OPENBLAS_NUM_THREADS=1``), and
reports the fit's wall and CPU seconds (the import is timed apart), its peak resident memory
(``ru_maxrss`` of the child: interpreter, imports, table and fit together) and the embedding.
The parent then scores every embedding with one evaluation: the 10-nearest-neighbour label
accuracy of ``mvae.evaluation.knn`` (stratified 5-fold, 20 fold assignments, the same for every
method; ECAM's folds keep each subject, ``host_subject_id``, in one fold).

Output in ``-o``: ``fits.tsv`` (a row per fit), ``knn.tsv`` (a row per fit and label), both written
a row at a time as fits finish, and ``summary.md`` (medians over seeds). Rows of an earlier run
for tables, methods and seeds not re-run are kept, so ``--methods mvae`` refreshes only mvae.
A method whose package is not installed is skipped with a note; a fit that fails is recorded with
its error and the run goes on.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from benchmarks.peer_models import METHODS, installed
    from benchmarks.shipped import TABLES, TsvRows
except ImportError:  # run as a script: benchmarks/ itself is on the path
    from peer_models import METHODS, installed
    from shipped import TABLES, TsvRows

ROOT = Path(__file__).resolve().parent.parent

#: Labels scored per table: (metadata file or None for the table's own obs, label columns,
#: the column that groups samples of one subject or None).
LABELS = {
    "moving_pictures": ("data/moving_pictures_16s_metadata.tsv", ("BodySite",), None),
    "wirbel": ("data/wirbel_crc_shotgun_metadata.tsv", ("Country", "Group"), None),
    "ecam": ("data/ecam_16s_metadata.tsv", ("delivery", "diet"), "host_subject_id"),
    "pbmc": (None, ("bulk_labels",), None),
}

#: The k-NN evaluation, one for all methods.
KNN = {"k": 10, "n_folds": 5, "n_repeats": 20, "seed": 0}

FIT_KEYS = ("table", "method", "seed")
ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}


# --------------------------------------------------------------------------- the child
def _package_version(method: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    dist = {"mvae": "mvae", "clr_pca": "mvae", "linear_scvi": "scvi-tools", "scvi": "scvi-tools",
            "pln_pca": "pyPLNmodels", "gemelli_rpca": "gemelli"}[method]
    if dist == "mvae":  # the code imported (an editable install's metadata can be stale)
        import mvae

        return f"mvae {mvae.__version__}"
    try:
        return f"{dist} {version(dist)}"
    except PackageNotFoundError:
        return dist


def child(method: str, table_path: str, seed: int, n_latent: int, out_npy: str) -> dict:
    """One fit in this (fresh) process: the figures as a dict, the embedding to ``out_npy``."""
    import importlib
    import resource
    import warnings

    import torch

    torch.set_num_threads(1)
    import mvae

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = mvae.read_counts(table_path)
    counts = adata.X
    # import the method's package before the clock starts: its import time is reported apart
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module in {"linear_scvi": ["scvi"], "scvi": ["scvi"], "pln_pca": ["pyPLNmodels"],
                       "gemelli_rpca": ["gemelli.rpca"],
                       "clr_pca": ["mvae.evaluation.baselines"]}.get(method, []):
            importlib.import_module(module)
    import_s = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    t1, c1 = time.perf_counter(), time.process_time()
    fitted = METHODS[method](counts, n_latent, seed)
    wall, cpu = time.perf_counter() - t1, time.process_time() - c1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emb = np.asarray(fitted.embedding, dtype=np.float64)
    np.save(out_npy, emb)
    return {"n": int(counts.shape[0]), "d": int(counts.shape[1]), "k": int(emb.shape[1]),
            "epochs": fitted.epochs if fitted.epochs is not None else "",
            "import_s": import_s, "fit_wall_s": wall, "fit_cpu_s": cpu,
            "rss_before_fit_mb": rss_before, "peak_rss_mb": peak,
            "threads": torch.get_num_threads(), "version": _package_version(method)}


def run_child(method: str, table_path, seed: int, n_latent: int, timeout: float | None,
              script=None, extra=()) -> tuple:
    """(figures, embedding) of one fit in a fresh process; (figures with an ``error``, None) if
    it failed.

    ``script`` (default this file) is run as ``script --child method table seed n_latent out
    *extra``; what the child saves to ``out`` comes back: an array (``np.save``) or a dict of
    arrays (``np.savez``)."""
    env = dict(os.environ, **ONE_THREAD)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]]
                                                        if env.get("PYTHONPATH") else []))
    with tempfile.TemporaryDirectory() as tmp:
        npy = str(Path(tmp) / "embedding.npy")
        cmd = [sys.executable, str(Path(script or __file__).resolve()), "--child", method,
               str(table_path), str(seed), str(n_latent), npy, *map(str, extra)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s"}, None
        if out.returncode != 0:
            last = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
            return {"error": (last[-1] if last else f"exit {out.returncode}")[:300]}, None
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        with open(npy, "rb") as fh:
            saved = np.load(fh)
            return figures, (dict(saved) if isinstance(saved, np.lib.npyio.NpzFile) else saved)


# --------------------------------------------------------------------------- labels and scoring
def table_labels(table: str, obs_names, obs=None) -> tuple[dict, np.ndarray | None]:
    """Label arrays (None where a sample has no label) per column, and the groups (or None)."""
    import pandas as pd

    from mvae.io.metadata import read_metadata

    path, columns, group_col = LABELS[table]
    if path is None:
        md = obs
    else:
        # reindex, not align_metadata: a sample without metadata (ECAM has 2) is fitted with the
        # rest and only left out of the scoring
        md = read_metadata(ROOT / path).reindex(list(obs_names))
    labels = {}
    for col in columns:
        if col not in md.columns:
            continue
        values = md[col]
        labels[col] = np.array([None if pd.isna(v) else str(v) for v in values], dtype=object)
    groups = None if group_col is None else md[group_col].astype(str).to_numpy()
    return labels, groups


def score(embedding: np.ndarray, labels: dict, groups) -> list[dict]:
    """k-NN accuracy (mean and sd over fold assignments) of each label, samples with one only."""
    from mvae.evaluation.knn import knn_cv_accuracy

    rows = []
    for col, y in labels.items():
        has = np.array([v is not None for v in y])
        yy = y[has].astype(str)
        acc = knn_cv_accuracy(embedding[has], yy, k=KNN["k"], n_folds=KNN["n_folds"],
                              n_repeats=KNN["n_repeats"], seed=KNN["seed"],
                              groups=None if groups is None else groups[has])
        _, counts = np.unique(yy, return_counts=True)
        rows.append({"label": col, "n_labelled": int(has.sum()), "knn_accuracy": float(acc.mean()),
                     "knn_sd": float(acc.std(ddof=1)), "majority": float(counts.max() / has.sum()),
                     "grouped": groups is not None})
    return rows


# --------------------------------------------------------------------------- TSVs and summary
def _read_tsv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _keep_rows(path: Path, planned: set) -> list[dict]:
    """Rows of an earlier run that this run does not redo."""
    return [r for r in _read_tsv(path) if (r["table"], r["method"], int(r["seed"])) not in planned]


def summarise(out_dir: Path) -> str:
    """summary.md: per table and method, medians over seeds of the fit figures, mean k-NN
    accuracy over seeds (min-max), and mvae's ratios to LinearSCVI."""
    import pandas as pd

    fits = pd.read_csv(out_dir / "fits.tsv", sep="\t")
    knn = pd.read_csv(out_dir / "knn.tsv", sep="\t")
    ok = fits[fits["error"].isna()] if "error" in fits else fits
    lines = ["# Peers benchmark: summary", "",
             "Medians over seeds; accuracy is the mean over seeds (min-max) of the 10-NN accuracy "
             "(stratified 5-fold, mean of 20 fold assignments).", ""]
    order = [m for m in METHODS if m in set(fits["method"])]
    tables = list(dict.fromkeys(fits["table"]))
    for table in sorted(tables, key=lambda t: list(TABLES).index(t) if t in TABLES else len(TABLES)):
        f = ok[ok["table"] == table]
        k = knn[knn["table"] == table]
        label_cols = list(dict.fromkeys(k["label"]))
        n, d = (int(f["n"].iloc[0]), int(f["d"].iloc[0])) if len(f) else ("?", "?")
        lines += [f"## {table} ({n} x {d})", "",
                  "| method | seeds | epochs | fit CPU-s | fit wall s | import s | peak RSS MB | "
                  + " | ".join(f"{c} acc." for c in label_cols) + " |",
                  "|---" * (7 + len(label_cols)) + "|"]
        for method in order:
            fm = f[f["method"] == method]
            failed = fits[(fits["table"] == table) & (fits["method"] == method)]
            if len(fm) == 0:
                if len(failed):
                    err = str(failed["error"].iloc[0])
                    lines.append(f"| {method} | failed: {err[:120]} |")
                continue
            cells = [method, str(len(fm)),
                     "" if fm["epochs"].isna().all() else f"{fm['epochs'].median():.0f}",
                     f"{fm['fit_cpu_s'].median():.1f}", f"{fm['fit_wall_s'].median():.1f}",
                     f"{fm['import_s'].median():.1f}", f"{fm['peak_rss_mb'].median():.0f}"]
            for c in label_cols:
                a = k[(k["method"] == method) & (k["label"] == c)]["knn_accuracy"]
                cells.append(f"{a.mean():.3f} ({a.min():.3f}-{a.max():.3f})" if len(a) else "")
            lines.append("| " + " | ".join(cells) + " |")
        maj = [f"{c} {k[k['label'] == c]['majority'].iloc[0]:.3f}" for c in label_cols]
        grouped = bool(k["grouped"].any()) if len(k) else False
        lines += ["", "Majority class: " + ", ".join(maj)
                  + ("; folds grouped by subject." if grouped else "."), ""]
        mv, ls = f[f["method"] == "mvae"], f[f["method"] == "linear_scvi"]
        if len(mv) and len(ls):
            lines += [f"mvae / LinearSCVI: fit CPU {mv['fit_cpu_s'].median() / ls['fit_cpu_s'].median():.2f}x, "
                      f"peak RSS {mv['peak_rss_mb'].median() / ls['peak_rss_mb'].median():.2f}x "
                      f"(max over seeds {mv['peak_rss_mb'].max():.0f} vs "
                      f"{ls['peak_rss_mb'].max():.0f} MB).", ""]
    text = "\n".join(lines)
    (out_dir / "summary.md").write_text(text, "utf-8")
    return text


# --------------------------------------------------------------------------- main
def run_table(table: str, path, labels: dict, groups, methods, seeds, n_latent: int, fits_out,
              knn_out, timeout: float | None = None, planned: set | None = None) -> None:
    """Fit every method and seed to one table (a child process each) and score the embeddings;
    rows go to the :class:`TsvRows` ``fits_out`` and ``knn_out`` as each fit finishes. With
    ``planned``, only the ``(table, method, seed)`` in it."""
    for method in methods:
        for seed in seeds:
            if planned is not None and (table, method, seed) not in planned:
                continue
            figures, emb = run_child(method, path, seed, n_latent, timeout)
            row = {"table": table, "method": method, "seed": seed}
            for key in ("n", "d", "k", "epochs", "import_s", "fit_wall_s", "fit_cpu_s",
                        "rss_before_fit_mb", "peak_rss_mb", "threads", "version"):
                row[key] = figures.get(key, "")
            row["error"] = figures.get("error", "")
            fits_out.append(row)
            print(json.dumps(row), flush=True)
            if emb is None:
                continue
            for r in score(emb, labels, groups):
                knn_row = {"table": table, "method": method, "seed": seed, **r}
                knn_out.append(knn_row)
                print(json.dumps(knn_row), flush=True)


def arguments(description: str, output: str, methods) -> argparse.ArgumentParser:
    """The options this benchmark and ``benchmarks/real_tables.py`` share."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("-o", "--output", type=Path, default=ROOT / output)
    p.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    p.add_argument("--methods", nargs="+", default=list(methods), choices=list(methods))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--n-latent", type=int, default=10)
    p.add_argument("--timeout", type=float, default=None, help="seconds per fit")
    p.add_argument("--summarise", action="store_true", help="only write summary.md")
    return p


def installed_methods(methods) -> list:
    """``methods`` whose package is installed; a note on stderr for each that is not."""
    kept = []
    for m in methods:
        if installed(m):
            kept.append(m)
        else:
            print(f"skipped {m}: its package is not installed (pip install -e '.[peers]')",
                  file=sys.stderr, flush=True)
    return kept


def main(argv=None) -> Path:
    p = arguments(__doc__.split("\n\n")[0], "benchmarks/results/peers", METHODS)
    p.add_argument("--resume", action="store_true",
                   help="skip the fits that fits.tsv already holds without an error")
    args = p.parse_args(argv)
    out_dir = args.output
    if args.summarise:
        print(summarise(out_dir))
        return out_dir
    methods = installed_methods(args.methods)
    planned = {(t, m, s) for t in args.tables for m in methods for s in args.seeds}
    if args.resume:
        planned -= {(r["table"], r["method"], int(r["seed"]))
                    for r in _read_tsv(out_dir / "fits.tsv") if not r.get("error")}
    kept_fits = _keep_rows(out_dir / "fits.tsv", planned)
    kept_knn = _keep_rows(out_dir / "knn.tsv", planned)
    fits_out = TsvRows(out_dir / "fits.tsv", "{:.4g}")
    knn_out = TsvRows(out_dir / "knn.tsv", "{:.4f}")
    for r in kept_fits:
        fits_out.append(r)
    for r in kept_knn:
        knn_out.append(r)

    import mvae

    for table in [t for t in args.tables if any(key[0] == t for key in planned)]:
        adata = mvae.read_counts(ROOT / TABLES[table])
        labels, groups = table_labels(table, adata.obs_names, adata.obs)
        run_table(table, ROOT / TABLES[table], labels, groups, methods, args.seeds, args.n_latent,
                  fits_out, knn_out, args.timeout, planned)
    fits_out.close()
    knn_out.close()
    if (out_dir / "fits.tsv").is_file() and (out_dir / "knn.tsv").is_file():
        summarise(out_dir)
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        method, table_path, seed, n_latent, npy = sys.argv[2:7]
        print(json.dumps(child(method, table_path, int(seed), int(n_latent), npy)), flush=True)
    else:
        main()
