"""The dataset protocol: what :func:`~stepgraph.make_loaders`,
:func:`~stepgraph.category_random_split` and the Trainer ask of a dataset.

It is the small duck-typed protocol STEP's own trainer relies on, so STEP's
``ScDataset`` / ``StDataset`` (and their ``MaskedDataset`` views) work as they
are, and so do stepgraph's :class:`~stepgraph.BaseDataset` and
:class:`~stepgraph.MaskedDataset`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Dataset

from stepgraph._validation import check_key

__all__ = ["StepDataset", "PROTOCOL_ATTRIBUTES", "check_dataset", "dataset_obs", "DatasetSubset", "subset_mask"]


@runtime_checkable
class StepDataset(Protocol):
    """A map-style dataset over the rows of an AnnData, as STEP's trainer uses one.

    Attributes
    ----------
    adata : anndata.AnnData
        The cells of this dataset, one ``adata.obs`` row per item, in item order.
    mode : Any
        What an item holds (STEP: an ``ScMode`` / ``StMode`` member; stepgraph: a
        name of :data:`~stepgraph.data.dataset.MODES`).
    class_key : str or None
        Optional: the ``obs`` column of the classes. When it is the ``obs_key``
        of :func:`~stepgraph.make_loaders`, batches carry the class labels
        (mode ``"multi_batches_with_ct"``), as in STEP.

    Methods
    -------
    set_mode(mode)
        Choose what items hold; returns the previous mode.
    subset(key=True, col=None, exclude=True)
        The rows whose ``adata.obs[col]`` equals ``key`` (or is in it, for a list);
        with ``exclude``, the other rows. A dataset that follows the protocol.
    __len__(), __getitem__(i)
        Number of items; item ``i`` (a tensor or a tuple of tensors, which
        torch's default collate stacks).
    """

    adata: Any
    mode: Any

    def set_mode(self, mode: Any) -> Any: ...

    def subset(self, key: Any = True, col: str | None = None, exclude: bool = True) -> StepDataset: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any) -> Any: ...


#: The attributes every dataset must have (``class_key`` is optional).
PROTOCOL_ATTRIBUTES = ("adata", "mode", "set_mode", "subset", "__len__", "__getitem__")


def check_dataset(dataset: Any, name: str = "dataset") -> Any:
    """Raise a ``TypeError`` naming the first attribute of the protocol that ``dataset`` lacks.

    Parameters
    ----------
    dataset
        The object to check.
    name
        The argument's name, for the message.

    Returns
    -------
    The dataset, unchanged.
    """
    for attr in PROTOCOL_ATTRIBUTES:
        present = hasattr(type(dataset), attr) if attr.startswith("__") else hasattr(dataset, attr)
        if not present:
            raise TypeError(
                f"{name} must follow the dataset protocol (adata.obs, mode, set_mode(mode), "
                f"subset(key, col, exclude), len() and [i]), got {name} of type {type(dataset).__name__}, "
                f"which has no attribute {attr!r}"
            )
    if not hasattr(dataset.adata, "obs"):
        raise TypeError(
            f"{name}.adata must be an AnnData (with .obs), got {name}.adata of type "
            f"{type(dataset.adata).__name__}, which has no attribute 'obs'"
        )
    return dataset


def dataset_obs(dataset: Any):
    """``adata.obs`` of a dataset, one row per item (stepgraph's datasets give it without
    building an AnnData view).
    """
    obs = getattr(dataset, "obs", None)
    return obs if obs is not None and hasattr(obs, "columns") else dataset.adata.obs


def subset_mask(obs, key: Any = True, col: str | None = None, exclude: bool = True) -> np.ndarray:
    """Boolean mask of STEP's ``subset(key, col, exclude)`` over ``obs``.

    Parameters
    ----------
    obs
        The dataset's ``adata.obs``.
    key
        A value, or a list of values, of ``obs[col]``.
    col
        Column of ``obs``.
    exclude
        Select the rows *not* matching instead.
    """
    if col is None:
        raise ValueError(
            "col must name a column of adata.obs to subset by, got col=None "
            "(and the dataset has no batch_key to default to)"
        )
    check_key(col, obs.columns, "col", "a column of adata.obs")
    if isinstance(key, Iterable) and not isinstance(key, str):
        match = obs[col].isin(list(key)).to_numpy()
    else:
        match = (obs[col] == key).to_numpy()
    return ~match if exclude else match


class DatasetSubset(Dataset):
    """Some rows of any dataset that follows the protocol, itself following it.

    The views :func:`~stepgraph.category_random_split` returns for datasets that
    are not stepgraph's (STEP's ``ScDataset``, say). Nothing is written into the
    user's ``adata.obs`` (STEP's own split adds a ``"train"`` column there).

    Parameters
    ----------
    dataset
        The dataset (following the protocol).
    indices
        Positions in ``dataset`` to keep, in order.

    Attributes
    ----------
    dataset, indices
        The parent dataset and the positions in it.
    """

    def __init__(self, dataset: Any, indices):
        indices = np.asarray(indices, dtype=np.int64)
        if isinstance(dataset, DatasetSubset):
            dataset, indices = dataset.dataset, dataset.indices[indices]
        self.dataset: Any = dataset
        self.indices: np.ndarray = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index):
        if isinstance(index, torch.Tensor):
            index = index.tolist()
        if isinstance(index, (list, np.ndarray)):
            return self.dataset[self.indices[np.asarray(index, dtype=np.int64)]]
        return self.dataset[int(self.indices[index])]

    @property
    def adata(self):
        """The subset's rows of the parent's AnnData (a view)."""
        return self.dataset.adata[self.indices]

    @property
    def obs(self):
        """``adata.obs`` of the subset's rows."""
        return dataset_obs(self.dataset).iloc[self.indices]

    @property
    def mode(self):
        """The parent's mode (shared, as in STEP's ``MaskedDataset``)."""
        return self.dataset.mode

    @property
    def class_key(self):
        return getattr(self.dataset, "class_key", None)

    def set_mode(self, mode):
        """Set the parent's mode (shared with it, as in STEP); returns the previous one."""
        return self.dataset.set_mode(mode)

    def subset(self, key: Any = True, col: str | None = None, exclude: bool = True) -> DatasetSubset:
        """STEP's ``subset``: see :func:`subset_mask`; ``col`` defaults to the parent's ``batch_key``."""
        col = getattr(self.dataset, "batch_key", None) if col is None else col
        return DatasetSubset(self, np.flatnonzero(subset_mask(self.obs, key, col, exclude)))

    def __repr__(self) -> str:
        return f"DatasetSubset({len(self)} of {len(self.dataset)} rows of {type(self.dataset).__name__})"
