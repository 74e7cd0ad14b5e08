r"""Layer-wise inference: each layer of a message-passing model for every node before the next.

Embedding a whole tissue through a full-neighbourhood ``NeighborLoader``
(:meth:`~stepgraph.Trainer.predict_gloader`) computes, for every batch of
seeds, its whole :math:`L`-hop neighbourhood: about 43 rows per cell on a
radius graph at two layers, and the hidden states of a node shared by many
batches are computed again in each. Layer-wise inference computes layer
:math:`l` for every node, chunk of nodes by chunk of nodes, from the outputs
of layer :math:`l - 1` for every node: each layer reads each edge once
(:math:`O(\text{edges})` per layer), as PyG's examples compute full-graph
embeddings (``GraphSAGE.inference``). Its result is that of the model run on
the whole graph at once.

A model opts in with a method ``layerwise(method)`` that returns a
:class:`LayerwisePlan` for one of its methods (``"encode"``...), or ``None``
when that method cannot be computed layer by layer;
:class:`~stepgraph.models.GraphAutoencoder` has one. Models without it keep
the full-neighbourhood path.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
from torch import Tensor

from stepgraph._validation import check_int
from stepgraph.progress import Progress

_Rows = TypeVar("_Rows")

__all__ = [
    "LayerwiseLayer",
    "LayerwisePlan",
    "layerwise_plan",
    "predict_layerwise",
    "weighted_sum",
    "DEFAULT_CHUNK_SIZE",
]

#: Nodes whose outputs one step computes; the messages of one step are about
#: ``mean degree`` times as many rows, so memory stays that of a few mini-batches.
DEFAULT_CHUNK_SIZE = 32768


def _same_graph(edge_index: Tensor, edge_weight: Tensor | None, num_nodes: int):
    return edge_index, edge_weight


def _identity_head(h: Tensor, batch_label: Tensor | None) -> Tensor:
    return h


@dataclass
class LayerwiseLayer:
    """One message-passing layer, split where layer-wise inference needs it.

    Attributes
    ----------
    transform
        ``transform(x) -> t``: the node-wise part, applied once to the input
        rows of every node (e.g. the linear map, and a GAT's attention
        logits, packed as columns).
    aggregate
        ``aggregate(t, src, dst, edge_weight, start, stop) -> Tensor[stop - start, d]``:
        the layer's output for nodes ``start..stop-1`` (non-linearity included)
        from ``t`` (the transformed rows of *every* node, so ``t[start:stop]``
        are those of the targets), the edges into them, sorted by target
        (``src``: global ids of the sources, ``dst``: local ids of the
        targets, ``0..stop-start-1``) and their weights (or ``None``);
        :func:`weighted_sum` aggregates them.
    """

    transform: Callable[[Tensor], Tensor]
    aggregate: Callable[..., Tensor]


@dataclass
class LayerwisePlan:
    """How a model's method runs layer by layer.

    Attributes
    ----------
    layers
        One :class:`LayerwiseLayer` per message-passing layer, first to last.
    head
        ``head(h, batch_label) -> Tensor``: the node-wise map after the last
        layer (``batch_label`` is ``None`` without sections); the identity by default.
    graph
        ``graph(edge_index, edge_weight, num_nodes) -> (edge_index, edge_weight)``:
        the whole graph as every layer reads it, computed once (e.g. GCN's
        normalisation with self-loops); the graph as it is by default.
    """

    layers: Sequence[LayerwiseLayer]
    head: Callable[[Tensor, Tensor | None], Tensor] = _identity_head
    graph: Callable = _same_graph


def weighted_sum(src: Tensor, dst: Tensor, values: Tensor | None, n_out: int, x: Tensor) -> Tensor:
    """``out[i] = sum of values[e] * x[src[e]]`` over the edges ``e`` with ``dst[e] == i``
    (``values`` ``None``: all ones), for ``dst`` sorted, as one sparse (CSR) product:
    several times faster on a CPU than gathering one row per edge and adding them up.
    """
    crow = torch.zeros(n_out + 1, dtype=torch.long, device=dst.device)
    torch.cumsum(torch.bincount(dst, minlength=n_out), 0, out=crow[1:])
    if x.dtype in (torch.bfloat16, torch.float16):
        x = x.float()  # under autocast: sparse products are float32 (no bf16 kernel on CPU)
    if values is None:
        values = torch.ones(src.numel(), dtype=x.dtype, device=x.device)
    with warnings.catch_warnings(), torch.autocast(x.device.type, enabled=False):
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")  # "beta", "invariant checks"
        matrix = torch.sparse_csr_tensor(crow, src, values.to(x.dtype), size=(n_out, x.size(0)))
        return matrix @ x


def layerwise_plan(model: torch.nn.Module, method: str = "encode") -> LayerwisePlan | None:
    """The model's :class:`LayerwisePlan` for ``method``, or ``None`` when it has none
    (no ``layerwise`` method, or one that returns ``None`` for ``method``).
    """
    make = getattr(model, "layerwise", None)
    return make(method) if callable(make) else None


def _by_target(edge_index: Tensor, edge_weight: Tensor | None, num_nodes: int):
    """Sources, targets, weights and the CSC pointer of the edges, sorted by target
    (kept as they are when they already are, as :func:`~stepgraph.graph.to_pyg` writes them).
    """
    src, dst = edge_index[0], edge_index[1]
    if dst.numel() > 1 and bool((dst[1:] < dst[:-1]).any()):
        dst, order = torch.sort(dst, stable=True)
        src = src.index_select(0, order)
        edge_weight = None if edge_weight is None else edge_weight.index_select(0, order)
    colptr = torch.zeros(num_nodes + 1, dtype=torch.long)
    torch.cumsum(torch.bincount(dst, minlength=num_nodes), 0, out=colptr[1:])
    return src, dst, edge_weight, colptr


def _rowwise(
    func: Callable[[_Rows], Tensor],
    rows: Callable[[int, int], _Rows],
    num_nodes: int,
    chunks: range,
    chunk_size: int,
    bar,
) -> Tensor:
    """``func`` of every node's rows, chunk by chunk, into one tensor."""
    out = None
    for start in chunks:
        stop = min(start + chunk_size, num_nodes)
        y = func(rows(start, stop))
        if out is None:
            out = torch.empty((num_nodes, *y.shape[1:]), dtype=y.dtype, device=y.device)
        out[start:stop] = y
        bar.update()
    return cast(Tensor, out)  # None only when there are no chunks (a graph without nodes)


class _GraphRows:
    """A graph's own node features (``data.x``) and sections (``data.batch_label``),
    read as :func:`predict_layerwise` reads a dataset's rows.
    """

    def __init__(self, data):
        if getattr(data, "x", None) is None:
            raise ValueError("dataset must be given when the graph has no node features (data.x is None)")
        self.x, self.batch_label = data.x, getattr(data, "batch_label", None)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def features(self, ids: Tensor) -> Tensor:
        return self.x[ids]

    def labels(self, name: str, ids: Tensor) -> Tensor:
        return getattr(self, name)[ids]


def predict_layerwise(
    model: torch.nn.Module,
    plan: LayerwisePlan,
    data,
    dataset,
    device,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = False,
    non_blocking: bool = False,
) -> Tensor:
    """Run ``plan`` over the whole graph ``data``, one layer for every node at a time.

    Per layer, ``transform`` runs once over every node's rows (for the first
    layer, the dataset's rows, read in contiguous chunks), then ``aggregate``
    once over each chunk of targets and the edges into them.

    Parameters
    ----------
    model
        The model (put in eval mode for the call, without gradients).
    plan
        Its :class:`LayerwisePlan`.
    data
        The graph (:class:`torch_geometric.data.Data`: ``edge_index``,
        ``num_nodes`` and an optional ``edge_weight``).
    dataset
        Serves the input rows (``dataset.features(ids)``) and the sections
        (``dataset.labels("batch_label", ids)``) of graph node ``i`` at row ``i``;
        ``None``: the graph's own ``data.x`` (and ``data.batch_label``).
    device
        Where the layers run; the hidden states of all nodes are kept there.
    chunk_size
        Nodes per step.
    progress
        Show the steps (:class:`~stepgraph.progress.Progress`).
    non_blocking
        Copy the input rows to ``device`` asynchronously from pinned memory (CUDA).

    Returns
    -------
    torch.Tensor
        One row per graph node, on the CPU.
    """
    chunk_size = cast(int, check_int(chunk_size, "chunk_size", minimum=1))
    if not plan.layers:
        raise ValueError("plan must hold at least one layer, got plan.layers=[]")
    num_nodes = int(data.num_nodes)
    dataset = _GraphRows(data) if dataset is None else dataset
    if len(dataset) != num_nodes:
        raise ValueError(
            f"dataset must have one row per graph node, got {len(dataset)} rows; the graph has {num_nodes} nodes"
        )
    edge_index, edge_weight = plan.graph(data.edge_index, getattr(data, "edge_weight", None), num_nodes)
    src, dst, weight, colptr = _by_target(
        edge_index.cpu(), None if edge_weight is None else edge_weight.cpu(), num_nodes
    )
    src, dst = src.to(device), dst.to(device)
    weight = None if weight is None else weight.to(device)
    chunks = range(0, num_nodes, chunk_size)
    has_labels = getattr(dataset, "batch_label", None) is not None

    def features(start, stop):  # the dataset's rows, contiguous
        x = dataset.features(torch.arange(start, stop))
        return (x.pin_memory() if non_blocking else x).to(device, non_blocking=non_blocking)

    was_training = model.training
    model.eval()
    try:
        with (
            torch.no_grad(),
            Progress(len(chunks) * (2 * len(plan.layers) + 1), "embedding", "steps", enabled=progress) as bar,
        ):
            h = None
            for layer in plan.layers:
                # Callable[..., Tensor]: the lambda's default argument h does not fit [int, int]
                rows: Callable[..., Tensor] = features if h is None else (lambda start, stop, h=h: h[start:stop])
                t = _rowwise(layer.transform, rows, num_nodes, chunks, chunk_size, bar)
                del h, rows  # the previous layer's outputs are freed: two node-sized tensors at most

                def aggregate(bounds, t=t, layer=layer):
                    start, stop = bounds
                    lo, hi = int(colptr[start]), int(colptr[stop])
                    return layer.aggregate(
                        t, src[lo:hi], dst[lo:hi] - start, None if weight is None else weight[lo:hi], start, stop
                    )

                h = _rowwise(aggregate, lambda start, stop: (start, stop), num_nodes, chunks, chunk_size, bar)
                del t

            def head(bounds):
                start, stop = bounds
                label = dataset.labels("batch_label", torch.arange(start, stop)).to(device) if has_labels else None
                return plan.head(h[start:stop], label).cpu()

            return _rowwise(head, lambda start, stop: (start, stop), num_nodes, chunks, chunk_size, bar)
    finally:
        model.train(was_training)
