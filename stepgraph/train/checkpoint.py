"""Atomic checkpoint files, loaded safely.

A checkpoint is written to a temporary file in the target's folder, flushed and
fsync-ed, then renamed over the target with :func:`os.replace`. A process that
dies mid-write, or a write that fails (a full disk), therefore leaves the
previous checkpoint intact and readable.

Files are read with ``torch.load(..., weights_only=True)``: tensors, numbers,
strings, lists, tuples and dicts only, so loading a file from a stranger cannot
run code. A file that holds other objects is refused unless the caller trusts
it explicitly (``trusted=True`` or :func:`trusted_checkpoints`).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import pickle
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_save", "load_checkpoint", "trusted_checkpoints"]

_TRUSTED = contextvars.ContextVar("stepgraph_trusted_checkpoints", default=False)


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

    Raises
    ------
    OSError
        When the file cannot be written (a full disk, a read-only folder). The
        message names the path and says that the previous file at ``path``, if
        any, is left intact; the temporary file is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _write_error(err, path) from err
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _write_error(err, path) from err
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


def _write_error(err: OSError, path: Path) -> OSError:
    """The error of a failed checkpoint write, in words (the errno is kept)."""
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied"}.get(
        err.errno, err.strerror or type(err).__name__)
    kept = "the previous file is left intact" if path.is_file() else "no file was written"
    return OSError(err.errno, f"could not write checkpoint {str(path)!r}: {what} ({kept})")


@contextlib.contextmanager
def trusted_checkpoints(enabled: bool = True) -> Iterator[None]:
    """Within this block, :func:`load_checkpoint` loads files as ``trusted=True``.

    For code that loads checkpoints on your behalf (``resume_from=`` of the
    :class:`~stepgraph.Trainer`, the CLI's ``--trust-checkpoint``). Use it
    only for files from a source you trust: a trusted file is unpickled in full
    and can run code.

    Parameters
    ----------
    enabled
        ``False`` makes the block a no-op (handy to pass a flag through).

    Examples
    --------
    >>> with trusted_checkpoints():                                   # doctest: +SKIP
    ...     trainer.train_batch(epochs=10, loaders=loaders, resume_from="old/last.pt")
    """
    token = _TRUSTED.set(bool(enabled) or _TRUSTED.get())
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", trusted: bool = False) -> Any:
    """Load a checkpoint written by :func:`atomic_save` (or any ``torch.save`` file).

    Parameters
    ----------
    path
        The checkpoint file.
    map_location
        Passed to :func:`torch.load`; ``"cpu"`` by default.
    trusted
        ``False`` (the default) loads with ``weights_only=True``: tensors,
        numbers, strings, lists, tuples and dicts only, so the file cannot run
        code. ``True`` unpickles any object: only for files from a source you
        trust (an older or foreign checkpoint), since a pickle can run code.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file is not a readable torch checkpoint, or holds objects
        other than tensors and plain types and ``trusted`` is not set (the
        message names the first such object and how to load the file anyway).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint path={str(path)!r} does not exist")
    trusted = trusted or _TRUSTED.get()
    try:
        return torch.load(path, map_location=map_location, weights_only=not trusted)
    except Exception as err:  # torch raises many types for a corrupt file
        text = str(err)
        refused = re.search(r"Unsupported global|allowlist|unrecognized function|Unsupported class", text)
        if not trusted and isinstance(err, pickle.UnpicklingError) and refused:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" (such as {found.group(1)})" if found else ""
            raise ValueError(
                f"refused checkpoint path={str(path)!r}: loading it could run code, as it holds objects "
                f"other than tensors and plain types{what}. If you trust its source, load it with "
                "trusted=True (load_checkpoint(path, trusted=True); CLI: --trust-checkpoint)"
            ) from None
        detail = " ".join(text.split())[:300]
        raise ValueError(
            f"checkpoint path={str(path)!r} is not a readable torch checkpoint "
            f"({type(err).__name__}: {detail})"
        ) from err
