"""The loop skeleton: :func:`train_loop_formatter` turns a per-epoch method into a training loop.

The loop owns the epochs, the epoch progress, resuming, the callbacks' fit
hooks (``on_fit_start``, ``on_exception``, ``on_fit_end``), the periodic and
interrupt checkpoints (written by the trainer's checkpoint component), the
early-stopping message, the best-weights restore and the strategy's
teardown. One epoch is the decorated method's business; the built-in ones run
the shared core in :mod:`stepgraph.train.epoch`.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from typing import Any, cast

from stepgraph._validation import check_choice, check_int
from stepgraph.progress import Progress
from stepgraph.train.state import LoopState

__all__ = ["train_loop_formatter", "LoopState"]

WRITER_EVERY = ("epoch", "step")
_LOOP_KEYWORDS = (("writer", None), ("writer_every", "epoch"), ("resume_from", None))


def train_loop_formatter(train_func: Callable | None = None, *, feed: Callable | None = None) -> Callable:
    """Turn a per-epoch training method into a training loop.

    The decorated method is written as ``train_func(self, state, *args,
    **kwargs) -> bool``: it trains one epoch and returns ``True`` to stop.
    The returned method is called as ``method(epochs, *args, writer=None,
    writer_every="epoch", resume_from=None, **kwargs)`` and

    - runs epochs ``1..epochs`` with their progress (a bar on a terminal, plain
      lines in a log; ``epochs=1`` reports epoch 1/1);
    - passes ``state`` (a :class:`~stepgraph.train.state.LoopState`, read like
      STEP's dict) to every epoch;
    - stops when an epoch returns ``True`` and says which losses stopped and at
      which epoch;
    - restores the best weights at the end when ``self.restore_best`` is set;
    - calls the strategy's ``teardown()`` when the fit ends, however it ends.

    ``writer`` is anything with ``add_scalar(tag, value, step)``, such as
    TensorBoard's ``SummaryWriter``; it receives every train and validation
    loss per epoch (``writer_every="epoch"``) or every training step's losses
    against the global step (``"step"``, as STEP's writer).

    With a ``checkpoint_dir``, the whole training state is written atomically
    to ``checkpoint_dir / "last.pt"`` every ``self.checkpoint_every`` epochs
    (and at the end); passing ``resume_from=<that file>`` to the same call
    continues the run exactly where it stopped (on the CPU, bitwise).
    ``KeyboardInterrupt`` writes ``interrupted.pt`` (the state at the
    interrupt; resuming from it re-runs the interrupted epoch), says how to
    resume and returns ``False``. Without a ``checkpoint_dir`` no file is
    written.

    Parameters
    ----------
    train_func
        The per-epoch method of a :class:`~stepgraph.Trainer` (sub)class.
    feed
        A feed class (see :mod:`stepgraph.train.feeds`) or a function returning
        one, used as ``@train_loop_formatter(feed=MatrixFeed)``: it is built once
        per call as ``feed(self.feed_context(), *args, **kwargs)``, from the method's own
        arguments, before the first epoch (so bad arguments fail at once), and
        is the trainer's ``active_feed`` during the run.

    Returns
    -------
    Callable
        The looping method; it returns ``True`` when training stopped early.

    Examples
    --------
    >>> trainer.train_batch(epochs=20, loaders=(train_loader, valid_loader))  # doctest: +SKIP
    """
    if train_func is None:
        return functools.partial(train_loop_formatter, feed=feed)

    @functools.wraps(train_func)
    def loop(self, epochs: int, *args, writer=None, writer_every: str = "epoch", resume_from=None, **kwargs) -> bool:
        state = LoopState(
            epochs=cast(int, check_int(epochs, "epochs", minimum=1)),
            writer=writer,
            writer_every=check_choice(writer_every, "writer_every", WRITER_EVERY),
        )
        try:
            return _fit(self, train_func, feed, state, resume_from, args, kwargs)
        finally:
            self.strategy.teardown()

    # the call's real signature: (self, epochs, <the method's own arguments>, writer, writer_every, resume_from)
    params = list(inspect.signature(train_func).parameters.values())
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default) for name, default in _LOOP_KEYWORDS
    ]
    epochs_param = inspect.Parameter("epochs", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    wrapper: Any = loop  # the attributes set here are not declared by the wrapper's type
    wrapper.__signature__ = inspect.Signature(
        sorted([params[0], epochs_param, *params[2:], *extra], key=lambda p: p.kind)
    )
    wrapper.__wrapped_epoch__ = train_func
    return loop


def _fit(
    trainer, train_func: Callable, feed: Callable | None, state: LoopState, resume_from, args: tuple, kwargs: dict
) -> bool:
    epochs = state.epochs
    callbacks = state.callbacks = trainer._fit_callback_list = trainer.fit_callbacks(state.writer, state.writer_every)
    trainer.loop_state = state
    if resume_from is None:
        trainer.begin_fit()  # a resumed run gets its stop request, if any, from the file
    trainer.active_feed = None if feed is None else feed(trainer.feed_context(), *args, **kwargs)
    done, stopped = trainer.load_training_state(resume_from, state) if resume_from is not None else (0, False)
    completed, state.first_epoch = done, done + 1
    state.tbar = Progress(
        epochs, f"Epoch {done + 1}/{epochs}", "epochs", enabled=trainer.progress, initial=done, leave=True
    )
    epoch_start_schedule = None
    try:
        callbacks.call("on_fit_start", trainer)
        for epoch in range(done + 1, epochs + 1):
            if stopped:
                break
            state.epoch = epoch
            state.tbar.set_description(f"Epoch {epoch}/{epochs}")
            epoch_start_schedule = _per_step_schedule(trainer)
            stopped = bool(train_func(trainer, state, *args, **kwargs))
            completed = epoch
            state.tbar.update()
            trainer.checkpoints.epoch_end(
                trainer._training_checkpoint(),
                trainer._training_progress(state, completed, stopped),
                final=stopped or epoch == epochs,
            )
    except KeyboardInterrupt as err:
        state.tbar.close()
        trainer.interrupted = True
        callbacks.call("on_exception", trainer, err)
        if epoch_start_schedule is not None:  # the interrupted epoch runs again: so does its schedule
            _rewind_schedule(trainer, epoch_start_schedule)
        saved = trainer.checkpoints.interrupted(
            trainer._training_checkpoint(), trainer._training_progress(state, completed, stopped)
        )
        where = (
            f"training state saved to {saved}. Resume with the same call plus "
            f"resume_from={str(saved)!r}: the interrupted epoch runs again from the weights it had "
            f"reached (close to, not bitwise equal to, an uninterrupted run); resume_from="
            f"{str(trainer.checkpoints.last_path)!r} continues exactly from the last checkpointed epoch."
            if saved is not None
            else "no training state was saved (no checkpoint_dir); give the Trainer a checkpoint_dir "
            "to make runs resumable."
        )
        trainer.trace_func(f"Interrupted after {completed} completed epoch(s) of {epochs}; {where}")
        return False
    except BaseException as err:
        callbacks.call("on_exception", trainer, err)
        raise
    finally:
        state.tbar.close()
    if stopped and trainer.stop_reason:
        trainer.trace_func(f"Early stopping at epoch {len(trainer.history)}/{epochs}: {trainer.stop_reason}")
    if trainer.restore_best and trainer.restore_best_weights():
        best_epoch, checkpoints = getattr(trainer.checkpoints, "best_epoch", None), trainer.checkpoints
        if best_epoch is not None and best_epoch != len(trainer.history):  # say so: history[-1] is not this model
            trainer.trace_func(
                f"Restored the best weights, of epoch {best_epoch} ({checkpoints.monitor}="
                f"{checkpoints.best.best_score:.4g}), not those of the last epoch ({len(trainer.history)})"
            )
    callbacks.call("on_fit_end", trainer)
    return stopped


def _per_step_schedule(trainer) -> dict | None:
    """A copy of the state of a scheduler stepped per optimizer step (``None`` for none)."""
    scheduler = getattr(trainer, "lr_scheduler", None)
    if scheduler is None or getattr(trainer, "lr_scheduler_interval", "epoch") != "step":
        return None
    return copy.deepcopy(scheduler.state_dict())


def _rewind_schedule(trainer, schedule: dict) -> None:
    """Put a per-step scheduler, and the learning rates it set, back to the start of the epoch."""
    trainer.lr_scheduler.load_state_dict(schedule)
    for group, lr in zip(trainer.optimizer.param_groups, schedule.get("_last_lr", [])):
        group["lr"] = lr
