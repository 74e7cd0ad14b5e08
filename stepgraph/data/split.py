"""Seeded train/validation splits: random, and stratified by an obs category."""

from __future__ import annotations

import warnings
from typing import cast

import numpy as np
import torch

from stepgraph._validation import as_index, category_codes, check_int, check_key
from stepgraph.data.dataset import BaseDataset, MaskedDataset
from stepgraph.data.protocol import DatasetSubset, check_dataset, dataset_obs

__all__ = [
    "check_split_rate",
    "random_split_indices",
    "category_split_indices",
    "category_random_split",
    "resolve_seed",
    "train_valid_split",
    "check_disjoint",
]


def resolve_seed(seed: int | None, name: str = "seed") -> int:
    """``seed`` itself, or for ``None`` a seed drawn from torch's global generator.

    A drawn seed follows the user's ``torch.manual_seed`` (reproducible under it,
    different for another), as STEP's splits and shuffles follow the global
    generators; nothing is reseeded. In a process group of several processes,
    rank 0's draw is broadcast, so every rank splits alike.
    """
    if seed is not None:
        return cast(int, check_int(seed, name, minimum=0))  # None only with allow_none=True
    drawn = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        box = [drawn]
        torch.distributed.broadcast_object_list(box, src=0)
        drawn = int(box[0])
    return drawn


def check_split_rate(split_rate: float) -> float:
    """Validate a validation share: a number in [0, 1)."""
    try:
        rate = float(split_rate)
    except (TypeError, ValueError):
        raise TypeError(f"split_rate must be a number in [0, 1), got split_rate={split_rate!r}") from None
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"split_rate must be in [0, 1), got split_rate={split_rate!r}")
    return rate


def _n_valid(n: np.ndarray | int, rate: float) -> np.ndarray:
    """Validation size per group: round(n * rate), at least 1 and at most n - 1 when n >= 2."""
    n = np.asarray(n, dtype=np.int64)
    k = np.rint(n * rate).astype(np.int64)
    if rate > 0:
        k = np.where(n >= 2, np.clip(k, 1, n - 1), 0)
    return k


def random_split_indices(n: int, split_rate: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` at random into sorted train and validation positions.

    Parameters
    ----------
    n
        Number of samples.
    split_rate
        Share of samples for validation, in [0, 1). Every positive share gives
        at least one validation sample (when ``n >= 2``); 0 gives none.
    seed
        Seed of the permutation.

    Returns
    -------
    train_ind, valid_ind
        Sorted int64 arrays, disjoint, together ``range(n)``.
    """
    rate = check_split_rate(split_rate)
    if n < 1:
        raise ValueError(f"cannot split an empty dataset (n={n})")
    perm = np.random.default_rng(seed).permutation(n)
    k = int(_n_valid(n, rate))
    return np.sort(perm[k:]), np.sort(perm[:k])


def category_split_indices(categories, split_rate: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split positions so that each category sends ``split_rate`` of its members to validation.

    Every category with two or more members lands in both sets; a category with
    a single member stays in training. Samples whose category is missing (NaN,
    ``None``) are split at random as a group of their own, with a warning (as
    STEP does: its refinement step trains on a column with unlabelled cells).

    Parameters
    ----------
    categories
        One label per sample (any hashable values).
    split_rate
        Share of each category for validation, in [0, 1).
    seed
        Seed of the shuffle within categories.
    """
    rate = check_split_rate(split_rate)
    codes, categories = category_codes(np.asarray(categories, dtype=object), "categories", allow_missing=True)
    n = codes.size
    if n < 1:
        raise ValueError("cannot split an empty dataset")
    missing = codes < 0
    if missing.any():
        warnings.warn(
            f"{int(missing.sum())} of {n} samples have no category; they are split at random "
            f"({split_rate:.0%} to validation) as a group of their own",
            UserWarning,
            stacklevel=3,
        )
        codes = np.where(missing, len(categories), codes)  # the missing ones: one more group
    perm = np.random.default_rng(seed).permutation(n)
    order = perm[np.argsort(codes[perm], kind="stable")]  # grouped by category, random within
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(n) - np.repeat(starts, sizes)
    is_valid = rank < np.repeat(_n_valid(sizes, rate), sizes)
    return np.sort(order[~is_valid]), np.sort(order[is_valid])


def category_random_split(dataset, split_rate: float = 0.2, obs_key: str | None = None, seed: int | None = None):
    """Split a dataset into training and validation datasets, per category.

    Parameters
    ----------
    dataset
        The dataset to split: stepgraph's :class:`BaseDataset` / :class:`MaskedDataset`
        or any dataset following the protocol (:class:`~stepgraph.data.protocol.StepDataset`),
        such as STEP's ``ScDataset``.
    split_rate
        Ratio of validation data, in [0, 1), applied within each category.
    obs_key
        Column of ``dataset.adata.obs`` holding the categories. ``None`` makes a
        plain random split. Cells with a missing category are split at random, as
        a group of their own, with a warning.
    seed
        Seed of the split; the same seed gives the same split. ``None``: drawn from
        torch's global generator (see :func:`resolve_seed`), so ``torch.manual_seed``
        before the call fixes it.

    Returns
    -------
    train_dataset, valid_dataset
        Disjoint views: :class:`MaskedDataset` for stepgraph's datasets,
        :class:`~stepgraph.data.protocol.DatasetSubset` for others (their
        ``set_mode`` sets the parent's mode, as STEP's views do). Nothing is
        written into the user's ``adata.obs`` (STEP adds a ``"train"`` column).

    Raises
    ------
    TypeError
        When ``dataset`` lacks an attribute of the protocol (the message names it).
    KeyError
        When ``obs_key`` is not a column of ``adata.obs``.

    Examples
    --------
    >>> train_ds, valid_ds = category_random_split(ds, 0.2, obs_key="cell_type")  # doctest: +SKIP
    """
    check_dataset(dataset)
    seed = resolve_seed(seed)
    if obs_key is None:
        train_ind, valid_ind = random_split_indices(len(dataset), split_rate, seed)
    else:
        obs = dataset_obs(dataset)
        check_key(obs_key, obs.columns, "obs_key", "a column of adata.obs")
        if len(obs) != len(dataset):
            raise ValueError(
                f"dataset.adata.obs must have one row per item, got {len(obs)} rows for len(dataset)={len(dataset)}"
            )
        train_ind, valid_ind = category_split_indices(obs[obs_key].to_numpy(), split_rate, seed)
    view = MaskedDataset if isinstance(dataset, BaseDataset) else DatasetSubset
    return view(dataset, train_ind), view(dataset, valid_ind)


def train_valid_split(
    n: int | None, train_ind=None, valid_ind=None, pool: torch.Tensor | None = None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The training and validation positions that a training call was given, checked and completed.

    Every way of training (a matrix, tensor batches, a graph loader) resolves its
    ``train_ind`` / ``valid_ind`` here: positions or boolean masks become int64 tensors
    (in the order given), a validation set given alone is completed by every other position
    of ``pool``, and the two must not share a position.

    Parameters
    ----------
    n
        Number of positions (rows, graph nodes); ``None`` when unknown (a loader over
        a dataset without ``len()``): the positions are then taken as they are and no
        complement is drawn.
    train_ind, valid_ind
        The positions (or masks) given; either may be ``None``.
    pool
        The positions a validation set given alone is taken out of (a loader's seed
        nodes); ``range(n)`` when ``None``.

    Returns
    -------
    tuple
        ``(train, valid)``: int64 tensors, or ``None`` where nothing was given and
        nothing is implied (``train`` is ``None`` when neither was given).

    Raises
    ------
    ValueError
        When ``train_ind`` and ``valid_ind`` overlap, or a position is out of range.
    """
    train = _positions(train_ind, "train_ind", n)
    valid = _positions(valid_ind, "valid_ind", n)
    if train is None and valid is not None and (pool is not None or n is not None):
        pool = torch.arange(cast(int, n)) if pool is None else pool
        train = pool[~torch.isin(pool, valid)]  # never train on validation positions
    check_disjoint(train, valid)
    return train, valid


def check_disjoint(train: torch.Tensor | None, valid: torch.Tensor | None) -> None:
    """Raise a ``ValueError`` when the training and validation positions share one."""
    if train is not None and valid is not None:
        overlap = int(torch.isin(valid, train).sum())
        if overlap:
            raise ValueError(f"train_ind and valid_ind must be disjoint, got an overlap of {overlap} positions")


def _positions(ind, name: str, n: int | None) -> torch.Tensor | None:
    if ind is None:
        return None
    if n is not None:
        return as_index(ind, name, n)
    tensor = torch.as_tensor(ind)
    return tensor.nonzero().flatten() if tensor.dtype == torch.bool else tensor.long().flatten()
