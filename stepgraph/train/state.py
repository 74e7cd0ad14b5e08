"""The progress of one training loop, read like STEP's ``state`` dict."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["LoopState"]


@dataclasses.dataclass
class LoopState:
    """Progress of one training loop, handed to every epoch.

    It reads like STEP's ``state`` dict, so STEP-style epoch functions keep
    working: ``state["epoch"]`` is STEP's text ``"e/E"``, ``state["epoch_val"]``
    the epoch number, ``state["last_epoch"]`` whether this is the last epoch,
    ``state["is_init"]`` whether it is the first one of the call,
    ``state["start_time"]`` when the loop started (``time.time()``), and
    :meth:`~stepgraph.Trainer.format_loss_dict` writes ``state["loss_dict"]`` and
    ``state["validation"]`` (text). stepgraph's own code reads the attributes
    (``state.epoch`` is an ``int``). Other keys are kept in :attr:`extra`.

    Attributes
    ----------
    epoch : int
        The current epoch, from 1.
    epochs : int
        Epochs asked for.
    step : int
        Optimizer steps taken in this run.
    tbar : stepgraph.progress.Progress or None
        The epoch progress (a bar on a terminal, plain lines in a log).
    writer : object or None
        Receives ``add_scalar(tag, value, step)`` for every loss.
    writer_every : str
        ``"epoch"``: epoch means against the epoch number; ``"step"``: every
        training step's losses against the global step (as STEP's writer), and
        validation at the end of each epoch against the same step.
    callbacks : stepgraph.train.callbacks.CallbackList or None
        The callbacks of this fit (:meth:`~stepgraph.Trainer.fit_callbacks`).
    metrics : dict
        The last ended epoch's metrics, as the callbacks received them.
    start_time : float
        ``time.time()`` when the loop started.
    extra : dict
        Anything else an epoch function stores in the state.
    """

    epoch: int = 0
    epochs: int = 0
    step: int = 0
    tbar: Any = None
    writer: Any = None
    writer_every: str = "epoch"
    callbacks: Any = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    start_time: float = dataclasses.field(default_factory=time.time)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    # STEP's derived keys, read-only
    _STEP_KEYS = {
        "epoch": lambda s: f"{s.epoch}/{s.epochs}",
        "epoch_val": lambda s: s.epoch,
        "last_epoch": lambda s: s.epoch == s.epochs,
        "is_init": lambda s: s.epoch <= s.first_epoch,
    }
    first_epoch: int = 1

    def _is_field(self, key: str) -> bool:
        return key in _FIELDS

    def __getitem__(self, key: str) -> Any:
        if key in self._STEP_KEYS:
            return self._STEP_KEYS[key](self)
        return getattr(self, key) if self._is_field(key) else self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in ("epoch", "epoch_val"):  # an int, or STEP's "e/E" text
            self.epoch = int(str(value).split("/")[0])
        elif key in self._STEP_KEYS:
            raise KeyError(f"state[{key!r}] is derived from the epoch and cannot be set")
        elif self._is_field(key):
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key in self._STEP_KEYS or self._is_field(key)) or key in self.extra

    def __iter__(self) -> Iterator[str]:
        yield from dict.fromkeys((*_FIELDS, *self._STEP_KEYS, *self.extra))

    def get(self, key: str, default: Any = None) -> Any:
        """``state[key]``, or ``default`` when there is no such key."""
        return self[key] if key in self else default

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``state[key]``, first set to ``default`` when missing."""
        if key not in self:
            self[key] = default
        return self[key]

    def keys(self) -> list[str]:
        """Every key, fields first."""
        return list(self)


_FIELDS = tuple(f.name for f in dataclasses.fields(LoopState) if f.name not in ("extra", "first_epoch"))
