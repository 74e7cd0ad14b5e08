"""Datasets over an AnnData, seeded splits, and the loaders that feed the training paths.

- :mod:`~stepgraph.data.dataset`: :class:`~stepgraph.BaseDataset` and :class:`~stepgraph.MaskedDataset`
  (a sparse ``X`` stays sparse);
- :mod:`~stepgraph.data.protocol`: the dataset protocol that STEP's own datasets also meet;
- :mod:`~stepgraph.data.split`: :func:`~stepgraph.category_random_split` and seeded index splits;
- :mod:`~stepgraph.data.loaders`: tensor batches and ``NeighborLoader`` set-up;
- :mod:`~stepgraph.data.sampler`: the built-in neighbour sampler;
- :mod:`~stepgraph.data.ondisk`: rows of a backed h5ad or zarr store, read per batch;
- :mod:`~stepgraph.data.readers`: ``.h5ad``, AnnData ``.zarr`` and SpatialData ``.zarr`` inputs;
- :mod:`~stepgraph.data.safe_read`: checks of h5ad and zarr files from strangers before they are read.
"""
