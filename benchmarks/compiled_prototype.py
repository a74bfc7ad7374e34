"""How far could a compiler take the default model at D = 2,000? A plain-torch prototype, eager and
under ``torch.compile``, against the throughput reference loop, in one process.

The issue's target at D = 2,000 is 0.8x the reference loop (``throughput.py``); mvae's default
(marginal objective, ``factored`` posterior, dense Monte Carlo) sits at ~0.45x there. This script
asks whether the gap is the cost of running the model in eager torch operations, which a compiler
would fuse, or of the model itself. It writes the default model's loss in plain torch operations
(no hand-written autograd functions, which break inductor's graphs):

- encoder log1p(x) -> D x 128 -> GELU -> heads P (B, 32) and t (B,), as ``encoder_depth=2``;
- q(l | x) = N(b + P Q^T + a * y, diag exp(t + f + g * y)), one Monte Carlo draw of B x D;
- multinomial log-likelihood x.l - N logsumexp(l);
- KL to N(b, W W^T + s2 I) by Woodbury and the determinant lemma (k = 10),

trains it with fused Adam (batch 128, one thread, as mvae's loop does), once eagerly and once
through ``torch.compile`` (inductor; needs a C++ compiler), and prints the CPU milliseconds per
step of each beside the reference's, round by round. It is a prototype for the measurement only:
no pseudocount centring, no skip of y's row mean, no gradient clipping.

    python benchmarks/compiled_prototype.py               # eager and compiled, 3 rounds
    python benchmarks/compiled_prototype.py --no-compile  # eager only (no compiler needed)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    from benchmarks.throughput import BATCH, HIDDEN, K, _reference_epochs, make_counts
except ImportError:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.throughput import BATCH, HIDDEN, K, _reference_epochs, make_counts

RANK = 32  # the factored posterior's default rank


def prototype(D: int):
    """The default model's loss in plain torch operations (a module with ``loss(x, eps)``)."""
    import torch
    from torch import nn

    class Prototype(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(D, HIDDEN), nn.GELU())
            self.left_head, self.scale_head = nn.Linear(HIDDEN, RANK), nn.Linear(HIDDEN, 1)
            self.right = nn.Parameter(torch.randn(D, RANK) * 0.01)
            self.skip, self.skip_log_var = nn.Parameter(torch.zeros(D)), nn.Parameter(torch.zeros(D))
            self.feature_log_var = nn.Parameter(torch.full((D,), -2.0))
            self.bias = nn.Parameter(torch.zeros(D))
            self.loadings = nn.Parameter(torch.randn(D, K) * 0.1)
            self.log_noise = nn.Parameter(torch.tensor(-2.0))

        def loss(self, x, eps):
            y = torch.log1p(x)
            h = self.encoder(y)
            left, t = self.left_head(h), self.scale_head(h)[:, 0]
            mean = self.bias + left @ self.right.T + self.skip * y
            log_var = t[:, None] + self.feature_log_var + self.skip_log_var * y
            logits = mean + eps * torch.exp(0.5 * log_var)
            recon = (x * logits).sum(1) - x.sum(1) * torch.logsumexp(logits, 1)
            s2, W = self.log_noise.exp(), self.loadings
            core = s2 * torch.eye(K) + W.T @ W
            core_inv = torch.linalg.inv(core)
            leverage = ((W @ core_inv) * W).sum(1)
            delta = mean - self.bias
            u = delta @ W
            quad = ((log_var.exp() * (1 - leverage)).sum(1) + (delta * delta).sum(1)
                    - ((u @ core_inv) * u).sum(1)) / s2
            logdet = (D - K) * self.log_noise + torch.logdet(core)
            kl = 0.5 * (quad - D + logdet - log_var.sum(1))
            return (kl - recon).mean()

    return Prototype()


def train(loss_fn, module, dense, steps, gen):
    import torch

    opt = torch.optim.Adam(module.parameters(), lr=1e-3, fused=True)
    n, D = dense.shape
    order = torch.randperm(n, generator=gen)
    for s in range(steps):
        x = dense[order[(s * BATCH) % (n - BATCH):][:BATCH]]
        loss = loss_fn(x, torch.randn(BATCH, D, generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def main(D: int = 2_000, steps: int = 32, rounds: int = 3, compile_: bool = True) -> list[dict]:
    import torch
    from torch import nn

    torch.set_num_threads(1)
    dense = torch.as_tensor(make_counts(4096, D, None).toarray(), dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    eager = prototype(D)
    variants = {"eager": (eager.loss, eager)}
    if compile_:
        compiled = prototype(D)
        compiled.load_state_dict(eager.state_dict())
        t0 = time.perf_counter()
        variants["compiled"] = (torch.compile(compiled.loss), compiled)
        train(*variants["compiled"], dense, 2, gen)  # the compilation happens here
        print(f"compiled in {time.perf_counter() - t0:.1f} s (wall)", flush=True)

    def cpu_ms(fn):
        t0 = time.process_time()
        fn()
        return (time.process_time() - t0) / steps * 1e3

    rows = []
    train(eager.loss, eager, dense, 2, gen)  # warm-up
    for r in range(rounds):
        enc = nn.Sequential(nn.Linear(D, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * K))
        dec = nn.Linear(K, D)
        opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3, fused=True)
        row = dict(round=r, reference=cpu_ms(
            lambda: _reference_epochs(dense, enc, dec, opt, gen, 1, steps)))
        for name, (fn, module) in variants.items():
            row[name] = cpu_ms(lambda: train(fn, module, dense, steps, gen))
        rows.append(row)
        print(f"round {r}: ms per step reference {row['reference']:.2f}, " + ", ".join(
            f"{name} {row[name]:.2f} ({row['reference'] / row[name]:.2f}x)"
            for name in variants), flush=True)
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, default=2_000)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-compile", action="store_true")
    a = p.parse_args()
    main(a.features, a.steps, a.rounds, not a.no_compile)
