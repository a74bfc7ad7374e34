"""Crash-safe files: atomic writes and the one place torch's checkpoint format is read.

A checkpoint is written to a temporary file in the same directory, flushed and fsync-ed, renamed over
the old one with ``os.replace`` (atomic on POSIX), and the directory is fsync-ed so the rename itself
survives a power cut. A reader therefore sees either the previous checkpoint or the new one, never a
half-written file. The temporary file is named after its target (``.ck.pt.mvae-tmp-XXXX``), and
:func:`sweep_temporary` removes a killed writer's stale ones for that target only.

Checkpoints hold tensors, numbers and strings only, and are read exclusively through
:func:`load_checkpoint`, which passes ``weights_only=True`` to ``torch.load`` explicitly: with that
flag torch refuses any pickle that would construct arbitrary objects, so a planted file cannot run
code, even when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set in the environment. There is no
fallback to a full unpickle.
"""

from __future__ import annotations

import io
from pathlib import Path

from ..errors import ModelFileError
from ..files import TMP_PREFIX, atomic_write_bytes, sweep_temporary  # noqa: F401 (re-exported)

__all__ = ["atomic_write_bytes", "save_checkpoint", "load_checkpoint", "check_checkpoint_target",
           "sweep_temporary", "write_model_files", "read_model_files", "json_default",
           "TMP_PREFIX"]

def write_model_files(path, tensors: dict, config: dict) -> None:
    """A saved model: ``model.safetensors`` (tensors, tagged with ``config["format"]``) and
    ``config.json`` in directory ``path``, each written atomically. No pickle."""
    import json

    from safetensors.torch import save


    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / "model.safetensors",
                       save(tensors, metadata={"format": config["format"]}))
    atomic_write_bytes(path / "config.json",
                       json.dumps(config, indent=1, default=json_default).encode("utf-8"))


def read_model_files(path, *, formats, schema_version: int, what: str = "model",
                     wrong_format=None) -> tuple[dict, dict]:
    """``(config, tensors)`` of a model written by :func:`write_model_files`, checked up to the
    point where the caller rebuilds the model.

    Every failure is a one-line :class:`~mvae.errors.ModelFileError` naming the file: a missing
    file, invalid JSON, a ``format`` not in ``formats``, a ``schema_version`` newer than
    ``schema_version``, or an unreadable safetensors file. ``wrong_format(fmt)`` gives the message
    for a foreign format (after ``"<config.json path>: "``); ``what`` names the model in the
    not-found message.
    """
    import json

    import torch  # noqa: F401 - safetensors.torch needs it
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg_path, st_path = path / "config.json", path / "model.safetensors"
    for p in (cfg_path, st_path):
        _check_readable(p, what)
    try:
        size = cfg_path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ModelFileError(f"{cfg_path}: {size} bytes, more than any mvae config.json "
                                 f"({MAX_CONFIG_BYTES} at most); not a model file mvae wrote")
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{cfg_path}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise ModelFileError(f"{cfg_path}: JSON nested too deeply to be an mvae config") from None
    except OSError as exc:
        raise ModelFileError(f"{cfg_path}: cannot be read ({exc.strerror or exc})") from exc
    fmt = config.get("format") if isinstance(config, dict) else None
    if not isinstance(fmt, str) or fmt not in formats:
        detail = wrong_format(fmt) if wrong_format else f"format {fmt!r} is not an mvae {what}"
        raise ModelFileError(f"{cfg_path}: {detail}")
    version = config.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > schema_version:
        raise ModelFileError(f"{cfg_path}: schema_version {version!r} is newer than this mvae "
                             f"understands ({schema_version}); upgrade mvae")
    try:
        with open(st_path, "rb") as fh:  # an unreadable file is named as such, not "not found"
            fh.read(1)
        tensors = load_file(str(st_path))
    except OSError as exc:
        raise ModelFileError(f"{st_path}: cannot be read ({exc.strerror or exc})") from exc
    except (SafetensorError, ValueError) as exc:
        raise ModelFileError(f"{st_path}: not a readable safetensors file ({exc})") from exc
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelFileError(f"{st_path}: tensor {name!r} holds NaN or infinite values; the "
                                 "model file is damaged (refit, or use an intact copy)")
    return config, tensors


#: No config.json mvae writes comes near this (feature ids and history of a 10⁶-feature model).
MAX_CONFIG_BYTES = 2**30


def _check_readable(p: Path, what: str) -> None:
    """A ModelFileError naming the real reason a model file cannot be opened."""
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ModelFileError(f"{p}: not found; a saved {what} directory holds config.json "
                             "and model.safetensors") from None
    except OSError as exc:  # a symlink loop, a name too long, a permission on the directory
        raise ModelFileError(f"{p}: cannot be opened ({exc.strerror or exc})") from exc
    import stat

    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(f"{p}: not a regular file; a saved {what} directory holds "
                             "config.json and model.safetensors")


def save_checkpoint(path, state: dict) -> None:
    """Serialise ``state`` (tensors, numbers, strings, lists and dicts of them) atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, refusing anything but plain data.

    Raises
    ------
    ModelFileError
        The file is missing, empty, truncated, not a torch checkpoint, or holds anything other than
        tensors and plain containers (e.g. a pickle that would run code).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: checkpoint is empty (0 bytes)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, OSError...
        # torch's own message may advise retrying with weights_only=False, which would run any
        # code a planted file holds: it is never repeated to the user
        raise ModelFileError(
            f"{path}: not a checkpoint mvae wrote, or a truncated or damaged one "
            f"({type(exc).__name__}); mvae does not read it. Move it away (or choose another "
            "output) and start again without resuming.") from exc
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: checkpoint does not hold a state dictionary")
    return state


def check_checkpoint_target(path, *, format: str) -> None:
    """Refuse to write checkpoints to ``path`` when a file there is not an mvae checkpoint.

    A checkpoint path is overwritten at every save; a user's file given by mistake (``checkpoint=
    "table.tsv"``) must never be replaced. A missing file is fine; an existing one must be a
    torch checkpoint whose ``"format"`` is ``format``.

    Raises
    ------
    ModelFileError
        ``path`` is a directory, or an existing file that is not an mvae checkpoint.
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory; give the checkpoint a file name")
    try:
        state = load_checkpoint(path)
    except ModelFileError:
        state = None
    if not isinstance(state, dict) or state.get("format") != format:
        raise ModelFileError(
            f"{path}: exists and is not an mvae checkpoint, so mvae will not overwrite it "
            "with one. Give another checkpoint path.")




def json_default(o):
    """``json.dumps(default=...)`` for numpy scalars and arrays and paths."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")
