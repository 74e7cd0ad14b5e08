"""Expression pre-processing for the reference pipeline: log-normalisation,
highly variable genes, principal components, the spatial graph scale, and
BANKSY-style neighbour-mean features.

Every function returns new arrays; the user's matrices are never modified.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

__all__ = ["log_normalise", "highly_variable_genes", "principal_components", "median_neighbor_distance",
           "neighbor_mean_features"]


def log_normalise(matrix, target_sum: float = 1e4) -> sp.csr_matrix | np.ndarray:
    """Counts scaled to ``target_sum`` per cell, then ``log1p``; a new matrix.

    Sparse input stays sparse (only its non-zeros are touched).
    """
    if sp.issparse(matrix):
        out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
        totals = np.asarray(out.sum(axis=1)).ravel()
        scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
        out.data *= np.repeat(scale, np.diff(out.indptr)).astype(np.float32)
        np.log1p(out.data, out=out.data)
        return out
    out = np.asarray(matrix, dtype=np.float32)
    totals = out.sum(axis=1, keepdims=True)
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(out * scale)


def _column_mean_var(matrix) -> tuple[np.ndarray, np.ndarray]:
    if sp.issparse(matrix):
        mean = np.asarray(matrix.mean(axis=0), dtype=np.float64).ravel()
        mean_sq = np.asarray(matrix.multiply(matrix).mean(axis=0), dtype=np.float64).ravel()
        return mean, np.maximum(mean_sq - mean**2, 0.0)
    x = np.asarray(matrix, dtype=np.float64)
    return x.mean(axis=0), x.var(axis=0)


def highly_variable_genes(log_matrix, n_top: int = 2000, n_bins: int = 20) -> np.ndarray:
    """Indices of the ``n_top`` most variable genes, as scanpy's ``flavor="seurat"``.

    The dispersion (variance over mean) of the de-logged expression is
    z-scored within ``n_bins`` equal-width bins of log mean expression, so that variable
    genes are found at every expression level; genes are ranked by that
    normalised dispersion.

    Parameters
    ----------
    log_matrix
        Log-normalised expression (cells x genes), dense or sparse.
    n_top
        Number of genes to keep (all genes when there are fewer).
    n_bins
        Bins of mean expression.

    Returns
    -------
    numpy.ndarray
        Sorted column indices of the selected genes.
    """
    n_genes = log_matrix.shape[1]
    if isinstance(n_top, bool) or not isinstance(n_top, (int, np.integer)) or n_top < 1:
        raise ValueError(f"n_top must be an integer >= 1, got n_top={n_top!r}")
    if n_top >= n_genes:
        return np.arange(n_genes)
    expm1 = log_matrix.expm1() if sp.issparse(log_matrix) else np.expm1(np.asarray(log_matrix, np.float64))
    mean, var = _column_mean_var(expm1)
    mean = np.where(mean == 0, 1e-12, mean)
    dispersion = np.log(np.where(var == 0, 1e-12, var) / mean)
    log_mean = np.log1p(mean)
    edges = np.linspace(log_mean.min(), log_mean.max(), n_bins + 1)[1:-1]  # equal widths, as scanpy
    bins = np.searchsorted(edges, log_mean)
    norm = np.zeros(n_genes)
    for b in np.unique(bins):  # a loop over <= n_bins bins, not over genes
        in_bin = bins == b
        sd = dispersion[in_bin].std()
        norm[in_bin] = (dispersion[in_bin] - dispersion[in_bin].mean()) / (sd if sd > 0 else 1.0)
    return np.sort(np.argsort(-norm, kind="stable")[:n_top])


def principal_components(matrix, n_components: int = 50, seed: int = 0) -> np.ndarray:
    """The first principal components of ``matrix`` (cells x genes), centred,
    with :class:`sklearn.decomposition.PCA`; sparse input is not densified.

    ``n_components`` is capped at ``min(n_obs, n_vars) - 1``. Returns a float32
    array of shape ``(n_obs, n_components)``.
    """
    from sklearn.decomposition import PCA

    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be an integer >= 1, got n_components={n_components!r}")
    k = int(min(n_components, min(matrix.shape) - 1))
    if k < 1:
        raise ValueError(f"principal components need at least 2 cells and 2 genes, got shape {matrix.shape}")
    x = sp.csr_matrix(matrix, dtype=np.float32) if sp.issparse(matrix) else np.asarray(matrix, np.float32)
    # the genes x genes covariance is small for panels and HVG sets; arpack beyond
    solver = "covariance_eigh" if x.shape[1] <= 5000 else ("arpack" if sp.issparse(x) else "auto")
    return PCA(k, svd_solver=solver, random_state=seed).fit_transform(x).astype(np.float32)


def median_neighbor_distance(coordinates: np.ndarray, sections: np.ndarray | None = None, k: int = 1) -> float:
    """The median distance from a cell (or spot) to its ``k``-th nearest
    neighbour in the same section: the scale of the tissue, in its own units.

    With ``k=1`` it is the spot or cell spacing. The pipeline measures its
    graph radius with ``k=15``: the distance that holds about 15 neighbours
    whatever the layout (the third ring of a hexagonal Visium grid, the
    second and third rings of a square grid, about 15 cells around a cell of
    an imaging panel, packed or not) and whatever the units of the coordinates.

    Parameters
    ----------
    coordinates
        ``(n_obs, n_dims)`` finite coordinates.
    sections
        Section code per cell; distances are measured within each section.
    k
        Which neighbour (capped at the section size minus one).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got k={k!r}")
    xy = np.asarray(coordinates, dtype=np.float64)
    codes = np.zeros(len(xy), np.int64) if sections is None else np.asarray(sections)
    distances = []
    for code in np.unique(codes):  # one tree per section
        part = xy[codes == code]
        if len(part) > 1:
            kk = min(k, len(part) - 1)
            d, _ = cKDTree(part).query(part, k=kk + 1)
            distances.append(d[:, kk])
    if not distances:
        raise ValueError("the graph scale needs a section with at least 2 cells")
    d = np.concatenate(distances)
    d = d[d > 0]
    if d.size == 0:
        raise ValueError("all cells of every section share the same coordinates")
    return float(np.median(d))


def neighbor_mean_features(features: np.ndarray, connectivities) -> np.ndarray:
    """Each cell's features next to the mean over its graph neighbourhood
    (itself included), as BANKSY's neighbour-augmented expression.

    Returns ``[features, mean]``, shape ``(n_obs, 2 * n_features)``, float32.
    """
    from stepgraph.clustering import smooth_over_graph

    x = np.asarray(features, dtype=np.float32)
    return np.hstack([x, smooth_over_graph(x, connectivities, 1).astype(np.float32)])
