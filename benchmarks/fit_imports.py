"""Which mvae modules ``mvae fit`` loads on an in-memory table, and how many lines they hold.

Runs ``mvae fit`` on a small table in a fresh interpreter started in the current directory (so
the checkout there is the one measured) and, when the command has finished, lists every loaded
module of the package with its line count (``wc -l`` of its file).

    python benchmarks/fit_imports.py [TABLE]      # default: data/moving_pictures_16s_table.biom
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import atexit, json, sys
def report():
    mods = dict()
    for name, m in list(sys.modules.items()):
        f = getattr(m, "__file__", None)
        if name.startswith("mvae") and f:
            with open(f, encoding="utf-8") as fh:
                mods[name] = sum(1 for _ in fh)
    sys.__stdout__.write("\nMODULES " + json.dumps(mods) + "\n")
atexit.register(report)
from mvae.cli import main
sys.argv = ["mvae", "fit", {table!r}, "-o", {out!r}, "--epochs", "2", "-q"]
main()
"""


def main(argv=None) -> dict:
    table = (argv or sys.argv[1:] or [str(Path.cwd() / "data/moving_pictures_16s_table.biom")])[0]
    with tempfile.TemporaryDirectory() as tmp:
        code = CHILD.format(table=table, out=str(Path(tmp) / "fit"))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=Path.cwd())
    line = [x for x in out.stdout.splitlines() if x.startswith("MODULES ")]
    if not line:
        raise SystemExit(out.stderr[-3000:])
    mods = json.loads(line[0][len("MODULES "):])
    for name in sorted(mods):
        print(f"{mods[name]:6d}  {name}")
    print(f"{sum(mods.values()):6d}  lines in {len(mods)} modules")
    return mods


if __name__ == "__main__":
    main()
