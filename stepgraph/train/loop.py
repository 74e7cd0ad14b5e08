"""The epoch loop around a per-epoch training method, and its state."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from stepgraph._validation import check_choice, check_int
from stepgraph.train.meter import LossMeter, tensor_losses, without_metadata

__all__ = ["train_loop_formatter", "LoopState", "run_epoch", "evaluate"]


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
    tbar : tqdm or None
        The epoch progress bar.
    writer : object or None
        Receives ``add_scalar(tag, value, step)`` for every loss.
    writer_every : str
        ``"epoch"``: epoch means against the epoch number; ``"step"``: every
        training step's losses against the global step (as STEP's writer), and
        validation at the end of each epoch against the same step.
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
    start_time: float = dataclasses.field(default_factory=time.time)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    # STEP's derived keys, read-only
    _STEP_KEYS = {"epoch": lambda s: f"{s.epoch}/{s.epochs}", "epoch_val": lambda s: s.epoch,
                  "last_epoch": lambda s: s.epoch == s.epochs, "is_init": lambda s: s.epoch <= s.first_epoch}
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
WRITER_EVERY = ("epoch", "step")


# --------------------------------------------------------------- the shared core
def run_epoch(trainer, state: LoopState, path) -> bool:
    """Train one epoch of ``path``: the shared core of every training path.

    The path's batches go through its loss call, :meth:`~stepgraph.Trainer.update_model_params`
    and a :class:`~stepgraph.LossMeter` (reduced over ranks); the path validates
    through the trainer's public ``validate_*`` hook; the epoch ends with the
    history, the writer, early stopping, best weights and the LR scheduler.

    Returns
    -------
    bool
        Whether early stopping fired.
    """
    trainer.mode_switch_to_train()
    if trainer.optimizer is None:  # before the first forward (which may build the DDP wrapper)
        trainer.init_optimizer()
    meter = LossMeter()
    _train_steps(trainer, state, path.train_batches(state.epoch), path.loss, meter)
    trainer.strategy.reduce_meter(meter)
    if not len(meter):
        raise ValueError(f"epoch {state.epoch} had no training batch")
    valid_losses = {k: float(v) for k, v in (path.validate(state.epoch) or {}).items()}
    return _end_epoch(trainer, state, meter.compute(), valid_losses)


def _train_steps(trainer, state: LoopState, batches: Iterable, loss_call: Callable, meter: LossMeter) -> None:
    keys, last_shown = None, time.monotonic()
    total = len(batches) if hasattr(batches, "__len__") else None
    if trainer.progress and total != 1:
        batches = tqdm(batches, total=total, leave=False, desc="step", dynamic_ncols=True)
    for step, batch in enumerate(batches):
        out = loss_call(batch, step)
        if out is None:  # nothing to train on in this batch (e.g. no train node)
            continue
        loss_dict, weight = without_metadata(out[0]), out[1]
        if keys is None:
            keys = set(loss_dict)
        elif set(loss_dict) != keys:
            raise ValueError(f"the loss dict's keys changed at epoch {state.epoch}, step {step}: "
                             f"{sorted(loss_dict)} instead of {sorted(keys)}")
        if trainer.update_model_params(loss_dict, state.epoch, step) is None:
            continue
        trainer.cum_loss(loss_dict, meter, weight=weight)
        state.step += 1
        if state.writer is not None and state.writer_every == "step" and trainer.strategy.is_main:
            for key, value in tensor_losses(loss_dict).items():
                state.writer.add_scalar(key, float(value.detach()), state.step)
        if trainer.progress and time.monotonic() - last_shown > 1.0:
            state.tbar.set_postfix_str(trainer.format_loss_dict(meter.compute(), state))
            last_shown = time.monotonic()


def evaluate(trainer, batches: Iterable, loss_call: Callable) -> dict[str, float]:
    """Validation through the same meter: eval mode, no grad, reduced over ranks, ``val_`` keys."""
    was_training = trainer.model.training
    trainer.model.eval()
    meter = LossMeter()
    try:
        with torch.no_grad():
            for step, batch in enumerate(batches):
                out = loss_call(batch, step)
                if out is not None:
                    meter.update(without_metadata(out[0]), out[1])
    finally:
        trainer.model.train(was_training)
    trainer.strategy.reduce_meter(meter)
    return {f"val_{k}": v for k, v in meter.compute().items()}


def _end_epoch(trainer, state: LoopState, train_losses: dict, valid_losses: dict) -> bool:
    lr = trainer.optimizer.param_groups[0]["lr"] if trainer.optimizer is not None else math.nan
    trainer.history.append({"epoch": state.epoch, **train_losses, **valid_losses, "lr": lr})
    if state.writer is not None and trainer.strategy.is_main:
        logged = {**train_losses, **valid_losses} if state.writer_every == "epoch" else valid_losses
        for key, value in logged.items():
            state.writer.add_scalar(key, value, state.epoch if state.writer_every == "epoch" else state.step)
    stop = trainer.check_early_stop(valid_losses) if valid_losses else False
    if isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        watched = valid_losses or {f"val_{k}": v for k, v in train_losses.items()}
        _, total = trainer.stopping.monitored(watched, trainer._loss_names)
        trainer.lr_scheduler.step(total)
    elif trainer.lr_scheduler is not None:
        trainer.lr_scheduler.step()
    if trainer.progress:
        state.tbar.set_postfix_str(trainer.format_loss_dict(train_losses, state, valid_losses, endepoch=True))
    return stop


# ------------------------------------------------------------------- the loop
def train_loop_formatter(train_func: Callable | None = None, *, path: type | None = None) -> Callable:
    """Turn a per-epoch training method into a training loop.

    The decorated method is written as ``train_func(self, state, *args,
    **kwargs) -> bool``: it trains one epoch and returns ``True`` to stop.
    The returned method is called as ``method(epochs, *args, writer=None,
    **kwargs)`` and

    - runs epochs ``1..epochs`` under a tqdm bar showing the formatted losses
      (``epochs=1`` reports epoch 1/1);
    - passes ``state`` (a :class:`LoopState`, read like a dict with
      ``epoch``, ``epochs``, ``step``, ``tbar`` and ``writer``) to every epoch;
    - stops when an epoch returns ``True`` and says which losses stopped and at
      which epoch;
    - restores the best weights at the end when ``self.restore_best`` is set and
      a best checkpoint was written.

    ``writer`` is anything with ``add_scalar(tag, value, step)``, such as
    TensorBoard's ``SummaryWriter``; it receives every train and validation
    loss per epoch.

    Every ``self.checkpoint_every`` epochs (and at the end) the whole training
    state is written atomically to ``checkpoint_dir / "last.pt"``; passing
    ``resume_from=<that file>`` to the same call continues the run exactly
    where it stopped (on the CPU, bitwise). ``KeyboardInterrupt`` writes
    ``interrupted.pt`` (the state at the interrupt; resuming from it re-runs
    the interrupted epoch from there, so it is close to but not bitwise an
    uninterrupted run), prints how to resume and returns ``False``.

    Parameters
    ----------
    train_func
        The per-epoch method of a :class:`~stepgraph.Trainer` (sub)class.
    path
        A training path class (see :mod:`stepgraph.train.feeds`), used as
        ``@train_loop_formatter(path=MatrixPath)``: it is built once per call,
        from the method's own arguments, before the first epoch (so bad
        arguments fail at once), and is the trainer's ``active_path`` during
        the run.

    Returns
    -------
    Callable
        The looping method; it returns ``True`` when training stopped early.

    Examples
    --------
    >>> trainer.train_batch(epochs=20, loaders=(train_loader, valid_loader))  # doctest: +SKIP
    """

    if train_func is None:
        return functools.partial(train_loop_formatter, path=path)

    @functools.wraps(train_func)
    def loop(self, epochs: int, *args, writer=None, writer_every: str = "epoch", resume_from=None,
             **kwargs) -> bool:
        epochs = check_int(epochs, "epochs", minimum=1)
        state = LoopState(epochs=epochs, writer=writer, writer_every=check_choice(writer_every, "writer_every",
                                                                                 WRITER_EVERY))
        if resume_from is None:
            self.begin_fit()
        self.active_path = None if path is None else path(self, *args, **kwargs)
        done, stopped = 0, False
        if resume_from is not None:
            done, stopped = self.load_training_state(resume_from, state)
        state.first_epoch = done + 1
        bar = tqdm(total=epochs, initial=done, disable=not self.progress, dynamic_ncols=True)
        state.tbar = bar
        completed = done
        try:
            for epoch in range(done + 1, epochs + 1):
                if stopped:
                    break
                state.epoch = epoch
                bar.set_description(f"Epoch {epoch}/{epochs}")
                stopped = bool(train_func(self, state, *args, **kwargs))
                completed = epoch
                bar.update(1)
                if self.checkpoint_every and (epoch % self.checkpoint_every == 0 or stopped
                                              or epoch == epochs):
                    self.save_training_state(self.checkpoint_dir / "last.pt", state, stopped=stopped)
        except KeyboardInterrupt:
            bar.close()
            saved = self.save_training_state(self.checkpoint_dir / "interrupted.pt", state,
                                             completed=completed, stopped=stopped, gather=False)
            self.interrupted = True
            self.trace_func(
                f"Interrupted after {completed} completed epoch(s) of {epochs}; training state saved "
                f"to {saved}. Resume with the same call plus resume_from={str(saved)!r}: the "
                f"interrupted epoch runs again from the weights it had reached (close to, not "
                f"bitwise equal to, an uninterrupted run); resume_from="
                f"{str(self.checkpoint_dir / 'last.pt')!r} continues exactly from the last "
                f"checkpointed epoch.")
            return False
        finally:
            bar.close()
        if stopped and self.stop_reason:
            self.trace_func(f"Early stopping at epoch {len(self.history)}/{epochs}: {self.stop_reason}")
        if self.restore_best:
            self.restore_best_weights()
        return stopped

    # show the call's real signature: (epochs, <the method's own arguments>, writer, resume_from)
    params = list(inspect.signature(train_func).parameters.values())
    self_param, own = params[0], [p for p in params[2:] if p.kind is not p.VAR_KEYWORD]
    extra = [inspect.Parameter("writer", inspect.Parameter.KEYWORD_ONLY, default=None),
             inspect.Parameter("writer_every", inspect.Parameter.KEYWORD_ONLY, default="epoch"),
             inspect.Parameter("resume_from", inspect.Parameter.KEYWORD_ONLY, default=None)]
    own_kw = [p for p in own if p.kind is p.KEYWORD_ONLY]
    own_pos = [p for p in own if p.kind is not p.KEYWORD_ONLY]
    var_kw = [p for p in params[2:] if p.kind is p.VAR_KEYWORD]
    loop.__signature__ = inspect.Signature(
        [self_param, inspect.Parameter("epochs", inspect.Parameter.POSITIONAL_OR_KEYWORD),
         *own_pos, *own_kw, *extra, *var_kw])
    loop.__wrapped_epoch__ = train_func
    return loop
