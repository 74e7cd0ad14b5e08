"""Callbacks: code that runs at fixed points of a fit, without editing the loop (Lightning's model).

A :class:`Callback` overrides any of the hooks below; each receives the
:class:`~stepgraph.Trainer` (its ``model``, ``optimizer``, ``history``,
``loop_state`` with the epoch and step, and :meth:`~stepgraph.Trainer.request_stop`):

=========================  ==============================================================
hook                       when
=========================  ==============================================================
``on_fit_start``           a training call starts (after a ``resume_from`` state is loaded)
``on_train_batch_end``     after each optimizer step, with the batch's losses (detached tensors)
``on_validation_end``      after the epoch's validation, with the ``val_`` values
``on_epoch_end``           after each epoch, with its metrics (the history row, plus
                           ``total`` and ``val_total``: the sums of the training and
                           validation losses)
``on_exception``           the fit raised (``KeyboardInterrupt`` included)
``on_fit_end``             the fit ended normally (after the best weights are restored)
=========================  ==============================================================

Each callback has a :meth:`~Callback.state_dict`; the Trainer saves the states in
``last.pt`` and restores them on ``resume_from``, so a resumed run continues
where the callback left off. Callbacks run on every process of a data-parallel
run; those that write files (loggers, checkpoints) write on rank 0 only.

The engine's own end-of-epoch work is made of callbacks too:
:class:`~stepgraph.train.checkpointing.ModelCheckpoint` (best, top-k and last
files), :class:`~stepgraph.train.early_stopping.EarlyStopping` given a
``monitor``, :class:`LRSchedulerStep`, and the loggers of
:mod:`stepgraph.train.loggers` (:class:`~stepgraph.train.loggers.ScalarWriter` is the
``writer=`` argument of a training call).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["Callback", "CallbackList", "LRSchedulerStep"]

HOOKS = (
    "on_fit_start",
    "on_train_batch_end",
    "on_validation_end",
    "on_epoch_end",
    "on_exception",
    "on_fit_end",
)


class Callback:
    """Base class of callbacks: every hook does nothing; override the ones you need.

    Examples
    --------
    >>> class StopAtAccuracy(Callback):
    ...     def on_epoch_end(self, trainer, metrics):
    ...         if metrics.get("val_accuracy", 0.0) > 0.95:
    ...             trainer.request_stop("validation accuracy above 0.95")
    """

    def on_fit_start(self, trainer) -> None:
        """A training call starts (a resumed one after its state was loaded).

        Parameters
        ----------
        trainer
            The :class:`~stepgraph.Trainer`.
        """

    def on_train_batch_end(self, trainer, losses: Mapping[str, torch.Tensor], step: int) -> None:
        """One optimizer step was taken.

        Parameters
        ----------
        trainer
            The :class:`~stepgraph.Trainer`.
        losses
            The batch's losses as the model returned them, tensors detached
            (reading a value with ``float()`` waits for the device).
        step
            The batch's index in the epoch (``trainer.loop_state.step`` counts
            optimizer steps over the run).
        """

    def on_validation_end(self, trainer, metrics: Mapping[str, float]) -> None:
        """The epoch's validation ended.

        Parameters
        ----------
        trainer
            The :class:`~stepgraph.Trainer`.
        metrics
            The epoch's ``val_`` values (empty without a validation).
        """

    def on_epoch_end(self, trainer, metrics: Mapping[str, float]) -> None:
        """An epoch ended.

        Parameters
        ----------
        trainer
            The :class:`~stepgraph.Trainer`.
        metrics
            The epoch's history row, plus ``total`` and (with a validation)
            ``val_total``: the sums of the training and validation losses.
        """

    def on_exception(self, trainer, exception: BaseException) -> None:
        """The fit raised (it is raised again after every callback ran).

        Parameters
        ----------
        trainer
            The :class:`~stepgraph.Trainer`.
        exception
            What was raised (``KeyboardInterrupt`` included).
        """

    def on_fit_end(self, trainer) -> None:
        """The fit ended without an exception (after the best weights were restored).

        Parameters
        ----------
        trainer
            The :class:`~stepgraph.Trainer`.
        """

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue (plain types and tensors); empty by default."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state returned by :meth:`state_dict`."""

    @property
    def state_key(self) -> str:
        """The key of this callback's state in ``last.pt`` (the class name by default)."""
        return type(self).__qualname__


class CallbackList:
    """The callbacks of one fit, called in order; also the ``callbacks`` component of ``last.pt``.

    Parameters
    ----------
    callbacks
        :class:`Callback` instances (anything with the hooks it needs; missing
        hooks are skipped).

    Raises
    ------
    TypeError
        When an item is a class rather than an instance, or has none of the hooks.
    """

    def __init__(self, callbacks: Iterable[Any] = ()):
        if callbacks is None or isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
            raise TypeError(f"callbacks must be a list of Callback objects, got callbacks={callbacks!r}")
        self.callbacks = list(callbacks)
        for i, callback in enumerate(self.callbacks):
            if isinstance(callback, type):
                raise TypeError(f"callbacks[{i}] is the class {callback.__name__}; pass an instance")
            if not any(callable(getattr(callback, hook, None)) for hook in HOOKS):
                raise TypeError(
                    f"callbacks[{i}] of type {type(callback).__name__} has none of the hooks {', '.join(HOOKS)}"
                )

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)

    def wants(self, hook: str) -> bool:
        """Whether any callback implements ``hook`` (the base class's no-op does not count)."""
        for callback in self.callbacks:
            if not isinstance(callback, Callback):  # any object with the hook: it counts
                if callable(getattr(callback, hook, None)):
                    return True
                continue
            if getattr(type(callback), hook, None) is not getattr(Callback, hook) or hook in vars(callback):
                return True
        return False

    def call(self, hook: str, *args) -> None:
        """Call ``hook(*args)`` on every callback that has it, in order."""
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(*args)

    def _keys(self) -> list[str]:
        keys: list[str] = []
        seen: dict[str, int] = {}
        for callback in self.callbacks:
            key = getattr(callback, "state_key", type(callback).__qualname__)
            seen[key] = seen.get(key, 0) + 1
            keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
        return keys

    def state_dict(self) -> dict[str, Any]:
        """``{state_key: state}`` of every callback with a non-empty state (a repeated key gets
        ``#2``, ...); a callback without state (a writer, the scheduler's step) is not recorded, so
        a run resumes with or without it.
        """
        states = {}
        for key, callback in zip(self._keys(), self.callbacks):
            state = callback.state_dict() if callable(getattr(callback, "state_dict", None)) else None
            if state:
                states[key] = state
        return states

    def check_state_dict(self, state: Mapping[str, Any]) -> None:
        """Refuse a saved state that holds the state of a callback this fit does not have.

        Raises
        ------
        ValueError
            Naming the missing callbacks.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"the saved callbacks' state is not a dict (got {type(state).__name__})")
        unknown = sorted(set(state) - set(self._keys()))
        if unknown:
            raise ValueError(
                f"the saved run had callbacks {unknown} that this call does not; pass the same callbacks to resume"
            )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Give each callback its saved state; a callback without one starts afresh
        (see :meth:`check_state_dict` for what is refused).
        """
        self.check_state_dict(state)
        keys = self._keys()
        for key, callback in zip(keys, self.callbacks):
            if key in state and callable(getattr(callback, "load_state_dict", None)):
                callback.load_state_dict(state[key])


class LRSchedulerStep(Callback):
    """Step the Trainer's ``lr_scheduler`` once per epoch (the Trainer adds this one itself;
    a scheduler set with ``interval="step"`` is stepped by the optimizer step instead).

    A ``ReduceLROnPlateau`` is stepped with ``val_total``, or ``total`` (the
    training losses' sum) in a fit without validation. A ``OneCycleLR`` stepped
    per epoch whose ``total_steps`` exceeds the fit's epochs never reaches its
    end: a warning says so at the start of the fit.
    """

    def on_fit_start(self, trainer):
        scheduler = getattr(trainer, "lr_scheduler", None)
        epochs = getattr(getattr(trainer, "loop_state", None), "epochs", None)
        if (
            isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
            and getattr(trainer, "lr_scheduler_interval", "epoch") == "epoch"
            and epochs is not None
            and scheduler.total_steps > epochs
        ):
            warnings.warn(
                f"the OneCycleLR scheduler is sized for {scheduler.total_steps} steps but is stepped once "
                f"per epoch for {epochs} epochs, so it never reaches its peak and end; pass "
                "interval='step' to set_lr_scheduler to step it after every optimizer step",
                UserWarning,
                stacklevel=2,
            )

    def on_epoch_end(self, trainer, metrics):
        scheduler = trainer.lr_scheduler
        if scheduler is None or getattr(trainer, "lr_scheduler_interval", "epoch") == "step":
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            # the validation total whenever the epoch validated (NaN counts as a bad epoch), else the training one
            scheduler.step(metrics["val_total"] if "val_total" in metrics else metrics.get("total", math.nan))
        else:
            scheduler.step()
