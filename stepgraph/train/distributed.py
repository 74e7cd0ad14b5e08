"""torch.distributed (DDP) helpers: process group, sharding, reductions.

Under ``torchrun`` the :class:`~stepgraph.Trainer` finds the environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``...), joins the
process group (gloo on CPU, nccl on GPU) and wraps the model in
:class:`~torch.nn.parallel.DistributedDataParallel`. Each epoch the training
seeds (graph paths) or rows (tensor paths) are permuted with a seed shared by
all ranks and dealt out round-robin, padded so that every rank runs the same
number of steps; epoch losses are all-reduced as sums and
counts, so every rank sees the same numbers and takes the same early-stopping
decision. Only rank 0 writes files, progress bars and writer scalars.

The :class:`~stepgraph.Trainer` never asks whether it runs distributed: it
holds a strategy, :class:`SingleProcess` or :class:`DataParallel`, and asks it
to wrap the loss forward, shard seeds and loaders, reduce meters, broadcast
weights and tear the process group down. The functions below are the
building blocks the strategies use.
"""

from __future__ import annotations

import atexit
import gc
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["init_distributed", "is_distributed", "rank", "world_size", "is_main_process",
           "shard_indices", "ShardSampler", "all_reduce_meter", "all_reduce_gradients", "broadcast_module",
           "all_gather_objects", "LossForward", "destroy_owned_group", "SingleProcess", "DataParallel",
           "make_strategy"]

#: Whether this process's group was initialised by stepgraph (and so is ours to destroy).
_OWNS_GROUP = False


def is_distributed() -> bool:
    """Whether a process group with more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Whether this process writes files and shows progress (rank 0)."""
    return rank() == 0


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group described by the environment, if any.

    Does nothing when a group is already initialised or when ``WORLD_SIZE`` is
    unset or 1 (a plain ``python`` run).

    Parameters
    ----------
    backend
        ``"gloo"`` or ``"nccl"``; by default nccl when CUDA is available, gloo
        otherwise.

    Returns
    -------
    bool
        Whether training is distributed.

    Notes
    -----
    A group initialised here is stepgraph's: :func:`destroy_owned_group`
    destroys it, at the latest when the interpreter exits (``atexit``), so a
    ``torchrun`` script that never calls ``destroy_process_group`` does not
    leave a live gloo/nccl group to the C++ destructors (which abort the
    process). A group the user initialised is left alone.
    """
    global _OWNS_GROUP
    if dist.is_available() and dist.is_initialized():
        return is_distributed()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    _OWNS_GROUP = True
    atexit.register(destroy_owned_group)
    return is_distributed()


def destroy_owned_group() -> bool:
    """Destroy the process group if stepgraph initialised it.

    Safe to call more than once. No barrier is taken first: a rank whose
    partner died must still be able to exit.

    Returns
    -------
    bool
        Whether a group was destroyed.
    """
    global _OWNS_GROUP
    if not (_OWNS_GROUP and dist.is_available() and dist.is_initialized()):
        _OWNS_GROUP = False
        return False
    _OWNS_GROUP = False
    gc.collect()  # DDP wrappers left for the collector still hold the group
    dist.destroy_process_group()
    return True


def shard_indices(indices: np.ndarray, epoch: int, seed: int, shuffle: bool = True,
                  pad: bool = False) -> np.ndarray:
    """This rank's share of ``indices`` for an epoch.

    All ranks draw the same permutation (seeded by ``seed`` and ``epoch``) and
    take every ``world_size``-th element from their rank on.

    Parameters
    ----------
    indices
        The indices to deal out.
    epoch, seed
        Seed the shared permutation.
    shuffle
        Permute before dealing.
    pad
        Repeat the first indices so that every rank gets the same number
        (training needs it: every rank must run the same number of
        synchronised backward passes, or the ranks would hang). Validation
        does not pad: its sums and counts are all-reduced exactly.
    """
    indices = np.asarray(indices)
    if shuffle:
        indices = indices[np.random.default_rng([seed, epoch]).permutation(indices.size)]
    world = world_size()
    if pad and indices.size % world:
        extra = world - indices.size % world
        indices = np.concatenate([indices, np.resize(indices, extra)])
    return indices[rank()::world]


class ShardSampler(torch.utils.data.Sampler):
    """A sampler yielding this rank's shard of ``range(n)``, reshuffled per epoch.

    Parameters
    ----------
    n
        Dataset size.
    shuffle
        Permute (with a seed shared by all ranks) before sharding.
    seed
        Shared seed; the permutation of epoch ``e`` uses ``(seed, e)``.
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0, pad: bool = False):
        self.n, self.shuffle, self.seed, self.pad, self.epoch = n, shuffle, seed, pad, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation is used."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(shard_indices(np.arange(self.n), self.epoch, self.seed, self.shuffle,
                                  self.pad).tolist())

    def __len__(self) -> int:
        if self.pad:
            return -(-self.n // world_size())
        return len(range(rank(), self.n, world_size()))


def all_gather_objects(obj) -> list:
    """``obj`` from every rank, in rank order (a one-element list when not distributed)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_meter(meter) -> None:
    """Sum a :class:`~stepgraph.LossMeter`'s sums and weights over all ranks, in place.

    Ranks may have seen different keys (a rank with no validation batch sees
    none); the union of keys is reduced.
    """
    if not is_distributed():
        return
    sums, weights = meter.state()
    keys = sorted(set().union(*all_gather_objects(sorted(sums))))
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    packed = torch.zeros(2 * len(keys), dtype=torch.float64, device=device)
    for i, key in enumerate(keys):
        if key in sums:
            packed[i] = torch.as_tensor(sums[key], dtype=torch.float64)
            packed[len(keys) + i] = weights[key]
    dist.all_reduce(packed)
    packed = packed.cpu().tolist()
    meter.load_state({k: packed[i] for i, k in enumerate(keys)},
                     {k: packed[len(keys) + i] for i, k in enumerate(keys)})


def all_reduce_gradients(module: torch.nn.Module) -> None:
    """Average the gradients of ``module``'s trainable parameters over all ranks.

    Used when a loss was computed without going through the DDP wrapper (a
    custom ``call_func`` calling ``model.loss`` directly), so that the ranks
    still take identical optimizer steps. Missing gradients count as zeros.
    """
    if not is_distributed():
        return
    params = [p for p in module.parameters() if p.requires_grad]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers to every rank."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=src)


class LossForward(torch.nn.Module):
    """Routes a call of one of the model's methods (``loss``) through ``forward``,
    so that :class:`~torch.nn.parallel.DistributedDataParallel` sees it and
    synchronises the gradients of its backward pass."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args, _method: str = "loss", **kwargs):
        return getattr(self.model, _method)(*args, **kwargs)


# ------------------------------------------------------------------ strategies
class SingleProcess:
    """The strategy of a plain, one-process run: every call is the identity.

    A :class:`~stepgraph.Trainer` asks its strategy wherever data parallelism
    could matter; this one trains on every seed, wraps nothing and reduces
    nothing. :class:`DataParallel` overrides each method.
    """

    is_distributed = False
    #: Whether every rank must run the same synchronised steps (no batch may be skipped).
    lockstep = False

    @property
    def rank(self) -> int:
        """This process's rank."""
        return 0

    @property
    def world_size(self) -> int:
        """Number of processes."""
        return 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files, bars and logs."""
        return self.rank == 0

    def default_device(self) -> torch.device | None:
        """The device to train on when the user named none (``None``: the model's)."""
        return None

    def begin_fit(self, model: torch.nn.Module) -> None:
        """Prepare a run of ``model`` (called before seeding)."""

    def parameters_changed(self) -> None:
        """The optimizer was rebuilt: the set of trainable parameters may differ."""

    def loss_forward(self, model: torch.nn.Module, *args, **kwargs):
        """Call ``model.loss(*args, **kwargs)``."""
        return model.loss(*args, **kwargs)

    def after_backward(self, model: torch.nn.Module) -> None:
        """Called between ``backward`` and the optimizer step."""

    def shard(self, indices, epoch: int, seed: int, shuffle: bool, pad: bool) -> torch.Tensor:
        """This rank's share of ``indices`` for ``epoch``."""
        return indices if isinstance(indices, torch.Tensor) else torch.as_tensor(np.asarray(indices))

    def shard_loader(self, loader, epoch: int, seed: int, pad: bool):
        """A tensor-batch loader over this rank's share of ``loader``'s samples."""
        return loader

    def shard_neighbor_loader(self, loader, epoch: int, seed: int, shuffle: bool, pad: bool):
        """A ``NeighborLoader`` over this rank's share of ``loader``'s seed nodes."""
        return loader

    def reduce_meter(self, meter) -> None:
        """Sum a :class:`~stepgraph.LossMeter` over the ranks, in place."""

    def gather(self, obj: Any) -> list:
        """``obj`` from every rank, in rank order."""
        return [obj]

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's weights to every rank."""

    def teardown(self) -> None:
        """Release what the strategy holds (the process group it initialised)."""


class DataParallel(SingleProcess):
    """Data-parallel training over a ``torch.distributed`` process group.

    The model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`
    at its first training forward (after the optimizer has decided which
    parameters train), seeds and samples are sharded with a permutation
    shared by all ranks, meters are all-reduced as sums and counts, and rank 0
    alone writes. A loss computed without the wrapper (a ``call_func`` calling
    ``model.loss`` itself) still has its gradients averaged.

    Parameters
    ----------
    device
        The device the model lives on.
    find_unused_parameters
        Passed to ``DistributedDataParallel``.
    """

    is_distributed = True
    lockstep = True

    def __init__(self, device: torch.device | None = None, find_unused_parameters: bool = False):
        self.device = device
        self.find_unused_parameters = find_unused_parameters
        self._wrapper = None
        self._wrapped_params: set[int] = set()
        self._synced_forward = False

    @property
    def rank(self) -> int:
        return rank()

    @property
    def world_size(self) -> int:
        return world_size()

    def default_device(self) -> torch.device | None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None

    def begin_fit(self, model: torch.nn.Module) -> None:
        # An earlier wrapper left for the garbage collector may talk to the
        # process group when freed: collect it here, at the same point on every
        # rank, not at a random moment mid-epoch.
        gc.collect()
        broadcast_module(model)  # every rank starts from rank 0's weights

    def parameters_changed(self) -> None:
        self._wrapper = None  # rebuilt at the next forward, over the new trainable set

    def _wrap(self, model: torch.nn.Module):
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        if self._wrapper is None or trainable != self._wrapped_params:
            from torch.nn.parallel import DistributedDataParallel

            device = self.device
            ids = [device.index] if device is not None and device.type == "cuda" else None
            self._wrapper = DistributedDataParallel(LossForward(model), device_ids=ids,
                                                    find_unused_parameters=self.find_unused_parameters)
            self._wrapped_params = trainable
        return self._wrapper

    def loss_forward(self, model: torch.nn.Module, *args, **kwargs):
        if model.training and torch.is_grad_enabled():
            self._synced_forward = True
            return self._wrap(model)(*args, **kwargs)
        return model.loss(*args, **kwargs)

    def after_backward(self, model: torch.nn.Module) -> None:
        if not self._synced_forward:  # the loss bypassed the wrapper
            all_reduce_gradients(model)
        self._synced_forward = False

    def shard(self, indices, epoch: int, seed: int, shuffle: bool, pad: bool) -> torch.Tensor:
        indices = indices.cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
        return torch.from_numpy(shard_indices(indices, epoch, seed, shuffle, pad))

    def shard_loader(self, loader, epoch: int, seed: int, pad: bool):
        from torch.utils.data import DataLoader, RandomSampler

        if loader is None:
            return None
        shuffle = isinstance(loader.sampler, RandomSampler)
        sampler = ShardSampler(len(loader.dataset), shuffle, seed=seed, pad=pad)
        sampler.set_epoch(epoch)
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                          collate_fn=loader.collate_fn, num_workers=loader.num_workers,
                          drop_last=loader.drop_last)

    def shard_neighbor_loader(self, loader, epoch: int, seed: int, shuffle: bool, pad: bool):
        from stepgraph.data.loaders import derive_neighbor_loader, loader_seeds

        if loader is None:
            return None
        seeds = self.shard(loader_seeds(loader), epoch, seed, shuffle, pad)
        return derive_neighbor_loader(loader, seeds, shuffle=False)

    def reduce_meter(self, meter) -> None:
        all_reduce_meter(meter)

    def gather(self, obj: Any) -> list:
        return all_gather_objects(obj)

    def broadcast_module(self, module: torch.nn.Module) -> None:
        broadcast_module(module)

    def teardown(self) -> None:
        self._wrapper = None
        destroy_owned_group()


def make_strategy(distributed: bool | None, device=None, find_unused_parameters: bool = False
                  ) -> SingleProcess:
    """The strategy for ``Trainer(distributed=...)``.

    ``None`` trains data-parallel when launched by ``torchrun`` (or inside a
    process group of more than one process), ``True`` requires it and
    ``False`` never does.
    """
    if distributed is False:
        return SingleProcess()
    if not init_distributed():
        if distributed:
            raise ValueError("distributed=True but no torch.distributed process group with more than "
                             "one process was found; launch with torchrun")
        return SingleProcess()
    return DataParallel(device, find_unused_parameters)
