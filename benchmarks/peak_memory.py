"""Peak resident memory of a default fit of each shipped table, one fresh process per fit.

    python benchmarks/peak_memory.py [-o benchmarks/results/peak_memory/peak_memory.tsv]

Each child process reads the table, fits ``MultinomialVAE(random_state=0, threads=1)`` with every
other setting at its default and reports ``ru_maxrss`` (Linux: KiB) and the CPU seconds of the
fit; the table's own reading is included, as a user's run includes it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

try:
    from benchmarks.shipped import TABLES, TsvRows
except ImportError:  # run as a script: benchmarks/ itself is on the path
    from shipped import TABLES, TsvRows

CHILD = r"""
import json, resource, sys, time, warnings
import mvae
adata = mvae.read_counts(sys.argv[1])
t = time.process_time()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model = mvae.MultinomialVAE(random_state=0, threads=1).fit(adata)
print(json.dumps(dict(peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      fit_cpu_s=time.process_time() - t, epochs=int(model.history_.epoch.max()),
                      n=adata.n_obs, d=adata.n_vars)))
"""


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output")
    p.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    args = p.parse_args(argv)
    rows, out_file = [], TsvRows(args.output, "{:.1f}")
    for name in args.tables:
        out = subprocess.run([sys.executable, "-c", CHILD, TABLES[name]], capture_output=True,
                             text=True, check=True)
        row = {"table": name, **json.loads(out.stdout.strip().splitlines()[-1])}
        rows.append(row)
        out_file.append(row)
        print(json.dumps(row), flush=True)
    out_file.close()
    return rows


if __name__ == "__main__":
    main()
