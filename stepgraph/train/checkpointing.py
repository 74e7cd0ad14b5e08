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

__all__ = ["atomic_save", "load_checkpoint", "trusted_checkpoints", "BestWeights", "TrainingCheckpoint"]

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


# --------------------------------------------------------------- training state
class BestWeights:
    """Keeps the weights of the best check so far in one file.

    A value is better when it is lower than the best seen (any finite value is
    better than none). Only a process that ``write``\\ s saves the file; in a
    data-parallel run that is rank 0.

    Parameters
    ----------
    path
        The file of the best weights (``checkpoint_dir / "best.pt"``).
    write
        Whether this process writes the file.

    Attributes
    ----------
    best_score : float or None
        The best value seen.
    checkpoint_written : bool
        Whether ``path`` holds the weights of :attr:`best_score`.
    """

    def __init__(self, path: str | os.PathLike, write: bool = True):
        self.path = Path(path)
        self.write = write
        self.best_score: float | None = None
        self.checkpoint_written = False

    def update(self, value: float, model: torch.nn.Module) -> bool:
        """Record one check; save ``model``'s weights when ``value`` is the best yet."""
        if not (value == value and abs(value) != float("inf")):  # NaN or infinite: never best
            return False
        if self.best_score is not None and not value < self.best_score:
            return False
        self.best_score = float(value)
        if self.write:
            atomic_save(model.state_dict(), self.path)
            self.checkpoint_written = True
        return True

    def restore(self, model: torch.nn.Module, map_location: Any = "cpu") -> None:
        """Load the best weights into ``model``."""
        model.load_state_dict(load_checkpoint(self.path, map_location=map_location))

    def state_dict(self) -> dict[str, Any]:
        """Best value, file and whether it was written (plain types only)."""
        return {"best_score": self.best_score, "path": str(self.path),
                "checkpoint_written": self.checkpoint_written}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state; the saved best weights are copied into :attr:`path`
        when they were written elsewhere (a resumed run in a new folder)."""
        self.best_score = state["best_score"]
        old = Path(state["path"]) if state.get("path") else None
        written = bool(state["checkpoint_written"])
        if written and old != self.path and self.write:
            if old is not None and old.is_file():
                atomic_save(load_checkpoint(old), self.path)
            else:
                written = False
        self.checkpoint_written = written


class TrainingCheckpoint:
    """The whole training state in one file: every component's ``state_dict()``.

    Parameters
    ----------
    components
        Name to object with ``state_dict()`` / ``load_state_dict()`` (the
        model, the optimizer, the LR scheduler, the early-stopping group, the
        best-weights tracker, the trainer's run record, the training path's
        generators); ``None`` for a component this run does not have.
    strategy
        The parallel strategy: RNG states are gathered from every rank and only
        the main process writes.
    hints
        Per component, what to do when its saved state does not fit, added to
        the error message.

    Notes
    -----
    The file holds tensors, numbers, strings, lists and dicts only, so it
    loads with ``torch.load(..., weights_only=True)``.
    """

    FORMAT = "stepgraph-training-state"
    VERSION = 2

    def __init__(self, components: dict[str, Any], strategy, hints: dict[str, str] | None = None):
        self.components = components
        self.strategy = strategy
        self.hints = hints or {}

    def save(self, path: str | os.PathLike, progress: dict[str, Any], collective: bool = True) -> Path:
        """Write every component's state and ``progress`` to ``path``, atomically.

        Parameters
        ----------
        path
            Destination file.
        progress
            Plain values: completed epochs, step, whether the run had stopped.
        collective
            Gather every rank's RNG state (every rank must call); ``False``
            saves this rank's only (after Ctrl-C, when ranks are not in step).
        """
        from stepgraph.train.rng import get_rng_state

        rng = self.strategy.gather(get_rng_state()) if collective else [get_rng_state()]
        if not self.strategy.is_main:
            return Path(path)
        payload = {"format": self.FORMAT, "version": self.VERSION, "progress": dict(progress),
                   "rng": rng}
        for name, component in self.components.items():
            payload[name] = None if component is None else component.state_dict()
        return atomic_save(payload, path)

    def load(self, path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
        """Restore every component from ``path``; return the saved ``progress``.

        Raises
        ------
        ValueError
            When the file is not a training state, or a component's saved
            state does not fit the one given (another model, optimizer set-up
            or scheduler).
        """
        from stepgraph.train.rng import set_rng_state

        source = f"resume_from={str(path)!r}"
        payload = load_checkpoint(path, map_location=map_location)
        if not isinstance(payload, dict) or payload.get("format") != self.FORMAT:
            raise ValueError(f"{source} is not a stepgraph training state "
                             "(expected last.pt or interrupted.pt written by the Trainer)")
        if payload.get("version") != self.VERSION:
            raise ValueError(f"{source} is a training state of format version {payload.get('version')}; "
                             f"this stepgraph reads version {self.VERSION}")
        for name, component in self.components.items():
            saved = payload.get(name)
            hint = self.hints.get(name, "")
            if saved is None:
                continue
            if component is None:
                raise ValueError(f"{source} holds a {name} state but this run has none; {hint}")
            try:
                component.load_state_dict(saved)
            except (RuntimeError, ValueError, KeyError) as err:
                detail = " ".join(str(err).split())[:300]
                raise ValueError(f"{source}: the saved {name} state does not fit ({detail}); {hint}") from None
        rng = payload["rng"]
        set_rng_state(rng[self.strategy.rank] if len(rng) == self.strategy.world_size else rng[0])
        return payload["progress"]
