"""Tensor mini-batch loaders over stepgraph datasets."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from stepgraph.data.dataset import BaseDataset, MaskedDataset
from stepgraph.data.split import category_random_split

__all__ = ["make_loaders", "collate_batch"]


def collate_batch(batch):
    """Collate function for stepgraph datasets, whose ``__getitems__`` already
    returns a whole batch."""
    return batch


def _loader(dataset, batch_size, shuffle, seed, **kwargs) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=collate_batch, **kwargs)


def make_loaders(dataset: BaseDataset | MaskedDataset, batch_size: int, split_rate: float = 0.2,
                 shuffle: bool = True, obs_key: str | None = None, seed: int = 0, **kwargs
                 ) -> tuple[DataLoader, DataLoader | None]:
    """Training and validation loaders of tensor batches.

    Parameters
    ----------
    dataset
        The dataset to load.
    batch_size
        Samples per batch (positive, at most the number of samples).
    split_rate
        Share of samples for validation, in [0, 1); 0 gives no validation loader.
    shuffle
        Shuffle the training loader (seeded). The validation loader never shuffles.
    obs_key
        Column of ``obs`` to stratify the split by (see
        :func:`~stepgraph.category_random_split`); ``None`` splits at random.
    seed
        Seed of the split and of the shuffling.
    **kwargs
        Passed to :class:`torch.utils.data.DataLoader` (``num_workers``,
        ``drop_last``, ``pin_memory``...).

    Returns
    -------
    train_loader, valid_loader
        ``valid_loader`` is ``None`` when ``split_rate`` is 0.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got batch_size={batch_size!r}")
    if batch_size > len(dataset):
        raise ValueError(
            f"batch_size={batch_size} is larger than the dataset ({len(dataset)} samples)"
        )
    train_ds, valid_ds = category_random_split(dataset, split_rate, obs_key, seed=seed)
    train_loader = _loader(train_ds, batch_size, shuffle, seed, **kwargs)
    valid_loader = (_loader(valid_ds, batch_size, False, seed, **kwargs)
                    if len(valid_ds) else None)
    return train_loader, valid_loader
