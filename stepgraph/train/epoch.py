"""The epoch core shared by every training path: train, validate, end the epoch.

Every collaborator comes in as an argument: the feed (batches, loss call,
validation), the meter, the names of the training losses, and ``hooks``, an
:class:`EpochHooks`: the narrow set of members the core uses. The
:class:`~stepgraph.Trainer` is one, whose public methods do the work a STEP subclass
may override (:meth:`~stepgraph.Trainer.update_model_params`,
:meth:`~stepgraph.Trainer.cum_loss`, :meth:`~stepgraph.Trainer.check_early_stop`,
:meth:`~stepgraph.Trainer.format_loss_dict`) and whose strategy reduces over
ranks. Nothing here reaches into a loader or writes a file.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable, Sized
from typing import Any, Protocol, cast, runtime_checkable

import torch

from stepgraph.progress import Progress
from stepgraph.train.meter import LossMeter, without_metadata
from stepgraph.train.state import LoopState

__all__ = ["run_epoch", "evaluate", "end_epoch", "EpochHooks"]


@runtime_checkable
class EpochHooks(Protocol):
    """What the epoch core reads and calls: the narrow object it takes instead of a whole Trainer.

    :class:`~stepgraph.Trainer` is one (its public methods, which a STEP
    subclass may override); a test or another engine may pass any object
    with these members.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None
    strategy: Any
    stopping: Any
    history: list
    progress: bool

    @property
    def stop_requested(self) -> bool: ...

    def mode_switch_to_train(self) -> None: ...

    def init_optimizer(self) -> Any: ...

    def autocast(self) -> Any: ...

    def update_model_params(self, loss_dict: Any, epoch: int, step: int | None = None) -> Any: ...

    def cum_loss(self, loss_dict: Any, total_loss_dict: Any, *, weight: float = 1.0) -> Any: ...

    def check_early_stop(self, total_loss_dict: Any) -> bool: ...

    def format_loss_dict(
        self, loss_dict: Any, state: Any, valid_loss_dict: Any = None, endepoch: bool = False
    ) -> str: ...

    def fit_callbacks(self, writer: Any = None, writer_every: str = "epoch") -> Any: ...

    def request_stop(self, reason: str) -> None: ...


def run_epoch(hooks, state: LoopState, feed, meter: LossMeter, loss_names: Collection[str]) -> bool:
    """Train one epoch of ``feed``.

    The feed's batches go through its loss call,
    :meth:`~stepgraph.Trainer.update_model_params` and ``meter`` (reduced over
    ranks); the feed validates through the trainer's public ``validate_*``
    hook; :func:`end_epoch` ends the epoch.

    Parameters
    ----------
    hooks
        An :class:`EpochHooks` (the :class:`~stepgraph.Trainer`, or any object with its members).
    state
        The loop state.
    feed
        The :class:`~stepgraph.train.feeds.Feed` of this fit.
    meter
        An empty :class:`~stepgraph.LossMeter` for the epoch's training losses.
    loss_names
        Names of the losses seen in training (tensors with a gradient, :func:`~stepgraph.train.meter.trained_losses`) (values a model only logs
        are not monitored).

    Returns
    -------
    bool
        Whether early stopping fired.
    """
    hooks.mode_switch_to_train()
    if hooks.optimizer is None:  # before the first forward (which may build the DDP wrapper)
        hooks.init_optimizer()
    _train_steps(hooks, state, feed.train_batches(state.epoch), feed.loss, meter)
    leftover = getattr(hooks, "optimizer_step", None)
    if leftover is not None:  # batches left over by gradient accumulation step once more
        leftover()
    hooks.strategy.reduce_meter(meter)
    if not len(meter):
        raise ValueError(f"epoch {state.epoch} had no training batch")
    valid_losses = {k: float(v) for k, v in (feed.validate(state.epoch) or {}).items()}
    return end_epoch(hooks, state, meter.compute(), valid_losses, loss_names)


def _train_steps(hooks, state: LoopState, batches: Iterable, loss_call: Callable, meter: LossMeter) -> None:
    keys, last_shown = None, time.monotonic()
    callbacks = _callbacks(hooks, state)
    batch_hook = callbacks.wants("on_train_batch_end")
    total = len(cast(Sized, batches)) if hasattr(batches, "__len__") else None
    with Progress(
        total,
        f"Epoch {state.epoch}/{state.epochs} steps",
        "batches",
        enabled=hooks.progress and total != 1,
        final_line=False,
    ) as progress:
        for step, batch in enumerate(batches):
            with hooks.autocast():  # the forward pass in the trainer's precision
                out = loss_call(batch, step)
            progress.update()
            if out is None:  # nothing to train on in this batch (e.g. no train node)
                continue
            loss_dict, weight = without_metadata(out[0]), out[1]
            if keys is None:
                keys = set(loss_dict)
            elif set(loss_dict) != keys:
                raise ValueError(
                    f"the loss dict's keys changed at epoch {state.epoch}, step {step}: "
                    f"{sorted(loss_dict)} instead of {sorted(keys)}"
                )
            if hooks.update_model_params(loss_dict, state.epoch, step) is None:
                continue
            hooks.cum_loss(loss_dict, meter, weight=weight)
            state.step += 1
            if batch_hook:
                detached = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in loss_dict.items()}
                callbacks.call("on_train_batch_end", hooks, detached, step)
            if progress.enabled and time.monotonic() - last_shown > 1.0:
                progress.set_postfix(hooks.format_loss_dict(meter.compute(), state))
                last_shown = time.monotonic()


def evaluate(hooks, batches: Iterable, loss_call: Callable, meter: LossMeter | None = None) -> dict[str, float]:
    """Validation through a meter: eval mode, no grad, reduced over ranks, ``val_`` keys.

    Each batch weighs what its loss call says (its number of loss samples), so
    the result is a mean per sample, not a mean of per-batch means as in STEP.
    """
    was_training = hooks.model.training
    hooks.model.eval()
    meter = LossMeter() if meter is None else meter
    try:
        with torch.no_grad(), hooks.autocast():
            for step, batch in enumerate(batches):
                out = loss_call(batch, step)
                if out is not None:
                    meter.update(without_metadata(out[0]), out[1])
    finally:
        hooks.model.train(was_training)
    hooks.strategy.reduce_meter(meter)
    return {f"val_{k}": v for k, v in meter.compute().items()}


def _callbacks(hooks, state: LoopState):
    if state.callbacks is None:  # an epoch run outside a training call: its state is the current one
        state.callbacks = hooks.fit_callbacks(state.writer, state.writer_every)
        hooks.loop_state = state
    return state.callbacks


def end_epoch(hooks, state: LoopState, train_losses: dict, valid_losses: dict, loss_names: Collection[str]) -> bool:
    """The end of an epoch: the history row, the early-stopping monitors
    (:meth:`~stepgraph.Trainer.check_early_stop`), the callbacks
    (``on_validation_end``, then ``on_epoch_end``: loggers, the user's, checkpoints
    and best weights, the LR scheduler) and the progress text. Returns whether
    the run stops (the monitors' rule, or a callback's
    :meth:`~stepgraph.Trainer.request_stop`).

    The callbacks' metrics are the history row plus ``total`` and ``val_total``:
    the sums of the training and validation losses (values a model only logs
    are not summed), unless the model logs values of those names itself.
    """
    callbacks = _callbacks(hooks, state)
    lr = hooks.optimizer.param_groups[0]["lr"] if hooks.optimizer is not None else math.nan
    row = {"epoch": state.epoch, **train_losses, **valid_losses, "lr": lr}
    hooks.history.append(row)
    callbacks.call("on_validation_end", hooks, dict(valid_losses))
    stop = hooks.check_early_stop(valid_losses) if valid_losses else False
    metrics = dict(row)
    metrics.setdefault("total", hooks.stopping.total(train_losses, loss_names))
    if valid_losses:
        metrics.setdefault("val_total", hooks.stopping.total(valid_losses, loss_names))
    state.metrics = metrics
    callbacks.call("on_epoch_end", hooks, metrics)
    if state.tbar is not None:
        state.tbar.set_postfix(hooks.format_loss_dict(train_losses, state, valid_losses, endepoch=True))
    # every process stops together: a request on one rank (its own batches' losses) stops them all
    requested = any(hooks.strategy.gather(bool(hooks.stop_requested)))
    if requested and not hooks.stop_requested:
        hooks.request_stop("a callback in another process asked to stop")
    return bool(stop) or requested
