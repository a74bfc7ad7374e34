"""Held-out samples of the shipped tables: mvae against what users would run instead.

    python benchmarks/real_tables.py -o benchmarks/results/real_tables --jobs 2   # resumes
    python benchmarks/real_tables.py -o benchmarks/results/real_tables --summarise

For each shipped table (``benchmarks/shipped.py``) and seed: a seeded 80/20 split of the samples
(``benchmarks/refine.py``'s ``split``; for ECAM, whose subjects were sampled repeatedly, of the
subjects, ``host_subject_id``, so a held-out sample's subject is never in the training part).
Each method (``benchmarks/peer_models.py``: mvae, clr + PCA, PLN-PCA, gemelli's robust Aitchison
PCA) is fitted on the training part at its defaults, latent dimension 10, in a fresh child process
with one thread, and then, where it can:

- ``Fitted.embed`` places the training and the held-out samples (the same map for both);
  each held-out sample's label is predicted by its 10 nearest training samples
  (``mvae.evaluation.knn.knn_predict``), accuracy per label beside the majority class of the
  training part;
- ``Fitted.score`` gives the −ELBO (nats) of the held-out and the training samples: mvae with
  refined posteriors (its default) and with its encoder's; PLN-PCA the multinomial ELBO given
  depth with its parameters frozen (``peer_models.multinomial_lowrank_posterior``). Per read:
  the sum over samples of the −ELBO over the sum of their depths (over the features with a
  non-zero training total, the ones both models keep).

Every fit also embeds all samples of the table (training and held-out), saved to
``embeddings/``; the summary compares the seeds' embeddings of the same samples by the
correlation of their pairwise Euclidean distances (``scipy.spatial.distance.pdist``).

Output in ``-o``: ``fits.tsv`` (a row per table, method and seed), ``knn.tsv`` (a row per fit and
label), ``embeddings/<table>__<method>__<seed>.npy`` and ``summary.md``. A re-run skips the fits
that ``fits.tsv`` holds without an error (``--redo`` refits them).
"""

from __future__ import annotations

import itertools
import json
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

try:
    from benchmarks.peer_models import METHODS, _csr
    from benchmarks.peers import (ROOT, _package_version, _read_tsv, arguments, installed_methods,
                                  run_child, table_labels)
    from benchmarks.refine import split
    from benchmarks.shipped import TABLES, TsvRows
except ImportError:  # run as a script: benchmarks/ itself is on the path
    from peer_models import METHODS, _csr
    from peers import (ROOT, _package_version, _read_tsv, arguments, installed_methods, run_child,
                       table_labels)
    from refine import split
    from shipped import TABLES, TsvRows

#: The methods compared, in order.
REAL_METHODS = ("mvae", "clr_pca", "pln_pca", "gemelli_rpca")
K_NEIGHBOURS = 10
HELD_OUT = 0.2
#: −ELBO variants a method's ``score`` may give, and their column names.
VARIANTS = {"optimised": "nelbo", "encoder": "nelbo_encoder"}
FIT_COLUMNS = ("n_train", "n_heldout", "d", "k", "epochs", "fit_cpu_s", "fit_wall_s",
               "eval_cpu_s", "peak_rss_mb", "version")


def split_samples(n: int, seed: int, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) sample indices: a seeded 80/20 split of the samples, or with ``groups``
    of the groups (every sample of a held-out group held out)."""
    if groups is None:
        return split(n, seed, HELD_OUT)
    ids, group_of = np.unique(np.asarray(groups), return_inverse=True)
    held = np.isin(group_of, split(len(ids), seed, HELD_OUT)[1])
    return np.flatnonzero(~held), np.flatnonzero(held)


def subject_groups(groups, n: int):
    """``groups`` with a sample that has none (no metadata) as a group of its own."""
    if groups is None:
        return None
    return np.array([g if g not in ("nan", "None", "") else f"#sample{i}"
                     for i, g in enumerate(np.asarray(groups, dtype=str))], dtype=object)


# --------------------------------------------------------------------------- the child
def child(method: str, table_path: str, seed: int, n_latent: int, out: str,
          held_path: str) -> dict:
    """Fit ``method`` to the training samples (all but those in ``held_path``), embed and score
    both parts; arrays to ``out`` (npz), figures returned."""
    import warnings

    import torch

    torch.set_num_threads(1)
    import mvae

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        counts = _csr(mvae.read_counts(table_path).X)
    held = np.load(held_path)
    train = np.setdiff1d(np.arange(counts.shape[0]), held)
    parts = {"train": counts[train], "heldout": counts[held]}
    t0, c0 = time.perf_counter(), time.process_time()
    fitted = METHODS[method](parts["train"], n_latent, seed)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    c1 = time.process_time()
    arrays = {}
    kept = np.asarray(parts["train"].sum(axis=0)).ravel() > 0
    for part, x in parts.items():
        arrays[f"depth_{part}"] = np.asarray(x[:, np.flatnonzero(kept)].sum(axis=1)).ravel()
        if fitted.embed is not None:
            arrays[f"embed_{part}"] = np.asarray(fitted.embed(x), dtype=np.float64)
        if fitted.score is not None:
            for variant, values in fitted.score(x).items():
                arrays[f"{VARIANTS[variant]}_{part}"] = np.asarray(values, dtype=np.float64)
    eval_cpu = time.process_time() - c1
    with open(out, "wb") as fh:
        np.savez(fh, **arrays)
    return {"n_train": len(train), "n_heldout": len(held), "d": int(counts.shape[1]),
            "k": int(np.asarray(fitted.embedding).shape[1]),
            "epochs": fitted.epochs if fitted.epochs is not None else "",
            "fit_cpu_s": cpu, "fit_wall_s": wall, "eval_cpu_s": eval_cpu,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "version": _package_version(method)}


# --------------------------------------------------------------------------- the parent
def _fit_row(table, method, seed, figures, arrays) -> dict:
    row = {"table": table, "method": method, "seed": seed}
    row.update({c: figures.get(c, "") for c in FIT_COLUMNS})
    for name in VARIANTS.values():
        for part in ("heldout", "train"):
            values = arrays.get(f"{name}_{part}") if arrays else None
            if values is None:
                row[f"{part}_{name}"] = row[f"{part}_{name}_per_read"] = ""
                continue
            depth = arrays[f"depth_{part}"]
            row[f"{part}_{name}"] = float(np.mean(values))
            row[f"{part}_{name}_per_read"] = float(np.sum(values) / np.sum(depth))
    row["embeds"] = bool(arrays) and "embed_heldout" in arrays
    row["error"] = figures.get("error", "")
    return row


def knn_rows(table, method, seed, arrays, train, held, labels, grouped: bool) -> list[dict]:
    """10-NN label accuracy of the held-out samples among the training samples, per label."""
    from mvae.evaluation.knn import knn_predict

    rows = []
    for col, y in labels.items():
        y_train, y_held = y[train], y[held]
        has_train = np.array([v is not None for v in y_train])
        has_held = np.array([v is not None for v in y_held])
        values, counts = np.unique(y_train[has_train].astype(str), return_counts=True)
        majority = values[counts.argmax()]
        truth = y_held[has_held].astype(str)
        row = {"table": table, "method": method, "seed": seed, "label": col,
               "n_train": int(has_train.sum()), "n_heldout": int(has_held.sum()),
               "knn_accuracy": "", "majority": float(np.mean(truth == majority)),
               "grouped": grouped}
        if arrays is not None and "embed_heldout" in arrays:
            predicted = knn_predict(arrays["embed_train"][has_train],
                                    y_train[has_train].astype(str),
                                    arrays["embed_heldout"][has_held], K_NEIGHBOURS)
            row["knn_accuracy"] = float(np.mean(predicted == truth))
        rows.append(row)
    return rows


def _embedding_path(out_dir: Path, table, method, seed) -> Path:
    return out_dir / "embeddings" / f"{table}__{method}__{seed}.npy"


def _one_fit(table, path, method, seed, n_latent, held, timeout):
    with tempfile.TemporaryDirectory() as tmp:
        held_path = Path(tmp) / "held.npy"
        np.save(held_path, held)
        return run_child(method, path, seed, n_latent, timeout, script=__file__,
                         extra=[held_path])


def run(tables: dict, methods, seeds, n_latent: int, out_dir: Path, jobs: int = 1,
        timeout: float | None = None, redo: bool = False, annotations: dict | None = None) -> None:
    """Every (table, method, seed) not yet in ``out_dir/fits.tsv`` (all with ``redo``), ``jobs``
    child processes at a time. ``tables``: name -> path of the table; the labels and subject
    groups of a shipped table come from ``peers.table_labels``, of another from ``annotations``
    (name -> (labels, groups)), else none."""
    import mvae

    out_dir = Path(out_dir)
    done = set() if redo else {(r["table"], r["method"], int(r["seed"]))
                               for r in _read_tsv(out_dir / "fits.tsv") if not r.get("error")}
    todo = [(t, m, s) for t in tables for s in seeds for m in methods if (t, m, s) not in done]
    fits_kept = [r for r in _read_tsv(out_dir / "fits.tsv")
                 if (r["table"], r["method"], int(r["seed"])) not in todo]
    knn_kept = [r for r in _read_tsv(out_dir / "knn.tsv")
                if (r["table"], r["method"], int(r["seed"])) not in todo]
    fits_out, knn_out = TsvRows(out_dir / "fits.tsv", "{:.6g}"), TsvRows(out_dir / "knn.tsv",
                                                                       "{:.4f}")
    for r in fits_kept:
        fits_out.append(r)
    for r in knn_kept:
        knn_out.append(r)
    info = {}
    for table in dict.fromkeys(t for t, _, _ in todo):
        adata = mvae.read_counts(tables[table])
        if annotations and table in annotations:
            labels, groups = annotations[table]
        elif table in TABLES:
            labels, groups = table_labels(table, adata.obs_names, adata.obs)
        else:
            labels, groups = {}, None
        groups = subject_groups(groups, adata.n_obs)
        splits = {s: split_samples(adata.n_obs, s, groups) for s in seeds}
        info[table] = (adata.n_obs, labels, groups, splits)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(_one_fit, t, tables[t], m, s, n_latent, info[t][3][s][1],
                               timeout): (t, m, s) for t, m, s in todo}
        for future in as_completed(futures):
            table, method, seed = futures[future]
            figures, arrays = future.result()
            n, labels, groups, splits = info[table]
            train, held = splits[seed]
            row = _fit_row(table, method, seed, figures, arrays)
            fits_out.append(row)
            print(json.dumps(row), flush=True)
            if arrays is None:
                continue
            if "embed_heldout" in arrays:
                emb = np.full((n, arrays["embed_train"].shape[1]), np.nan)
                emb[train], emb[held] = arrays["embed_train"], arrays["embed_heldout"]
                _embedding_path(out_dir, table, method, seed).parent.mkdir(exist_ok=True)
                np.save(_embedding_path(out_dir, table, method, seed), emb.astype(np.float32))
            for r in knn_rows(table, method, seed, arrays, train, held, labels,
                              groups is not None):
                knn_out.append(r)
    fits_out.close()
    knn_out.close()


# --------------------------------------------------------------------------- summary
def seed_agreement(embeddings: list[np.ndarray]) -> list[float]:
    """Pearson correlation of the pairwise Euclidean distances of the samples, for every pair
    of embeddings (of the same samples, rows with a NaN in either left out)."""
    from scipy.spatial.distance import pdist

    out = []
    for a, b in itertools.combinations(embeddings, 2):
        ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
        out.append(float(np.corrcoef(pdist(a[ok]), pdist(b[ok]))[0, 1]))
    return out


def _spread(values) -> str:
    """mean (min-max) of a column, '' when it has no numbers."""
    import pandas as pd

    v = pd.to_numeric(values, errors="coerce").dropna()
    if not len(v):
        return ""
    fmt = "{:,.0f}" if v.abs().max() >= 100 else "{:.3f}"
    return f"{fmt.format(v.mean())} ({fmt.format(v.min())}–{fmt.format(v.max())})"


def summarise(out_dir: Path) -> str:
    """summary.md: per table and method, mean (min-max over seeds) of each number, the sd over
    seeds of the held-out −ELBO and accuracy, and the seeds' embedding agreement."""
    import pandas as pd

    out_dir = Path(out_dir)
    fits = pd.read_csv(out_dir / "fits.tsv", sep="\t", keep_default_na=False, na_values=[""])
    knn = pd.read_csv(out_dir / "knn.tsv", sep="\t") if (out_dir / "knn.tsv").is_file() \
        else pd.DataFrame(columns=["table", "method", "seed", "label"])
    ok = fits[fits["error"].isna()]
    lines = ["# Real-table benchmark: summary", "",
             "Each cell: mean over seeds (min–max). −ELBO in nats per held-out (or training) "
             "sample; per read: Σ −ELBO / Σ depth. Accuracy: 10-NN label accuracy of the "
             "held-out samples among the training samples. Seed agreement: mean over pairs of "
             "seeds of the correlation of the pairwise distances of all samples' embeddings "
             "(each seed's fit embeds every sample of the table). Written by "
             "`benchmarks/real_tables.py --summarise`.", ""]
    order = [m for m in REAL_METHODS if m in set(fits["method"])]
    present = list(dict.fromkeys(fits["table"]))
    for table in sorted(present, key=lambda t: list(TABLES).index(t) if t in TABLES else 99):
        f, k = ok[ok["table"] == table], knn[knn["table"] == table]
        label_cols = list(dict.fromkeys(k["label"]))
        if len(f):
            lines += [f"## {table} ({int(f['n_train'].iloc[0]) + int(f['n_heldout'].iloc[0])} "
                      f"samples x {int(f['d'].iloc[0])} features)", ""]
        else:
            lines += [f"## {table}", ""]
        lines += ["| method | seeds | fit CPU-s | held-out −ELBO | sd | per read | train −ELBO | "
                  "held-out −ELBO, encoder | train −ELBO, encoder | "
                  + " | ".join(f"{c} acc. | sd" for c in label_cols) + " | seed agreement |",
                  "|---" * (10 + 2 * len(label_cols)) + "|"]
        for method in order:
            fm = f[f["method"] == method]
            failed = fits[(fits["table"] == table) & (fits["method"] == method)
                          & fits["error"].notna()]
            if not len(fm):
                if len(failed):
                    lines.append(f"| {method} | failed: {str(failed['error'].iloc[0])[:150]} |")
                continue
            held = pd.to_numeric(fm["heldout_nelbo"], errors="coerce").dropna()
            cells = [method, str(len(fm)), _spread(fm["fit_cpu_s"]),
                     _spread(fm["heldout_nelbo"]) or "no likelihood",
                     f"{held.std(ddof=1):,.1f}" if len(held) > 1 else "",
                     _spread(fm["heldout_nelbo_per_read"]), _spread(fm["train_nelbo"]),
                     _spread(fm["heldout_nelbo_encoder"]), _spread(fm["train_nelbo_encoder"])]
            for c in label_cols:
                a = k[(k["method"] == method) & (k["label"] == c)]["knn_accuracy"]
                a = pd.to_numeric(a, errors="coerce").dropna()
                cells += [_spread(a) or "cannot embed new samples",
                          f"{a.std(ddof=1):.3f}" if len(a) > 1 else ""]
            embs = [np.load(p) for s in sorted(fm["seed"].astype(int))
                    if (p := _embedding_path(out_dir, table, method, s)).is_file()]
            agree = seed_agreement(embs)
            cells.append(f"{np.mean(agree):.3f} ({min(agree):.3f}–{max(agree):.3f})"
                         if agree else "")
            lines.append("| " + " | ".join(cells) + " |")
        if label_cols:
            first = k.drop_duplicates(["seed", "label"])
            maj = [f"{c} {_spread(first[first['label'] == c]['majority'])}" for c in label_cols]
            lines += ["", "Majority class of the training part, accuracy on the held-out part: "
                      + ", ".join(maj) + (" (splits of subjects)." if k["grouped"].astype(
                          str).eq("True").any() else ".")]
        lines.append("")
    text = "\n".join(lines)
    (out_dir / "summary.md").write_text(text, "utf-8")
    return text


def main(argv=None) -> Path:
    p = arguments(__doc__.split("\n\n")[0], "benchmarks/results/real_tables", REAL_METHODS)
    p.add_argument("--jobs", type=int, default=1, help="child processes at a time")
    p.add_argument("--redo", action="store_true", help="refit what fits.tsv already holds")
    args = p.parse_args(argv)
    if not args.summarise:
        run({t: ROOT / TABLES[t] for t in args.tables}, installed_methods(args.methods),
            args.seeds, args.n_latent, args.output, args.jobs, args.timeout, args.redo)
    print(summarise(args.output))
    return args.output


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        method, table_path, seed, n_latent, out, held_path = sys.argv[2:8]
        print(json.dumps(child(method, table_path, int(seed), int(n_latent), out, held_path)),
              flush=True)
    else:
        main()
