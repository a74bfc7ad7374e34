"""Paired in-process comparison of training steps: alternating blocks of steps between variants.

The shared machine's speed drifts by 10-20% within minutes, which separate processes (as in
``throughput.py``) cannot tell from a change of a few percent. Here every variant trains its own
module on the same simulated table in one process, and the variants take turns: a block of
``--steps`` steps each, in an order reversed every round, so a slow minute touches all of them.
The time of each block is divided by the first variant's block of the same round; the median of
these ratios over the rounds is reported with their range. One torch thread, CPU seconds.

A variant is a set of ``MVAEConfig`` fields (``posterior_rank=16 n_mc_samples=2``); code
changes are compared from Python by passing a context manager that patches the old code in while
its blocks run (``run(..., contexts={...})``), as the notes in ``results/throughput/README.md``
describe.

    python benchmarks/paired_steps.py --features 20000 --variants "" "posterior_rank=16"
"""

from __future__ import annotations

import argparse
import contextlib
import time

try:
    from benchmarks.throughput import BATCH, CASES, HIDDEN, K, make_counts, select_cases
except ImportError:  # run as a script: benchmarks/ itself is on the path
    from throughput import BATCH, CASES, HIDDEN, K, make_counts, select_cases


def parse_variant(text: str) -> dict:
    """``"activation=relu posterior_rank=16"`` -> {"activation": "relu", "posterior_rank": 16}
    (integers and floats are converted; the empty string is the default configuration)."""
    out = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"variant item {item!r}: expected field=value")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key] = value
    return out


def _module(X, overrides: dict):
    import torch

    from mvae.io.sources import InMemoryCounts
    from mvae.counts import MultinomialVAEModule, MVAEConfig

    torch.manual_seed(0)
    n, D = X.shape
    cfg = MVAEConfig(**(dict(n_features=D, n_latent=K, n_hidden=HIDDEN, encoder_depth=2)
                        | overrides))
    module = MultinomialVAEModule(cfg)
    table = InMemoryCounts(X, range(X.shape[0]), range(X.shape[1]))
    pooled, centre, scale = table.input_statistics(1.0)
    module.initialise_from_data(torch.as_tensor(pooled, dtype=torch.float32),
                                torch.as_tensor(centre, dtype=torch.float32), scale)
    module.train()
    return module


def run(variants: dict[str, dict], case, steps: int = 8, rounds: int = 8,
        contexts: dict | None = None) -> list[dict]:
    """Time ``rounds`` alternating blocks of ``steps`` training steps per variant.

    Parameters
    ----------
    variants : dict
        Name -> MVAEConfig overrides.
    case : tuple
        (D, density, n_samples, epochs) as in ``throughput.CASES`` (epochs unused).
    contexts : dict, optional
        Name -> a function returning a context manager entered around that variant's blocks.

    Returns
    -------
    list of dict
        Per variant: median and minimum ms per step, and the median and range of the ratio of
        its block times to the first variant's in the same round.
    """
    import numpy as np
    import torch

    from mvae.training.batches import CountData
    from mvae.training.loop import _adam, _clip_gradients

    torch.set_num_threads(1)
    D, density, n, _ = case
    X = make_counts(n, D, density)
    data = CountData(X)
    contexts = contexts or {}
    state = {}
    for name, overrides in variants.items():
        module = _module(X, overrides)
        state[name] = dict(module=module, opt=_adam(module, 1e-3),
                           params=[p for p in module.parameters() if p.requires_grad],
                           gen=torch.Generator().manual_seed(1),
                           pick=torch.Generator().manual_seed(2), times=[])

    def block(name, count):
        s = state[name]
        with contexts.get(name, contextlib.nullcontext)():
            t0 = time.process_time()
            for _ in range(count):
                batch = data.batch(torch.randint(0, n, (BATCH,), generator=s["pick"]))
                terms = s["module"].loss(batch, generator=s["gen"])
                loss = terms.negative_elbo(1.0).mean()
                s["opt"].zero_grad(set_to_none=True)
                loss.backward()
                _clip_gradients(s["params"], 1e3)
                s["opt"].step()
                loss.item()
            return time.process_time() - t0

    names = list(variants)
    for name in names:
        block(name, 3)  # warm-up: first-call set-up and lazy allocations
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            state[name]["times"].append(block(name, steps) / steps * 1e3)
    base = np.array(state[names[0]]["times"])
    rows = []
    for name in names:
        t = np.array(state[name]["times"])
        ratio = t / base
        rows.append(dict(variant=name, ms_per_step=float(np.median(t)),
                         ms_min=float(t.min()), ratio=float(np.median(ratio)),
                         ratio_min=float(ratio.min()), ratio_max=float(ratio.max())))
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", nargs="*", type=int, default=[20_000],
                   help="cases of throughput.py to run, by D (default 20000)")
    p.add_argument("--variants", nargs="+", default=["", "posterior_rank=16"],
                   help='MVAEConfig overrides per variant, e.g. "" "posterior_rank=16"; the '
                        "first is the baseline of the ratios")
    p.add_argument("--steps", type=int, default=8, help="steps per block (default 8)")
    p.add_argument("--rounds", type=int, default=8, help="rounds of blocks (default 8)")
    a = p.parse_args(argv)
    variants = {v or "default": parse_variant(v) for v in a.variants}
    rows = []
    for case in select_cases(CASES, a.features):
        for row in run(variants, case, a.steps, a.rounds):
            row["D"] = case[0]
            rows.append(row)
            print(f"D={case[0]:>7} {row['variant']:<32} {row['ms_per_step']:8.2f} ms/step "
                  f"(min {row['ms_min']:.2f})  ratio {row['ratio']:.3f} "
                  f"({row['ratio_min']:.3f}-{row['ratio_max']:.3f})", flush=True)
    return rows


if __name__ == "__main__":
    main()
