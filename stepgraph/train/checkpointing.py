"""The one owner of checkpoint files: their names, atomic writes and safe loads.

:class:`ModelCheckpoint` is the Trainer's checkpoint component and a
callback (Lightning's ``ModelCheckpoint`` is the model): it names the files of a
``checkpoint_dir`` (:data:`BEST_CHECKPOINT`, :data:`LAST_CHECKPOINT`,
:data:`INTERRUPTED_CHECKPOINT`), decides when each is written, ranks the epochs by a monitored value (min or
max, top k), and keeps the best weights (:class:`BestWeights`), in ``best.pt`` or, without a
``checkpoint_dir``, in memory. :class:`TrainingCheckpoint` is the whole
training state in one file; :func:`save_weights` writes a model's weights to
a path a user named (``EarlyStopping(path=...)``). Every write in stepgraph
goes through :func:`atomic_save`, and only this module calls it.

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
import copy
import errno
import functools
import math
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import torch

from stepgraph.train.callbacks import Callback

__all__ = [
    "BEST_CHECKPOINT",
    "LAST_CHECKPOINT",
    "INTERRUPTED_CHECKPOINT",
    "atomic_write",
    "atomic_save",
    "save_weights",
    "load_checkpoint",
    "trusted_checkpoints",
    "BestWeights",
    "TrainingCheckpoint",
    "ModelCheckpoint",
    "Checkpointer",
]

#: File of the best weights (a model ``state_dict``) in a ``checkpoint_dir``.
BEST_CHECKPOINT = "best.pt"
#: File of the whole training state, written every ``checkpoint_every`` epochs and at the end.
LAST_CHECKPOINT = "last.pt"
#: File of the whole training state at a ``KeyboardInterrupt``.
INTERRUPTED_CHECKPOINT = "interrupted.pt"

_TRUSTED = contextvars.ContextVar("stepgraph_trusted_checkpoints", default=False)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], what: str = "file") -> Path | None:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file in the same
    folder, which is fsync-ed and renamed over ``path`` (:func:`os.replace`).

    A process killed at any moment leaves either the previous file at ``path``
    or the complete new one, never a partial file under that name. The rename
    replaces a symbolic link at ``path`` itself, never the file it points to.
    Every file stepgraph writes (checkpoints through :func:`atomic_save`, the
    pipeline's outputs, ``stepgraph graph --output``) goes through here.

    Parameters
    ----------
    path
        Destination file. Its folder is created when missing.
    write
        Called with the temporary file's path (it keeps ``path``'s suffix, so
        writers that pick a format from it, such as matplotlib, still work);
        returning ``False`` means nothing was written: the temporary file is
        removed and ``path`` is left alone.
    what
        What the file is, for the error message (``"checkpoint"``).

    Returns
    -------
    pathlib.Path or None
        The path written; ``None`` when ``write`` returned ``False``.

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
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise _write_error(err, path, what) from err
    try:
        if write(Path(tmp)) is False:
            os.unlink(tmp)
            return None
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # as an ordinary open() would create it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        interrupt = _interrupt_behind(err)
        if interrupt is not None and interrupt is not err:
            raise interrupt from None
        if isinstance(err, OSError):
            raise _write_error(err, path, what) from err
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


def _interrupt_behind(err: BaseException) -> KeyboardInterrupt | None:
    """The ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM as the CLI raises it) that ``err`` was
    raised while handling, or ``err`` itself when it is one; ``None`` when there is none.

    An interrupt that lands inside :func:`torch.save` makes its zip writer's cleanup fail
    with a ``RuntimeError`` ("unexpected pos"): the interrupt is what happened, and the
    training loop must see it to write ``interrupted.pt``.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__context__
    return None


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """Save ``obj`` with :func:`torch.save` to ``path`` atomically (see :func:`atomic_write`).

    Parameters
    ----------
    obj
        Anything :func:`torch.save` accepts (a ``state_dict``, a dict of states).
    path
        Destination file. Its folder is created when missing.

    Returns
    -------
    pathlib.Path
        The path written. A failed write raises :func:`atomic_write`'s ``OSError``.
    """

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    # atomic_write returns None only when write returns False
    return cast(Path, atomic_write(path, write, what="checkpoint"))


def _write_error(err: OSError, path: Path, kind: str = "checkpoint") -> OSError:
    """The error of a failed write, in words (the errno is kept)."""
    reasons: dict[int | None, str] = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }
    what = reasons.get(err.errno, err.strerror or type(err).__name__)
    kept = "the previous file is left intact" if path.is_file() else "no file was written"
    return OSError(err.errno, f"could not write {kind} {str(path)!r}: {what} ({kept})")


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
    _check_unpacked_size(path)
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
            f"checkpoint path={str(path)!r} is not a readable torch checkpoint ({type(err).__name__}: {detail})"
        ) from err


def _check_unpacked_size(path: Path) -> None:
    """Refuse a checkpoint whose archive would unpack to far more than the file's
    size (the bound of :func:`~stepgraph.data.safe_read.check_inflation`), before
    :func:`torch.load` allocates it; ``torch.save`` stores its records uncompressed.
    """
    import zipfile

    from stepgraph.data.safe_read import check_inflation

    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):  # not a zip archive: torch.load says what it is
        return
    check_inflation(
        declared,
        path.stat().st_size,
        f"checkpoint path={str(path)!r}",
        hint="torch.save stores a checkpoint uncompressed",
    )


def save_weights(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model``'s ``state_dict`` to ``path`` atomically (see :func:`atomic_save`)."""
    return atomic_save(model.state_dict(), path)


# --------------------------------------------------------------- training state
def _cpu_copy(state: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else copy.deepcopy(v)
        for k, v in state.items()
    }


class BestWeights:
    r"""The weights of the best check so far, in a file or in memory.

    A value is better when it is lower than the best seen (higher with
    ``mode="max"``); any finite value is better than none. With a ``path`` the weights are written there
    atomically; without one a copy of the ``state_dict`` is kept on the CPU
    and nothing is written. Only a process that ``write``\ s keeps them; in a
    data-parallel run that is rank 0.

    Parameters
    ----------
    path
        The file of the best weights (``checkpoint_dir / "best.pt"``); ``None``
        keeps them in memory.
    write
        Whether this process keeps the weights.
    mode
        ``"min"`` (lower is better) or ``"max"``.

    Attributes
    ----------
    best_score : float or None
        The best value seen.
    checkpoint_written : bool
        Whether ``path`` holds the weights of :attr:`best_score`.
    """

    def __init__(self, path: str | os.PathLike | None = None, write: bool = True, mode: str = "min"):
        self.path = None if path is None else Path(path)
        self.write = write
        self.mode = mode
        self.best_score: float | None = None
        self.checkpoint_written = False
        self._weights: dict[str, Any] | None = None

    @property
    def has_weights(self) -> bool:
        """Whether the weights of :attr:`best_score` are kept (in the file or in memory)."""
        return self.checkpoint_written or self._weights is not None

    def update(self, value: float, model: torch.nn.Module) -> bool:
        """Record one check; keep ``model``'s weights when ``value`` is the best yet."""
        if not math.isfinite(value):  # NaN or infinite: never best
            return False
        if self.best_score is not None and not (
            value < self.best_score if self.mode == "min" else value > self.best_score
        ):
            return False
        self.best_score = float(value)
        self._keep(model.state_dict())
        return True

    def _keep(self, state: dict[str, Any]) -> None:
        if not self.write:
            return
        if self.path is None:
            self._weights = _cpu_copy(state)
        else:
            atomic_save(state, self.path)
            self.checkpoint_written = True

    def restore(self, model: torch.nn.Module, map_location: Any = "cpu") -> None:
        """Load the best weights into ``model``."""
        # called when has_weights: not in memory, they were written to self.path
        weights = self._weights if self._weights is not None else load_checkpoint(cast(Path, self.path), map_location)
        try:
            model.load_state_dict(weights)
        except (RuntimeError, TypeError, AttributeError) as err:  # another model's weights, or not weights
            where = (
                "the best weights kept in memory"
                if self._weights is not None
                else f"the best weights in {str(self.path)!r}"
            )
            detail = " ".join(str(err).split())[:300]
            raise ValueError(f"{where} do not fit this model ({type(err).__name__}: {detail})") from None

    def state_dict(self) -> dict[str, Any]:
        """Best value, file and whether it was written; the weights themselves when
        they are kept in memory (tensors and plain types only).
        """
        return {
            "best_score": self.best_score,
            "path": None if self.path is None else str(self.path),
            "checkpoint_written": self.checkpoint_written,
            "weights": self._weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state. Best weights saved in another file (a resumed run in a
        new folder) or in memory are copied to :attr:`path`, or into memory.
        """
        self.best_score = state["best_score"]
        old = Path(state["path"]) if state.get("path") else None
        weights, written = state.get("weights"), bool(state["checkpoint_written"])
        self.checkpoint_written, self._weights = False, None
        if written and old is not None and self.path is not None and old.absolute() == self.path.absolute():
            self.checkpoint_written = old.is_file()
        elif written and old is not None and old.is_file() and self.write:
            weights = load_checkpoint(old)
        if weights is not None:
            self._keep(weights)


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
    identity
        What makes a run the same run (plain values by name: the input's shape
        and a hash of its names, the graph, split, seed, batch size, model and
        optimiser settings...). Saved with the state; :meth:`load` refuses a
        file whose saved identity differs, naming the setting, the saved value
        and the new one, before anything is restored.

    Notes
    -----
    The file holds tensors, numbers, strings, lists and dicts only, so it
    loads with ``torch.load(..., weights_only=True)``. The best weights' file
    is stored relative to the folder of the state's file, so a run resumes the
    same from any working directory.
    """

    FORMAT = "stepgraph-training-state"
    VERSION = 2
    #: Components every state must hold when this run has them.
    REQUIRED = ("model", "optimizer", "early_stopping", "best", "trainer")
    #: Components a state written by an earlier stepgraph may lack (restored as new).
    OPTIONAL = ("callbacks",)

    def __init__(
        self,
        components: dict[str, Any],
        strategy,
        hints: dict[str, str] | None = None,
        identity: dict[str, Any] | None = None,
    ):
        self.components = components
        self.strategy = strategy
        self.hints = hints or {}
        self.identity = identity

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
        payload = {
            "format": self.FORMAT,
            "version": self.VERSION,
            "progress": dict(progress),
            "rng": rng,
            "identity": None if self.identity is None else dict(self.identity),
        }
        for name, component in self.components.items():
            payload[name] = None if component is None else component.state_dict()
        best = payload.get("best")
        if isinstance(best, dict) and best.get("path"):  # relative to this file's folder, not to the cwd
            best = payload["best"] = dict(best)
            best["path"] = os.path.relpath(os.path.abspath(best["path"]), os.path.abspath(Path(path).parent))
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
        source = f"resume_from={str(path)!r}"
        payload = load_checkpoint(path, map_location=map_location)
        if not isinstance(payload, dict) or payload.get("format") != self.FORMAT:
            raise ValueError(
                f"{source} is not a stepgraph training state "
                "(expected last.pt or interrupted.pt written by the Trainer)"
            )
        if payload.get("version") != self.VERSION:
            raise ValueError(
                f"{source} is a training state of format version {payload.get('version')}; "
                f"this stepgraph reads version {self.VERSION}"
            )
        # the whole state is checked before anything is restored
        self._check_identity(payload.get("identity"), source)
        progress = self._check_progress(payload, source)
        rng = self._check_rng(payload.get("rng"), source)
        for name, component in self.components.items():
            saved = payload.get(name)
            missing = name not in payload and name not in self.OPTIONAL
            if component is not None and (missing or (saved is None and name in self.REQUIRED)):
                raise ValueError(
                    f"{source} holds no {name} state: it is not a whole training state (a damaged or edited file)"
                )
            if saved is not None and component is None:
                raise ValueError(f"{source} holds a {name} state but this run has none; {self.hints.get(name, '')}")
            check = getattr(component, "check_state_dict", None)
            if saved is not None and callable(check):  # refused before anything is restored
                try:
                    check(saved)
                except ValueError as err:
                    raise ValueError(f"{source}: {err}") from None
        for name, component in self.components.items():
            saved = payload.get(name)
            if saved is None:
                continue
            if (
                name == "best"
                and isinstance(saved, dict)
                and saved.get("path")
                and not os.path.isabs(str(saved["path"]))
            ):
                saved = {**saved, "path": str(Path(path).parent / str(saved["path"]))}
            try:
                component.load_state_dict(saved)
            except Exception as err:  # a state of another set-up, or ill-typed values
                detail = " ".join(str(err).split())[:300]
                raise ValueError(
                    f"{source}: the saved {name} state does not fit ({type(err).__name__}: "
                    f"{detail}); {self.hints.get(name, '')}".rstrip("; ")
                ) from None
        from stepgraph.train.rng import set_rng_state

        set_rng_state(rng)
        return progress

    def _check_identity(self, saved, source: str) -> None:
        """Refuse a state written by another run (see ``identity``)."""
        if self.identity is None or saved is None:
            return
        if not isinstance(saved, dict):
            raise ValueError(f"{source}: its run identity is not a dict of settings (a damaged or edited file)")
        for key, value in self.identity.items():
            before = saved.get(key, "not recorded")
            if before != value:
                raise ValueError(
                    f"{source} belongs to another run: {key} was {before!r} when it was saved, "
                    f"now {value!r}; resume with the settings of that run (only the number of "
                    "epochs may grow), or start a new run in another folder"
                )

    def _check_progress(self, payload: dict, source: str) -> dict[str, Any]:
        progress: Any = payload.get("progress")  # anything the file holds, checked here
        ok = (
            isinstance(progress, dict)
            and all(
                isinstance(progress.get(k), int) and not isinstance(progress.get(k), bool) and progress[k] >= 0
                for k in ("epoch", "step")
            )
            and isinstance(progress.get("stopped"), bool)
        )
        record = payload.get("trainer")
        history = record.get("history") if isinstance(record, dict) else None
        if ok and isinstance(history, list) and progress["epoch"] > len(history):
            ok = False
        if not ok:
            raise ValueError(
                f"{source}: its progress {progress!r} is out of range (completed epochs and steps "
                "are counts no larger than the saved history; a damaged or edited file)"
            )
        return progress

    def _check_rng(self, rng, source: str) -> dict[str, Any]:
        """This rank's saved RNG state, tried on the generators and put back (nothing changes)."""
        from stepgraph.train.rng import get_rng_state, set_rng_state

        if not isinstance(rng, list | tuple) or not rng:
            raise ValueError(f"{source}: its RNG state is missing or empty (a damaged or edited file)")
        state = rng[self.strategy.rank] if len(rng) == self.strategy.world_size else rng[0]
        current = get_rng_state()
        try:
            set_rng_state(state)
        except Exception as err:
            detail = " ".join(str(err).split())[:200]
            raise ValueError(
                f"{source}: its RNG state is not valid ({type(err).__name__}: {detail}; a damaged or edited file)"
            ) from None
        finally:
            set_rng_state(current)
        return state


class ModelCheckpoint(Callback):
    """The one owner of the Trainer's checkpoint files (Lightning's ``ModelCheckpoint``).

    With a ``dirpath`` it writes, there:

    - :data:`BEST_CHECKPOINT`, the weights of the best epoch by ``monitor``;
    - with ``save_top_k > 1``, the weights of each of the ``save_top_k`` best
      epochs as ``epoch=NNNN.pt`` (a file leaving the top k is removed);
    - :data:`LAST_CHECKPOINT`, the whole training state, every ``every`` epochs
      and at the end of a fit (``save_last``);
    - :data:`INTERRUPTED_CHECKPOINT` at a ``KeyboardInterrupt``.

    Without a ``dirpath`` it writes nothing: the best weights are kept in
    memory and no training state is saved (a user can still save one to a path
    of their choosing with :meth:`save`). Every write is atomic. Give one to the
    Trainer's ``callbacks`` to replace its default (the lowest ``val_total``,
    in the Trainer's ``checkpoint_dir``).

    Parameters
    ----------
    dirpath
        The ``checkpoint_dir``; ``None`` writes no file.
    every
        Write :data:`LAST_CHECKPOINT` every this many epochs (0: never).
    write
        Whether this process writes (rank 0 in a data-parallel run).
    monitor
        The metric that ranks epochs: any ``val_`` key of the history (a loss or
        a metric the model logs, e.g. ``"val_accuracy"``), a training key, or
        ``"val_total"``, the sum of the validation losses. An epoch without
        the key (a fit without validation) is not ranked.
    mode
        ``"min"`` (lower is better) or ``"max"``.
    save_top_k
        How many best epochs keep their weights in files (at least 1; more than
        one needs a ``dirpath``).
    save_last
        Write :data:`LAST_CHECKPOINT` (the state ``resume_from`` reads).

    Attributes
    ----------
    best : BestWeights
        The best weights of the current fit.
    top_k : list[dict]
        The ranked epochs with files: ``{"epoch", "score", "path"}`` (the file's
        name in ``dirpath``), best first.

    Examples
    --------
    >>> trainer = Trainer(model, callbacks=[ModelCheckpoint("ckpt", monitor="val_accuracy",
    ...                                                     mode="max", save_top_k=3)])  # doctest: +SKIP
    """

    def __init__(
        self,
        dirpath: str | os.PathLike | None = None,
        every: int = 1,
        write: bool = True,
        monitor: str = "val_total",
        mode: str = "min",
        save_top_k: int = 1,
        save_last: bool = True,
    ):
        from stepgraph._validation import check_choice, check_int

        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"monitor must be the name of a logged value, got monitor={monitor!r}")
        if dirpath is not None and not isinstance(dirpath, (str, os.PathLike)):
            raise TypeError(f"dirpath must be a folder path (str or Path) or None, got dirpath={dirpath!r}")
        self.mode = check_choice(mode, "mode", ("min", "max"))
        self.save_top_k = cast(int, check_int(save_top_k, "save_top_k", minimum=1))
        if self.save_top_k > 1 and dirpath is None:
            raise ValueError(f"save_top_k={save_top_k} keeps files, so it needs a dirpath (checkpoint_dir)")
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.every = cast(int, check_int(every, "every", minimum=0))
        self.write, self.monitor, self.save_last = write, monitor, bool(save_last)
        self.new_fit()

    def file(self, name: str) -> Path | None:
        """``dirpath / name``; ``None`` without a ``dirpath``."""
        return None if self.dirpath is None else self.dirpath / name

    best_path = property(lambda self: self.file(BEST_CHECKPOINT), doc="The best weights' file, or ``None``.")
    last_path = property(lambda self: self.file(LAST_CHECKPOINT), doc="The last training state's file, or ``None``.")
    interrupted_path = property(
        lambda self: self.file(INTERRUPTED_CHECKPOINT), doc="The interrupted training state's file, or ``None``."
    )

    def new_fit(self) -> BestWeights:
        """Forget the best weights and the top k of an earlier fit."""
        self.best = BestWeights(self.best_path, write=self.write, mode=self.mode)
        self.top_k: list[dict[str, Any]] = []
        self._ranked_epoch: int | None = None
        self.best_epoch: int | None = None
        return self.best

    def on_epoch_end(self, trainer, metrics) -> None:
        """Rank the epoch by :attr:`monitor`: keep the best weights and the top-k files."""
        value = metrics.get(self.monitor)
        if value is None:
            if any(k.startswith("val_") for k in metrics) and self.monitor != "val_total":
                raise KeyError(
                    f"ModelCheckpoint monitor {self.monitor!r} is not among the logged values {sorted(metrics)}"
                )
            return
        self.rank(float(value), trainer.net, int(metrics.get("epoch", len(trainer.history))))

    def rank(self, value: float, model: torch.nn.Module, epoch: int) -> bool:
        """Record ``epoch``'s ``value`` once (a second call for the same epoch is ignored);
        return whether it is the best so far.
        """
        if epoch == self._ranked_epoch:
            return False
        self._ranked_epoch = epoch
        return self.update(value, model, epoch)

    def update(self, value: float, model: torch.nn.Module, epoch: int) -> bool:
        """Record ``epoch``'s ``value``; return whether it is the best so far."""
        improved = self.best.update(value, model)
        if improved:
            self.best_epoch = epoch
        if self.save_top_k > 1 and math.isfinite(value) and self.write:
            ranked = sorted(
                [*self.top_k, {"epoch": epoch, "score": value, "path": None}],
                key=lambda r: r["score"] if self.mode == "min" else -r["score"],
            )
            kept, dropped = ranked[: self.save_top_k], ranked[self.save_top_k :]
            for row in kept:
                if row["path"] is None:
                    name = row["path"] = f"epoch={epoch:04d}.pt"
                    atomic_save(model.state_dict(), cast(Path, self.file(name)))
            for row in dropped:
                if row["path"] is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(cast(Path, self.file(row["path"])))
            self.top_k = kept
        return improved

    def save(
        self, state: TrainingCheckpoint, path: str | os.PathLike, progress: dict[str, Any], collective: bool = True
    ) -> Path:
        """Write the training state to ``path`` (see :meth:`TrainingCheckpoint.save`)."""
        return state.save(path, progress, collective=collective)

    def epoch_end(self, state: TrainingCheckpoint, progress: dict[str, Any], final: bool) -> Path | None:
        """Write :data:`LAST_CHECKPOINT` when one is due (every :attr:`every` epochs, and at the
        ``final`` epoch of a fit); return its path, or ``None`` when nothing was written.
        """
        due = self.save_last and self.every and (progress["epoch"] % self.every == 0 or final)
        if self.dirpath is None or not due:
            return None
        return self.save(state, cast(Path, self.last_path), progress)

    def interrupted(self, state: TrainingCheckpoint, progress: dict[str, Any]) -> Path | None:
        """Write :data:`INTERRUPTED_CHECKPOINT` (this rank's RNG state only: ranks are not in
        step after an interrupt); ``None`` without a ``dirpath``.
        """
        if self.dirpath is None:
            return None
        return self.save(state, cast(Path, self.interrupted_path), progress, collective=False)

    def state_dict(self) -> dict[str, Any]:
        """The top-k ranking (the best weights are the training state's ``best`` component)."""
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "top_k": [dict(r) for r in self.top_k],
            "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state) -> None:
        """Restore the ranking of the files still in :attr:`dirpath`."""
        if state.get("monitor", self.monitor) != self.monitor or state.get("mode", self.mode) != self.mode:
            raise ValueError(
                f"the saved run ranked checkpoints by {state.get('monitor')!r} ({state.get('mode')}), "
                f"this one by {self.monitor!r} ({self.mode})"
            )
        self.top_k = [
            dict(r) for r in state.get("top_k", []) if r.get("path") and cast(Path, self.file(r["path"])).is_file()
        ]
        self.best_epoch = state.get("best_epoch")


#: The earlier name of :class:`ModelCheckpoint`.
Checkpointer = ModelCheckpoint
