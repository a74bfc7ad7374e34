"""Reading speed of a streamed ``.h5ad`` table (:class:`mvae.io.streaming.StreamingCounts`).

Writes a synthetic count table (default 20,000 samples x 2,000 features, 10% non-zero, CSR ``X``)
with anndata, then times, in this process:

- ``scan``: one full pass (:meth:`StreamingCounts.scan`: read, check, sum), rows per second;
- ``epoch``: one training epoch's reads over a 90% subset of the rows (the rows a fit keeps after
  its random validation split, so every chunk is several runs of consecutive rows), minibatches
  of 128 in :meth:`StreamingCounts.epoch_order`, rows per second.

Each is repeated ``--repeats`` times and the best (least disturbed) time is reported, with the
CPU seconds of that run. ``--reader`` swaps how the rows of a chunk are read from the file:

- ``mvae``: mvae's own reader (one h5py read of ``indices`` and ``data`` per run of consecutive
  rows);
- ``anndata-slices``: anndata's on-disk sparse dataset (``anndata.io.sparse_dataset``), one
  ``X[first:stop]`` per run of consecutive rows;
- ``anndata-mask``: the same dataset, one read per chunk with a boolean mask over all the file's
  rows (anndata then reads run by run, or row by row when the runs are short).

    python benchmarks/h5ad_stream.py
    python benchmarks/h5ad_stream.py --chunk-mb 16 --reader anndata-mask
    python benchmarks/h5ad_stream.py --samples 2000 --repeats 1   # seconds
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def write_table(path: Path, n: int, D: int, density: float, seed: int = 0) -> None:
    """A CSR ``X`` of Poisson counts with ``density`` non-zeros per row, written by anndata."""
    import anndata
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    k = max(1, int(round(density * D)))
    cols = np.concatenate([np.sort(rng.choice(D, size=k, replace=False)) for _ in range(n)])
    data = (rng.poisson(5.0, size=n * k) + 1).astype(np.float32)
    X = sp.csr_matrix((data, cols, np.arange(0, n * k + 1, k)), shape=(n, D))
    anndata.AnnData(X=X, obs=pd.DataFrame(index=[f"S{i}" for i in range(n)]),
                    var=pd.DataFrame(index=[f"F{j}" for j in range(D)])).write_h5ad(path)


def timed(fn, repeats: int) -> tuple[float, float]:
    """(best wall seconds, CPU seconds of that run) of ``fn()`` over ``repeats`` calls."""
    best = None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        run = (time.perf_counter() - w0, time.process_time() - c0)
        best = run if best is None or run[0] < best[0] else best
    return best


def use_anndata_reader(mask: bool) -> None:
    """Make :class:`mvae.io.streaming.StreamingCounts` read ``.h5ad`` rows through anndata."""
    import numpy as np
    import scipy.sparse as sp
    from anndata.io import sparse_dataset

    from mvae import streaming

    def read_rows(self, rows):
        if not hasattr(self, "_anndata"):
            self._anndata = sparse_dataset(self.file[self.where], should_cache_indptr=False)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        breaks = np.flatnonzero(np.diff(srt) != 1) + 1
        starts, stops = np.r_[0, breaks], np.r_[breaks, len(srt)]
        if mask and len(starts) > 1:
            select = np.zeros(self.n_rows, dtype=bool)
            select[srt] = True
            M = self._anndata[select]
        else:
            M = sp.vstack([self._anndata[int(srt[a]):int(srt[b - 1]) + 1]
                           for a, b in zip(starts, stops)], format="csr")
        M = sp.csr_matrix(M)
        return M if np.array_equal(order, np.arange(len(rows))) else M[np.argsort(order)]

    streaming._Source.read_rows = read_rows


def main(n: int, D: int, density: float, repeats: int, chunk_mb: int,
         reader: str = "mvae") -> dict:
    import numpy as np
    import torch

    import mvae
    from mvae.io.streaming import StreamingCounts

    if reader != "mvae":
        use_anndata_reader(mask=reader == "anndata-mask")

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.h5ad"
        write_table(path, n, D, density)
        budget = chunk_mb * 2**20
        with StreamingCounts(path, max_bytes=budget) as whole:
            scan_wall, scan_cpu = timed(whole.scan, repeats)
            total = float(whole.scan().depths.sum())  # the same for every reader
            rows = np.sort(np.random.default_rng(1).permutation(n)[: int(0.9 * n)])
            train = whole.subset(rows)

            def epoch():
                order = train.epoch_order(torch.Generator().manual_seed(0))
                for s in range(0, len(order) - 127, 128):
                    train.batch(order[s:s + 128])

            epoch_wall, epoch_cpu = timed(epoch, repeats)
            chunks = whole.n_chunks
    out = dict(mvae=str(Path(mvae.__file__).parent), reader=reader, samples=n, features=D, density=density,
               chunks=chunks, repeats=repeats, total_count=total,
               scan_rows_per_s=n / scan_wall, scan_wall_s=scan_wall, scan_cpu_s=scan_cpu,
               epoch_rows_per_s=len(rows) / epoch_wall, epoch_wall_s=epoch_wall,
               epoch_cpu_s=epoch_cpu, threads=1)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=20_000)
    p.add_argument("--features", type=int, default=2_000)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk-mb", type=int, default=256)
    p.add_argument("--reader", choices=["mvae", "anndata-slices", "anndata-mask"],
                   default="mvae")
    a = p.parse_args()
    main(a.samples, a.features, a.density, a.repeats, a.chunk_mb, a.reader)
