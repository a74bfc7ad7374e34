"""Anomaly detection and denoising on MNIST-5k with the image models, on one CPU thread.

Data: ``data/mnist_5k.csv.gz`` split by ``mvae.images.split_indices(5000, 1000, seed=0)`` (the same
4000/1000 split as ``images_mnist.py``). Models are trained on the training digits 0–4 only
(about 2000 images, 10 % of them held out for early stopping).

1. **Anomaly detection.** Every model scores the 1000 test images; AUROC of the score for the
   unseen digits 5–9 (positives) against held-out digits 0–4 (negatives), computed from ranks
   (Mann–Whitney U / (n₊ n₋), ties counted ½). Scores: the ConvVAE's negative ELBO (β = 1, 16
   draws, binarised with a fixed seed), and the autoencoders' reconstruction negative
   log-likelihood. Mean score per digit goes to ``anomaly_per_digit.csv``.
2. **Denoising.** The held-out test digits 0–4 are corrupted with the DAE's noise (seeded) and
   reconstructed by the plain and the denoising autoencoder (same architecture, same epochs).
   Reported: mean squared error per pixel against the clean images (intensities in [0, 1]),
   with its standard error over images; the error of the corrupted input itself is the baseline.

Usage::

    python benchmarks/images_anomaly.py               # a few CPU-minutes
    python benchmarks/images_anomaly.py --epochs 1 -o /tmp/x
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def auroc(scores_pos, scores_neg) -> float:
    """P(score of a positive > score of a negative), ties ½, from the rank-sum statistic."""
    import numpy as np
    from scipy.stats import rankdata

    s = np.concatenate([scores_pos, scores_neg])
    r = rankdata(s)  # average ranks for ties
    n1, n0 = len(scores_pos), len(scores_neg)
    u = r[:n1].sum() - n1 * (n1 + 1) / 2
    return float(u / (n1 * n0))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--noise", default="gaussian",
                        choices=["gaussian", "salt_pepper", "masking"])
    parser.add_argument("--noise-level", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks/results/images")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    import numpy as np
    import pandas as pd
    import torch

    from mvae.images import (
        ConvAutoencoder,
        ConvVAE,
        DenoisingAutoencoder,
        read_images,
        split_indices,
    )
    from mvae.images.modules import corrupt

    cpu0, wall0 = time.process_time(), time.perf_counter()
    digits = read_images(ROOT / "data/mnist_5k.csv.gz")
    labels = digits.labels.astype(int)
    train_idx, test_idx = split_indices(len(digits), 1000, seed=0)
    normal_train = digits.subset(train_idx[labels[train_idx] <= 4])
    test = digits.subset(test_idx)
    test_labels = labels[test_idx]
    unseen = test_labels >= 5

    common = dict(n_filters=args.filters, depth=2, n_hidden=256, max_epochs=args.epochs,
                  patience=10, learning_rate=2e-3, batch_size=128, random_state=args.seed,
                  threads=args.threads)
    models = {
        "ConvVAE": ConvVAE(args.latent, binarize=True, likelihood="bernoulli", **common),
        "ConvAutoencoder": ConvAutoencoder(args.latent, likelihood="bernoulli", **common),
        "DenoisingAutoencoder": DenoisingAutoencoder(args.latent, likelihood="bernoulli",
                                                     noise=args.noise,
                                                     noise_level=args.noise_level, **common),
    }
    rows, per_digit = [], {}
    # corrupted copies of the held-out normal digits, the same for both autoencoders
    clean = test.subset(~unseen)
    x = torch.as_tensor(clean.as_float().transpose(0, 3, 1, 2).copy())
    noisy = corrupt(x, args.noise, args.noise_level, torch.Generator().manual_seed(123))
    noisy = noisy.permute(0, 2, 3, 1).numpy()
    baseline = ((noisy - clean.as_float()) ** 2).reshape(len(noisy), -1).mean(1)
    for name, model in models.items():
        t_cpu = time.process_time()
        model.fit(normal_train)
        fit_cpu = time.process_time() - t_cpu
        if name == "ConvVAE":
            scores, score_name = model.score_samples(test, n_samples=16), "negative ELBO"
        else:
            scores, score_name = model.score_samples(test), "reconstruction NLL"
        row = {"model": name, "score": score_name, "epochs_run": len(model.history_),
               "best_epoch": model.best_epoch_, "fit_cpu_seconds": round(fit_cpu, 1),
               "auroc_5to9_vs_0to4": auroc(scores[unseen], scores[~unseen])}
        if name != "ConvVAE":
            err_noisy = model.reconstruction_error(noisy, clean=clean)
            err_clean = model.reconstruction_error(clean)
            row.update({
                "mse_corrupted_test": float(err_noisy.mean()),
                "mse_corrupted_test_sem": float(err_noisy.std(ddof=1) / math.sqrt(len(err_noisy))),
                "mse_clean_test": float(err_clean.mean()),
            })
        rows.append(row)
        per_digit[name] = pd.Series(scores).groupby(test_labels).mean()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0

    frame = pd.DataFrame(rows)
    args.output.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.output / "anomaly.csv", index=False)
    digit_table = pd.DataFrame(per_digit).rename_axis("digit")
    digit_table.to_csv(args.output / "anomaly_per_digit.csv")

    lines = [
        "# Anomaly detection and denoising on MNIST-5k",
        "",
        "Command: `" + " ".join(["python benchmarks/images_anomaly.py", *argv]) + "`",
        "",
        f"Trained on the {len(normal_train)} training digits 0–4 (seeded 4000/1000 split of "
        f"data/mnist_5k.csv.gz); tested on the 1000 test images: {int((~unseen).sum())} held-out "
        f"0–4 and {int(unseen.sum())} unseen 5–9. {args.epochs} epochs at most, early stopping "
        f"(patience 10), k = {args.latent}, {args.filters} filters, one torch thread "
        f"(torch {torch.__version__}); {cpu:.0f} CPU seconds in all ({wall:.0f} s wall).",
        "",
        "## Anomaly detection (AUROC, 5–9 scored above held-out 0–4)",
        "",
        "| model | score | AUROC | epochs (best) | fit CPU s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['score']} | {r['auroc_5to9_vs_0to4']:.3f} | "
                     f"{r['epochs_run']} ({r['best_epoch']}) | {r['fit_cpu_seconds']} |")
    lines += [
        "",
        f"## Denoising ({args.noise} noise, level {args.noise_level}, on the held-out 0–4)",
        "",
        "Mean squared error per pixel against the clean test images (intensities in [0, 1]).",
        "",
        "| input to the model | corrupted input itself | ConvAutoencoder | DenoisingAutoencoder |",
        "|---|---|---|---|",
    ]
    ae = next(r for r in rows if r["model"] == "ConvAutoencoder")
    dae = next(r for r in rows if r["model"] == "DenoisingAutoencoder")
    lines.append(f"| corrupted | {baseline.mean():.4f} | {ae['mse_corrupted_test']:.4f} ± "
                 f"{ae['mse_corrupted_test_sem']:.4f} | {dae['mse_corrupted_test']:.4f} ± "
                 f"{dae['mse_corrupted_test_sem']:.4f} |")
    lines.append(f"| clean | 0 | {ae['mse_clean_test']:.4f} | {dae['mse_clean_test']:.4f} |")
    lines += ["", "## Mean score per test digit (nats)", "",
              "| digit | " + " | ".join(digit_table.columns) + " |",
              "|---" * (1 + len(digit_table.columns)) + "|"]
    for digit, r in digit_table.iterrows():
        lines.append(f"| {digit} | " + " | ".join(f"{v:.1f}" for v in r) + " |")
    lines.append("")
    (args.output / "anomaly.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
