"""Node features gathered by the loader: a PyG transform that reads a mini-batch's rows.

:class:`GatherFeatures` is the ``transform`` of a
:class:`~torch_geometric.loader.NeighborLoader` whose features live in a
:class:`~stepgraph.data.BaseDataset` (an AnnData in memory, or a backed h5ad
or zarr read per batch) rather than in ``data.x``. Because PyG applies the
transform where it samples (in each worker with ``num_workers > 0`` on the
CPU), the reads of the next mini-batches overlap the training of this one.
:func:`~stepgraph.data.loaders.node_loaders` and
:func:`~stepgraph.data.loaders.graph_loader` add it when given ``dataset=``.
"""

from __future__ import annotations

import torch

__all__ = ["GatherFeatures", "FEATURES_GATHERED"]

#: The attribute a gathered batch carries (``True``): its ``x`` holds the dataset's rows of ``n_id``.
FEATURES_GATHERED = "features_gathered"


class GatherFeatures:
    """Set ``batch.x`` to the dataset's features of ``batch.n_id`` (and ``batch.batch_label``).

    Parameters
    ----------
    dataset
        A :class:`~stepgraph.data.BaseDataset` (anything with ``features(index)``
        and ``labels(name, index)`` / ``batch_label``).
    then
        A transform of yours, applied to the batch after the features are set.

    Notes
    -----
    The batch's ``x`` is dense float32 (a sparse matrix's rows are densified
    here, one mini-batch at a time), ``batch_label`` the section code of each
    node when the dataset has sections, and ``features_gathered`` is set to
    ``True`` so that the Trainer reads them instead of gathering again.

    Examples
    --------
    >>> loader = NeighborLoader(data, [10, 5], batch_size=1024,
    ...                         transform=GatherFeatures(dataset))  # doctest: +SKIP
    """

    def __init__(self, dataset, then=None):
        if not callable(getattr(dataset, "features", None)):
            raise TypeError(
                f"dataset must have a features(index) method (a stepgraph BaseDataset), got {type(dataset).__name__}"
            )
        if then is not None and not callable(then):
            raise TypeError(f"then must be a transform (a callable), got {type(then).__name__}")
        self.dataset, self.then = dataset, then

    def __call__(self, batch):
        n_id = batch.n_id
        batch.x = torch.as_tensor(self.dataset.features(n_id))
        if getattr(self.dataset, "batch_label", None) is not None:
            batch.batch_label = self.dataset.labels("batch_label", n_id)
        setattr(batch, FEATURES_GATHERED, True)
        return batch if self.then is None else self.then(batch)

    def __repr__(self) -> str:
        return f"GatherFeatures({type(self.dataset).__name__} of {len(self.dataset)} rows)"
