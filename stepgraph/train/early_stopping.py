"""Early stopping on one monitored validation quantity."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch

from stepgraph.train.checkpoint import atomic_save

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Stop training when a monitored value stops improving.

    A value *improves* when it is better than the best seen so far by more than
    ``delta`` (lower in ``mode="min"``, higher in ``mode="max"``). Each call
    without improvement increments :attr:`counter`; :attr:`early_stop` becomes
    ``True`` when the counter reaches ``patience``. On improvement the model's
    ``state_dict`` is written atomically to ``path``.

    Parameters
    ----------
    patience
        Number of checks without improvement before stopping.
    verbose
        If ``True``, report every improvement through ``trace_func``.
    delta
        Minimum change that counts as an improvement (non-negative).
    path
        Where the best weights are saved. ``None`` keeps no file.
    trace_func
        Function that receives the verbose messages.
    mode
        ``"min"`` (lower is better, for losses) or ``"max"``.

    Examples
    --------
    >>> es = EarlyStopping(patience=2, path=None)
    >>> for value in [1.0, 0.5, 0.6, 0.7]:
    ...     es(value)
    >>> es.early_stop, es.best_score
    (True, 0.5)
    """

    def __init__(
        self,
        patience: int = 7,
        verbose: bool = False,
        delta: float = 0,
        path: str | os.PathLike | None = "checkpoint.pt",
        trace_func: Callable[[str], Any] = print,
        mode: str = "min",
    ):
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
            raise ValueError(f"patience must be a positive int, got patience={patience!r}")
        if not math.isfinite(delta) or delta < 0:
            raise ValueError(f"delta must be a finite number >= 0, got delta={delta!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got mode={mode!r}")
        self.patience = patience
        self.verbose = verbose
        self.delta = float(delta)
        self.path = path
        self.trace_func = trace_func
        self.mode = mode
        self.counter = 0
        self.best_score: float | None = None
        self.early_stop = False
        self.checkpoint_written = False

    @property
    def val_loss_min(self) -> float:
        """Best value seen so far (``inf`` before the first call, in ``min`` mode)."""
        if self.best_score is None:
            return math.inf if self.mode == "min" else -math.inf
        return self.best_score

    def is_improvement(self, value: float) -> bool:
        """Whether ``value`` beats the best seen by more than ``delta``."""
        if self.best_score is None:
            return math.isfinite(value)
        if self.mode == "min":
            return value < self.best_score - self.delta
        return value > self.best_score + self.delta

    def __call__(self, val_loss: float | torch.Tensor, model: torch.nn.Module | None = None) -> bool:
        """Record one validation value; return ``True`` when it improved.

        Parameters
        ----------
        val_loss
            The monitored value for this check.
        model
            When given and ``path`` is set, its weights are saved on improvement.
        """
        value = float(val_loss.detach() if isinstance(val_loss, torch.Tensor) else val_loss)
        if self.is_improvement(value):
            if self.verbose:
                self.trace_func(
                    f"Validation value improved ({self.val_loss_min:.6f} --> {value:.6f})."
                    + (f" Saving model to {self.path}" if model is not None and self.path else "")
                )
            self.best_score = value
            self.counter = 0
            self.early_stop = False  # an improvement revokes an earlier stop signal
            if model is not None and self.path is not None:
                atomic_save(model.state_dict(), self.path)
                self.checkpoint_written = True
            return True
        self.counter += 1
        if self.verbose:
            self.trace_func(f"EarlyStopping counter: {self.counter} out of {self.patience}")
        if self.counter >= self.patience:
            self.early_stop = True
        return False

    def state_dict(self) -> dict[str, Any]:
        """The state needed to resume: counter, best value, stop flag and settings."""
        return {
            "patience": self.patience,
            "delta": self.delta,
            "mode": self.mode,
            "path": None if self.path is None else str(self.path),
            "counter": self.counter,
            "best_score": self.best_score,
            "early_stop": self.early_stop,
            "checkpoint_written": self.checkpoint_written,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`."""
        for key in ("patience", "delta", "mode", "path", "counter", "best_score", "early_stop",
                    "checkpoint_written"):
            if key in state:
                setattr(self, key, state[key])

    def __repr__(self) -> str:
        return (f"EarlyStopping(patience={self.patience}, delta={self.delta}, mode={self.mode!r}, "
                f"counter={self.counter}, best_score={self.best_score})")
