"""Training-free spatial features: each cell's own expression, its neighbourhood's mean, and how
expression changes across its neighbourhood (BANKSY's construction, on principal components).

BANKSY (Singhal et al., Nat. Genet. 2024) describes a cell by three blocks: its own expression,
the Gaussian-weighted mean over its ``k`` nearest neighbours, and the modulus of an azimuthal
Gabor filter over ``2k`` neighbours (the first harmonic: how strongly expression rises in one
direction across the neighbourhood, which marks domain borders and layered tissue). A weight
``lambda`` sets how much the neighbourhood counts against the cell itself. The blocks are built
here on a cell's principal components rather than on each gene, so that memory stays
proportional to cells x components on a tissue of millions of cells; each block is scaled to
the same total variance per column, as BANKSY z-scores each gene of each block.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from stepgraph._validation import check_int
from stepgraph.graph.ops import gaussian_knn_kernel

__all__ = ["neighborhood_features"]

_ROW_CHUNK = 65_536  # rows per chunk of the gradient's complex products


def _unit_block(block: np.ndarray) -> np.ndarray:
    """``block`` centred, and scaled so that its mean variance per column is 1."""
    block = block - block.mean(axis=0)
    total = float((block.astype(np.float64) ** 2).sum()) / max(1, block.size)
    return block / np.sqrt(total) if total > 0 else block


def neighborhood_features(
    expression: np.ndarray,
    coordinates: np.ndarray,
    sections: np.ndarray | None = None,
    n_neighbors: int = 15,
    lam: float = 0.8,
    gradient: bool = True,
    n_components: int | None = 30,
    seed: int = 0,
) -> np.ndarray:
    """Each cell's own expression beside its neighbourhood's (BANKSY's features), in one matrix.

    Parameters
    ----------
    expression
        ``(n_obs, n_dims)`` per-cell expression features, e.g. the principal
        components of :class:`~stepgraph.pipeline.preprocess.ExpressionFeatures`.
    coordinates
        ``(n_obs, 2)`` or ``(n_obs, 3)`` finite coordinates.
    sections
        Section code per cell; neighbours are taken within a cell's own section.
    n_neighbors
        ``k``: neighbours of the mean (the gradient uses ``2k``), each weighted by
        a Gaussian of its distance (:func:`~stepgraph.graph.ops.gaussian_knn_kernel`).
    lam
        Weight of the neighbourhood, in ``[0, 1)``: the blocks are scaled by
        ``sqrt(1 - lam)`` (the cell), ``sqrt(2 lam / 3)`` (the mean) and
        ``sqrt(lam / 3)`` (the gradient), BANKSY's split; ``sqrt(lam)`` for
        the mean without the gradient.
    gradient
        Add the gradient block: per dimension, the modulus of the first
        azimuthal harmonic of the neighbours' deviations from their own mean.
    n_components
        Principal components of the concatenated blocks to return; ``None``
        returns the blocks themselves (``3 n_dims`` columns, ``2 n_dims``
        without the gradient).
    seed
        Seed of the PCA solver.

    Returns
    -------
    numpy.ndarray
        float32, ``(n_obs, n_components)``; ``expression`` is not modified.
    """
    x = np.asarray(expression, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(coordinates):
        raise ValueError(
            f"expression must be (n_obs, n_dims) with one row per coordinate ({len(coordinates)}), got shape {x.shape}"
        )
    check_int(n_neighbors, "n_neighbors", minimum=1)
    if not 0.0 <= lam < 1.0:
        raise ValueError(f"lam (the pipeline's neighborhood_lambda) must be in [0, 1), got {lam!r}")
    mean = gaussian_knn_kernel(coordinates, sections, n_neighbors).astype(np.float32) @ x
    blocks = [np.sqrt(1.0 - lam) * _unit_block(x)]
    if gradient:
        ring = gaussian_knn_kernel(coordinates, sections, 2 * n_neighbors, harmonic=1).astype(np.complex64)
        # the ring's plain mean (1 / count on each neighbour), built on the ring's own pattern
        pattern = sp.csr_matrix((np.ones(ring.nnz, np.float32), ring.indices, ring.indptr), shape=ring.shape)
        counts = np.diff(ring.indptr).astype(np.float32)
        ring_mean = (sp.diags(1.0 / np.maximum(counts, 1.0)).astype(np.float32) @ pattern) @ x
        del pattern
        # sum_j w_ij e^{i theta_ij} (x_j - mean_i): the phases' sum times the ring's plain mean; by
        # chunks of rows, so that the complex (cells x dims) products stay small on millions of cells
        phase_sum = np.asarray(ring.sum(axis=1)).reshape(-1, 1)
        grad = np.empty(x.shape, np.float32)
        for start in range(0, len(x), _ROW_CHUNK):
            rows = slice(start, start + _ROW_CHUNK)
            grad[rows] = np.abs(ring[rows] @ x - phase_sum[rows] * ring_mean[rows])
        del ring, ring_mean
        blocks += [np.sqrt(2.0 * lam / 3.0) * _unit_block(mean), np.sqrt(lam / 3.0) * _unit_block(grad)]
    else:
        blocks.append(np.sqrt(lam) * _unit_block(mean))
    features = np.hstack(blocks).astype(np.float32, copy=False)
    del blocks, mean
    if n_components is None:
        return features
    from sklearn.decomposition import PCA

    k = int(min(n_components, features.shape[0] - 1, features.shape[1]))
    return PCA(k, svd_solver="covariance_eigh", random_state=seed).fit_transform(features).astype(np.float32)
