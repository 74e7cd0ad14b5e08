"""How a fit is spread over processes: one object the Trainer asks, never branches on.

A :class:`~stepgraph.Trainer` holds one :class:`Strategy` and asks it wherever
data parallelism could matter: run the loss forward, shard the seeds and
loaders, reduce the meters, gather and broadcast, and release what it holds
when a fit ends (:meth:`Strategy.teardown`). :class:`SingleDeviceStrategy` is a
plain one-process run; :class:`DDPStrategy` trains over a ``torch.distributed``
process group with :class:`~torch.nn.parallel.DistributedDataParallel`. The
process-group helpers they use are in :mod:`stepgraph.train.distributed`.
"""

from __future__ import annotations

import abc
import gc
from typing import Any

import numpy as np
import torch

from stepgraph.train import distributed as dist_utils

__all__ = ["Strategy", "SingleDeviceStrategy", "DDPStrategy", "make_strategy"]


class Strategy(abc.ABC):
    """What a :class:`~stepgraph.Trainer` asks of a parallel strategy.

    Parameters
    ----------
    device
        The device the model trains on.

    Attributes
    ----------
    is_distributed : bool
        Whether the fit runs over several processes.
    lockstep : bool
        Whether every rank must run the same synchronised steps (no batch may be skipped).
    """

    is_distributed = False
    lockstep = False

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)

    @staticmethod
    def default_device() -> torch.device | None:
        """The device to train on when the user named none (``None``: the model's)."""
        return None

    @property
    @abc.abstractmethod
    def rank(self) -> int:
        """This process's rank."""

    @property
    @abc.abstractmethod
    def world_size(self) -> int:
        """Number of processes."""

    @property
    def is_main(self) -> bool:
        """Whether this process writes files, progress and logs (rank 0)."""
        return self.rank == 0

    def begin_fit(self, model: torch.nn.Module) -> None:  # noqa: B027 (an optional hook)
        """Prepare a fit of ``model`` (called before seeding)."""

    def parameters_changed(self) -> None:  # noqa: B027 (an optional hook)
        """The optimizer was rebuilt: the set of trainable parameters may differ."""

    @abc.abstractmethod
    def loss_forward(self, model: torch.nn.Module, *args, **kwargs):
        """``model.loss(*args, **kwargs)``, through whatever wrapper synchronises gradients."""

    def after_backward(self, model: torch.nn.Module) -> None:  # noqa: B027 (an optional hook)
        """Called between ``backward`` and the optimizer step."""

    @abc.abstractmethod
    def shard(self, indices, epoch: int, seed: int, shuffle: bool, pad: bool) -> torch.Tensor:
        """This rank's share of ``indices`` for ``epoch``."""

    @abc.abstractmethod
    def shard_loader(self, loader, epoch: int, seed: int, pad: bool):
        """A tensor-batch loader over this rank's share of ``loader``'s samples."""

    @abc.abstractmethod
    def shard_neighbor_loader(self, loader, epoch: int, seed: int, shuffle: bool, pad: bool):
        """A ``NeighborLoader`` over this rank's share of ``loader``'s seed nodes."""

    @abc.abstractmethod
    def reduce_meter(self, meter) -> None:
        """Sum a :class:`~stepgraph.LossMeter` over the ranks, in place."""

    @abc.abstractmethod
    def gather(self, obj: Any) -> list:
        """``obj`` from every rank, in rank order."""

    @abc.abstractmethod
    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's weights to every rank."""

    def teardown(self) -> None:  # noqa: B027 (an optional hook)
        """Release what the fit held; the Trainer calls it when every fit ends."""


class SingleDeviceStrategy(Strategy):
    """A plain, one-process run on one device: every call is the identity.

    It trains on every seed, wraps nothing and reduces nothing.
    """

    rank = 0
    world_size = 1

    def loss_forward(self, model, *args, **kwargs):
        return model.loss(*args, **kwargs)

    def shard(self, indices, epoch, seed, shuffle, pad):
        return indices if isinstance(indices, torch.Tensor) else torch.as_tensor(np.asarray(indices))

    def shard_loader(self, loader, epoch, seed, pad):
        return loader

    def shard_neighbor_loader(self, loader, epoch, seed, shuffle, pad):
        return loader

    def reduce_meter(self, meter) -> None:
        pass

    def gather(self, obj):
        return [obj]

    def broadcast_module(self, module) -> None:
        pass


class DDPStrategy(Strategy):
    """Data-parallel training over a ``torch.distributed`` process group.

    The model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`
    at its first training forward (after the optimizer has decided which
    parameters train), seeds and samples are sharded with a permutation
    shared by all ranks, meters are all-reduced as sums and counts, and rank 0
    alone writes. A loss computed without the wrapper (a ``call_func`` calling
    ``model.loss`` itself) still has its gradients averaged. When a fit ends,
    :meth:`teardown` drops the wrapper on every rank at the same point; the
    process group itself, when stepgraph initialised it, is destroyed at exit
    (:func:`~stepgraph.train.distributed.destroy_owned_group`).

    Parameters
    ----------
    device
        The device the model lives on.
    find_unused_parameters
        Passed to ``DistributedDataParallel``.
    """

    is_distributed = True
    lockstep = True

    def __init__(self, device: str | torch.device, find_unused_parameters: bool = False):
        super().__init__(device)
        self.find_unused_parameters = find_unused_parameters
        self._wrapper = None
        self._wrapped_params: set[int] = set()
        self._synced_forward = False

    @staticmethod
    def default_device() -> torch.device | None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None

    rank = property(lambda self: dist_utils.rank(), doc="This process's rank.")
    world_size = property(lambda self: dist_utils.world_size(), doc="Number of processes.")

    def begin_fit(self, model):
        # An earlier wrapper left for the garbage collector may talk to the
        # process group when freed: collect it here, at the same point on every rank.
        gc.collect()
        dist_utils.broadcast_module(model)  # every rank starts from rank 0's weights

    def parameters_changed(self):
        self._wrapper = None  # rebuilt at the next forward, over the new trainable set

    def _wrap(self, model):
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        if self._wrapper is None or trainable != self._wrapped_params:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._wrapper = DistributedDataParallel(
                dist_utils.LossForward(model), device_ids=ids, find_unused_parameters=self.find_unused_parameters
            )
            self._wrapped_params = trainable
        return self._wrapper

    def loss_forward(self, model, *args, **kwargs):
        if model.training and torch.is_grad_enabled():
            self._synced_forward = True
            return self._wrap(model)(*args, **kwargs)
        return model.loss(*args, **kwargs)

    def after_backward(self, model):
        if not self._synced_forward:  # the loss bypassed the wrapper
            dist_utils.all_reduce_gradients(model)
        self._synced_forward = False

    def shard(self, indices, epoch, seed, shuffle, pad):
        indices = indices.cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
        return torch.from_numpy(dist_utils.shard_indices(indices, epoch, seed, shuffle, pad))

    def shard_loader(self, loader, epoch, seed, pad):
        from torch.utils.data import DataLoader, RandomSampler

        if loader is None:
            return None
        shuffle = isinstance(loader.sampler, RandomSampler)
        sampler = dist_utils.ShardSampler(len(loader.dataset), shuffle, seed=seed, pad=pad)
        sampler.set_epoch(epoch)
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=sampler,
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
            drop_last=loader.drop_last,
        )

    def shard_neighbor_loader(self, loader, epoch, seed, shuffle, pad):
        from stepgraph.data.loaders import derive_neighbor_loader, loader_seeds

        if loader is None:
            return None
        seeds = self.shard(loader_seeds(loader), epoch, seed, shuffle, pad)
        # a training share keeps the loader's drop_last; a validation share sees every seed
        return derive_neighbor_loader(loader, seeds, shuffle=False, drop_last=bool(loader.drop_last and pad))

    def reduce_meter(self, meter):
        dist_utils.all_reduce_meter(meter)

    def gather(self, obj):
        return dist_utils.all_gather_objects(obj)

    def broadcast_module(self, module):
        dist_utils.broadcast_module(module)

    def teardown(self):
        self._wrapper, self._wrapped_params, self._synced_forward = None, set(), False
        gc.collect()  # free the wrapper now, on every rank alike


def make_strategy(
    distributed: bool | None,
    device: str | torch.device | None = None,
    model: torch.nn.Module | None = None,
    find_unused_parameters: bool = False,
) -> Strategy:
    """The strategy for ``Trainer(distributed=..., device=...)``.

    Parameters
    ----------
    distributed
        ``None`` trains data-parallel when launched by ``torchrun`` (or inside a
        process group of more than one process), ``True`` requires it and
        ``False`` never does.
    device
        The device to train on; by default the strategy's own (this rank's GPU
        under DDP), else the device of ``model``'s first parameter, else the CPU.
    model
        The model, for its device.
    find_unused_parameters
        Passed to ``DistributedDataParallel``.
    """
    cls: type[Strategy]
    if distributed is False or not dist_utils.init_distributed():
        if distributed:
            raise ValueError(
                "distributed=True but no torch.distributed process group with more than "
                "one process was found; launch with torchrun"
            )
        cls, options = SingleDeviceStrategy, {}
    else:
        cls, options = DDPStrategy, {"find_unused_parameters": find_unused_parameters}
    if device is None:
        first = next(model.parameters(), None) if model is not None else None
        device = cls.default_device() or (first.device if first is not None else "cpu")
    return cls(device, **options)
