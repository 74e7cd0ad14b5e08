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

from stepgraph._validation import check_int
from stepgraph.graph.ops import gaussian_weights, knn_by_section, unit_phases

__all__ = ["neighborhood_features"]

_ROW_CHUNK = 16_384  # cells per chunk: their neighbours' rows (cells x 2k x dims) are gathered at once
_SUM_CHUNK = 65_536  # rows per chunk of a block's float64 sum of squares (fixed: the sum's rounding with it)


def _unit_block(block: np.ndarray, weight: float) -> None:
    """Centre ``block`` in place and scale it so that its mean variance per column is ``weight ** 2``."""
    block -= block.mean(axis=0, dtype=np.float64).astype(block.dtype)
    total = 0.0  # the sum of squares, in float64, a chunk of rows at a time
    for start in range(0, len(block), _SUM_CHUNK):
        total += float(np.square(block[start : start + _SUM_CHUNK], dtype=np.float64).sum())
    total /= max(1, block.size)
    block *= np.float32(weight / np.sqrt(total) if total > 0 else weight)


def _neighbourhood_blocks(x, coordinates, sections, n_neighbors: int, gradient: bool, out: np.ndarray) -> None:
    """Write the mean block (and the gradient block) of every cell into ``out``'s columns.

    One neighbour query of ``2k`` (``k`` without the gradient) serves both: the mean reads its
    nearest ``k``. Per chunk of cells the neighbours' rows are gathered once and weighed by the
    rows of a small matrix: the mean's weights, the ring's weights times the cosine and the sine
    of each neighbour's direction, and the ring's plain mean; the gradient is the modulus of
    ``sum_j w_ij e^{i theta_ij} (x_j - mean_i)``, i.e. the phases' product minus their sum times
    the plain mean.
    """
    dims = x.shape[1]
    xy = np.asarray(coordinates, dtype=np.float64)
    mean_block, grad_block = out[:, :dims], out[:, dims:]
    ring = 2 * n_neighbors if gradient else n_neighbors
    for members, chunks in knn_by_section(xy, sections, ring, chunk=_ROW_CHUNK):
        part, own = xy[members], x[members]
        for rows, j, d in chunks:
            kk = j.shape[1]
            near = min(n_neighbors, kk)
            weights = np.zeros((len(j), 4 if gradient else 1, kk), np.float32)
            weights[:, 0, :near] = gaussian_weights(d[:, :near])
            if gradient:
                phased = gaussian_weights(d) * unit_phases(part[j] - part[rows][:, None, :])
                weights[:, 1], weights[:, 2], weights[:, 3] = phased.real, phased.imag, 1.0 / kk
            products = np.matmul(weights, own[j])  # (cells, 4, dims)
            cells = members[rows]
            mean_block[cells] = products[:, 0]
            if gradient:
                phase_sum = weights[:, 1:3].sum(axis=2, keepdims=True)  # (cells, 2, 1)
                grad_block[cells] = np.linalg.norm(products[:, 1:3] - phase_sum * products[:, 3:4], axis=1)


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
    dims = x.shape[1]
    features = np.zeros((len(x), (3 if gradient else 2) * dims), np.float32)  # a lone cell's blocks stay 0
    features[:, :dims] = x
    _neighbourhood_blocks(x, coordinates, sections, n_neighbors, gradient, features[:, dims:])
    weights = [np.sqrt(1.0 - lam)] + ([np.sqrt(2.0 * lam / 3.0), np.sqrt(lam / 3.0)] if gradient else [np.sqrt(lam)])
    for b, weight in enumerate(weights):
        _unit_block(features[:, b * dims : (b + 1) * dims], weight)
    if n_components is None:
        return features
    from sklearn.decomposition import PCA

    k = int(min(n_components, features.shape[0] - 1, features.shape[1]))
    return PCA(k, svd_solver="covariance_eigh", random_state=seed).fit_transform(features).astype(np.float32)
