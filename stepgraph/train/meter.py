"""Running means of named losses, on detached values."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Number
from typing import SupportsFloat, cast

import torch

__all__ = ["LossMeter", "tensor_losses", "trained_losses", "running_mean_update", "without_metadata", "METADATA_KEYS"]

#: Keys of a loss dict that carry metadata, never a loss (STEP's ``graph_ids``).
METADATA_KEYS = frozenset({"graph_ids"})


def without_metadata(loss_dict: Mapping[str, object]) -> dict[str, object]:
    """``loss_dict`` without its metadata keys (:data:`METADATA_KEYS`): the one place
    where ``graph_ids`` is dropped. The training core applies it to every loss dict
    a loss call returns; the public accumulators apply it to what users pass them.
    Anything but a mapping is refused with a ``TypeError`` naming its type.
    """
    if not isinstance(loss_dict, Mapping):
        raise TypeError(
            f"a loss call must return a dict of named losses, e.g. {{'recon_loss': tensor}}, "
            f"got {type(loss_dict).__name__}"
        )
    return {k: v for k, v in loss_dict.items() if k not in METADATA_KEYS}


def tensor_losses(loss_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The entries of a loss dict that take part in the backward pass.

    Tensor values may be losses (see :func:`trained_losses`); anything else (numbers,
    strings) is logged only.
    The metadata key ``graph_ids`` is never a loss.
    """
    return {k: v for k, v in without_metadata(loss_dict).items() if isinstance(v, torch.Tensor)}


def trained_losses(losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors that are trained on: those carrying a gradient.

    The rule that tells a loss from a metric, without names: in training, a
    tensor computed from the parameters carries a gradient and is a loss (it
    goes into the backward total and the monitored ``total``); a tensor
    without one (an accuracy ``(pred == y).float().mean()``, a detached value)
    is logged only (history, loggers), and can still be monitored by a
    callback (``EarlyStopping(monitor="val_acc", mode="max")``,
    ``ModelCheckpoint(monitor="val_acc", mode="max")``). With gradients off
    (``torch.no_grad()`` around a training call) every tensor counts, as before.
    """
    if not torch.is_grad_enabled():
        return dict(losses)
    return {k: v for k, v in losses.items() if v.requires_grad}


class LossMeter:
    """Weighted running mean of each named loss over an epoch.

    Values are detached on entry, so the meter never holds an autograd graph
    (STEP's trainer kept the graph of every accumulated loss alive). Sums stay
    on the loss's device until :meth:`compute`, so updating does not force a
    device synchronisation per step.

    Examples
    --------
    >>> meter = LossMeter()
    >>> meter.update({"loss": torch.tensor(1.0)}, weight=3)
    >>> meter.update({"loss": torch.tensor(3.0)}, weight=1)
    >>> meter.compute()
    {'loss': 1.5}
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor | float] = {}
        self._weights: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._sums)

    def update(self, loss_dict: Mapping[str, object], weight: float = 1.0) -> None:
        """Add one batch's losses, weighted by its size.

        Parameters
        ----------
        loss_dict
            Named scalar values (tensors or numbers); ``graph_ids`` and
            non-numeric values are skipped.
        weight
            The batch's weight in the mean, normally its number of samples.
        """
        for key, value in without_metadata(loss_dict).items():
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(f"loss {key!r} must be a scalar, got a tensor of shape {tuple(value.shape)}")
                value = value.detach().reshape(()).to(torch.float64) * weight
            elif isinstance(value, Number) and not isinstance(value, bool):
                value = float(cast(SupportsFloat, value)) * weight
            else:
                continue
            if key in self._sums:
                self._sums[key] = self._sums[key] + value
                self._weights[key] += weight
            else:
                self._sums[key] = value
                self._weights[key] = float(weight)

    def compute(self) -> dict[str, float]:
        """The weighted mean of every loss seen, as Python floats."""
        return {k: float(s) / w if (w := self._weights[k]) else float("nan") for k, s in self._sums.items()}

    def state(self) -> tuple[dict[str, torch.Tensor | float], dict[str, float]]:
        """The weighted sums and total weights per loss (copies), e.g. to reduce them
        over processes; :meth:`load_state` puts reduced ones back.
        """
        return dict(self._sums), dict(self._weights)

    def load_state(self, sums: Mapping[str, float], weights: Mapping[str, float]) -> None:
        """Replace the sums and weights with ``sums`` and ``weights`` (same keys).

        Parameters
        ----------
        sums
            Weighted sum of each loss, as :meth:`state` returns it.
        weights
            Total weight of each loss (its samples), with the same keys.
        """
        if set(sums) != set(weights):
            raise ValueError(f"sums and weights must have the same keys, got {sorted(sums)} and {sorted(weights)}")
        self._sums = {k: float(v) for k, v in sums.items()}
        self._weights = {k: float(v) for k, v in weights.items()}


def running_mean_update(means: dict, loss_dict: Mapping[str, object], n_batch: int) -> dict:
    """STEP's plain-dict accumulation, in place: for ``n_batch == 0`` (the 0-based
    index of the batch) ``means`` becomes this batch's losses; otherwise the
    running mean, in which this batch weighs ``1 / (n_batch + 1)``. Values are
    detached 0-d tensors, as STEP returns them.
    """
    for key, value in without_metadata(loss_dict).items():
        value = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(cast(SupportsFloat, value)))
        if n_batch == 0 or key not in means:
            means[key] = value.clone()
        else:
            means[key] = means[key] + (value - means[key]) / (n_batch + 1)
    return means
