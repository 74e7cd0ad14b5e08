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
holds a strategy (:mod:`stepgraph.train.strategies`) and asks it to wrap the
loss forward, shard seeds and loaders, reduce meters and broadcast weights.
The functions below are the process-group helpers the strategies use.
"""

from __future__ import annotations

import atexit
import gc
import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "init_distributed",
    "is_distributed",
    "rank",
    "world_size",
    "is_main_process",
    "shard_indices",
    "ShardSampler",
    "all_reduce_meter",
    "all_reduce_gradients",
    "broadcast_module",
    "all_gather_objects",
    "LossForward",
    "destroy_owned_group",
]

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


def init_distributed(backend: str | None = None, timeout: float | None = None) -> bool:
    """Join the process group described by the environment, if any.

    Does nothing when a group is already initialised or when ``WORLD_SIZE`` is
    unset or 1 (a plain ``python`` run).

    Parameters
    ----------
    backend
        ``"gloo"`` or ``"nccl"``; by default nccl when CUDA is available, gloo
        otherwise.
    timeout
        Seconds a collective waits for the other ranks before it fails with an
        error (torch's ``DistBackendError``), so that a rank that stops answering
        cannot block the others forever; torch's default when ``None``.

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
    if timeout is None:
        dist.init_process_group(backend=backend)
    else:
        from datetime import timedelta

        dist.init_process_group(backend=backend, timeout=timedelta(seconds=float(timeout)))
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


def shard_indices(indices: np.ndarray, epoch: int, seed: int, shuffle: bool = True, pad: bool = False) -> np.ndarray:
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
    return indices[rank() :: world]


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
        return iter(shard_indices(np.arange(self.n), self.epoch, self.seed, self.shuffle, self.pad).tolist())

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
    reduced = packed.cpu().tolist()
    meter.load_state(
        {k: reduced[i] for i, k in enumerate(keys)}, {k: reduced[len(keys) + i] for i, k in enumerate(keys)}
    )


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
        p.grad = flat[offset : offset + n].view_as(p).clone()
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
    synchronises the gradients of its backward pass.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args, _method: str = "loss", **kwargs):
        return getattr(self.model, _method)(*args, **kwargs)
