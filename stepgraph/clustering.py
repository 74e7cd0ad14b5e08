"""Domains from embeddings: k-means clustering and the adjusted Rand index."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.cluster.vq import kmeans2
from scipy.special import comb

__all__ = ["kmeans_domains", "adjusted_rand_index", "smooth_over_graph"]


def kmeans_domains(embedding: np.ndarray, n_clusters: int, seed: int = 0, n_init: int = 5) -> np.ndarray:
    """Cluster rows of ``embedding`` with k-means++ (scipy), best of ``n_init`` runs.

    Parameters
    ----------
    embedding
        Array of shape ``(n_obs, n_dims)``.
    n_clusters
        Number of clusters (domains).
    seed
        Seed of the initialisations.
    n_init
        Runs with different initialisations; the one with the lowest
        within-cluster sum of squares is kept.

    Returns
    -------
    numpy.ndarray
        Cluster label per row, int64 in ``[0, n_clusters)``.
    """
    x = np.asarray(embedding, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < n_clusters:
        raise ValueError(f"embedding must be 2-D with at least n_clusters={n_clusters} rows, "
                         f"got shape {x.shape}")
    if not 1 <= n_clusters:
        raise ValueError(f"n_clusters must be >= 1, got n_clusters={n_clusters}")
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        centroids, labels = kmeans2(x, n_clusters, minit="++", seed=rng, iter=50)
        inertia = ((x - centroids[labels]) ** 2).sum()
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best.astype(np.int64)


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Adjusted Rand index between two labellings (1 is identical, ~0 random).

    Parameters
    ----------
    labels_true, labels_pred
        One label per observation (any hashable values).
    """
    a = pd.Categorical(np.asarray(labels_true)).codes
    b = pd.Categorical(np.asarray(labels_pred)).codes
    if a.shape != b.shape:
        raise ValueError(f"labellings differ in length: {a.shape[0]} and {b.shape[0]}")
    n = a.size
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    sum_cells = comb(table, 2).sum()
    sum_a = comb(table.sum(1), 2).sum()
    sum_b = comb(table.sum(0), 2).sum()
    expected = sum_a * sum_b / comb(n, 2)
    max_index = (sum_a + sum_b) / 2
    if max_index == expected:
        return 1.0
    return float((sum_cells - expected) / (max_index - expected))


def smooth_over_graph(values: np.ndarray, connectivities, n_iter: int = 1) -> np.ndarray:
    """Average each row with its graph neighbours, ``n_iter`` times.

    Spatial domains are contiguous, so averaging embeddings over the spatial
    neighbourhood before clustering removes cell-to-cell noise (cell types
    mixed within a domain) while keeping domain boundaries.

    Parameters
    ----------
    values
        Array of shape ``(n_obs, n_dims)``.
    connectivities
        Sparse ``(n_obs, n_obs)`` adjacency, e.g. ``obsp["spatial_connectivities"]``.
    n_iter
        Rounds of averaging (0 returns ``values`` unchanged).
    """
    import scipy.sparse as sp

    adj = sp.csr_matrix(connectivities, dtype=np.float64)
    adj = (adj + sp.eye(adj.shape[0], format="csr")).tocsr()
    adj.data[:] = 1.0
    adj = sp.diags(1.0 / np.asarray(adj.sum(axis=1)).ravel()) @ adj
    out = np.asarray(values, dtype=np.float64)
    for _ in range(n_iter):
        out = adj @ out
    return out
