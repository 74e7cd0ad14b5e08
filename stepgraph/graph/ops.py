"""Operators on a spatial graph: neighbourhood means, smoothing, and the data's spacing.

These are the graph operations the pipeline and the baselines share. Each
takes the sparse adjacency that :func:`~stepgraph.graph.spatial_graph` writes
(``obsp["spatial_connectivities"]``) and returns new arrays; nothing is
modified in place.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from stepgraph._validation import check_int

__all__ = [
    "adjacency_pattern",
    "neighborhood_mean_operator",
    "smooth_over_graph",
    "median_neighbor_distance",
    "gaussian_knn_kernel",
    "gaussian_weights",
    "knn_by_section",
    "unit_phases",
]


def adjacency_pattern(connectivities, self_loops: bool = False, rows: np.ndarray | None = None) -> sp.csr_matrix:
    """The edges of a graph as ``1.0`` entries: weights ignored, explicit zeros
    dropped (they are not edges), the diagonal removed or set.

    Parameters
    ----------
    connectivities
        Sparse ``(n_obs, n_obs)`` adjacency, e.g. ``obsp["spatial_connectivities"]``.
    self_loops
        Give every cell an edge to itself (``True``) or none (``False``),
        whatever the diagonal of ``connectivities`` holds.
    rows
        Keep only these rows (cells); all rows when ``None``.

    Returns
    -------
    scipy.sparse.csr_matrix
        float64, shape ``(len(rows), n_obs)``; a new matrix (``connectivities``
        is not changed).

    Raises
    ------
    ValueError
        If ``connectivities`` is not square.
    """
    adj = sp.csr_matrix(connectivities)
    n = adj.shape[0]
    if adj.shape != (n, n):
        raise ValueError(f"connectivities must be a square (n_obs, n_obs) matrix, got shape {adj.shape}")
    cells = np.arange(n) if rows is None else np.asarray(rows)
    cells = np.flatnonzero(cells) if cells.dtype == bool else cells
    adj = adj[cells] if rows is not None else adj.copy()  # a copy either way
    off_diagonal = adj.indices != np.repeat(cells, np.diff(adj.indptr))
    adj.data = ((adj.data != 0) & off_diagonal).astype(np.float64)
    adj.eliminate_zeros()
    if self_loops:
        adj = adj + sp.csr_matrix((np.ones(len(cells)), (np.arange(len(cells)), cells)), shape=adj.shape)
    return adj.tocsr()


def neighborhood_mean_operator(connectivities, rows: np.ndarray | None = None) -> sp.csr_matrix:
    """The row-stochastic operator that averages each cell with its graph neighbours.

    Every edge and the self loop get the same weight: row ``i`` of the result
    holds ``1 / (degree_i + 1)`` at ``i`` and at each neighbour of ``i``
    (the edges of :func:`adjacency_pattern`).

    Parameters
    ----------
    connectivities
        Sparse ``(n_obs, n_obs)`` adjacency; its weights are ignored, only its
        pattern counts.
    rows
        Keep only these rows (cells) of the operator; all rows when ``None``.

    Returns
    -------
    scipy.sparse.csr_matrix
        Shape ``(len(rows), n_obs)``, float64, each row summing to 1.
    """
    op = adjacency_pattern(connectivities, self_loops=True, rows=rows)
    return (sp.diags(1.0 / np.asarray(op.sum(axis=1)).ravel()) @ op).tocsr()


def smooth_over_graph(values, connectivities, n_iter: int = 1):
    """Average each row with its graph neighbours, ``n_iter`` times.

    Spatial domains are contiguous, so averaging embeddings over the spatial
    neighbourhood before clustering removes cell-to-cell noise (cell types
    mixed within a domain) while keeping domain boundaries. Each round is one
    sparse product with :func:`neighborhood_mean_operator`. Sparse ``values``
    stay sparse.

    Parameters
    ----------
    values
        Array (or sparse matrix) of shape ``(n_obs, n_dims)``.
    connectivities
        Sparse ``(n_obs, n_obs)`` adjacency, e.g. ``obsp["spatial_connectivities"]``.
    n_iter
        Rounds of averaging (0 returns ``values`` unchanged).

    Returns
    -------
    numpy.ndarray or scipy.sparse.csr_matrix
        The smoothed values, float64 for dense input.
    """
    out = values if sp.issparse(values) else np.asarray(values, dtype=np.float64)
    if n_iter < 1:
        return out
    op = neighborhood_mean_operator(connectivities)
    for _ in range(n_iter):
        out = op @ out
    return out


def median_neighbor_distance(coordinates: np.ndarray, sections: np.ndarray | None = None, k: int = 1) -> float:
    """The median distance from a cell (or spot) to its ``k``-th nearest
    neighbour in the same section: the scale of the tissue, in its own units.

    With ``k=1`` it is the spot or cell spacing. The pipeline's radius graph
    uses ``k=n_neighbors`` (6 by default), scaled by ``graph_scale``: in the
    data's own units, the first ring of a Visium lattice and about 8 cells
    around a cell of an imaging panel.

    Parameters
    ----------
    coordinates
        ``(n_obs, n_dims)`` finite coordinates.
    sections
        Section code per cell; distances are measured within each section.
    k
        Which neighbour (capped at the section size minus one).

    Returns
    -------
    float
        The median of the non-zero ``k``-th neighbour distances.
    """
    check_int(k, "k", minimum=1)
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


_KERNEL_CHUNK = 65_536  # cells per chunk of the neighbour queries


def knn_by_section(coordinates: np.ndarray, sections: np.ndarray | None, k: int, chunk: int | None = None):
    """Each cell's ``k`` nearest neighbours within its own section, section by section and
    chunk by chunk of cells, so that the temporary ``(cells x k)`` arrays stay small on a
    tissue of millions of cells.

    Parameters
    ----------
    coordinates
        ``(n_obs, n_dims)`` finite coordinates.
    sections
        Section code per cell; ``None``: one section.
    k
        Neighbours per cell (capped at the section size minus one; a section of one cell is
        skipped).
    chunk
        Cells per chunk; ``None`` for the module's ``_KERNEL_CHUNK``.

    Yields
    ------
    members, chunks
        ``members``: the section's cells (indices into ``coordinates``, in their order).
        ``chunks``: an iterator of ``(rows, neighbours, distances)``, where ``rows`` is a
        slice of ``members``, and ``neighbours`` and ``distances`` are ``(len(rows), kk)``:
        positions in ``members``, nearest first, the cell itself left out.
    """
    check_int(k, "k", minimum=1)
    xy = np.asarray(coordinates, dtype=np.float64)
    codes = np.zeros(len(xy), np.int64) if sections is None else np.asarray(sections)
    step = _KERNEL_CHUNK if chunk is None else chunk

    def chunks(part: np.ndarray, kk: int):
        tree = cKDTree(part)
        for start in range(0, len(part), step):
            rows = slice(start, start + step)
            d, j = tree.query(part[rows], k=kk + 1)
            yield rows, j[:, 1:], d[:, 1:]  # the cell itself comes first (ties aside, its distance is 0)

    for code in np.unique(codes):  # one tree per section
        members = np.flatnonzero(codes == code)
        kk = min(k, len(members) - 1)
        if kk >= 1:
            yield members, chunks(xy[members], kk)


def gaussian_weights(distances: np.ndarray) -> np.ndarray:
    """``exp(-(d_ij / r_i)^2)`` of each row of ``distances``, ``r_i`` the row's median, each
    row scaled to sum to 1 (the weights of :func:`gaussian_knn_kernel`).
    """
    scale = np.median(distances, axis=1, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    w = np.exp(-((distances / scale) ** 2))
    return w / w.sum(axis=1, keepdims=True)


def unit_phases(offsets: np.ndarray) -> np.ndarray:
    """``exp(i theta)`` of each offset, ``theta`` its direction in the first two coordinates
    (``theta = 0`` for an offset with no extent there).
    """
    dx, dy = offsets[..., 0], offsets[..., 1]
    r = np.hypot(dx, dy)
    flat = r == 0
    r = np.where(flat, 1.0, r)
    return np.where(flat, 1.0, dx / r) + 1j * (dy / r)


def gaussian_knn_kernel(
    coordinates: np.ndarray, sections: np.ndarray | None = None, k: int = 15, harmonic: int = 0
) -> sp.csr_matrix:
    """Each cell's ``k`` nearest neighbours in its own section, weighted by a Gaussian of their distance.

    The weight of neighbour ``j`` of cell ``i`` is ``exp(-(d_ij / r_i)^2)``,
    where ``r_i`` is the median distance from ``i`` to its ``k`` neighbours
    (each cell's own scale, so sparse and dense parts of a tissue are
    treated alike); each row is then scaled to sum to 1 (the cell itself is
    not its own neighbour). With ``harmonic=m >= 1`` each weight is
    multiplied by ``exp(i m theta_ij)``, ``theta_ij`` the direction from
    ``i`` to ``j`` in the first two coordinates: the azimuthal kernel of
    BANKSY's gradient features (Singhal et al., Nat. Genet. 2024), whose
    product with centred expression measures how expression changes across
    a neighbourhood.

    Parameters
    ----------
    coordinates
        ``(n_obs, n_dims)`` finite coordinates (2-D or 3-D).
    sections
        Section code per cell (non-negative integers); no neighbour is taken
        from another section. ``None``: one section.
    k
        Neighbours per cell (capped at the section size minus one).
    harmonic
        0 for a real kernel (a weighted neighbourhood mean), ``m >= 1`` for
        the complex azimuthal kernel of harmonic ``m``.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n_obs, n_obs)``, float64 (complex128 for ``harmonic >= 1``); a row of
        a cell alone in its section is empty.
    """
    check_int(k, "k", minimum=1)
    check_int(harmonic, "harmonic", minimum=0)
    xy = np.asarray(coordinates, dtype=np.float64)
    n = len(xy)
    dtype = np.complex128 if harmonic else np.float64
    sizes = np.zeros(n, np.int64)  # neighbours of each cell
    pieces = []  # (cells, their neighbours' columns, weights), one chunk of cells at a time
    for members, chunks in knn_by_section(xy, sections, k):
        part = xy[members]
        for rows, j, d in chunks:
            w = gaussian_weights(d)
            if harmonic:
                w = w * unit_phases(part[j] - part[rows][:, None, :]) ** harmonic
            sizes[members[rows]] = j.shape[1]
            pieces.append((members[rows], members[j], w.astype(dtype)))
    indptr = np.concatenate([[0], np.cumsum(sizes)])
    index_dtype = np.int32 if n <= np.iinfo(np.int32).max else np.int64
    indices = np.empty(indptr[-1], index_dtype)
    data = np.empty(indptr[-1], dtype)
    for cells, columns, weights in pieces:  # each cell's row, in the order of the cells
        at = (indptr[cells][:, None] + np.arange(columns.shape[1])).ravel()
        indices[at], data[at] = columns.ravel(), weights.ravel()
    kernel = sp.csr_matrix((data, indices, indptr), shape=(n, n))
    kernel.sort_indices()  # the canonical order, in which products sum each row
    return kernel
