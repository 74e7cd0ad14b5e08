"""Feeds: one object per way of feeding a model, built once per fit.

A feed owns what differs between :meth:`~stepgraph.Trainer.train`,
:meth:`~stepgraph.Trainer.train_batch`, :meth:`~stepgraph.Trainer.train_node_sampler`
and :meth:`~stepgraph.Trainer.train_graph_batch`: its index checks, its
loaders (derived from the user's and sharded by the trainer's strategy), the
shuffling generators a resumed run must restore, and the one loss call that
trains and validates. A feed reads the trainer (its strategy, device and
hooks) and holds its own state; it never writes to the trainer. The shared
core (:func:`stepgraph.train.epoch.run_epoch`) asks a feed three things per
epoch: the training batches, the loss of a batch, and the validation losses,
which every feed computes through the trainer's public ``validate_*`` method,
so a subclass overriding one changes every feed that uses it.

The graph methods adapt to the loader (:func:`for_loader`): a PyG
``NeighborLoader`` gets :class:`NodeSamplingFeed` or
:class:`FullNeighbourhoodFeed` (seed nodes, ``n_id`` gathers, sharding,
trimming); any other iterable gets :class:`LoaderFeed`, which iterates it as
it is and hands each batch to STEP's ``handle_ginput_tuple(batch, dataset,
ind, step)`` or to the user's ``call_func``.

Every loss call returns ``(loss_dict, weight)``: epoch means are weighted by
the number of samples (rows, seed nodes, loss nodes) of each batch, so they
are means per sample, not STEP's means of per-batch means.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

import torch

from stepgraph._validation import as_index
from stepgraph.data.dataset import MODES
from stepgraph.data.gather import FEATURES_GATHERED
from stepgraph.data.loaders import derive_neighbor_loader, loader_seeds

__all__ = [
    "Feed",
    "MatrixFeed",
    "TensorBatchFeed",
    "NodeSamplingFeed",
    "FullNeighbourhoodFeed",
    "LoaderFeed",
    "for_loader",
    "is_neighbor_loader",
    "to_device",
    "batch_weight",
    "graph_batch_weight",
    "graph_inputs",
    "matrix_loss_call",
    "tensor_loss_call",
    "graph_loss_call",
    "graph_call",
    "loader_call",
    "loader_validation",
    "node_mask",
    "split_loaders",
    "predict_nodes",
    "takes_per_hop",
]

#: ``loss_call(batch, step) -> (loss_dict, weight)``, or ``None`` to skip the batch.
LossCall = Callable[[Any, int], "tuple[Mapping[str, Any], float] | None"]


# ---------------------------------------------------------------- batch helpers
def to_device(obj, device):
    """``obj`` with every tensor in it (nested in tuples, lists, dicts) moved to ``device``.

    To a CUDA device, a CPU tensor is first copied to pinned (page-locked) memory,
    so that the copy is asynchronous (``non_blocking``) and overlaps the GPU's work.
    """
    if isinstance(obj, torch.Tensor):
        if obj.device.type == "cpu" and torch.device(device).type == "cuda":
            obj = obj.pin_memory()
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def graph_batch_weight(batch) -> int:
    """Samples in a batch of a non-PyG graph loader, for the per-sample means: the
    output nodes of a DGL block batch ``(input_nodes, output_nodes, blocks)``, else
    its number of nodes (``num_nodes``: an attribute in PyG, a method in DGL), else 1
    (each batch then weighs the same, as in STEP).
    """
    if isinstance(batch, (tuple, list)) and len(batch) == 3 and isinstance(batch[1], torch.Tensor):
        return batch[1].numel()
    nodes = getattr(batch, "num_nodes", None)
    nodes = nodes() if callable(nodes) else nodes
    return int(nodes) if isinstance(nodes, int) and nodes > 0 else 1


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
PER_HOP_INPUTS = {"num_sampled_nodes_per_hop": "num_sampled_nodes", "num_sampled_edges_per_hop": "num_sampled_edges"}


@functools.lru_cache(maxsize=64)
def _takes_per_hop(func) -> bool:
    try:
        return all(name in inspect.signature(func).parameters for name in PER_HOP_INPUTS)
    except (TypeError, ValueError):
        return False


def takes_per_hop(method: Callable, per_hop: bool | None = None) -> bool:
    """Whether a model's method receives the per-hop counts (layer-wise trimming): as
    ``per_hop`` says (the Trainer's ``per_hop``), or, when it is ``None``, when the method
    names the parameters ``num_sampled_nodes_per_hop`` and ``num_sampled_edges_per_hop``.
    """
    if per_hop is not None:
        return bool(per_hop)
    return _takes_per_hop(getattr(method, "__func__", method))


def graph_inputs(batch, dataset, device, per_hop: bool = False) -> dict[str, Any]:
    """Model inputs of a ``NeighborLoader`` batch: the features of ``batch.n_id`` (those
    the loader gathered, :class:`~stepgraph.data.gather.GatherFeatures`, else read from
    ``dataset`` here, sparse rows densified), edges, edge weights and batch labels;
    with ``per_hop``, the batch's per-hop node and edge counts too (see
    :func:`takes_per_hop`).
    """
    n_id = batch.n_id
    if getattr(batch, FEATURES_GATHERED, False):  # the loader read them (GatherFeatures)
        x, labels = batch.x, getattr(batch, "batch_label", None)
    else:
        x = dataset.features(n_id)
        labels = dataset.labels("batch_label", n_id) if dataset.batch_label is not None else None
    inputs = {"x": to_device(x, device), "edge_index": to_device(batch.edge_index, device)}
    if getattr(batch, "edge_weight", None) is not None:
        inputs["edge_weight"] = to_device(batch.edge_weight, device)
    if labels is not None:
        inputs["batch_label"] = to_device(labels, device)
    if per_hop and all(getattr(batch, attr, None) is not None for attr in PER_HOP_INPUTS.values()):
        inputs.update({name: list(getattr(batch, attr)) for name, attr in PER_HOP_INPUTS.items()})
    return inputs


def predict_nodes(model: torch.nn.Module, func: Callable, gloader, dataset, device) -> torch.Tensor:
    """``func(x, edge_index, **inputs)`` for the seed nodes of every batch of ``gloader``,
    in eval mode without gradients: one row per graph node, on the CPU (zero for a
    node never a seed).
    """
    was_training, out = model.training, None
    model.eval()
    try:
        with torch.no_grad():
            for batch in gloader:
                inputs = graph_inputs(batch, dataset, device, per_hop=takes_per_hop(func))
                pred = func(inputs.pop("x"), inputs.pop("edge_index"), **inputs)
                pred = pred[: batch.batch_size].detach().cpu()
                if out is None:
                    out = torch.zeros((gloader.data.num_nodes, *pred.shape[1:]), dtype=pred.dtype)
                out[batch.n_id[: batch.batch_size]] = pred
    finally:
        model.train(was_training)
    return cast(torch.Tensor, out)  # None only when gloader has no batch


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
            raise ValueError(
                f"{name} must be a loader or a (train_loader, valid_loader) pair, got {len(loaders)} items"
            )
        return loaders[0], loaders[1]
    return loaders, None


def _check_disjoint(train_ind: torch.Tensor, valid_ind: torch.Tensor | None) -> None:
    if valid_ind is not None:
        overlap = int(torch.isin(valid_ind, train_ind).sum())
        if overlap:
            raise ValueError(f"train_ind and valid_ind must be disjoint, got an overlap of {overlap} positions")


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


def is_neighbor_loader(loader) -> bool:
    """Whether ``loader`` is a PyG ``NeighborLoader`` (seed nodes, ``n_id``, shardable)."""
    from torch_geometric.loader import NeighborLoader

    return isinstance(loader, NeighborLoader)


#: How a graph loss call is called (the Trainer's ``call_form``): told by its parameters' names
#: (``"auto"``), or always STEP's ``(input_tuple, dataset, ind, step)``, or always ``(batch, ind, step)``.
CALL_FORMS = ("auto", "step", "stepgraph")


def _steps_form(call: Callable, form: str = "auto") -> bool:
    """Whether ``call`` is called in STEP's form ``(input_tuple, dataset, ind, step)``:
    as ``form`` says, or, with ``"auto"``, when its second parameter is named ``dataset``.
    """
    if form != "auto":
        return form == "step"
    try:
        names = list(inspect.signature(call).parameters)
    except (TypeError, ValueError):  # a builtin or C callable: stepgraph's form
        return False
    return len(names) >= 2 and names[1] == "dataset"


def graph_call(call: Callable, dataset, form: str = "auto") -> Callable:
    """``call`` in stepgraph's form ``call(batch, ind, step)`` (``ind``: local positions
    of the loss nodes).

    STEP's spatial models override ``handle_ginput_tuple(input_tuple, dataset, ind,
    step)`` with the dataset second and ``ind`` as global node ids; a callable of
    that ``form`` (see :data:`CALL_FORMS`) is adapted.
    """
    if _steps_form(call, form):
        return lambda batch, ind, step: call(batch, dataset, batch.n_id[ind], step)
    return call


def loader_call(trainer, call_func: Callable | None, dataset, loader) -> Callable:
    """The loss call of a non-PyG graph loader's batches, in stepgraph's form
    ``call(batch, ind, step)`` (``ind``: global node ids, or ``None``).

    ``call_func`` (or, without one, the trainer's ``handle_ginput_tuple``) is
    called in STEP's form ``(batch, dataset, ind, step)`` when its second
    parameter is named ``dataset``, else as ``(batch, ind, step)``. The
    Trainer's own ``handle_ginput_tuple`` reads ``NeighborLoader`` batches only:
    a clear ``TypeError`` says what to do instead.
    """
    call = call_func or trainer.handle_ginput_tuple
    if _steps_form(call, trainer.call_form):
        return lambda batch, ind, step: call(batch, dataset, ind, step)
    if call_func is None and getattr(call, "reads_neighbor_batches_only", False):  # the Trainer's own
        raise TypeError(
            f"gloader of type {type(loader).__name__} is not a torch_geometric NeighborLoader, "
            "whose batches the Trainer's own handle_ginput_tuple reads; override "
            "handle_ginput_tuple(self, input_tuple, dataset, ind, step) (STEP's form) in a "
            "subclass, or pass call_func=, to compute the loss of its batches"
        )
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
            ind = mask[batch.n_id[: batch.batch_size]].nonzero().flatten()
            if ind.numel() == 0:
                if not (trainer.strategy.lockstep and trainer.model.training):
                    return None
                losses = call(batch, torch.zeros(1, dtype=torch.long), step)
                return {k: v * 0 if isinstance(v, torch.Tensor) else v for k, v in losses.items()}, 0
        return call(batch, ind, step), ind.numel()

    return loss_call


# ----------------------------------------------------------------------- feeds
class Feed:
    """What the shared core asks of a feed.

    Parameters
    ----------
    trainer
        The :class:`~stepgraph.Trainer` training on this feed (read, never written).

    Attributes
    ----------
    loss : callable
        ``loss(batch, step) -> (loss_dict, weight)`` or ``None`` (skip).
    generators : list[torch.Generator]
        The shuffling generators of the feed's loaders, saved in checkpoints.
    dataset : object or None
        The dataset serving node features (graph feeds).
    input_names : tuple[str, ...] or None
        Names of the members of a tensor batch tuple (tensor feeds).
    """

    dataset: Any = None
    input_names: tuple[str, ...] | None = None

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.generators: list[torch.Generator] = []
        self.loss: LossCall

    @property
    def seed(self) -> int:
        """Seed of the permutation that shards the data over ranks (the trainer's, or 0)."""
        return self.trainer.seed or 0

    def _track(self, *loaders) -> None:
        self.generators = [
            loader.generator
            for loader in loaders
            if loader is not None and getattr(loader, "generator", None) is not None
        ]

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
            raise ValueError(
                f"the checkpoint holds {len(saved)} loader generator state(s) but the "
                f"loaders given have {len(self.generators)}; resume with the same loaders "
                "(same shuffle settings) as the interrupted run"
            )
        for generator, generator_state in zip(self.generators, saved):
            generator.set_state(generator_state)


class MatrixFeed(Feed):
    """The whole matrix, one step per epoch (:meth:`~stepgraph.Trainer.train`).

    Rows ``train_ind`` train, rows ``valid_ind`` validate through
    :meth:`~stepgraph.Trainer.validate_X`; with only ``valid_ind`` given, the
    other rows train.
    """

    def __init__(self, trainer, X, train_ind=None, valid_ind=None, call_func: Callable | None = None, **kwargs):
        super().__init__(trainer)
        self.X = to_device(torch.as_tensor(X), trainer.device)
        n = self.X.shape[0]
        self.valid_ind = None if valid_ind is None else as_index(valid_ind, "valid_ind", n)
        if train_ind is not None:
            self.train_ind = as_index(train_ind, "train_ind", n)
        elif self.valid_ind is not None:
            self.train_ind = _complement(self.valid_ind, n)
        else:
            self.train_ind = torch.arange(n)
        _check_disjoint(self.train_ind, self.valid_ind)
        self.call_func, self.kwargs = call_func, kwargs
        self.loss = matrix_loss_call(self.X, call_func or trainer.loss, kwargs, trainer.device)

    def train_batches(self, epoch: int) -> list[torch.Tensor]:
        return [self.trainer.strategy.shard(self.train_ind, epoch, self.seed, shuffle=False, pad=True)]

    def validate(self, epoch: int) -> dict[str, float] | None:
        if self.valid_ind is None:
            return None
        return self.trainer.validate_X(self.X, ind=self.valid_ind, call_func=self.call_func, **self.kwargs)


class TensorBatchFeed(Feed):
    """Tensor mini-batches from ``make_loaders`` (:meth:`~stepgraph.Trainer.train_batch`).

    The members of a batch tuple are named by the loader's dataset mode
    (:attr:`input_names`) when it has one.
    """

    def __init__(self, trainer, loaders, call_func: Callable | None = None):
        super().__init__(trainer)
        self.train_loader, self.valid_loader = split_loaders(loaders)
        self.call_func = call_func
        mode = getattr(getattr(self.train_loader, "dataset", None), "mode", None)
        self.input_names = MODES.get(mode) if isinstance(mode, str) else None
        self.loss = tensor_loss_call(call_func or trainer.handle_input_tuple)
        self._track(self.train_loader, self.valid_loader)
        self._valid_shard = trainer.strategy.shard_loader(self.valid_loader, 0, self.seed, pad=False)

    def train_batches(self, epoch: int):
        return self.trainer.strategy.shard_loader(self.train_loader, epoch, self.seed, pad=True)

    def validate(self, epoch: int) -> dict[str, float] | None:
        if self._valid_shard is None:
            return None
        return self.trainer.validate_loader(self._valid_shard, call_func=self.call_func)


def _graph_dataset(trainer, dataset):
    """``dataset``, or the trainer's :attr:`~stepgraph.Trainer.graph_dataset` (the last one
    used) when ``None``, as STEP's ``train_graph_batch`` may be called without one.
    """
    return dataset if dataset is not None else trainer.graph_dataset


class _NeighborLoaderFeed(Feed):
    """The shared part of the two ``NeighborLoader`` feeds."""

    def _bind(self, gloader, dataset) -> int:
        """Check that graph node ``i`` is dataset row ``i``; features come from the dataset."""
        dataset = _graph_dataset(self.trainer, dataset)
        if dataset is None:
            raise TypeError(
                "dataset must be the dataset whose row i is graph node i, got dataset=None "
                "and no trainer.graph_dataset to fall back on"
            )
        if not hasattr(dataset, "features"):
            raise TypeError(
                f"dataset must be a stepgraph BaseDataset (the Trainer's handle_ginput_tuple "
                f"reads its features), got dataset of type {type(dataset).__name__}"
            )
        num_nodes = gloader.data.num_nodes
        if num_nodes != len(dataset):
            raise ValueError(
                f"dataset must have one row per graph node, got {len(dataset)} rows; the graph has {num_nodes} nodes"
            )
        self.dataset = dataset
        return num_nodes

    def _set_loaders(self, train_loader, valid_loader, mask: torch.Tensor | None, call_func) -> None:
        """The loaders, the loss call on the seeds in ``mask`` and the validation shard."""
        trainer = self.trainer
        self.train_loader, self.valid_loader, self.call_func = train_loader, valid_loader, call_func
        self.loss = graph_loss_call(
            trainer, mask, graph_call(call_func or trainer.handle_ginput_tuple, self.dataset, trainer.call_form)
        )
        self._track(train_loader, valid_loader)
        self._valid_shard = trainer.strategy.shard_neighbor_loader(valid_loader, 0, self.seed, shuffle=False, pad=False)

    def train_batches(self, epoch: int):
        return self.trainer.strategy.shard_neighbor_loader(self.train_loader, epoch, self.seed, shuffle=True, pad=True)

    def validate(self, epoch: int) -> dict[str, float] | None:
        if self._valid_shard is None:
            return None
        return self.trainer.validate_gloader(self._valid_shard, dataset=self.dataset, call_func=self.call_func)


class NodeSamplingFeed(_NeighborLoaderFeed):
    """Sampled neighbourhoods of seed nodes (:meth:`~stepgraph.Trainer.train_node_sampler`).

    ``gloader`` is a ``NeighborLoader`` or a ``(train, valid)`` pair. Given
    ``train_ind`` / ``valid_ind``, loaders over those seeds are derived from
    it (same graph, sampler and batch size); with only ``valid_ind``, the
    loader's other seeds train.
    """

    def __init__(
        self, trainer, gloader, dataset=None, train_ind=None, valid_ind=None, call_func: Callable | None = None
    ):
        super().__init__(trainer)
        train_loader, valid_loader = split_loaders(gloader, "gloader")
        num_nodes = self._bind(train_loader, dataset)
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


class FullNeighbourhoodFeed(_NeighborLoaderFeed):
    """Every node with its full neighbourhood, losses masked to ``train_ind``
    (:meth:`~stepgraph.Trainer.train_graph_batch`).

    Validation visits the nodes of ``valid_ind`` with their full
    neighbourhoods (a loader derived from ``gloader``, not shuffled); with only
    ``valid_ind`` given, every other node trains.
    """

    def __init__(
        self, trainer, gloader, dataset=None, train_ind=None, valid_ind=None, call_func: Callable | None = None
    ):
        super().__init__(trainer)
        num_nodes = self._bind(gloader, dataset)
        train = None if train_ind is None else as_index(train_ind, "train_ind", num_nodes)
        valid = None if valid_ind is None else as_index(valid_ind, "valid_ind", num_nodes)
        if train is not None:
            _check_disjoint(train, valid)
        train_mask = node_mask(train, "train_ind", num_nodes)
        if train_mask is None and valid is not None:
            # never train on validation nodes (valid is not None: node_mask returns a mask)
            train_mask = ~cast(torch.Tensor, node_mask(valid, "valid_ind", num_nodes))
        valid_loader = None if valid is None else derive_neighbor_loader(gloader, valid, shuffle=False)
        self._set_loaders(gloader, valid_loader, train_mask, call_func)


class LoaderFeed(Feed):
    """Any other graph loader, iterated as it is: a DGL loader, a list of subgraphs,
    or a function returning a fresh iterable each epoch (a generator function).

    Each batch goes to ``call_func`` or the trainer's ``handle_ginput_tuple``, in
    STEP's form ``(batch, dataset, ind, step)`` when its second parameter is
    named ``dataset`` (see :func:`loader_call`), with ``ind`` the global ids of
    ``train_ind`` in training and of ``valid_ind`` in validation (``None`` when
    not given; with only ``valid_ind`` and a dataset, every other row trains).
    Masking the loss to ``ind`` is the loss call's business. Validation runs
    over the pair's validation loader, or over ``gloader`` again when only
    ``valid_ind`` is given, through :meth:`~stepgraph.Trainer.validate_gloader`;
    batches weigh :func:`graph_batch_weight`. stepgraph cannot shard such a
    loader over ranks: under DDP it is refused.

    Parameters
    ----------
    trainer
        The trainer.
    gloader
        The loader, or a ``tuple`` ``(train_loader, valid_loader)`` (a ``list``
        is one loader: a list of subgraphs).
    dataset
        Passed to the loss call (STEP's ``StDataset``, or anything it reads);
        the trainer's :attr:`~stepgraph.Trainer.graph_dataset` when ``None``.
    train_ind, valid_ind
        Rows (node ids) to train and validate on.
    call_func
        The loss call (see above).
    """

    def __init__(
        self, trainer, gloader, dataset=None, train_ind=None, valid_ind=None, call_func: Callable | None = None
    ):
        super().__init__(trainer)
        train_loader, valid_loader = gloader if isinstance(gloader, tuple) and len(gloader) == 2 else (gloader, None)
        for name, loader in (("gloader", train_loader), ("the validation loader", valid_loader)):
            _check_reiterable(loader, name)
        if trainer.strategy.is_distributed:
            raise ValueError(
                f"gloader of type {type(train_loader).__name__} cannot be sharded over ranks: "
                "in distributed training stepgraph shards only torch_geometric NeighborLoaders "
                "(stepgraph.node_loaders / stepgraph.graph_loader)"
            )
        self.dataset = _graph_dataset(trainer, dataset)
        n = len(self.dataset) if hasattr(self.dataset, "__len__") else None
        train, valid = _as_ids(train_ind, "train_ind", n), _as_ids(valid_ind, "valid_ind", n)
        if train is None and valid is not None and n is not None:
            train = _complement(valid, n)  # never train on validation nodes
        if train is not None:
            _check_disjoint(train, valid)
        self.train_loader, self.train_ind, self.valid_ind, self.call_func = train_loader, train, valid, call_func
        self.valid_loader = valid_loader if valid_loader is not None or valid is None else train_loader
        self.loss = _loader_loss(loader_call(trainer, call_func, self.dataset, train_loader), train)
        self._track(train_loader, valid_loader)

    def train_batches(self, epoch: int) -> Iterable:
        return _batches(self.train_loader)

    def validate(self, epoch: int) -> dict[str, float] | None:
        if self.valid_loader is None:
            return None
        return self.trainer.validate_gloader(
            self.valid_loader, valid_ind=self.valid_ind, dataset=self.dataset, call_func=self.call_func
        )


def for_loader(neighbor_feed: type) -> Callable:
    """The feed factory of a graph method: ``neighbor_feed`` for a PyG ``NeighborLoader``
    (or a pair of them), :class:`LoaderFeed` for any other loader.
    """

    def build(trainer, gloader, *args, **kwargs) -> Feed:
        first = gloader[0] if isinstance(gloader, (tuple, list)) and gloader else gloader
        cls = neighbor_feed if is_neighbor_loader(first) else LoaderFeed
        return cls(trainer, gloader, *args, **kwargs)

    build.__name__ = build.__qualname__ = f"for_loader({neighbor_feed.__name__})"
    return build


def loader_validation(trainer, loader, valid_ind, call_func: Callable | None) -> tuple[Iterable, LossCall]:
    """The batches and loss call with which :meth:`~stepgraph.Trainer.validate_gloader`
    evaluates a non-PyG loader: every batch, ``ind`` the global ids of ``valid_ind``.
    """
    dataset = trainer.graph_dataset
    ind = _as_ids(valid_ind, "valid_ind", len(dataset) if hasattr(dataset, "__len__") else None)
    return _batches(loader), _loader_loss(loader_call(trainer, call_func, dataset, loader), ind)


def _loader_loss(call: Callable, ind: torch.Tensor | None) -> LossCall:
    def loss_call(batch, step):
        return call(batch, ind, step), graph_batch_weight(batch)

    return loss_call


def _batches(loader) -> Iterable:
    """The batches of a non-PyG loader: the loader itself, or what a function returns."""
    return loader() if callable(loader) and not isinstance(loader, Iterable) else loader


def _check_reiterable(loader, name: str) -> None:
    if loader is None:
        return
    if isinstance(loader, Iterator):
        raise TypeError(
            f"{name} must be iterable once per epoch, got a one-shot iterator of type "
            f"{type(loader).__name__}; pass a list, a loader, or a function returning a "
            "fresh generator each epoch"
        )
    if not (isinstance(loader, Iterable) or callable(loader)):
        raise TypeError(f"{name} must be a loader (an iterable of batches), got {name} of type {type(loader).__name__}")


def _as_ids(ind, name: str, n: int | None) -> torch.Tensor | None:
    if ind is None:
        return None
    return as_index(ind, name, n) if n is not None else torch.as_tensor(ind, dtype=torch.long)


def _complement(ind: torch.Tensor, n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool).index_fill_(0, ind, False).nonzero().flatten()
