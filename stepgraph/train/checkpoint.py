"""Atomic checkpoint files.

A checkpoint is written to a temporary file in the target's folder, flushed and
fsync-ed, then renamed over the target with :func:`os.replace`. A process that
dies mid-write therefore leaves the previous checkpoint intact and readable.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_save", "load_checkpoint"]


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """Save ``obj`` with :func:`torch.save` to ``path`` atomically.

    Parameters
    ----------
    obj
        Anything :func:`torch.save` accepts (a ``state_dict``, a dict of states).
    path
        Destination file. Its folder is created when missing.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on folders
        pass
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint written by :func:`atomic_save`.

    Parameters
    ----------
    path
        The checkpoint file.
    map_location
        Passed to :func:`torch.load`; ``"cpu"`` by default.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file is not a readable torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint path={str(path)!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for a corrupt file
        raise ValueError(
            f"checkpoint path={str(path)!r} is not a readable torch checkpoint "
            f"({type(err).__name__}: {err})"
        ) from err
