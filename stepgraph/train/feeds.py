"""Feeds: one object per way of feeding a model, built once per fit.

A feed owns what differs between :meth:`~stepgraph.Trainer.train`,
:meth:`~stepgraph.Trainer.train_batch`, :meth:`~stepgraph.Trainer.train_node_sampler`
and :meth:`~stepgraph.Trainer.train_graph_batch`: its index checks, its
loaders (derived from the user's and sharded by the trainer's strategy), the
shuffling generators a resumed run must restore, and the one loss call that
trains and validates. A feed is built from a :class:`FeedContext` (the
strategy, the device, the default loss calls and the validation calls), not
from the trainer: :meth:`~stepgraph.Trainer.feed_context` builds one, and a
test or another engine can build its own. The shared core
(:func:`stepgraph.train.epoch.run_epoch`) asks a feed three things per epoch:
the training batches, the loss of a batch, and the validation losses, which
every feed computes through the context's validation calls (the trainer's
public ``validate_*`` methods, so a subclass overriding one changes every feed
that uses it).

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

import copy
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch

from stepgraph._validation import as_index
from stepgraph.data.dataset import MODES
from stepgraph.data.gather import FEATURES_GATHERED
from stepgraph.data.loaders import derive_neighbor_loader, loader_seeds
from stepgraph.data.split import check_disjoint, train_valid_split
from stepgraph.train.step_adapter import PER_HOP_INPUTS, names_per_hop, steps_form

__all__ = [
    "FeedContext",
    "Feed",
    "MatrixFeed",
    "TensorBatchFeed",
    "NodeSamplingFeed",
    "FullNeighbourhoodFeed",
    "LoaderFeed",
    "for_loader",
    "is_neighbor_loader",
    "to_device",
    "loader_batches",
    "holds_tensor_batches",
    "on_device",
    "batch_to",
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


def batch_to(batch, device):
    """A PyG batch on ``device``: a shallow copy moved (``Data.to`` moves in place, and the
    batch may be your own ``Data``); anything else through :func:`to_device`.
    """
    if _is_pyg_batch(batch):
        return copy.copy(batch).to(device)
    return to_device(batch, device)


def on_device(call: Callable, device) -> Callable:
    """``call`` with its first argument (a batch: a PyG ``Data``, a tensor or a tuple of
    them) and a tensor second argument (``ind``) moved to ``device`` first.
    """

    def moved(batch, *args):
        args = tuple(to_device(a, device) if isinstance(a, torch.Tensor) else a for a in args)
        return call(batch_to(batch, device), *args)

    return moved


def graph_batch_weight(batch) -> int:
    """Samples in a batch of a non-``NeighborLoader`` graph loader, for the per-sample means:
    the supervision edges of a link-level batch (``edge_label_index``, from a PyG
    ``LinkNeighborLoader``), the output nodes of a DGL block batch ``(input_nodes,
    output_nodes, blocks)``, else its number of nodes (``num_nodes``: an attribute in
    PyG, a method in DGL), else 1 (each batch then weighs the same, as in STEP).
    """
    edge_label_index = getattr(batch, "edge_label_index", None)
    if isinstance(edge_label_index, torch.Tensor) and edge_label_index.dim() == 2:
        return int(edge_label_index.shape[1])
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


def takes_per_hop(method: Callable, per_hop: bool | None = None) -> bool:
    """Whether a model's method receives the per-hop counts (layer-wise trimming): as
    ``per_hop`` says (the Trainer's ``per_hop``), or, when it is ``None``, when the method
    names the parameters ``num_sampled_nodes_per_hop`` and ``num_sampled_edges_per_hop``.
    """
    if per_hop is not None:
        return bool(per_hop)
    return names_per_hop(method)


#: Attributes of a ``NeighborLoader`` batch that describe the sampling, not the nodes: never
#: passed to a model's method as node attributes.
SAMPLING_ATTRIBUTES = frozenset(
    {"x", "edge_index", "edge_weight", "batch_label", "n_id", "e_id", "input_id", "batch_size", "batch", "ptr"}
    | set(PER_HOP_INPUTS.values())
    | {FEATURES_GATHERED}
)


def _named_parameters(func: Callable) -> frozenset[str]:
    """The parameters ``func`` names (looked up once per function, not per batch)."""
    return _parameters_of(getattr(func, "__func__", func))


@functools.lru_cache(maxsize=64)
def _parameters_of(func: Callable) -> frozenset[str]:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def graph_inputs(batch, dataset, device, per_hop: bool = False, method: Callable | None = None) -> dict[str, Any]:
    """Model inputs of a ``NeighborLoader`` batch.

    - ``x``: the features of ``batch.n_id``: those the loader gathered
      (:class:`~stepgraph.data.gather.GatherFeatures`), else read from ``dataset``
      here (sparse rows densified), else, without a dataset, the batch's own
      ``x`` (a PyG ``Data`` as it is);
    - ``edge_index``, and ``edge_weight`` and ``batch_label`` when there are;
    - with ``per_hop``, the batch's per-hop node and edge counts (see :func:`takes_per_hop`);
    - every other attribute of the batch (``y``, ``edge_attr``, masks, ...) that
      ``method`` names as a parameter, by that name, as a PyG loop sees them.
    """
    n_id = batch.n_id
    if getattr(batch, FEATURES_GATHERED, False) or dataset is None:  # the loader's, or the user's Data
        x, labels = getattr(batch, "x", None), getattr(batch, "batch_label", None)
        if x is None:
            raise ValueError(
                "the batch has no x: pass dataset= (a stepgraph BaseDataset whose row i is graph node i) "
                "or give the graph node features in data.x"
            )
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
    if method is not None and hasattr(batch, "keys"):
        wanted = _named_parameters(method) - SAMPLING_ATTRIBUTES - set(inputs)
        inputs.update({key: to_device(batch[key], device) for key in batch.keys() if key in wanted})
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
                inputs = graph_inputs(batch, dataset, device, per_hop=takes_per_hop(func), method=func)
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


def graph_call(call: Callable, dataset, form: str = "auto") -> Callable:
    """``call`` in stepgraph's form ``call(batch, ind, step)`` (``ind``: local positions
    of the loss nodes).

    STEP's spatial models override ``handle_ginput_tuple(input_tuple, dataset, ind,
    step)`` with the dataset second and ``ind`` as global node ids; a callable of
    that ``form`` (see :data:`~stepgraph.train.step_adapter.CALL_FORMS`) is adapted.
    """
    if steps_form(call, form):
        return lambda batch, ind, step: call(batch, dataset, batch.n_id[ind], step)
    return call


def loader_call(context: FeedContext, call_func: Callable | None, dataset, loader) -> Callable:
    """The loss call of a non-PyG graph loader's batches, in stepgraph's form
    ``call(batch, ind, step)`` (``ind``: global node ids, or ``None``).

    ``call_func`` (or, without one, the context's ``graph_batch_call``) is
    called in STEP's form ``(batch, dataset, ind, step)`` when its second
    parameter is named ``dataset``, else as ``(batch, ind, step)``. The
    Trainer's own ``handle_ginput_tuple`` reads ``NeighborLoader`` batches only:
    a clear ``TypeError`` says what to do instead.
    """
    call = call_func or _required(context.graph_batch_call, "graph_batch_call")
    if steps_form(call, context.call_form):
        return lambda batch, ind, step: call(batch, dataset, ind, step)
    if call_func is not None:  # a PyG batch of yours reaches your call on the trainer's device
        return lambda batch, ind, step: call_func(batch_to(batch, context.device), ind, step)
    if call_func is None and getattr(call, "reads_neighbor_batches_only", False):  # the Trainer's own
        raise TypeError(
            f"gloader of type {type(loader).__name__} is not a torch_geometric NeighborLoader, "
            "whose batches the Trainer's own handle_ginput_tuple reads; override "
            "handle_ginput_tuple(self, input_tuple, dataset, ind, step) (STEP's form) in a "
            "subclass, or pass call_func=, to compute the loss of its batches"
        )
    return call


def graph_loss_call(context: FeedContext, mask: torch.Tensor | None, call: Callable) -> LossCall:
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
                if not (context.strategy.lockstep and context.training()):
                    return None
                losses = call(batch, torch.zeros(1, dtype=torch.long), step)
                return {k: v * 0 if isinstance(v, torch.Tensor) else v for k, v in losses.items()}, 0
        return call(batch, ind, step), ind.numel()

    return loss_call


# ----------------------------------------------------------------------- feeds
@dataclass(frozen=True)
class FeedContext:
    """What a feed reads of the engine that trains on it; a feed never writes to it.

    :meth:`~stepgraph.Trainer.feed_context` builds the trainer's. Everything is
    explicit: nothing is found by a parameter's name except where ``call_form``
    is ``"auto"`` (see :func:`graph_call`).

    Parameters
    ----------
    strategy
        The :class:`~stepgraph.train.strategies.Strategy` that shards the data
        (``shard``, ``shard_loader``, ``shard_neighbor_loader``, ``lockstep``,
        ``is_distributed``).
    device
        Where the batches go.
    seed
        Seed of the permutations that shard the data over ranks.
    call_form
        How graph loss calls are called (:data:`~stepgraph.train.step_adapter.CALL_FORMS`).
    matrix_call, tensor_call, graph_batch_call
        The default loss calls when a training call has no ``call_func``:
        ``(X, ind=, **kwargs)`` for a matrix, ``(batch)`` for a tensor batch,
        ``(batch, ind, step)`` or STEP's ``(batch, dataset, ind, step)`` for a
        graph batch (the trainer's ``loss``, ``handle_input_tuple`` and
        ``handle_ginput_tuple``).
    validate_X, validate_loader, validate_gloader
        The validation calls, with the signatures of the trainer's methods of
        those names.
    training
        Whether the model is in training mode now (a rank of a lockstep
        strategy then steps even on a batch without loss nodes).
    graph_dataset
        The dataset a graph feed falls back on when its call has none (STEP's
        ``train_graph_batch`` may be called without one); ``None`` for none.
    """

    strategy: Any
    device: torch.device | str = "cpu"
    seed: int = 0
    call_form: str = "auto"
    matrix_call: Callable | None = None
    tensor_call: Callable | None = None
    graph_batch_call: Callable | None = None
    validate_X: Callable | None = None
    validate_loader: Callable | None = None
    validate_gloader: Callable | None = None
    training: Callable[[], bool] = lambda: True
    graph_dataset: Any = None


def _required(call: Callable | None, name: str) -> Callable:
    if call is None:
        raise TypeError(f"this feed needs a loss call: pass call_func=, or give the FeedContext a {name}")
    return call


class Feed:
    """What the shared core asks of a feed.

    Parameters
    ----------
    context
        The :class:`FeedContext` of the engine training on this feed.

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

    def __init__(self, context: FeedContext) -> None:
        self.context = context
        self.generators: list[torch.Generator] = []
        self.loss: LossCall

    @property
    def seed(self) -> int:
        """Seed of the permutation that shards the data over ranks."""
        return self.context.seed

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

    Rows ``train_ind`` train, rows ``valid_ind`` validate through the context's
    ``validate_X``; with only ``valid_ind`` given, the other rows train.
    """

    def __init__(
        self, context: FeedContext, X, train_ind=None, valid_ind=None, call_func: Callable | None = None, **kwargs
    ):
        super().__init__(context)
        self.X = to_device(torch.as_tensor(X), context.device)
        n = self.X.shape[0]
        train, self.valid_ind = train_valid_split(n, train_ind, valid_ind)
        self.train_ind = torch.arange(n) if train is None else train
        self.call_func, self.kwargs = call_func, kwargs
        self.loss = matrix_loss_call(
            self.X, call_func or _required(context.matrix_call, "matrix_call"), kwargs, context.device
        )

    def train_batches(self, epoch: int) -> list[torch.Tensor]:
        return [self.context.strategy.shard(self.train_ind, epoch, self.seed, shuffle=False, pad=True)]

    def validate(self, epoch: int) -> dict[str, float] | None:
        if self.valid_ind is None:
            return None
        validate = _required(self.context.validate_X, "validate_X")
        return validate(self.X, ind=self.valid_ind, call_func=self.call_func, **self.kwargs)


class TensorBatchFeed(Feed):
    """Tensor mini-batches from ``make_loaders`` (:meth:`~stepgraph.Trainer.train_batch`).

    The members of a batch tuple are named by the loader's dataset mode
    (:attr:`input_names`) when it has one.
    """

    def __init__(self, context: FeedContext, loaders, call_func: Callable | None = None):
        super().__init__(context)
        self.train_loader, self.valid_loader = split_loaders(loaders)
        self.call_func = call_func
        mode = getattr(getattr(self.train_loader, "dataset", None), "mode", None)
        self.input_names = MODES.get(mode) if isinstance(mode, str) else None
        call = on_device(call_func, context.device) if call_func is not None else None
        self.loss = tensor_loss_call(call or _required(context.tensor_call, "tensor_call"))
        self._track(self.train_loader, self.valid_loader)
        self._valid_shard = context.strategy.shard_loader(self.valid_loader, 0, self.seed, pad=False)

    def train_batches(self, epoch: int):
        return self.context.strategy.shard_loader(self.train_loader, epoch, self.seed, pad=True)

    def validate(self, epoch: int) -> dict[str, float] | None:
        if self._valid_shard is None:
            return None
        validate = _required(self.context.validate_loader, "validate_loader")
        return validate(self._valid_shard, call_func=self.call_func)


class _NeighborLoaderFeed(Feed):
    """The shared part of the two ``NeighborLoader`` feeds."""

    def _bind(self, gloader, dataset) -> int:
        """Check that graph node ``i`` is dataset row ``i``; without a dataset (none given,
        none remembered), the batches' own ``x`` is read: the graph must have node features.
        """
        dataset = dataset if dataset is not None else self.context.graph_dataset
        num_nodes = gloader.data.num_nodes
        if dataset is None:
            if getattr(gloader.data, "x", None) is None and not _gathers(gloader):
                raise TypeError(
                    "dataset must be the dataset whose row i is graph node i when the graph has no "
                    "node features: got dataset=None and a graph without x (set data.x, or pass a "
                    "stepgraph BaseDataset)"
                )
            self.dataset = None
            return num_nodes
        if not hasattr(dataset, "features"):
            raise TypeError(
                f"dataset must be a stepgraph BaseDataset (the Trainer's handle_ginput_tuple "
                f"reads its features), got dataset of type {type(dataset).__name__}"
            )
        if num_nodes != len(dataset):
            raise ValueError(
                f"dataset must have one row per graph node, got {len(dataset)} rows; the graph has {num_nodes} nodes"
            )
        self.dataset = dataset
        return num_nodes

    def _set_loaders(self, train_loader, valid_loader, mask: torch.Tensor | None, call_func) -> None:
        """The loaders, the loss call on the seeds in ``mask`` and the validation shard."""
        context = self.context
        self.train_loader, self.valid_loader, self.call_func = train_loader, valid_loader, call_func
        call = call_func or _required(context.graph_batch_call, "graph_batch_call")
        if call_func is not None and not steps_form(call_func, context.call_form):
            call = on_device(call_func, context.device)  # your call gets the batch on the trainer's device
        self.loss = graph_loss_call(context, mask, graph_call(call, self.dataset, context.call_form))
        self._track(train_loader, valid_loader)
        self._valid_shard = context.strategy.shard_neighbor_loader(valid_loader, 0, self.seed, shuffle=False, pad=False)

    def train_batches(self, epoch: int):
        return self.context.strategy.shard_neighbor_loader(self.train_loader, epoch, self.seed, shuffle=True, pad=True)

    def validate(self, epoch: int) -> dict[str, float] | None:
        if self._valid_shard is None:
            return None
        validate = _required(self.context.validate_gloader, "validate_gloader")
        return validate(self._valid_shard, dataset=self.dataset, call_func=self.call_func)


class NodeSamplingFeed(_NeighborLoaderFeed):
    """Sampled neighbourhoods of seed nodes (:meth:`~stepgraph.Trainer.train_node_sampler`).

    ``gloader`` is a ``NeighborLoader`` or a ``(train, valid)`` pair. Given
    ``train_ind`` / ``valid_ind``, loaders over those seeds are derived from
    it (same graph, sampler and batch size); with only ``valid_ind``, the
    loader's other seeds train.
    """

    def __init__(
        self,
        context: FeedContext,
        gloader,
        dataset=None,
        train_ind=None,
        valid_ind=None,
        call_func: Callable | None = None,
    ):
        super().__init__(context)
        train_loader, valid_loader = split_loaders(gloader, "gloader")
        num_nodes = self._bind(train_loader, dataset)
        pool = loader_seeds(train_loader) if train_ind is None and valid_ind is not None else None
        train, valid = train_valid_split(num_nodes, train_ind, valid_ind, pool=pool)
        if train is not None:
            train_loader = derive_neighbor_loader(train_loader, train, shuffle=True)
        if valid is not None and valid_loader is None:
            valid_loader = derive_neighbor_loader(train_loader, valid, shuffle=False)
        if valid_loader is not None:
            check_disjoint(loader_seeds(train_loader), loader_seeds(valid_loader))
        self._set_loaders(train_loader, valid_loader, None, call_func)


class FullNeighbourhoodFeed(_NeighborLoaderFeed):
    """Every node with its full neighbourhood, losses masked to ``train_ind``
    (:meth:`~stepgraph.Trainer.train_graph_batch`).

    Validation visits the nodes of ``valid_ind`` with their full
    neighbourhoods (a loader derived from ``gloader``, not shuffled); with only
    ``valid_ind`` given, every other node trains.
    """

    def __init__(
        self,
        context: FeedContext,
        gloader,
        dataset=None,
        train_ind=None,
        valid_ind=None,
        call_func: Callable | None = None,
    ):
        super().__init__(context)
        num_nodes = self._bind(gloader, dataset)
        train, valid = train_valid_split(num_nodes, train_ind, valid_ind)  # never train on validation nodes
        valid_loader = None if valid is None else derive_neighbor_loader(gloader, valid, shuffle=False)
        self._set_loaders(gloader, valid_loader, node_mask(train, "train_ind", num_nodes), call_func)


class LoaderFeed(Feed):
    """Any other graph loader, iterated as it is: a DGL loader, a list of subgraphs,
    or a function returning a fresh iterable each epoch (a generator function).

    Each batch goes to ``call_func`` or the context's ``graph_batch_call``, in
    STEP's form ``(batch, dataset, ind, step)`` when its second parameter is
    named ``dataset`` (see :func:`loader_call`), with ``ind`` the global ids of
    ``train_ind`` in training and of ``valid_ind`` in validation (``None`` when
    not given; with only ``valid_ind`` and a dataset, every other row trains).
    Masking the loss to ``ind`` is the loss call's business. Validation runs
    over the pair's validation loader, or over ``gloader`` again when only
    ``valid_ind`` is given, through the context's ``validate_gloader``;
    batches weigh :func:`graph_batch_weight`. stepgraph cannot shard such a
    loader over ranks: under DDP it is refused.

    Parameters
    ----------
    context
        The :class:`FeedContext`.
    gloader
        The loader, or a ``tuple`` ``(train_loader, valid_loader)`` (a ``list``
        is one loader: a list of subgraphs).
    dataset
        Passed to the loss call (STEP's ``StDataset``, or anything it reads);
        the context's ``graph_dataset`` when ``None``.
    train_ind, valid_ind
        Rows (node ids) to train and validate on.
    call_func
        The loss call (see above).
    """

    def __init__(
        self,
        context: FeedContext,
        gloader,
        dataset=None,
        train_ind=None,
        valid_ind=None,
        call_func: Callable | None = None,
    ):
        super().__init__(context)
        train_loader, valid_loader = gloader if isinstance(gloader, tuple) and len(gloader) == 2 else (gloader, None)
        for name, loader in (("gloader", train_loader), ("the validation loader", valid_loader)):
            _check_reiterable(loader, name)
        if context.strategy.is_distributed:
            raise ValueError(
                f"gloader of type {type(train_loader).__name__} cannot be sharded over ranks: "
                "in distributed training stepgraph shards only torch_geometric NeighborLoaders "
                "(stepgraph.node_loaders / stepgraph.graph_loader)"
            )
        self.dataset = dataset if dataset is not None else context.graph_dataset
        n = _node_count(self.dataset, train_loader)
        if n is None and train_ind is None and valid_ind is not None:
            raise ValueError(
                "valid_ind without train_ind needs the number of nodes, to train on the others: pass train_ind "
                f"too, or a dataset with len(); gloader of type {type(train_loader).__name__} does not say it"
            )
        train, valid = train_valid_split(n, train_ind, valid_ind)
        self.train_loader, self.train_ind, self.valid_ind, self.call_func = train_loader, train, valid, call_func
        self.valid_loader = valid_loader if valid_loader is not None or valid is None else train_loader
        self.loss = _loader_loss(loader_call(context, call_func, self.dataset, train_loader), train)
        self._track(train_loader, valid_loader)

    def train_batches(self, epoch: int) -> Iterable:
        return loader_batches(self.train_loader)

    def validate(self, epoch: int) -> dict[str, float] | None:
        if self.valid_loader is None:
            return None
        validate = _required(self.context.validate_gloader, "validate_gloader")
        return validate(self.valid_loader, valid_ind=self.valid_ind, dataset=self.dataset, call_func=self.call_func)


def for_loader(neighbor_feed: type) -> Callable:
    """The feed factory of a graph method: ``neighbor_feed`` for a PyG ``NeighborLoader``
    (or a pair of them), :class:`LoaderFeed` for any other loader.
    """

    def build(context: FeedContext, gloader, *args, **kwargs) -> Feed:
        first = gloader[0] if isinstance(gloader, (tuple, list)) and gloader else gloader
        cls = neighbor_feed if is_neighbor_loader(first) else LoaderFeed
        return cls(context, gloader, *args, **kwargs)

    build.__name__ = build.__qualname__ = f"for_loader({neighbor_feed.__name__})"
    return build


def loader_validation(
    context: FeedContext, loader, valid_ind, call_func: Callable | None, dataset=None
) -> tuple[Iterable, LossCall]:
    """The batches and loss call with which :meth:`~stepgraph.Trainer.validate_gloader`
    evaluates a non-PyG loader: every batch, ``ind`` the global ids of ``valid_ind``
    (``dataset``: passed to the loss call; the context's ``graph_dataset`` when ``None``).
    """
    dataset = dataset if dataset is not None else context.graph_dataset
    _, ind = train_valid_split(_node_count(dataset, loader), None, valid_ind)
    return loader_batches(loader), _loader_loss(loader_call(context, call_func, dataset, loader), ind)


def _node_count(dataset, loader) -> int | None:
    """The number of nodes ``train_ind`` / ``valid_ind`` index: the dataset's length, or
    the nodes of a loader that is one PyG graph in a list; ``None`` when unknown.
    """
    if hasattr(dataset, "__len__"):
        return len(dataset)
    if isinstance(loader, (list, tuple)) and len(loader) == 1 and _is_pyg_batch(loader[0]):
        return int(loader[0].num_nodes)
    return None


def _is_pyg_batch(batch) -> bool:
    from torch_geometric.data.data import BaseData

    return isinstance(batch, BaseData)


def _gathers(loader) -> bool:
    """Whether a loader's transform gathers the node features (:class:`~stepgraph.data.gather.GatherFeatures`)."""
    from stepgraph.data.gather import GatherFeatures

    return isinstance(getattr(loader, "transform", None), GatherFeatures)


def _loader_loss(call: Callable, ind: torch.Tensor | None) -> LossCall:
    def loss_call(batch, step):
        return call(batch, ind, step), graph_batch_weight(batch)

    return loss_call


def holds_tensor_batches(loader) -> bool:
    """Whether ``loader`` yields tensor batches (a tensor, or a tuple or list of them), as
    :meth:`~stepgraph.Trainer.train_batch` takes; a ``NeighborLoader`` or an empty loader does not.
    """
    if is_neighbor_loader(loader):
        return False
    try:
        first = next(iter(loader_batches(loader)))
    except (StopIteration, TypeError):
        return False
    items = list(first.values()) if isinstance(first, Mapping) else first
    items = items if isinstance(items, (tuple, list)) else [items]
    return bool(items) and all(isinstance(item, torch.Tensor) for item in items)


def loader_batches(loader) -> Iterable:
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
