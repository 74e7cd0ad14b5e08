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
from stepgraph.train.callbacks import Callback
from stepgraph.train.checkpointing import save_weights

__all__ = ["EarlyStopping", "EarlyStoppingGroup", "STOP_RULES"]

_SETTINGS = ("monitor", "stopping_threshold", "divergence_threshold", "check_finite")

#: How the monitors' verdicts combine: every loss stalled, one stalled, or the sum stalled.
STOP_RULES = ("all", "any", "total")


class EarlyStopping(Callback):
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

    It also stops at once, whatever the patience, when the value is NaN or
    infinite (``check_finite``), reaches ``stopping_threshold`` (good enough)
    or passes ``divergence_threshold`` (hopeless); :attr:`stop_reason` says
    which. Given a ``monitor`` and passed in the Trainer's ``callbacks``, it is
    a callback: it watches that key of every epoch's metrics (any logged value,
    e.g. ``monitor="val_accuracy", mode="max"``) and stops the fit with its
    reason; the per-loss monitors of STEP's ``lossconfig`` still decide too.

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
    monitor
        As a callback: the key of the epoch's metrics to watch (``None``: the
        Trainer feeds it, as one of its per-loss monitors).
    stopping_threshold
        Stop as soon as the value is at least this good (``<=`` in ``min``
        mode, ``>=`` in ``max`` mode). ``None``: no such stop.
    divergence_threshold
        Stop as soon as the value is worse than this. ``None``: no such stop.
    check_finite
        Stop as soon as the value is NaN or infinite.

    Attributes
    ----------
    stop_reason : str or None
        Why :attr:`early_stop` is set, in words (``None`` while it is not).

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
        monitor: str | None = None,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_finite: bool = True,
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
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise TypeError(f"monitor must be the name of a logged value or None, got monitor={monitor!r}")
        self.monitor = monitor
        self.stopping_threshold = check_number(stopping_threshold, "stopping_threshold", allow_none=True)
        self.divergence_threshold = check_number(divergence_threshold, "divergence_threshold", allow_none=True)
        self.check_finite = bool(check_finite)
        self.counter = 0
        self.best_score: float | None = None
        self.early_stop = False
        self.stop_reason: str | None = None
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
            self.early_stop, self.stop_reason = False, None  # an improvement revokes an earlier stop signal
            if model is not None and self.path is not None:
                save_weights(model, self.path)  # the checkpointing module does every write
                self.checkpoint_written = True
            self._check_thresholds(value)
            return True
        self.counter += 1
        if self.verbose:
            self.trace_func(f"EarlyStopping counter: {self.counter} out of {self.patience}")
        if self.counter >= self.patience and not self.early_stop:
            self.early_stop = True
            self.stop_reason = f"best {self.val_loss_min:.4g}, no improvement for {self.counter} checks"
        self._check_thresholds(value)
        return False

    def _check_thresholds(self, value: float) -> None:
        better = (lambda a, b: a <= b) if self.mode == "min" else (lambda a, b: a >= b)
        if self.check_finite and not math.isfinite(value):
            reason = f"the value is {value} (not finite)"
        elif self.stopping_threshold is not None and better(value, self.stopping_threshold):
            reason = f"{value:.4g} reached the stopping threshold {self.stopping_threshold:.4g}"
        elif self.divergence_threshold is not None and not better(value, self.divergence_threshold):
            reason = f"{value:.4g} is past the divergence threshold {self.divergence_threshold:.4g}"
        else:
            return
        self.early_stop, self.stop_reason = True, reason

    def reset(self) -> None:
        """Forget the values seen (a new fit): counter, best value, stop flag and reason."""
        self.counter, self.best_score, self.early_stop, self.stop_reason = 0, None, False, None

    def on_fit_start(self, trainer) -> None:
        """As a callback: a new fit starts afresh (a resumed one keeps its restored state).

        Parameters
        ----------
        trainer
            The :class:`~stepgraph.Trainer`.
        """
        if trainer.loop_state.first_epoch == 1:
            self.reset()

    def on_epoch_end(self, trainer, metrics) -> None:
        """As a callback (with a :attr:`monitor`): check the epoch's value, and stop the fit when told.

        Parameters
        ----------
        trainer
            The :class:`~stepgraph.Trainer`; its :meth:`~stepgraph.Trainer.request_stop` is called.
        metrics
            The epoch's metrics; :attr:`monitor` is read from them.
        """
        if self.monitor is None:
            raise ValueError(
                "an EarlyStopping passed in callbacks needs monitor=, the logged value to watch (e.g. 'val_loss')"
            )
        if self.monitor not in metrics:
            if any(k.startswith("val_") for k in metrics) or not self.monitor.startswith("val_"):
                raise KeyError(
                    f"EarlyStopping monitor {self.monitor!r} is not among the logged values {sorted(metrics)}"
                )
            return  # no validation in this fit: nothing to watch
        self(metrics[self.monitor])
        if self.early_stop:
            trainer.request_stop(f"{self.monitor}: {self.stop_reason}")

    @property
    def state_key(self) -> str:
        """``EarlyStopping[<monitor>]``: one state per monitored key in ``last.pt``."""
        return f"EarlyStopping[{self.monitor}]"

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
            "stop_reason": self.stop_reason,
            "checkpoint_written": self.checkpoint_written,
            "monitor": self.monitor,
            "stopping_threshold": self.stopping_threshold,
            "divergence_threshold": self.divergence_threshold,
            "check_finite": self.check_finite,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`.

        Parameters
        ----------
        state
            The dict :meth:`state_dict` returned.
        """
        keys = ("patience", "delta", "mode", "path", "counter", "best_score", "early_stop", "checkpoint_written")
        for key in (*keys, "stop_reason", *_SETTINGS):
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
            Names of the losses seen in training: values the model only
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

    @staticmethod
    def total(losses: Mapping[str, Any], loss_names: Iterable[str] = ()) -> float:
        """The sum of ``losses`` (with or without the ``val_`` prefix) whose names are
        in ``loss_names`` (every value when it is empty); NaN when none.
        """
        names = set(loss_names)
        values = [float(v) for k, v in sorted(losses.items()) if not names or k.removeprefix("val_") in names]
        return float(sum(values)) if values else math.nan

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
            self.stop_reason = "stopped on " + ", ".join(f"{k} ({self.monitors[k].stop_reason})" for k in stalled)
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
                trace_func=self.trace_func,
                **{k: monitor_state[k] for k in ("patience", "delta", "mode", "path")},
                **{k: monitor_state[k] for k in _SETTINGS if k in monitor_state},
            )
            monitor.load_state_dict(monitor_state)
            self.monitors[key] = monitor
        self.stop_code = state.get("stop_code")
        self.stop_reason = state.get("stop_reason")
