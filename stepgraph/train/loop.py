"""The epoch loop around a per-epoch training method."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from tqdm.auto import tqdm

__all__ = ["train_loop_formatter"]


def _check_epochs(epochs) -> int:
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got epochs={epochs!r}")
    return epochs


def train_loop_formatter(train_func: Callable) -> Callable:
    """Turn a per-epoch training method into a training loop.

    The decorated method is written as ``train_func(self, state, *args,
    **kwargs) -> bool``: it trains one epoch and returns ``True`` to stop.
    The returned method is called as ``method(epochs, *args, writer=None,
    **kwargs)`` and

    - runs epochs ``1..epochs`` under a tqdm bar showing the formatted losses
      (``epochs=1`` reports epoch 1/1);
    - passes ``state`` (a dict with ``epoch``, ``epochs``, ``step``, ``tbar``
      and ``writer``) to every epoch;
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

    Returns
    -------
    Callable
        The looping method; it returns ``True`` when training stopped early.

    Examples
    --------
    >>> trainer.train_batch(epochs=20, loaders=(train_loader, valid_loader))  # doctest: +SKIP
    """

    @functools.wraps(train_func)
    def loop(self, epochs: int, *args, writer=None, resume_from=None, **kwargs) -> bool:
        epochs = _check_epochs(epochs)
        state = {"epoch": 0, "epochs": epochs, "step": 0, "tbar": None, "writer": writer}
        if resume_from is None:
            self.begin_fit()
            done, stopped = 0, False
        else:
            done, stopped = self.load_training_state(resume_from, state)
        bar = tqdm(total=epochs, initial=done, disable=not self.progress, dynamic_ncols=True)
        state["tbar"] = bar
        completed = done
        try:
            for epoch in range(done + 1, epochs + 1):
                if stopped:
                    break
                state["epoch"] = epoch
                bar.set_description(f"Epoch {epoch}/{epochs}")
                stopped = bool(train_func(self, state, *args, **kwargs))
                completed = epoch
                bar.update(1)
                if self.checkpoint_every and (epoch % self.checkpoint_every == 0 or stopped
                                              or epoch == epochs):
                    self.save_training_state(self.checkpoint_dir / "last.pt", state, stopped=stopped)
        except KeyboardInterrupt:
            bar.close()
            path = self.save_training_state(self.checkpoint_dir / "interrupted.pt", state,
                                            completed=completed, stopped=stopped, gather=False)
            self.interrupted = True
            self.trace_func(
                f"Interrupted after {completed} completed epoch(s) of {epochs}; training state saved "
                f"to {path}. Resume with the same call plus resume_from={str(path)!r}: the "
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
             inspect.Parameter("resume_from", inspect.Parameter.KEYWORD_ONLY, default=None)]
    own_kw = [p for p in own if p.kind is p.KEYWORD_ONLY]
    own_pos = [p for p in own if p.kind is not p.KEYWORD_ONLY]
    var_kw = [p for p in params[2:] if p.kind is p.VAR_KEYWORD]
    loop.__signature__ = inspect.Signature(
        [self_param, inspect.Parameter("epochs", inspect.Parameter.POSITIONAL_OR_KEYWORD),
         *own_pos, *own_kw, *extra, *var_kw])
    loop.__wrapped_epoch__ = train_func
    return loop
