"""Training-free domain baselines that the pipeline is measured against.

- :func:`pca_kmeans_domains`: no space at all (log-CP10k, PCA, k-means);
- :func:`neighbor_mean_domains`: the two-line spatial baseline: log-CP10k
  averaged over each cell and its 6 nearest neighbours, twice (two hops),
  then exact PCA to 30 components and k-means;
- :func:`untrained_pipeline_domains`: the pipeline with its model left out:
  the input features the model would read, smoothed as its embedding would
  be, clustered as the pipeline clusters. What the pipeline scores above it
  is what training adds.
"""

from __future__ import annotations

import numpy as np

from stepgraph.graph import spatial_graph
from stepgraph.graph.ops import smooth_over_graph
from stepgraph.pipeline.domains import kmeans_domains
from stepgraph.pipeline.preprocess import log_normalise

__all__ = ["pca_kmeans_domains", "neighbor_mean_domains", "untrained_pipeline_domains"]


def _pca_kmeans(matrix, n_domains: int, n_components: int, seed: int, return_embedding: bool):
    """Exact PCA of ``matrix`` to ``n_components``, then k-means: the tail of both baselines."""
    from sklearn.decomposition import PCA

    x = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
    k = min(n_components, min(x.shape) - 1)
    # exact either way: the genes' covariance when it is small, else a full SVD of the cells
    solver = "covariance_eigh" if x.shape[1] <= 5000 else "full"
    embedding = PCA(k, svd_solver=solver, random_state=seed).fit_transform(x)
    labels = kmeans_domains(embedding, n_domains, seed=seed)
    return (labels, embedding) if return_embedding else labels


def pca_kmeans_domains(
    adata,
    n_domains: int,
    seed: int = 0,
    n_components: int = 30,
    layer_key: str | None = None,
    return_embedding: bool = False,
):
    """Non-spatial baseline: log-CP10k, exact PCA to ``n_components``, k-means.

    Parameters
    ----------
    adata
        Annotated data with counts in ``X`` (or ``layers[layer_key]``).
    n_domains
        Number of domains (k-means clusters).
    seed
        Seed of the PCA and of k-means.
    n_components
        Principal components kept.
    layer_key
        Layer holding the counts; ``None`` reads ``X``.
    return_embedding
        Return the principal components too (to score how sections mix in them).

    Returns
    -------
    numpy.ndarray
        The domain code per cell (int64); ``adata`` is not modified. With
        ``return_embedding``, a tuple ``(codes, components)``.
    """
    counts = adata.X if layer_key is None else adata.layers[layer_key]
    return _pca_kmeans(log_normalise(counts), n_domains, n_components, seed, return_embedding)


def neighbor_mean_domains(
    adata,
    n_domains: int,
    seed: int = 0,
    n_neighbors: int = 6,
    n_hops: int = 2,
    n_components: int = 30,
    spatial_key: str = "spatial",
    batch_key: str | None = None,
    layer_key: str | None = None,
    return_embedding: bool = False,
):
    """Neighbour-mean baseline: log-CP10k averaged over each cell and its
    ``n_neighbors`` nearest neighbours (same section), ``n_hops`` times, then
    exact PCA to ``n_components`` and k-means.

    Parameters
    ----------
    adata, n_domains, seed, n_components, layer_key, return_embedding
        As for :func:`pca_kmeans_domains`; ``adata`` also needs coordinates
        in ``obsm[spatial_key]``.
    n_neighbors
        Neighbours per cell of the kNN graph.
    n_hops
        Rounds of averaging (:func:`~stepgraph.graph.ops.smooth_over_graph`).
    spatial_key
        Key of the coordinates in ``adata.obsm``.
    batch_key
        Column of ``adata.obs`` with the section of each cell (no edge joins
        two sections); ``None`` for one section.

    Returns
    -------
    numpy.ndarray or tuple
        As for :func:`pca_kmeans_domains`. The graph is built on the side
        (``copy=True``): ``adata`` is not modified.
    """
    counts = adata.X if layer_key is None else adata.layers[layer_key]
    conn, _ = spatial_graph(
        adata, method="knn", n_neighbors=n_neighbors, spatial_key=spatial_key, batch_key=batch_key, copy=True
    )
    smoothed = smooth_over_graph(log_normalise(counts), conn, n_hops)
    return _pca_kmeans(smoothed, n_domains, n_components, seed, return_embedding)


def untrained_pipeline_domains(adata, n_domains: int, seed: int = 0, config=None, return_embedding: bool = False):
    """The pipeline without its model: its spatial graph and input features
    (:class:`~stepgraph.pipeline.preprocess.ExpressionFeatures`, averaged
    over each neighbourhood ``config.feature_smooth`` times), averaged
    ``config.smooth`` times more as the embedding would be, then clustered
    with ``config``'s method (the Gaussian mixture by default). Sections are
    handled as the pipeline handles them (``config.batch_key``).

    Parameters
    ----------
    adata
        Annotated data with counts in ``X`` (or ``layers[config.layer_key]``)
        and coordinates in ``obsm[config.spatial_key]``.
    n_domains
        Number of domains.
    seed
        Seed of the feature fit and of the clustering (replaces ``config.seed``).
    config
        A :class:`~stepgraph.pipeline.PipelineConfig`; ``None`` for the
        defaults (one section).
    return_embedding
        Return the smoothed features too (to score how sections mix in them).

    Returns
    -------
    numpy.ndarray or tuple
        As for :func:`pca_kmeans_domains`. The graph is built on the side:
        ``adata`` is not modified.
    """
    import dataclasses

    import anndata as ad

    from stepgraph.pipeline.config import PipelineConfig
    from stepgraph.pipeline.domains import cluster_domains
    from stepgraph.pipeline.run import _graph_radius, _model_input

    config = dataclasses.replace(config or PipelineConfig(), seed=seed, progress=False)
    counts = adata.X if config.layer_key is None else adata.layers[config.layer_key]
    config = config.resolved(counts.shape[1])
    # a shell that shares obs and coordinates: the graph goes into its obsp, not adata's
    shell = ad.AnnData(obs=adata.obs, obsm={config.spatial_key: adata.obsm[config.spatial_key]})
    spatial_graph(
        shell,
        method=config.method,
        n_neighbors=config.n_neighbors,
        radius=_graph_radius(shell, config),
        spatial_key=config.spatial_key,
        batch_key=config.batch_key,
    )
    dataset, _ = _model_input(shell, counts, config)
    graph = shell.obsp["spatial_connectivities"]
    smoothed = smooth_over_graph(np.asarray(dataset.X), graph, config.smooth)
    options = config.cluster_options()
    labels = cluster_domains(smoothed, n_domains, method=options.pop("method"), **options)
    return (labels, smoothed) if return_embedding else labels
