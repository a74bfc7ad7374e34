"""Reading a Newick tree: mvae's own reader against scikit-bio's ``TreeNode.read``.

The question (keep our reader or use the maintained one?) is decided by deep and large trees:
for each tree, both readers turn the text into the ``(names, parent)`` preorder lists that
``TreeBasis.from_tree`` works from (for scikit-bio: ``TreeNode.read(..., convert_underscores=False)``
and then a walk over the nodes), and ``TreeBasis.from_tree`` is timed end to end with each.
Time is the process's CPU time (``time.process_time``: the machine this was written on is
shared, and CPU time is what other processes disturb least), the minimum over ``runs``
repetitions, with the cyclic garbage collector's work included; peak memory is the
largest Python allocation while reading (``tracemalloc``), in a separate repetition. Trees: a
caterpillar (every internal node has a tip as its first child; depth = tips - 1) and a balanced
tree.

Run from the repository root::

    python benchmarks/newick_reader.py                 # 10,000 and 100,000 tips, 3 runs
    python benchmarks/newick_reader.py --tips 100000   # one size
    python benchmarks/newick_reader.py --smoke    # 1,000 tips, 1 run
"""

from __future__ import annotations

import argparse
import gc
import io
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


def _readers():
    from skbio import TreeNode

    from mvae.compositions import _parse_newick, _tree_from_skbio

    def ours(text):
        return _parse_newick(text, "the benchmark string")

    def skbio(text):
        tree = TreeNode.read(io.StringIO(text), format="newick", convert_underscores=False)
        return _tree_from_skbio(tree)

    return {"mvae": ours, "scikit-bio": skbio}


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
    """One row per tree and reader: tips, parse seconds, peak MiB, ``from_tree`` seconds."""
    import mvae.compositions as compositions

    runs = int(config.get("runs", 3))
    sizes = config.get("sizes", [10_000, 100_000])
    readers = _readers()
    rows = []
    for shape, build in (("caterpillar", caterpillar), ("balanced", balanced)):
        for n in sizes:
            text = build(n)
            ids = [f"t{i}" for i in range(n)]
            reference = readers["mvae"](text)
            for name, read in readers.items():
                assert read(text) == reference, (shape, n, name)  # same tree either way
                original = compositions._read_tree
                compositions._read_tree = read  # from_tree end to end with this reader
                try:
                    basis_s = _best_time(lambda: compositions.TreeBasis.from_tree(text, ids), runs)
                finally:
                    compositions._read_tree = original
                rows.append({"tree": shape, "tips": n, "reader": name,
                             "parse_s": _best_time(lambda: read(text), runs),
                             "parse_peak_mib": _peak_mib(lambda: read(text)),
                             "from_tree_s": basis_s})
    return rows


def _print(rows: list[dict]) -> None:
    print("| tree | tips | reader | parse (s) | parse peak (MiB) | TreeBasis.from_tree (s) |")
    print("|---|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tree']} | {r['tips']:,} | {r['reader']} | {r['parse_s']:.3f} | "
              f"{r['parse_peak_mib']:.0f} | {r['from_tree_s']:.3f} |")


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
