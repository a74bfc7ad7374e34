"""How long `mvae --help` and `import mvae` take: the command line must answer at once.

Each command is run ``runs`` times in a fresh process; wall time is measured with
``time.perf_counter`` around the child and CPU time (user + system) from
``resource.getrusage(RUSAGE_CHILDREN)``. Medians are reported, with the Python interpreter's own
start-up (``python -c pass``) as the floor.

Run from the repository root::

    python benchmarks/cli_startup.py            # 10 runs each
    python benchmarks/cli_startup.py --runs 3   # quicker
    python benchmarks/cli_startup.py --smoke    # 2 runs each, for CI
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time


def _commands() -> dict[str, list[str]]:
    mvae = shutil.which("mvae", path=os.path.dirname(sys.executable) + os.pathsep
                        + os.environ.get("PATH", ""))
    help_cmd = [mvae, "--help"] if mvae else [sys.executable, "-m", "mvae", "--help"]
    return {
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
        "python -c 'import mvae'": [sys.executable, "-c", "import mvae"],
        "mvae --help": help_cmd,
        "python -m mvae --help": [sys.executable, "-m", "mvae", "--help"],
        "mvae fit --help": (help_cmd[:-1] + ["fit", "--help"]),
    }


def _time_once(cmd: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(config: dict) -> list[dict]:
    """Time each command; returns one row per command (name, runs, median/min/max wall, CPU)."""
    runs = int(config.get("runs", 10))
    rows = []
    for name, cmd in _commands().items():
        _time_once(cmd)  # warm the file cache; not counted
        walls, cpus = zip(*(_time_once(cmd) for _ in range(runs)))
        rows.append({"command": name, "runs": runs, "median_wall_s": statistics.median(walls),
                     "min_wall_s": min(walls), "max_wall_s": max(walls),
                     "median_cpu_s": statistics.median(cpus)})
    return rows


def _print(rows: list[dict]) -> None:
    print(f"python {sys.version.split()[0]} on {os.cpu_count()} CPUs; "
          f"{rows[0]['runs']} runs each, medians")
    print(f"{'command':<28}{'wall s':>9}{'cpu s':>9}{'min wall':>10}{'max wall':>10}")
    for r in rows:
        print(f"{r['command']:<28}{r['median_wall_s']:>9.3f}{r['median_cpu_s']:>9.3f}"
              f"{r['min_wall_s']:>10.3f}{r['max_wall_s']:>10.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="2 runs each")
    args = parser.parse_args()
    _print(main({"runs": 2 if args.smoke else args.runs}))
