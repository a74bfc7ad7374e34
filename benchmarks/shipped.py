"""What several benchmark scripts share: the real tables shipped in ``data/`` and a TSV that
takes one row at a time (written and flushed as each fit finishes, so a long run can be
watched and an interrupted one keeps its rows)."""

from __future__ import annotations

from pathlib import Path

#: The shipped count tables, by short name (paths from the repository root).
TABLES = {
    "moving_pictures": "data/moving_pictures_16s_table.biom",
    "wirbel": "data/wirbel_crc_shotgun_motus_table.biom",
    "ecam": "data/ecam_16s_table.biom",
    "pbmc": "data/pbmc68k_reduced_counts.h5ad",
}


class TsvRows:
    """Rows (dicts with the same keys) appended to a TSV; the header comes from the first.

    ``float_format`` formats floats (e.g. ``"{:.4g}"``); ``path=None`` writes nothing.
    """

    def __init__(self, path, float_format: str = "{}"):
        self.path, self.float_format, self._fh = path, float_format, None

    def append(self, row: dict) -> None:
        if self.path is None:
            return
        if self._fh is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w")
            self._fh.write("\t".join(row) + "\n")
        self._fh.write("\t".join(self.float_format.format(v) if isinstance(v, float) else str(v)
                                 for v in row.values()) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
