"""Mutation fuzzing of every table reader (run by hand, outside CI).

Starts from valid files of each format (BIOM HDF5, BIOM JSON, BIOM classic TSV, h5ad, TSV, CSV,
gzipped BIOM JSON), applies random byte flips, truncations, insertions and block duplications
(seeded), and feeds each result to ``mvae.read_counts`` in a worker process. Anything other than
success or ``mvae.errors.InputError`` is an *escape*; an input that takes longer than the timeout is
a *hang* (the worker is restarted). Prints a summary table per format.

    python tests/fuzz/fuzz_readers.py --inputs 300 --seed 0
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing as mp
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

FORMATS = {"biom-hdf5": ".biom", "biom-json": ".biom", "biom-tsv": ".biom", "h5ad": ".h5ad",
           "tsv": ".tsv", "csv": ".csv", "biom-json-gz": ".biom.gz"}


def seeds(directory: Path) -> dict[str, bytes]:
    """Valid files of every format, as bytes."""
    import anndata
    import biom
    import pandas as pd
    import scipy.sparse as sp

    from mvae.io.tables import write_biom

    rng = np.random.default_rng(0)
    X = rng.poisson(rng.gamma(0.5, 10.0, size=(12, 9)))
    samples = [f"S{i}" for i in range(12)]
    features = [f"OTU_{j}" for j in range(9)]
    table = biom.Table(X.T.astype(float), features, samples)
    out = {}
    p = directory / "seed.biom"
    write_biom(p, sp.csr_matrix(X), samples, features)
    out["biom-hdf5"] = p.read_bytes()
    out["biom-json"] = table.to_json("fuzz").encode()
    out["biom-tsv"] = table.to_tsv().encode()
    out["biom-json-gz"] = gzip.compress(out["biom-json"])
    ad = anndata.AnnData(sp.csr_matrix(X.astype(float)))
    ad.obs_names, ad.var_names = samples, features
    ad.write_h5ad(directory / "seed.h5ad")
    out["h5ad"] = (directory / "seed.h5ad").read_bytes()
    df = pd.DataFrame(X, index=pd.Index(samples, name="sample_id"), columns=features)
    out["tsv"] = df.to_csv(sep="\t").encode()
    out["csv"] = df.to_csv().encode()
    return out


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 6))):
        op = rng.integers(5)
        if not b:
            b = bytearray(rng.bytes(int(rng.integers(1, 64))))
            continue
        i = int(rng.integers(len(b)))
        if op == 0:  # flip bits
            b[i] ^= 1 << int(rng.integers(8))
        elif op == 1:  # truncate
            del b[i:]
        elif op == 2:  # insert random bytes
            b[i:i] = rng.bytes(int(rng.integers(1, 32)))
        elif op == 3:  # overwrite a block with zeros
            b[i:i + int(rng.integers(1, 256))] = b"\x00" * min(256, len(b) - i)
        else:  # duplicate a block
            j = int(rng.integers(i, len(b) + 1))
            b[j:j] = b[i:j][:512]
    return bytes(b)


def _read(path: str, kw: dict) -> str:
    import warnings

    import mvae
    from mvae.errors import InputError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mvae.read_counts(path, **kw)
        return "ok"
    except InputError:
        return "input-error"
    except Exception as exc:  # an escape: report its type and message
        return f"ESCAPE {type(exc).__name__}: {str(exc)[:200]}"


def main(config: dict) -> dict:
    rng = np.random.default_rng(config.get("seed", 0))
    n_inputs = int(config.get("inputs", 200))
    timeout = float(config.get("timeout", 20))
    results: dict[str, Counter] = {}
    escapes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = seeds(tmp)
        ctx = mp.get_context("spawn")
        pool = ctx.Pool(1)
        t0 = time.time()
        for fmt, data in base.items():
            counter = results.setdefault(fmt, Counter())
            kw = {"orientation": "samples-as-rows"} if fmt in ("tsv", "csv") else {}
            for i in range(n_inputs):
                path = tmp / f"in{i}{FORMATS[fmt]}"
                path.write_bytes(mutate(data, rng))
                try:
                    outcome = pool.apply_async(_read, (str(path), kw)).get(timeout=timeout)
                except mp.TimeoutError:
                    outcome = "HANG"
                    keep = tmp / f"hang-{fmt}-{i}{FORMATS[fmt]}"
                    path.replace(keep)
                    pool.terminate()
                    pool = ctx.Pool(1)
                key = outcome.split(":")[0]
                counter[key] += 1
                if key.startswith("ESCAPE") or key == "HANG":
                    escapes.append(f"{fmt} #{i}: {outcome}")
        pool.terminate()
    print(f"{'format':<14}{'inputs':>8}{'ok':>6}{'InputError':>12}{'escapes':>9}{'hangs':>7}")
    for fmt, c in results.items():
        esc = sum(v for k, v in c.items() if k.startswith("ESCAPE"))
        print(f"{fmt:<14}{sum(c.values()):>8}{c['ok']:>6}{c['input-error']:>12}{esc:>9}"
              f"{c['HANG']:>7}")
    for line in escapes[:50]:
        print(line)
    print(f"{time.time() - t0:.0f} s")
    return {"results": {k: dict(v) for k, v in results.items()}, "escapes": escapes}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inputs", type=int, default=200, help="inputs per format")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds before an input is a hang")
    a = p.parse_args()
    main(vars(a))
