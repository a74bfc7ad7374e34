"""What reading a Newick tree costs: ``TreeBasis.from_tree`` and the reader under it.

mvae reads Newick text with scikit-bio (``skbio.TreeNode.read`` with
``convert_underscores=False``, then a walk over the nodes into the ``(names, parent)`` preorder
lists that ``TreeBasis.from_tree`` works from). For each tree this times that reading step
(``mvae.maths.trees._parse_newick``) and ``TreeBasis.from_tree`` end to end. Time is the
process's CPU time (``time.process_time``: the machine this was written on is shared, and CPU
time is what other processes disturb least), the minimum over ``runs`` repetitions, with the
cyclic garbage collector's work included; peak memory is the largest Python allocation while
reading (``tracemalloc``), in a separate repetition. Trees: a caterpillar (every internal node
has a tip as one child; depth = tips - 1) and a balanced tree.

The comparison with the reader mvae had before (its own regex tokenizer), measured with this
script at the commit that still had both, is in ``benchmarks/results/maintained/README.md``.

Run from the repository root::

    python benchmarks/newick_reader.py                 # 10,000 and 100,000 tips, 3 runs
    python benchmarks/newick_reader.py --tips 100000   # one size
    python benchmarks/newick_reader.py --smoke         # 1,000 tips, 1 run
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc


def caterpillar(n: int) -> str:
    """``(...((t0,t1),t2)...,t{n-1});`` built without recursion."""
    return "(" * (n - 1) + "t0" + "".join(f",t{i})" for i in range(1, n)) + ";"


def balanced(n: int) -> str:
    """Pairs merged level by level, built without recursion."""
    level = [f"t{i}" for i in range(n)]
    while len(level) > 1:
        merged = [f"({level[i]},{level[i + 1]})" for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            merged.append(level[-1])
        level = merged
    return level[0] + ";"


def _best_time(fn, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def _peak_mib(fn) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def main(config: dict) -> list[dict]:
    """One row per tree: tips, reading seconds, peak MiB, ``from_tree`` seconds."""
    from mvae.maths.trees import TreeBasis, _parse_newick

    runs = int(config.get("runs", 3))
    sizes = config.get("sizes", [10_000, 100_000])
    rows = []
    for shape, build in (("caterpillar", caterpillar), ("balanced", balanced)):
        for n in sizes:
            text = build(n)
            ids = [f"t{i}" for i in range(n)]
            names, _ = _parse_newick(text, "the benchmark string")
            assert sorted(x for x in names if x) == sorted(ids), (shape, n)
            rows.append({"tree": shape, "tips": n,
                         "parse_s": _best_time(lambda: _parse_newick(text, "-"), runs),
                         "parse_peak_mib": _peak_mib(lambda: _parse_newick(text, "-")),
                         "from_tree_s": _best_time(lambda: TreeBasis.from_tree(text, ids), runs)})
    return rows


def _print(rows: list[dict]) -> None:
    print("| tree | tips | read (CPU s) | read peak (MiB) | TreeBasis.from_tree (CPU s) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tree']} | {r['tips']:,} | {r['parse_s']:.3f} | {r['parse_peak_mib']:.0f} | "
              f"{r['from_tree_s']:.3f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tips", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--smoke", action="store_true", help="1,000 tips, one run")
    args = parser.parse_args()
    cfg = {"runs": 1, "sizes": [1_000]} if args.smoke else {"runs": args.runs,
                                                              "sizes": args.tips}
    _print(main(cfg))
    sys.exit(0)
