"""Training paths: one object per way of feeding a model, built once per fit.

A path owns what differs between :meth:`~stepgraph.Trainer.train`,
:meth:`~stepgraph.Trainer.train_batch`, :meth:`~stepgraph.Trainer.train_node_sampler`
and :meth:`~stepgraph.Trainer.train_graph_batch`: its index checks, its
loaders (derived from the user's and sharded by the trainer's strategy), the
shuffling generators a resumed run must restore, and the one loss call that
trains and validates. The shared core (:func:`stepgraph.train.loop.run_epoch`)
asks a path three things per epoch: the training batches, the loss of a batch,
and the validation losses, which every path computes through the trainer's
public ``validate_*`` method, so a subclass overriding one changes every path
that uses it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from stepgraph._validation import as_index
from stepgraph.data.dataset import MODES
from stepgraph.data.loaders import derive_neighbor_loader, loader_seeds

__all__ = ["TrainingPath", "MatrixPath", "TensorBatchPath", "NodeSamplingPath",
           "FullNeighbourhoodPath", "to_device", "batch_weight", "graph_inputs",
           "matrix_loss_call", "tensor_loss_call", "graph_loss_call", "graph_call", "node_mask", "split_loaders",
           "predict_nodes", "takes_per_hop"]

#: ``loss_call(batch, step) -> (loss_dict, weight)``, or ``None`` to skip the batch.
LossCall = Callable[[Any, int], "tuple[Mapping[str, Any], float] | None"]


# ---------------------------------------------------------------- batch helpers
def to_device(obj, device):
    """``obj`` with every tensor in it (nested in tuples, lists, dicts) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def batch_weight(batch) -> int:
    """Number of samples in a tensor batch: the length of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    for item in batch:
        if isinstance(item, torch.Tensor) and item.dim() > 0:
            return item.shape[0]
    return 1


#: The per-hop counts a model's method may take, to trim each layer to what the next reads.
PER_HOP_INPUTS = {"num_sampled_nodes_per_hop": "num_sampled_nodes",
                  "num_sampled_edges_per_hop": "num_sampled_edges"}


@functools.lru_cache(maxsize=64)
def _takes_per_hop(func) -> bool:
    try:
        return all(name in inspect.signature(func).parameters for name in PER_HOP_INPUTS)
    except (TypeError, ValueError):
        return False


def takes_per_hop(method: Callable) -> bool:
    """Whether a model's method opts in to layer-wise trimming by naming the
    parameters ``num_sampled_nodes_per_hop`` and ``num_sampled_edges_per_hop``."""
    return _takes_per_hop(getattr(method, "__func__", method))


def graph_inputs(batch, dataset, device, per_hop: bool = False) -> dict[str, Any]:
    """Model inputs of a ``NeighborLoader`` batch: features of ``batch.n_id`` from
    ``dataset`` (sparse rows densified here), edges, edge weights and batch labels;
    with ``per_hop``, the batch's per-hop node and edge counts too (see
    :func:`takes_per_hop`)."""
    n_id = batch.n_id
    inputs = {"x": dataset.features(n_id).to(device, non_blocking=True),
              "edge_index": batch.edge_index.to(device, non_blocking=True)}
    if getattr(batch, "edge_weight", None) is not None:
        inputs["edge_weight"] = batch.edge_weight.to(device, non_blocking=True)
    if dataset.batch_label is not None:
        inputs["batch_label"] = dataset.labels("batch_label", n_id).to(device, non_blocking=True)
    if per_hop and all(getattr(batch, attr, None) is not None for attr in PER_HOP_INPUTS.values()):
        inputs.update({name: list(getattr(batch, attr)) for name, attr in PER_HOP_INPUTS.items()})
    return inputs


def predict_nodes(model: torch.nn.Module, func: Callable, gloader, dataset, device) -> torch.Tensor:
    """``func(x, edge_index, **inputs)`` for the seed nodes of every batch of ``gloader``,
    in eval mode without gradients: one row per graph node, on the CPU (zero for a
    node never a seed)."""
    was_training, out = model.training, None
    model.eval()
    try:
        with torch.no_grad():
            for batch in gloader:
                inputs = graph_inputs(batch, dataset, device, per_hop=takes_per_hop(func))
                pred = func(inputs.pop("x"), inputs.pop("edge_index"), **inputs)
                pred = pred[:batch.batch_size].detach().cpu()
                if out is None:
                    out = torch.zeros((gloader.data.num_nodes, *pred.shape[1:]), dtype=pred.dtype)
                out[batch.n_id[:batch.batch_size]] = pred
    finally:
        model.train(was_training)
    return out


def node_mask(ind, name: str, num_nodes: int) -> torch.Tensor | None:
    """Boolean mask of the nodes in ``ind`` (``None`` when ``ind`` is)."""
    if ind is None:
        return None
    mask = torch.zeros(num_nodes, dtype=torch.bool)
    mask[as_index(ind, name, num_nodes)] = True
    return mask


def split_loaders(loaders, name: str = "loaders"):
    """``(train_loader, valid_loader)`` from a loader or a pair (``valid_loader`` may be ``None``)."""
    if isinstance(loaders, (tuple, list)):
        if len(loaders) == 1:
            return loaders[0], None
        if len(loaders) != 2:
            raise ValueError(f"{name} must be a loader or a (train_loader, valid_loader) pair, "
                             f"got {len(loaders)} items")
        return loaders[0], loaders[1]
    return loaders, None


def _check_disjoint(train_ind: torch.Tensor, valid_ind: torch.Tensor | None) -> None:
    if valid_ind is not None:
        overlap = int(torch.isin(valid_ind, train_ind).sum())
        if overlap:
            raise ValueError(f"train_ind and valid_ind must be disjoint, got an overlap of {overlap} "
                             "positions")


# ------------------------------------------------------------------ loss calls
def matrix_loss_call(X, call: Callable, kwargs: Mapping[str, Any], device) -> LossCall:
    """Loss of the full-matrix path on a batch of row positions."""
    def loss_call(ind, step):
        return call(X, ind=ind.to(device), **kwargs), ind.numel()
    return loss_call


def tensor_loss_call(call: Callable) -> LossCall:
    """Loss of a tensor batch, weighted by its number of samples."""
    def loss_call(batch, step):
        return call(batch), batch_weight(batch)
    return loss_call


def graph_call(call: Callable, dataset) -> Callable:
    """``call`` in stepgraph's form ``call(batch, ind, step)`` (``ind``: local positions
    of the loss nodes).

    STEP's spatial models override ``handle_ginput_tuple(input_tuple, dataset, ind,
    step)`` with the dataset second and ``ind`` as global node ids; a callable whose
    second parameter is named ``dataset`` is taken to be of that form and adapted.
    """
    try:
        names = list(inspect.signature(call).parameters)
    except (TypeError, ValueError):  # a builtin or C callable: stepgraph's form
        return call
    if len(names) >= 2 and names[1] == "dataset":
        return lambda batch, ind, step: call(batch, dataset, batch.n_id[ind], step)
    return call


def graph_loss_call(trainer, mask: torch.Tensor | None, call: Callable) -> LossCall:
    """Loss of a ``NeighborLoader`` batch on its seed nodes, restricted to ``mask``.

    A batch without such seeds is skipped, except in training under a strategy
    whose ranks step in lockstep: there it contributes a zero loss of weight 0,
    so every rank runs the same synchronised backward passes.
    """
    def loss_call(batch, step):
        ind = torch.arange(batch.batch_size)
        if mask is not None:
            ind = mask[batch.n_id[:batch.batch_size]].nonzero().flatten()
            if ind.numel() == 0:
                if not (trainer.strategy.lockstep and trainer.model.training):
                    return None
                losses = call(batch, torch.zeros(1, dtype=torch.long), step)
                return {k: v * 0 if isinstance(v, torch.Tensor) else v for k, v in losses.items()}, 0
        return call(batch, ind, step), ind.numel()
    return loss_call


# ----------------------------------------------------------------------- paths
class TrainingPath:
    """What the shared core asks of a training path.

    Parameters
    ----------
    trainer
        The :class:`~stepgraph.Trainer` training along this path.

    Attributes
    ----------
    loss : callable
        ``loss(batch, step) -> (loss_dict, weight)`` or ``None`` (skip).
    generators : list[torch.Generator]
        The shuffling generators of the path's loaders, saved in checkpoints.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.generators: list[torch.Generator] = []
        self.loss: LossCall

    @property
    def _seed(self) -> int:
        return self.trainer.seed or 0

    def _track(self, *loaders) -> None:
        self.generators = [loader.generator for loader in loaders
                           if loader is not None and getattr(loader, "generator", None) is not None]

    def train_batches(self, epoch: int) -> Iterable:
        """The batches of one training epoch (this rank's share)."""
        raise NotImplementedError

    def validate(self, epoch: int) -> dict[str, float] | None:
        """The epoch's ``val_`` losses; ``None`` without a validation set."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """The generators' states."""
        return {"generators": [g.get_state() for g in self.generators]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Give the generators their saved states (same loaders as the saved run)."""
        saved = state["generators"]
        if len(saved) != len(self.generators):
            raise ValueError(f"the checkpoint holds {len(saved)} loader generator state(s) but the "
                             f"loaders given have {len(self.generators)}; resume with the same loaders "
                             "(same shuffle settings) as the interrupted run")
        for generator, generator_state in zip(self.generators, saved):
            generator.set_state(generator_state)


class MatrixPath(TrainingPath):
    """The whole matrix, one step per epoch (:meth:`~stepgraph.Trainer.train`).

    Rows ``train_ind`` train, rows ``valid_ind`` validate through
    :meth:`~stepgraph.Trainer.validate_X`; with only ``valid_ind`` given, the
    other rows train.
    """

    def __init__(self, trainer, X, train_ind=None, valid_ind=None, call_func: Callable | None = None,
                 **kwargs):
        super().__init__(trainer)
        self.X = to_device(torch.as_tensor(X), trainer.device)
        n = self.X.shape[0]
        self.valid_ind = None if valid_ind is None else as_index(valid_ind, "valid_ind", n)
        if train_ind is not None:
            self.train_ind = as_index(train_ind, "train_ind", n)
        elif self.valid_ind is not None:
            self.train_ind = torch.ones(n, dtype=torch.bool).index_fill_(0, self.valid_ind, False) \
                .nonzero().flatten()
        else:
            self.train_ind = torch.arange(n)
        _check_disjoint(self.train_ind, self.valid_ind)
        self.call_func, self.kwargs = call_func, kwargs
        self.loss = matrix_loss_call(self.X, call_func or trainer.loss, kwargs, trainer.device)

    def train_batches(self, epoch: int) -> list[torch.Tensor]:
        return [self.trainer.strategy.shard(self.train_ind, epoch, self._seed, shuffle=False, pad=True)]

    def validate(self, epoch: int) -> dict[str, float] | None:
        if self.valid_ind is None:
            return None
        return self.trainer.validate_X(self.X, ind=self.valid_ind, call_func=self.call_func, **self.kwargs)


class TensorBatchPath(TrainingPath):
    """Tensor mini-batches from ``make_loaders`` (:meth:`~stepgraph.Trainer.train_batch`)."""

    def __init__(self, trainer, loaders, call_func: Callable | None = None):
        super().__init__(trainer)
        self.train_loader, self.valid_loader = split_loaders(loaders)
        self.call_func = call_func
        mode = getattr(getattr(self.train_loader, "dataset", None), "mode", None)
        trainer.input_names = MODES.get(mode) if isinstance(mode, str) else None
        self.loss = tensor_loss_call(call_func or trainer.handle_input_tuple)
        self._track(self.train_loader, self.valid_loader)
        self._valid_shard = trainer.strategy.shard_loader(self.valid_loader, 0, self._seed, pad=False)

    def train_batches(self, epoch: int):
        return self.trainer.strategy.shard_loader(self.train_loader, epoch, self._seed, pad=True)

    def validate(self, epoch: int) -> dict[str, float] | None:
        if self._valid_shard is None:
            return None
        return self.trainer.validate_loader(self._valid_shard, call_func=self.call_func)


class _GraphPath(TrainingPath):
    def _bind(self, gloader, dataset) -> int:
        """Check that graph node ``i`` is dataset row ``i``; serve features from ``dataset``
        (the trainer's :attr:`~stepgraph.Trainer.graph_dataset` when ``None``, as STEP's
        ``train_graph_batch`` takes no dataset)."""
        if dataset is None:
            dataset = self.trainer.graph_dataset
            if dataset is None:
                raise TypeError("dataset must be the BaseDataset whose row i is graph node i, got "
                                "dataset=None and no trainer.graph_dataset to fall back on")
        if not hasattr(dataset, "features"):
            raise TypeError(f"dataset must be a stepgraph BaseDataset, got dataset of type "
                            f"{type(dataset).__name__}")
        num_nodes = gloader.data.num_nodes
        if num_nodes != len(dataset):
            raise ValueError(f"dataset must have one row per graph node, got {len(dataset)} rows; "
                             f"the graph has {num_nodes} nodes")
        self.trainer.graph_dataset = self.dataset = dataset
        return num_nodes

    def _set_loaders(self, train_loader, valid_loader, mask: torch.Tensor | None, call_func) -> None:
        """The loaders, the loss call on the seeds in ``mask`` and the validation shard."""
        trainer = self.trainer
        self.train_loader, self.valid_loader, self.call_func = train_loader, valid_loader, call_func
        self.loss = graph_loss_call(trainer, mask, graph_call(call_func or trainer.handle_ginput_tuple,
                                                              self.dataset))
        self._track(train_loader, valid_loader)
        self._valid_shard = trainer.strategy.shard_neighbor_loader(valid_loader, 0, self._seed,
                                                                   shuffle=False, pad=False)

    def train_batches(self, epoch: int):
        self.trainer.graph_dataset = self.dataset
        return self.trainer.strategy.shard_neighbor_loader(self.train_loader, epoch, self._seed,
                                                           shuffle=True, pad=True)

    def validate(self, epoch: int) -> dict[str, float] | None:
        if self._valid_shard is None:
            return None
        self.trainer.graph_dataset = self.dataset
        return self.trainer.validate_gloader(self._valid_shard, call_func=self.call_func)


class NodeSamplingPath(_GraphPath):
    """Sampled neighbourhoods of seed nodes (:meth:`~stepgraph.Trainer.train_node_sampler`).

    ``gloader`` is a ``NeighborLoader`` or a ``(train, valid)`` pair. Given
    ``train_ind`` / ``valid_ind``, loaders over those seeds are derived from
    it (same graph, sampler and batch size); with only ``valid_ind``, the
    loader's other seeds train.
    """

    def __init__(self, trainer, gloader, dataset=None, train_ind=None, valid_ind=None,
                 call_func: Callable | None = None):
        super().__init__(trainer)
        train_loader, valid_loader = split_loaders(gloader, "gloader")
        num_nodes = self._bind(train_loader, dataset)
        dataset = self.dataset
        train = None if train_ind is None else as_index(train_ind, "train_ind", num_nodes)
        valid = None if valid_ind is None else as_index(valid_ind, "valid_ind", num_nodes)
        if train is None and valid is not None:
            seeds = loader_seeds(train_loader)
            train = seeds[~torch.isin(seeds, valid)]
        if train is not None:
            _check_disjoint(train, valid)
            train_loader = derive_neighbor_loader(train_loader, train, shuffle=True)
        if valid is not None and valid_loader is None:
            valid_loader = derive_neighbor_loader(train_loader, valid, shuffle=False)
        if valid_loader is not None:
            _check_disjoint(loader_seeds(train_loader), loader_seeds(valid_loader))
        self._set_loaders(train_loader, valid_loader, None, call_func)


class FullNeighbourhoodPath(_GraphPath):
    """Every node with its full neighbourhood, losses masked to ``train_ind``
    (:meth:`~stepgraph.Trainer.train_graph_batch`).

    Validation visits the nodes of ``valid_ind`` with their full
    neighbourhoods (a loader derived from ``gloader``, not shuffled); with only
    ``valid_ind`` given, every other node trains.
    """

    def __init__(self, trainer, gloader, dataset=None, train_ind=None, valid_ind=None,
                 call_func: Callable | None = None):
        super().__init__(trainer)
        num_nodes = self._bind(gloader, dataset)
        dataset = self.dataset
        train = None if train_ind is None else as_index(train_ind, "train_ind", num_nodes)
        valid = None if valid_ind is None else as_index(valid_ind, "valid_ind", num_nodes)
        if train is not None:
            _check_disjoint(train, valid)
        train_mask = node_mask(train, "train_ind", num_nodes)
        if train_mask is None and valid is not None:
            train_mask = ~node_mask(valid, "valid_ind", num_nodes)  # never train on validation nodes
        valid_loader = None if valid is None else derive_neighbor_loader(gloader, valid, shuffle=False)
        self._set_loaders(gloader, valid_loader, train_mask, call_func)
