"""Neighbour sampling for :class:`torch_geometric.loader.NeighborLoader`.

PyG's own :class:`~torch_geometric.sampler.NeighborSampler` hands the work to a
compiled extension (``pyg-lib`` or ``torch-sparse``) and fails at the first
mini-batch when neither is installed. :class:`BuiltinNeighborSampler` is a
drop-in replacement written with vectorised torch operations only, so
``NeighborLoader`` works on a plain ``torch`` + ``torch_geometric``
installation. :func:`make_neighbor_sampler` picks the backend.

Only homogeneous graphs are supported, which is what a spatial neighbour graph
is.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from typing import Literal

import torch
import torch_geometric.typing
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.sampler import BaseSampler, NeighborSampler, NodeSamplerInput, NumNeighbors, SamplerOutput
from torch_geometric.utils import index_sort

from stepgraph._validation import check_choice, check_instance

__all__ = ["BuiltinNeighborSampler", "make_neighbor_sampler", "has_native_sampler"]

_INSTALL_HINT = (
    "PyG's native neighbour sampler needs 'pyg-lib' or 'torch-sparse'. "
    "Install torch-sparse against the installed torch with "
    "`pip install --no-build-isolation torch-sparse` (it compiles from source "
    "and takes several minutes), or use backend='builtin'."
)


def has_native_sampler() -> bool:
    r"""Whether PyG's compiled neighbour sampler is available.

    Returns
    -------
    bool
        :obj:`True` when ``pyg-lib`` or ``torch-sparse`` is importable
        (:obj:`torch_geometric.typing.WITH_PYG_LIB` or
        :obj:`torch_geometric.typing.WITH_TORCH_SPARSE`).
    """
    return bool(torch_geometric.typing.WITH_PYG_LIB or torch_geometric.typing.WITH_TORCH_SPARSE)


class BuiltinNeighborSampler(BaseSampler):
    r"""A pure-torch neighbour sampler for
    :class:`~torch_geometric.loader.NeighborLoader` on homogeneous graphs.

    It returns what PyG's compiled samplers return, so the loader builds the
    same kind of mini-batch: :obj:`batch.n_id` holds the sampled nodes with the
    seed nodes first (in input order) followed by the nodes discovered in each
    hop (in order of discovery); :obj:`batch.edge_index` holds the sampled
    edges in local ids, directed from the sampled neighbour to the node that
    sampled it, so message passing flows towards the seeds;
    :obj:`batch.e_id` holds their ids in the original :obj:`edge_index`, so
    edge weights can be gathered; and :obj:`batch.num_sampled_nodes` /
    :obj:`batch.num_sampled_edges` count nodes and edges per hop (usable with
    :meth:`torch_geometric.utils.trim_to_layer`).

    In hop :math:`l`, every node discovered in hop :math:`l - 1` (the seeds
    for :math:`l = 1`) samples :math:`\min(k_l, d)` distinct incoming edges
    uniformly without replacement, where :math:`d` is its in-degree and
    :math:`k_l` the fan-out of the hop (:obj:`-1` takes all of them). A node
    reached twice gets one local id; an edge to a node already in the
    mini-batch is kept but does not expand the frontier.

    Every hop runs as a few tensor operations over the whole frontier, with
    no Python loop over nodes: the output positions are laid out from the
    CSC pointer (:math:`\min(k_l, d)` per node), nodes with at most
    :math:`k_l` neighbours take them all, and all nodes with more draw their
    :math:`k_l`-subsets together with Floyd's algorithm (:math:`k_l` steps,
    each vectorised over those nodes; above a fan-out of 32, one sort of
    random keys per segment instead). New nodes are relabelled in order of
    first occurrence through a node-sized lookup table that is reset after
    each mini-batch (one table per thread). With Floyd's algorithm a
    mini-batch costs time linear in its number of sampled edges, whatever
    the degrees and the graph size.

    Random numbers come from the global torch generator, so
    :obj:`torch.manual_seed` makes the mini-batches reproducible (and each
    :class:`~torch.utils.data.DataLoader` worker draws its own stream).

    Parameters
    ----------
    data : torch_geometric.data.Data
        The graph. Only :obj:`edge_index` (and :obj:`num_nodes`) are read
        here; node and edge attributes are sliced by the loader.
    num_neighbors : list[int]
        The fan-out of each hop, seed side first. :obj:`-1` takes all
        neighbours in that hop.
    subgraph_type : str or SubgraphType, optional
        :obj:`"directional"` returns the sampled edges only (as PyG does by
        default); :obj:`"bidirectional"` also adds their reverse.
        :obj:`"induced"` is not supported. (default: :obj:`"directional"`)
    replace : bool, optional
        If set to :obj:`True`, each node samples exactly :math:`k_l`
        neighbours with replacement (when it has any). (default: :obj:`False`)
    is_sorted : bool, optional
        If set to :obj:`True`, assumes that :obj:`edge_index` is already
        sorted by target node, which saves a sort at construction.
        (default: :obj:`False`)
    share_memory : bool, optional
        If set to :obj:`True`, moves the CSC structure to shared memory
        (useful with :obj:`num_workers > 0`). (default: :obj:`False`)
    **kwargs
        Other arguments of :class:`~torch_geometric.sampler.NeighborSampler`
        are accepted for compatibility: :obj:`disjoint`, :obj:`time_attr` and
        :obj:`weight_attr` must keep their defaults.

    Examples
    --------
    >>> import torch
    >>> from torch_geometric.data import Data
    >>> from torch_geometric.loader import NeighborLoader
    >>> from stepgraph.data.sampler import BuiltinNeighborSampler
    >>> edge_index = torch.tensor([[1, 2, 3, 0, 0], [0, 0, 0, 1, 2]])
    >>> data = Data(x=torch.randn(4, 8), edge_index=edge_index)
    >>> sampler = BuiltinNeighborSampler(data, num_neighbors=[2, 1])
    >>> loader = NeighborLoader(data, num_neighbors=[2, 1], batch_size=1,
    ...                         neighbor_sampler=sampler)
    >>> batch = next(iter(loader))
    >>> int(batch.n_id[0]), batch.batch_size
    (0, 1)
    """

    def __init__(
        self,
        data: Data,
        num_neighbors: NumNeighbors | Sequence[int],
        subgraph_type: str = "directional",
        replace: bool = False,
        is_sorted: bool = False,
        share_memory: bool = False,
        **kwargs,
    ):
        check_instance(data, "data", Data, "a torch_geometric.data.Data (a homogeneous graph)")
        # "induced" is PyG's third kind; this sampler does not build induced subgraphs
        self.subgraph_type = check_choice(
            str(getattr(subgraph_type, "value", subgraph_type)), "subgraph_type", ("directional", "bidirectional")
        )
        for name, default in (("disjoint", False), ("time_attr", None), ("weight_attr", None)):
            value = kwargs.pop(name, default)
            if value != default:
                raise ValueError(
                    f"BuiltinNeighborSampler does not support {name}={value!r}; "
                    f"use PyG's NeighborSampler with pyg-lib for it"
                )
        kwargs.pop("directed", None)  # PyG's deprecated switch; edges are always directed here
        kwargs.pop("temporal_strategy", None)  # no temporal sampling: nothing to choose
        if kwargs:
            raise TypeError(f"BuiltinNeighborSampler got unexpected arguments {sorted(kwargs)}")
        fanout = num_neighbors.values if isinstance(num_neighbors, NumNeighbors) else num_neighbors
        if isinstance(fanout, dict):
            raise ValueError("'num_neighbors' must be a list of ints for a homogeneous graph")
        self.num_neighbors = NumNeighbors([int(k) for k in fanout])
        self.replace = bool(replace)
        self.num_nodes = int(data.num_nodes)
        # the CSC layout: incoming edges of each node, contiguous; ``perm`` maps a slot to its edge id
        src, dst = data.edge_index[0].to(torch.long), data.edge_index[1].to(torch.long)
        self.perm: Tensor | None = None
        if not is_sorted:  # PyG's own sort, so the CSC order (and every batch) is that of NeighborSampler
            dst, self.perm = index_sort(dst, max_value=self.num_nodes)
            src = src.index_select(0, self.perm)
        self.row = src
        self.colptr = torch.zeros(self.num_nodes + 1, dtype=torch.long)
        torch.cumsum(torch.bincount(dst, minlength=self.num_nodes), 0, out=self.colptr[1:])
        if share_memory:
            for tensor in (self.row, self.colptr, self.perm):
                if tensor is not None:
                    tensor.share_memory_()
        self._local = threading.local()

    @property
    def edge_permutation(self) -> Tensor | None:
        """Edge ids of the CSC slots (``None`` when ``edge_index`` came sorted by target)."""
        return self.perm

    def __getstate__(self):
        # The per-thread lookup table is rebuilt lazily in each process.
        state = self.__dict__.copy()
        state.pop("_local", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def _lookup_table(self) -> Tensor:
        # Global id -> local id of the current mini-batch, -1 when absent.
        table = getattr(self._local, "table", None)
        if table is None:
            table = torch.full((self.num_nodes,), -1, dtype=torch.long)
            self._local.table = table
        return table

    def _sample_seeds(self, seed: Tensor) -> SamplerOutput:
        """The neighbourhoods of ``seed`` (the seeds first), without metadata."""
        seed = seed.to(torch.long)
        table = self._lookup_table()
        try:
            return self._sample_hops(seed, table)
        finally:
            table.index_fill_(0, seed, -1)  # later nodes are reset in _sample_hops

    def sample_from_nodes(self, index: NodeSamplerInput, **kwargs) -> SamplerOutput:
        """Sample the neighbourhoods of ``index.node`` (PyG's public sampler interface)."""
        if index.input_type is not None:
            raise TypeError("BuiltinNeighborSampler supports homogeneous graphs only")
        if index.time is not None:
            raise ValueError("BuiltinNeighborSampler does not support temporal sampling")
        out = self._sample_seeds(index.node)
        out.metadata = (index.input_id, index.time)
        if self.subgraph_type == "bidirectional":
            out = out.to_bidirectional()
        return out

    def sample_from_edges(self, index, neg_sampling=None) -> SamplerOutput:
        """Sample the neighbourhoods of the end nodes of ``index``'s edges (and of the
        negative ones of ``neg_sampling``), for a :class:`~torch_geometric.loader.LinkNeighborLoader`:
        PyG's own edge-level logic (``edge_sample``: seeds, negatives, labels) around
        this sampler's node sampling.
        """
        from torch_geometric.sampler.neighbor_sampler import edge_sample

        if index.input_type is not None:
            raise TypeError("BuiltinNeighborSampler supports homogeneous graphs only")
        if index.time is not None:
            raise ValueError("BuiltinNeighborSampler does not support temporal sampling")
        out = edge_sample(
            index, lambda seed, _time: self._sample_seeds(seed), self.num_nodes, False, None, neg_sampling
        )
        if self.subgraph_type == "bidirectional":
            out = out.to_bidirectional()
        return out

    def _sample_hops(self, seed: Tensor, table: Tensor) -> SamplerOutput:
        colptr, row = self.colptr, self.row
        nodes = [seed]
        rows, cols, edges = [], [], []
        num_sampled_nodes, num_sampled_edges = [seed.numel()], []

        # Local id of a seed = its position; a repeated seed maps to its first
        # copy (every copy still samples its own neighbours, as in PyG).
        table.scatter_reduce_(0, seed, torch.arange(seed.numel()), "amin", include_self=False)
        num_nodes = seed.numel()
        frontier, frontier_start = seed, 0
        try:
            for k in self.num_neighbors.get_mapped_values():
                slot, target = _sample_slots(colptr, frontier, int(k), self.replace)
                src = row.index_select(0, slot)
                new = src.masked_select(table.index_select(0, src) < 0)
                new_nodes = _assign_first(table, new, num_nodes)
                local_src = table.index_select(0, src)

                rows.append(local_src)
                cols.append(target + frontier_start)
                edges.append(slot)
                nodes.append(new_nodes)
                num_sampled_nodes.append(new_nodes.numel())
                num_sampled_edges.append(slot.numel())

                frontier, frontier_start = new_nodes, num_nodes
                num_nodes += new_nodes.numel()
        finally:
            for added in nodes[1:]:
                table.index_fill_(0, added, -1)

        return SamplerOutput(
            node=torch.cat(nodes),
            row=torch.cat(rows),
            col=torch.cat(cols),
            edge=torch.cat(edges),
            batch=None,
            num_sampled_nodes=num_sampled_nodes,
            num_sampled_edges=num_sampled_edges,
        )


def _assign_first(table: Tensor, nodes: Tensor, offset: int) -> Tensor:
    r"""Gives the distinct entries of :obj:`nodes` (all absent from
    :obj:`table`) consecutive local ids from :obj:`offset` on, in order of
    first occurrence, and writes them to :obj:`table`. Returns the distinct
    nodes in that order.
    """
    if nodes.numel() == 0:
        return nodes
    pos = torch.arange(nodes.numel())
    # table[v] <- first position of v in `nodes` (include_self=False ignores the -1).
    table.scatter_reduce_(0, nodes, pos, reduce="amin", include_self=False)
    distinct = nodes.masked_select(table.index_select(0, nodes) == pos)
    table.index_copy_(0, distinct, torch.arange(offset, offset + distinct.numel()))
    return distinct


# Above this fan-out, the k-of-d draws use one sort instead of Floyd's loop.
_FLOYD_MAX_K = 32


def _sample_slots(colptr: Tensor, frontier: Tensor, k: int, replace: bool) -> tuple[Tensor, Tensor]:
    r"""Samples incoming edges of every node in :obj:`frontier`.

    Returns the sampled CSC slots (positions in :obj:`row`) and, for each, the
    position in :obj:`frontier` of the node that sampled it, grouped by that
    node in frontier order.
    """
    # Gathers use index_select / masked_select: several times faster on CPU
    # than advanced indexing for these sizes.
    start = colptr.index_select(0, frontier)
    deg = colptr.index_select(0, frontier + 1) - start
    if k < 0:
        count = deg
    elif replace:
        count = torch.where(deg > 0, k, 0)
    else:
        count = deg.clamp(max=k)

    # One output position per sampled edge, grouped by frontier node; `pos`
    # is the position within the node's group.
    target = torch.arange(frontier.numel()).repeat_interleave(count)
    pos = torch.arange(target.numel()) - (count.cumsum(0) - count).index_select(0, target)
    base = start.index_select(0, target)
    if k < 0:
        return base + pos, target
    if replace:
        draw = torch.rand(target.numel(), dtype=torch.float64)
        return base + draw.mul_(deg.index_select(0, target)).long(), target

    oversized = deg > k
    if bool(oversized.any()):
        # Nodes with more than k neighbours hold exactly k consecutive output
        # positions, in frontier order: fill them with a k-subset per node.
        choice = _choose_k(deg.masked_select(oversized), k)  # [num oversized, k]
        pos.masked_scatter_(oversized.index_select(0, target), choice.view(-1))
    return base + pos, target


def _choose_k(deg: Tensor, k: int) -> Tensor:
    r"""A uniform random :obj:`k`-subset of :obj:`range(d)` for every
    :obj:`d` in :obj:`deg` (all :obj:`d > k`), as a :obj:`[len(deg), k]`
    tensor in random order.

    Small :obj:`k` runs Floyd's algorithm on all rows at once: in step
    :obj:`s`, draw :obj:`t` uniformly in :obj:`[0, j]` with
    :obj:`j = d - k + s`, and take :obj:`j` instead if :obj:`t` was already
    chosen. Large :obj:`k` sorts uniform keys within each row instead.
    """
    n = deg.numel()
    if k <= _FLOYD_MAX_K:
        u = torch.rand(n, k, dtype=torch.float64)
        choice = torch.empty(n, k, dtype=torch.long)
        for s in range(k):  # a loop over the fan-out, not over nodes
            j = deg - (k - s)
            t = u[:, s].mul(j + 1).long()
            if s > 0:
                t = torch.where((choice[:, :s] == t.unsqueeze(1)).any(dim=1), j, t)
            choice[:, s] = t
        return choice

    # Keep the k smallest uniform keys per row: sort `row + key` once; the
    # rank of a slot is its sorted position minus the row's start.
    row = torch.arange(n).repeat_interleave(deg)
    row_start = deg.cumsum(0) - deg
    order = torch.rand(row.numel(), dtype=torch.float64).add_(row).argsort()
    # After the sort, rows stay contiguous and in order: order[i] is in row[i].
    start = row_start.index_select(0, row)
    keep = torch.arange(row.numel()).sub_(start) < k
    return (order - start).masked_select(keep).view(n, k)


def make_neighbor_sampler(
    data: Data,
    num_neighbors: Sequence[int],
    backend: Literal["auto", "builtin", "pyg"] = "auto",
    **kwargs,
) -> BaseSampler:
    r"""Creates the neighbour sampler that a
    :class:`~torch_geometric.loader.NeighborLoader` should use.

    Parameters
    ----------
    data : torch_geometric.data.Data
        The graph to sample from.
    num_neighbors : list[int]
        The fan-out of each hop (:obj:`-1` takes all neighbours).
    backend : str, optional
        :obj:`"builtin"` returns a :class:`BuiltinNeighborSampler`;
        :obj:`"pyg"` returns PyG's
        :class:`~torch_geometric.sampler.NeighborSampler` and raises an
        :class:`ImportError` if neither ``pyg-lib`` nor ``torch-sparse`` is
        installed; :obj:`"auto"` returns the built-in sampler, whether or not
        an extension is installed: it is faster on CPU and samples uniformly,
        whereas torch-sparse's sampler does not (its Floyd step draws from
        :math:`[0, j)` instead of :math:`[0, j]`, so the last neighbours of a
        node are drawn too rarely). (default: :obj:`"auto"`)
    **kwargs
        Further arguments of the sampler, such as :obj:`replace`,
        :obj:`subgraph_type` or :obj:`share_memory`.

    Examples
    --------
    >>> import torch
    >>> from torch_geometric.data import Data
    >>> from torch_geometric.loader import NeighborLoader
    >>> from stepgraph.data.sampler import make_neighbor_sampler
    >>> data = Data(x=torch.randn(3, 4),
    ...             edge_index=torch.tensor([[1, 2, 0], [0, 0, 1]]))
    >>> sampler = make_neighbor_sampler(data, [5, 5], backend="builtin")
    >>> loader = NeighborLoader(data, [5, 5], batch_size=2,
    ...                         neighbor_sampler=sampler)
    >>> [batch.batch_size for batch in loader]
    [2, 1]
    """
    check_choice(backend, "backend", ("auto", "builtin", "pyg"))
    if backend == "pyg" and not has_native_sampler():
        raise ImportError(_INSTALL_HINT)
    if backend == "pyg":
        with warnings.catch_warnings():
            # The choice of torch-sparse over pyg-lib was made on purpose here.
            warnings.filterwarnings("ignore", message=".*pyg-lib.*")
            return NeighborSampler(data, num_neighbors=num_neighbors, **kwargs)
    return BuiltinNeighborSampler(data, num_neighbors=num_neighbors, **kwargs)
