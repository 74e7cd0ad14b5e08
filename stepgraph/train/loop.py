"""The epoch loop around a per-epoch training method."""

from __future__ import annotations

import functools
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
    def loop(self, epochs: int, *args, writer=None, **kwargs) -> bool:
        epochs = _check_epochs(epochs)
        self.begin_fit()
        bar = tqdm(total=epochs, disable=not self.progress, dynamic_ncols=True)
        state = {"epoch": 0, "epochs": epochs, "step": 0, "tbar": bar, "writer": writer}
        stopped = False
        try:
            for epoch in range(1, epochs + 1):
                state["epoch"] = epoch
                bar.set_description(f"Epoch {epoch}/{epochs}")
                stopped = bool(train_func(self, state, *args, **kwargs))
                bar.update(1)
                if stopped:
                    break
        finally:
            bar.close()
        if stopped:
            self.trace_func(f"Early stopping at epoch {state['epoch']}/{epochs}: {self.stop_reason}")
        if self.restore_best:
            self.restore_best_weights()
        return stopped

    loop.__wrapped_epoch__ = train_func
    return loop
