"""Early stopping: one monitor per validation loss, and the group that decides.

:class:`EarlyStopping` watches one value (STEP's class). :class:`EarlyStoppingGroup`
is the one place that decides whether a run stops: it resolves each monitor's
settings (``lossconfig`` over the default), chooses which validation values are
watched, applies the ``stop_on`` rule and words the reason.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import torch

from stepgraph._validation import check_choice, check_int, check_number
from stepgraph.train.checkpointing import save_weights

__all__ = ["EarlyStopping", "EarlyStoppingGroup", "STOP_RULES"]

#: How the monitors' verdicts combine: every loss stalled, one stalled, or the sum stalled.
STOP_RULES = ("all", "any", "total")


class EarlyStopping:
    """Stop training when a monitored value stops improving.

    A value *improves* when it is better than the best seen so far by more than
    ``delta`` (lower in ``mode="min"``, higher in ``mode="max"``). Each call
    without improvement increments :attr:`counter`; :attr:`early_stop` becomes
    ``True`` when the counter reaches ``patience``. It only decides; on
    improvement, when called with a model and ``path`` is set, the model's
    ``state_dict`` is written to ``path`` by
    :func:`~stepgraph.train.checkpointing.save_weights` (atomically). Inside a
    :class:`~stepgraph.Trainer` the monitors have no ``path`` unless
    :attr:`~stepgraph.Trainer.lossconfig` gives one; the Trainer's own best
    weights are kept by its checkpoint component.

    Parameters
    ----------
    patience
        Number of checks without improvement before stopping (at least 1; a
        float is accepted as in STEP: the run stops once the count reaches it).
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
        if not (isinstance(patience, (int, float)) and not isinstance(patience, bool)):
            check_int(patience, "patience", minimum=1)  # raises, naming the type
        number = cast(float, check_number(patience, "patience", minimum=1))  # not None: no allow_none
        self.patience = int(number) if number.is_integer() else number  # STEP accepts 2.5: stops after 3
        delta = cast(float, check_number(delta, "delta", minimum=0))
        check_choice(mode, "mode", ("min", "max"))
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
        """Whether ``value`` beats the best seen by more than ``delta``.

        Parameters
        ----------
        value
            The monitored value of this epoch.
        """
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
                save_weights(model, self.path)  # the checkpointing module does every write
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
        """Restore a state produced by :meth:`state_dict`.

        Parameters
        ----------
        state
            The dict :meth:`state_dict` returned.
        """
        for key in ("patience", "delta", "mode", "path", "counter", "best_score", "early_stop", "checkpoint_written"):
            if key in state:
                setattr(self, key, state[key])

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(patience={self.patience}, delta={self.delta}, mode={self.mode!r}, "
            f"counter={self.counter}, best_score={self.best_score})"
        )


class EarlyStoppingGroup:
    """One :class:`EarlyStopping` per monitored validation loss, and the stop rule.

    Parameters
    ----------
    stop_on
        ``"all"``: stop when every monitored loss has stalled (STEP's rule);
        ``"any"``: when one has; ``"total"``: one monitor, ``val_total``, on the
        sum of the validation losses.
    trace_func
        Receives the monitors' verbose messages.

    Attributes
    ----------
    lossconfig : dict
        Per-loss :class:`EarlyStopping` settings keyed by loss name, with or
        without the ``val_`` prefix.
    default_config : dict
        Settings of losses not in :attr:`lossconfig`.
    monitors : dict[str, EarlyStopping]
        The monitors, keyed ``val_<loss>``; built at the first check.
    stop_code : str or None
        Why the run stopped, for programs: ``"all_stalled"``, ``"any_stalled"``
        or ``"total_stalled"``; ``None`` while it has not.
    stop_reason : str or None
        The same in words, naming each stalled loss, its best value and for
        how many checks it has not improved.
    """

    def __init__(self, stop_on: str = "all", trace_func: Callable[[str], Any] = print):
        self.stop_on = check_choice(stop_on, "stop_on", STOP_RULES)
        self.trace_func = trace_func
        self.lossconfig: dict[str, dict[str, Any]] = {}
        self.default_config: dict[str, Any] = {
            "patience": 10,
            "delta": 0.0,
            "mode": "min",
            "verbose": False,
            "path": None,
        }
        self.monitors: dict[str, EarlyStopping] = {}
        self.stop_code: str | None = None
        self.stop_reason: str | None = None

    def reset(self) -> None:
        """Forget the monitors and the stop reason (a new run)."""
        self.monitors = {}
        self.stop_code = self.stop_reason = None

    def config_for(self, key: str) -> dict[str, Any]:
        """Settings of the monitor of ``key`` (``val_<loss>``): ``lossconfig`` by loss name,
        then by ``key``, over :attr:`default_config`.
        """
        name = key[4:] if key.startswith("val_") else key
        cfg = {**self.default_config, **self.lossconfig.get(name, {}), **self.lossconfig.get(key, {})}
        cfg.setdefault("trace_func", self.trace_func)
        return cfg

    def setup(self, keys: Iterable[str]) -> dict[str, EarlyStopping]:
        """Build one monitor per validation key (``val_total`` alone with ``stop_on="total"``)."""
        keys = [k for k in keys if k.startswith("val_")]
        if self.stop_on == "total":
            keys = ["val_total"]
        self.monitors = {}
        for key in keys:
            cfg = self.config_for(key)
            try:
                self.monitors[key] = EarlyStopping(**cfg)
            except TypeError as err:
                raise TypeError(f"invalid early-stopping settings for {key!r}: {cfg}: {err}") from None
        return self.monitors

    def monitored(self, losses: Mapping[str, Any], loss_names: Iterable[str] = ()) -> tuple[dict[str, float], float]:
        """The validation values the monitors watch, and their total.

        Parameters
        ----------
        losses
            An epoch's losses; only ``val_`` keys are read.
        loss_names
            Names of the tensor losses seen in training: values the model only
            logs are not monitored. Empty: every ``val_`` value counts.

        Returns
        -------
        values, total
            ``{"val_<loss>": value}`` (``{"val_total": total}`` with
            ``stop_on="total"``) and the sum of the watched losses (NaN when none).
        """
        names = set(loss_names)
        values = {k: float(v) for k, v in losses.items() if k.startswith("val_") and (not names or k[4:] in names)}
        total = float(sum(values[k] for k in sorted(values))) if values else math.nan
        if self.stop_on == "total" and values:
            values = {"val_total": total}
        return values, total

    def step(self, values: Mapping[str, float], model: torch.nn.Module | None = None) -> bool:
        """Feed one check's values to the monitors; return whether the rule says stop.

        Parameters
        ----------
        values
            From :meth:`monitored`.
        model
            Passed to each monitor (it saves the weights when its ``path`` is set).
        """
        if not values:
            return False
        if not self.monitors:
            self.setup(values)
        for key, monitor in self.monitors.items():
            if key not in values:
                raise KeyError(f"validation loss {key!r} was monitored but is missing now; got {sorted(values)}")
            monitor(values[key], model)
        stalled = [k for k, m in self.monitors.items() if m.early_stop]
        stop = bool(stalled) and (len(stalled) == len(self.monitors) or self.stop_on == "any")
        if stop:
            self.stop_code = f"{self.stop_on}_stalled"
            self.stop_reason = "stopped on " + ", ".join(
                f"{k} (best {self.monitors[k].best_score:.4g}, no improvement for {self.monitors[k].counter} checks)"
                for k in stalled
            )
        return stop

    def state_dict(self) -> dict[str, Any]:
        """Every monitor's state and the stop reason (plain types only)."""
        return {
            "monitors": {k: m.state_dict() for k, m in self.monitors.items()},
            "stop_code": self.stop_code,
            "stop_reason": self.stop_reason,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Rebuild the monitors saved by :meth:`state_dict`."""
        self.monitors = {}
        for key, monitor_state in state["monitors"].items():
            monitor = EarlyStopping(
                trace_func=self.trace_func, **{k: monitor_state[k] for k in ("patience", "delta", "mode", "path")}
            )
            monitor.load_state_dict(monitor_state)
            self.monitors[key] = monitor
        self.stop_code = state.get("stop_code")
        self.stop_reason = state.get("stop_reason")
