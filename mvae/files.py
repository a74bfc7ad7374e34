"""Files written so that an interruption never leaves half of one: a temporary sibling, written
and flushed, then renamed onto the target (``os.replace``), the directory synced after. Used for
checkpoints and model files (:mod:`mvae.training.checkpoint`) and for the single output files of
the command line (:mod:`mvae.io.outputs`)."""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path

from mvae.errors import InputError

__all__ = ["atomic_write_bytes", "atomic_path", "sweep_temporary", "umask", "fsync_dir",
           "TMP_PREFIX"]

TMP_PREFIX = ".mvae-tmp-"


def _temporary_prefix(path: Path) -> str:
    """The name of ``path``'s temporary files up to mkstemp's random part."""
    return f".{path.name}{TMP_PREFIX}"


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where the platform has directory fds)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, ``os.replace``, directory fsync).

    If anything fails, the previous file at ``path`` is left untouched and no temporary file remains.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sweep_temporary(path) -> int:
    """Remove the temporary files an interrupted :func:`atomic_write_bytes` of ``path`` left
    beside it; return how many.

    Only ``path``'s own: the directory may be shared (``mvae fit`` puts OUTDIR.checkpoint.pt
    beside OUTDIR), and another process writing another file there at this moment must keep its
    temporary file (sweeping every ``.mvae-tmp-*`` file made a second fit starting in the same
    directory delete the first one's checkpoint before its rename).
    """
    path = Path(path)
    if not path.parent.is_dir():
        return 0
    removed = 0
    for p in path.parent.glob(glob.escape(_temporary_prefix(path)) + "*"):
        try:
            p.unlink()
            removed += 1
        except OSError:
            pass
    return removed


class atomic_path:
    """Context manager giving a temporary path beside ``target``, renamed onto it on success.

    For single output files (``mvae transform -o FILE``): a failed or interrupted write leaves
    any previous ``target`` intact and no partial file under its name.
    """

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        shown = str(self.target)
        if self.target.is_dir():
            raise InputError(f"{shown}: is a directory; give a file name to write.")
        parent = self.target.absolute().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=parent)
            os.close(fd)
        except OSError as exc:
            raise InputError(
                f"{shown}: cannot write here ({exc.strerror or exc}: {exc.filename or parent}). "
                "Choose a location you can write to."
            ) from exc
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        tmp, self.tmp = self.tmp, None
        if exc_type is not None:
            tmp.unlink(missing_ok=True)
            return
        try:
            os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private
            os.replace(tmp, self.target)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise InputError(f"{self.target}: cannot write the file ({err}).") from err
