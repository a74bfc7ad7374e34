"""A ConvVAE on the offline landscape set: held-out bits/dim and the figures of docs/images.md.

Data: :func:`mvae.images.landscape_set` at 32x32 RGB, 4000 training and 1000 test images, a quarter
of each part crops of the photos bundled with scikit-learn / scikit-image (test crops from the
held-out right quarter of every photo; procedural-only when neither package is installed) and the
rest procedural scenes (test scenes from an independent stream).

Model: ConvVAE with the discretised logistic likelihood (8-bit), factorised decoder, one torch
thread. Reported: negative ELBO on the test images in nats and bits per dimension
(nats / (3·32·32·ln 2)), overall and per source, plus CPU seconds.

Writes ``benchmarks/results/images/landscapes.{md,csv}`` and ``docs/img/landscapes_{train,samples,
reconstructions}.png``.

Usage::

    python benchmarks/images_landscapes.py             # about 13 CPU-minutes
    python benchmarks/images_landscapes.py --epochs 1 -o /tmp/x --figures /tmp/x
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks/results/images")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs/img")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    import numpy as np
    import pandas as pd
    import torch

    from mvae.images import ConvVAE, landscape_set
    from mvae.images.grids import comparison_grid, save_grid
    from mvae.images.likelihoods import bits_per_dim

    cpu0, wall0 = time.process_time(), time.perf_counter()
    train, test = landscape_set(args.n_train, args.n_test, size=args.size, seed=args.seed)
    data_cpu = time.process_time() - cpu0
    model = ConvVAE(args.latent, n_filters=args.filters, depth=args.depth, n_hidden=512,
                    likelihood="logistic", learning_rate=2e-3, batch_size=128,
                    max_epochs=args.epochs, patience=10, random_state=args.seed,
                    threads=args.threads)
    t = time.process_time()
    model.fit(train)
    fit_cpu = time.process_time() - t
    nelbo = model.score_samples(test, n_samples=8)
    D = 3 * args.size * args.size
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0

    sources = np.where(test.labels == "procedural", "procedural", "photo crops")
    rows = [{"test_images": "all", "n": len(nelbo), "negative_elbo_nats": nelbo.mean(),
             "bits_per_dim": bits_per_dim(nelbo.mean(), D)}]
    for src in ("procedural", "photo crops"):
        sel = sources == src
        if sel.any():
            rows.append({"test_images": src, "n": int(sel.sum()),
                         "negative_elbo_nats": nelbo[sel].mean(),
                         "bits_per_dim": bits_per_dim(nelbo[sel].mean(), D)})
    frame = pd.DataFrame(rows)
    frame["epochs_run"] = len(model.history_)
    frame["best_epoch"] = model.best_epoch_
    frame["fit_cpu_seconds"] = round(fit_cpu, 1)
    frame["torch_threads"] = args.threads
    args.output.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.output / "landscapes.csv", index=False)
    model.history_.to_csv(args.output / "landscapes_history.csv", index=False)

    args.figures.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    show = np.sort(rng.choice(len(train), 32, replace=False))
    save_grid(train.images[show], args.figures / "landscapes_train.png", n_cols=8, scale=2)
    save_grid(model.sample(64, random_state=args.seed), args.figures / "landscapes_samples.png",
              n_cols=8, scale=2)
    pick = np.sort(rng.choice(len(test), 16, replace=False))
    held = test.subset(pick)
    comparison_grid(held.images, model.reconstruct(held), n_cols=8, scale=2).save(
        args.figures / "landscapes_reconstructions.png", format="PNG")

    lines = [
        "# ConvVAE on the landscape set",
        "",
        "Command: `" + " ".join(["python benchmarks/images_landscapes.py", *argv]) + "`",
        "",
        f"{len(train)} training and {len(test)} held-out {args.size}x{args.size} RGB images "
        f"(`mvae.images.landscape_set`, seed {args.seed}; labels: "
        f"{', '.join(sorted(set(map(str, train.labels))))}). ConvVAE k = {args.latent}, "
        f"{args.filters} filters, depth {args.depth}, discretised logistic likelihood, "
        f"{len(model.history_)} epochs (best {model.best_epoch_}), one torch thread, "
        f"torch {torch.__version__}. CPU seconds: {data_cpu:.0f} making the data, {fit_cpu:.0f} "
        f"fitting, {cpu:.0f} in all ({wall:.0f} s wall).",
        "",
        "Held-out negative ELBO (β = 1, 8 draws of z per image; an upper bound on −log p(x)):",
        "",
        "| test images | n | nats | bits/dim |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['test_images']} | {r['n']} | {r['negative_elbo_nats']:.1f} | "
                     f"{r['bits_per_dim']:.3f} |")
    lines += ["", "Figures: docs/img/landscapes_train.png, landscapes_samples.png, "
              "landscapes_reconstructions.png.", ""]
    (args.output / "landscapes.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    assert math.isfinite(rows[0]["bits_per_dim"])


if __name__ == "__main__":
    main()
