"""Tensor mini-batch loaders over datasets that follow the dataset protocol."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from stepgraph._validation import check_int
from stepgraph.data.dataset import BaseDataset
from stepgraph.data.protocol import check_dataset
from stepgraph.data.split import category_random_split, resolve_seed

__all__ = [
    "make_loaders",
    "collate_batch",
    "per_sample_collate",
    "node_loaders",
    "graph_loader",
    "derive_neighbor_loader",
    "loader_seeds",
]

#: The mode a batch takes when the split's ``obs_key`` is the dataset's ``class_key`` (STEP's rule).
CLASS_MODE = "multi_batches_with_ct"


def collate_batch(batch):
    """Collate function for stepgraph datasets, whose ``__getitems__`` already
    returns a whole batch: a tuple of stacked tensors, as torch's default collate
    stacks per-sample tuples.
    """
    return batch


def per_sample_collate(collate_fn):
    """Adapt a user's ``collate_fn``, written for a list of per-sample items (as
    STEP's are), to stepgraph datasets, whose ``__getitems__`` returns a whole batch
    ``(x, label, ...)``: the batch is split into per-sample tuples first.
    """

    def collate(batch):
        if isinstance(batch, torch.Tensor):
            return collate_fn(list(batch))
        return collate_fn(list(zip(*batch)))

    return collate


def _collate_for(dataset, user_collate):
    """Stepgraph's datasets fetch whole batches (:func:`collate_batch`); any other dataset
    gets torch's default collate (``None``); a user's ``collate_fn`` always wins.
    """
    if isinstance(dataset, BaseDataset):
        return collate_batch if user_collate is None else per_sample_collate(user_collate)
    return user_collate


def _loader(dataset, batch_size, shuffle, seed, **kwargs) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    collate = _collate_for(dataset, kwargs.pop("collate_fn", None))
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate, **kwargs
    )


def make_loaders(
    dataset,
    batch_size: int,
    split_rate: float = 0.2,
    shuffle: bool = True,
    obs_key: str | None = None,
    seed: int | None = None,
    **kwargs,
) -> tuple[DataLoader, DataLoader | None]:
    """Training and validation loaders of tensor batches.

    Parameters
    ----------
    dataset
        The dataset to load: stepgraph's :class:`~stepgraph.BaseDataset` or any
        dataset following the protocol (:class:`~stepgraph.data.protocol.StepDataset`:
        ``adata.obs``, ``mode``, ``set_mode``, ``subset``, ``len()``, ``[i]``), such as
        STEP's ``ScDataset`` / ``StDataset``.
    batch_size
        Samples per batch (positive); larger than the dataset gives one batch
        per epoch, as in STEP.
    split_rate
        Share of samples for validation, in [0, 1); 0 gives no validation loader.
    shuffle
        Shuffle the training loader (seeded). The validation loader never shuffles.
    obs_key
        Column of ``adata.obs`` to stratify the split by (see
        :func:`~stepgraph.category_random_split`; cells with a missing category
        are split at random, with a warning); ``None`` splits at random. When it
        is the dataset's ``class_key``, both sets are put in mode
        ``"multi_batches_with_ct"`` (batches carry the class labels), as in STEP.
    seed
        Seed of the split and of the shuffling. ``None``: one seed drawn from torch's
        global generator, so ``torch.manual_seed`` before the call fixes both and
        another seed changes both (nothing is reseeded).
    **kwargs
        Passed to :class:`torch.utils.data.DataLoader` (``num_workers``,
        ``drop_last``, ``pin_memory``...). A ``collate_fn`` of yours receives
        a list of per-sample items, as torch gives it (see :func:`per_sample_collate`).

    Returns
    -------
    train_loader, valid_loader
        ``valid_loader`` is ``None`` when ``split_rate`` is 0. Without a
        ``collate_fn``, a batch is what torch's default collate makes of the
        items: stacked tensors (a tuple of them for a tuple item, e.g.
        ``(x, batch_label)``; one tensor for a tensor item).

    Raises
    ------
    TypeError
        When ``dataset`` lacks an attribute of the protocol (the message names it).
    """
    check_dataset(dataset)
    check_int(batch_size, "batch_size", minimum=1)
    seed = resolve_seed(seed)
    class_key = getattr(dataset, "class_key", None)
    switch = obs_key is not None and class_key == obs_key and split_rate > 0
    if split_rate == 0 and not isinstance(dataset, BaseDataset):
        train_ds, valid_ds = dataset, None  # STEP's datasets load as they are
    else:
        train_ds, valid_ds = category_random_split(dataset, split_rate, obs_key, seed=seed)
    if switch:
        assert valid_ds is not None  # split_rate > 0: category_random_split made both parts
        for part in (train_ds, valid_ds):
            if str(getattr(part.mode, "name", part.mode)) != CLASS_MODE:
                part.set_mode(CLASS_MODE)
    train_loader = _loader(train_ds, batch_size, shuffle, seed, **kwargs)
    valid_loader = (
        _loader(valid_ds, batch_size, False, seed, **kwargs) if valid_ds is not None and len(valid_ds) else None
    )
    return train_loader, valid_loader


# ----------------------------------------------------------------- graph loaders
def _neighbor_loader(
    data, num_neighbors, input_nodes, batch_size, shuffle, seed, backend, sampler=None, dataset=None, **kwargs
):
    from torch_geometric.loader import NeighborLoader

    from stepgraph.data.gather import GatherFeatures
    from stepgraph.data.sampler import make_neighbor_sampler

    check_int(batch_size, "batch_size", minimum=1)
    if dataset is not None:
        kwargs["transform"] = GatherFeatures(dataset, then=kwargs.get("transform"))
    if sampler is None:
        sampler = make_neighbor_sampler(
            data, list(num_neighbors), backend=backend, share_memory=kwargs.get("num_workers", 0) > 0
        )
    generator = torch.Generator().manual_seed(resolve_seed(seed)) if shuffle else None
    return NeighborLoader(
        data,
        num_neighbors=list(num_neighbors),
        input_nodes=input_nodes,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        neighbor_sampler=sampler,
        **kwargs,
    )


def _check_fanouts(num_neighbors) -> list[int]:
    fanouts = list(num_neighbors)
    if not fanouts or any((not isinstance(k, int)) or (k < 1 and k != -1) for k in fanouts):
        raise ValueError(
            f"num_neighbors must be a non-empty list of positive ints or -1, got num_neighbors={num_neighbors!r}"
        )
    return fanouts


def node_loaders(
    data,
    num_neighbors=(10, 5),
    batch_size: int = 1024,
    train_ind=None,
    valid_ind=None,
    shuffle: bool = True,
    seed: int | None = None,
    backend: str = "auto",
    dataset=None,
    **kwargs,
):
    """``NeighborLoader`` pair for node-sampled training (``Trainer.train_node_sampler``).

    Parameters
    ----------
    data
        The graph, e.g. from :func:`stepgraph.to_pyg`.
    num_neighbors
        Fan-out per hop, e.g. ``[10, 5]`` for a two-layer GNN (``-1``: all).
    batch_size
        Seed nodes per mini-batch.
    train_ind
        Seed nodes of the training loader; all nodes when ``None``.
    valid_ind
        Seed nodes of the validation loader (not shuffled); none when ``None``.
    shuffle
        Shuffle the training seeds each epoch (seeded by ``seed``).
    seed
        Seed of the shuffling; ``None`` draws one from torch's global generator
        (see :func:`~stepgraph.data.split.resolve_seed`).
    backend
        Neighbour sampler: ``"auto"`` or ``"builtin"`` (stepgraph's built-in,
        uniform sampler) or ``"pyg"`` (PyG's compiled one, which needs pyg-lib
        or torch-sparse); see :func:`stepgraph.data.sampler.make_neighbor_sampler`.
    dataset
        A :class:`~stepgraph.data.BaseDataset` whose features each mini-batch
        gathers in the loader (:class:`~stepgraph.data.gather.GatherFeatures`:
        ``batch.x`` and ``batch.batch_label``), in the workers when
        ``num_workers > 0``, so reads from a backed file overlap training.
        ``None``: the batches carry what ``data`` holds.
    **kwargs
        Passed to :class:`~torch_geometric.loader.NeighborLoader` (``num_workers``...).

    Returns
    -------
    train_loader, valid_loader
        ``valid_loader`` is ``None`` without ``valid_ind``. Both share one sampler.
    """
    fanouts = _check_fanouts(num_neighbors)
    train_ind = None if train_ind is None else torch.as_tensor(train_ind, dtype=torch.long)
    train_loader = _neighbor_loader(
        data, fanouts, train_ind, batch_size, shuffle, seed, backend, dataset=dataset, **kwargs
    )
    valid_loader = None
    if valid_ind is not None:
        valid_loader = derive_neighbor_loader(train_loader, valid_ind, shuffle=False)
    return train_loader, valid_loader


def graph_loader(
    data,
    n_layers: int = 2,
    batch_size: int = 1024,
    shuffle: bool = False,
    seed: int | None = None,
    backend: str = "auto",
    dataset=None,
    **kwargs,
):
    """``NeighborLoader`` over all nodes with full ``n_layers``-hop neighbourhoods
    (``Trainer.train_graph_batch``).

    Parameters
    ----------
    data
        The graph.
    n_layers
        Number of message-passing layers of the model (hops to include).
    batch_size
        Seed nodes per mini-batch.
    shuffle
        Visit the seed nodes in a random (seeded) order.
    seed
        Seed of the shuffling; ``None`` draws one from torch's global generator.
    backend
        Neighbour sampler backend (see :func:`node_loaders`).
    dataset
        The dataset whose features the loader gathers (see :func:`node_loaders`).
    **kwargs
        Passed to :class:`~torch_geometric.loader.NeighborLoader`.
    """
    check_int(n_layers, "n_layers", minimum=1)
    return _neighbor_loader(data, [-1] * n_layers, None, batch_size, shuffle, seed, backend, dataset=dataset, **kwargs)


def derive_neighbor_loader(loader, input_nodes, shuffle: bool, seed: int | None = None, drop_last: bool | None = None):
    """A ``NeighborLoader`` like ``loader`` (same graph, sampler, batch size and
    workers) over other seed nodes.

    ``seed`` defaults to the seed of ``loader``'s shuffling generator; when it has
    none, the derived loader has none either and shuffles from torch's global
    generator (so ``torch.manual_seed`` sets its order, as it sets that of
    ``loader``). Every other option of ``loader`` is carried over: ``transform``
    (e.g. the features it gathers), ``transform_sampler_output``,
    ``filter_per_worker``, ``pin_memory``, ``drop_last``, ``timeout``,
    ``worker_init_fn``, ``multiprocessing_context`` and, with workers,
    ``persistent_workers`` and ``prefetch_factor``. ``drop_last`` is the
    loader's when ``shuffle`` (a training loader), else ``False`` (a validation
    loader sees every seed), unless given.
    """
    from torch_geometric.loader import NeighborLoader

    input_nodes = torch.as_tensor(input_nodes, dtype=torch.long)
    if seed is None and getattr(loader, "generator", None) is not None:
        seed = loader.generator.initial_seed()
    # without a seed (a loader of yours without a generator), it shuffles from torch's global generator as yours does
    generator = torch.Generator().manual_seed(resolve_seed(seed)) if shuffle and seed is not None else None
    return NeighborLoader(
        loader.data,
        num_neighbors=loader.node_sampler.num_neighbors.values,
        input_nodes=input_nodes,
        batch_size=loader.batch_size,
        shuffle=shuffle,
        generator=generator,
        neighbor_sampler=loader.node_sampler,
        **{
            **loader_options(loader),
            "drop_last": bool(loader.drop_last and shuffle) if drop_last is None else drop_last,
        },
    )


#: The DataLoader options a derived loader keeps (read from the loader's attributes).
_CARRIED = ("num_workers", "pin_memory", "drop_last", "timeout", "worker_init_fn", "multiprocessing_context")
_CARRIED_WITH_WORKERS = ("persistent_workers", "prefetch_factor")
_CARRIED_NODE_LOADER = ("transform", "transform_sampler_output", "filter_per_worker")


def loader_options(loader) -> dict:
    """The options of a ``NeighborLoader`` that a loader over other seeds must keep, by name."""
    names = _CARRIED + _CARRIED_NODE_LOADER + (_CARRIED_WITH_WORKERS if loader.num_workers > 0 else ())
    return {name: getattr(loader, name) for name in names if hasattr(loader, name)}


def loader_seeds(loader) -> torch.Tensor:
    """The seed nodes a ``NeighborLoader`` visits (all nodes when it was built without
    ``input_nodes``), as an ``int64`` tensor.
    """
    nodes = loader.input_data.node
    return torch.arange(loader.data.num_nodes) if nodes is None else nodes
