"""Spatial neighbour graphs from the coordinates of an :class:`~anndata.AnnData`.

:func:`spatial_graph` writes what squidpy's :func:`squidpy.gr.spatial_neighbors`
writes, so squidpy, scanpy and stepgraph's loaders all read the same graph:

- ``adata.obsp[f"{key_added}_connectivities"]``: CSR ``float32``, ``1.0`` per edge;
- ``adata.obsp[f"{key_added}_distances"]``: CSR ``float64``, the edge lengths;
- ``adata.uns[f"{key_added}_neighbors"]``: ``connectivities_key``,
  ``distances_key`` and the ``params`` the graph was built with.

Row ``i`` of both matrices lists the neighbours of cell ``i`` (in ``obs`` order).
Every section (``batch_key``) is built on its own, so no edge ever joins two
sections. All the work is vectorised: one :class:`scipy.spatial.cKDTree` (or one
Delaunay triangulation) per section, and the sparse matrices are assembled once
from edge arrays; there is no Python loop over cells and nothing is O(n²).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from stepgraph._validation import (
    ArgumentTypeError,
    category_codes,
    check_bool,
    check_choice,
    check_finite,
    check_instance,
    check_int,
    check_key,
    check_number,
)
from stepgraph.progress import Progress

__all__ = [
    "METHODS",
    "SpatialGraph",
    "get_coordinates",
    "iter_sections",
    "section_codes",
    "spatial_graph",
]

#: The graph constructions :func:`spatial_graph` knows, one builder each (``_BUILDERS``).
METHODS = ("knn", "radius", "delaunay", "grid")
#: A radius graph may have at most this many edges per cell on average (and at least
#: ``MAX_RADIUS_EDGES_FLOOR`` in all): duplicate or near-duplicate coordinates, or a
#: radius far beyond the spacing, would otherwise make it quadratic in the cells.
MAX_RADIUS_DEGREE = 256
MAX_RADIUS_EDGES_FLOOR = 1 << 22

# squidpy's grid correction: of the ``n_neighbors`` nearest spots, keep those
# closer than this factor times the median neighbour distance of the section.
_GRID_CUTOFF = 1.3


class SpatialGraph(NamedTuple):
    """The two matrices of a spatial graph, as returned by ``spatial_graph(..., copy=True)``.

    It unpacks like a tuple: ``conn, dist = spatial_graph(adata, copy=True)``.
    """

    connectivities: sp.csr_matrix
    distances: sp.csr_matrix


class _Settings(NamedTuple):
    """The checked arguments of :func:`spatial_graph`, as the builders read them."""

    method: str
    n_neighbors: int
    n_rings: int
    interval: tuple[float, float] | None  # edge lengths kept, [min, max]; None keeps all
    radius: float | list[float] | None  # as written to uns
    percentile: float | None
    set_diag: bool
    symmetric: bool


def spatial_graph(
    adata: AnnData,
    method: str = "knn",
    n_neighbors: int = 6,
    radius: float | tuple[float, float] | None = None,
    n_rings: int = 1,
    spatial_key: str = "spatial",
    batch_key: str | None = None,
    key_added: str = "spatial",
    set_diag: bool = False,
    percentile: float | None = None,
    symmetric: bool = False,
    copy: bool = False,
    progress: bool = False,
) -> SpatialGraph | None:
    """Build a spatial neighbour graph from ``adata.obsm[spatial_key]``.

    For the same coordinates and parameters the edges equal those of
    :func:`squidpy.gr.spatial_neighbors` (``knn``: ``coord_type="generic"``;
    ``radius``: ``coord_type="generic", radius=...``; ``delaunay``:
    ``delaunay=True``; ``grid``: ``coord_type="grid"``). See Notes for the
    few documented differences.

    Parameters
    ----------
    adata
        Annotated data with coordinates in ``adata.obsm[spatial_key]``
        (shape ``(n_obs, n_dims)``; 2-D and 3-D coordinates are supported,
        Delaunay needs at least 2 dimensions).
    method
        How cells are joined:

        - ``"knn"``: each cell to its ``n_neighbors`` nearest *other* cells. The
          graph is directed like squidpy's: row ``i`` lists the ``k`` nearest
          neighbours of ``i``, which need not list ``i`` back (see ``symmetric``).
        - ``"radius"``: every pair of cells at most ``radius`` apart, or, for an
          interval ``radius=(min, max)``, at a distance in ``[min, max]``.
        - ``"delaunay"``: the edges of the Delaunay triangulation of the section,
          optionally pruned by ``radius``.
        - ``"grid"``: Visium-style lattices (squidpy's ``coord_type="grid"``): the
          ``n_neighbors`` nearest spots (6 on a hexagonal lattice) closer than
          1.3 times the median neighbour distance form the first ring; ``n_rings``
          rings reach the spots up to ``n_rings`` steps away (6 + 12 = 18
          neighbours for two rings on a hexagonal lattice).
    n_neighbors
        Number of neighbours for ``"knn"`` and per ring for ``"grid"`` (where
        every section must hold more than ``n_neighbors`` cells); not used by
        ``"radius"`` and ``"delaunay"``.
    radius
        A number ``r`` or an interval ``(min, max)``. Required for ``"radius"``.
        For ``"knn"`` and ``"delaunay"`` it prunes the edges: a number keeps edges
        of length at most ``r``, an interval keeps lengths in ``[min, max]``.
        Not used by ``"grid"``.
    n_rings
        Number of rings of neighbours for ``"grid"``.
    spatial_key
        Key of the coordinates in :attr:`anndata.AnnData.obsm`.
    batch_key
        Column of :attr:`anndata.AnnData.obs` naming the section (library,
        sample) of each cell. Each section is built alone and no edge joins two
        sections. ``None`` treats all cells as one section.
    key_added
        Prefix of the keys written to ``obsp`` and ``uns``.
    set_diag
        Whether each cell is its own neighbour: connectivity ``1.0`` and distance
        ``0.0`` on the diagonal.
    percentile
        Prune long edges, per section: drop edges longer than this percentile of
        the section's distances. As in squidpy, the percentile is taken over the
        edge lengths together with one zero self-distance per cell (and a zero
        for every edge already removed by a ``radius`` interval). Not used by
        ``"grid"``.
    symmetric
        ``False`` (default, as squidpy) keeps the graph as built: directed for
        ``"knn"`` (and, rarely, ``"grid"``); ``"radius"`` and ``"delaunay"`` graphs
        are symmetric anyway. ``True`` adds the reverse of every edge after
        pruning, so that ``connectivities`` equals its transpose.
    copy
        Return the matrices instead of writing them into ``adata``.
    progress
        Show the cells done, section by section: a bar on a terminal, one
        plain line every 10 seconds otherwise (see :mod:`stepgraph.progress`).

    Returns
    -------
    SpatialGraph or None
        With ``copy=True`` a :class:`SpatialGraph` ``(connectivities,
        distances)`` of ``(n_obs, n_obs)`` CSR matrices, and ``adata`` is not
        changed. Otherwise ``None``, and ``adata`` gets exactly these keys:

        - ``adata.obsp[f"{key_added}_connectivities"]``: ``float32`` CSR, ``1.0``
          for an edge from row cell to column cell;
        - ``adata.obsp[f"{key_added}_distances"]``: ``float64`` CSR with the
          same sparsity pattern: the Euclidean edge length (for ``"grid"`` the
          ring number, as squidpy stores it);
        - ``adata.uns[f"{key_added}_neighbors"]``: ``{"connectivities_key",
          "distances_key", "params"}``; ``params`` holds squidpy's keys
          (``coord_type``, ``n_neighbors``, ``radius``, ``transform``) and ours
          (``method``, ``n_rings``, ``delaunay``, ``percentile``, ``set_diag``,
          ``symmetric``, ``spatial_key``, ``batch_key``). Everything in it can be
          written to ``.h5ad``.

    Raises
    ------
    TypeError
        If ``adata`` is not an AnnData, the coordinates are not numeric, or an
        argument has the wrong type.
    KeyError
        If ``spatial_key`` is not in ``adata.obsm`` or ``batch_key`` not in
        ``adata.obs`` (the message lists the keys present).
    ValueError
        For an unknown ``method``; ``radius`` missing for ``"radius"``; NaN or
        infinite coordinates (the message gives how many and the first cell);
        a section with no more cells than ``n_neighbors``; a section whose
        points cannot be triangulated; missing section labels; or an argument
        out of range.

    Notes
    -----
    *Duplicate coordinates.* ``"knn"`` still gives every cell ``n_neighbors``
    *other* cells (duplicates first, at distance 0); ``"radius"`` joins
    duplicates to each other at distance 0. For ``"delaunay"``, cells at one
    location share one vertex of the triangulation (Qhull keeps one of them and
    reports the others as coplanar): each copy gets all the neighbours of that
    vertex and the copies are joined to each other at distance 0. squidpy
    leaves such copies without any neighbour; this is the one difference of
    edges from squidpy, and it only arises with duplicated coordinates.

    *Other differences from squidpy.* Zero distances (duplicates, the diagonal
    with ``set_diag=True``) are stored explicitly, so ``distances`` always has
    the sparsity pattern of ``connectivities`` (squidpy drops them from
    ``distances``). A ``radius`` interval is stored as a list (squidpy's tuple
    cannot be written to ``.h5ad``). ``batch_key`` may be any column, not only a
    categorical one; sections are taken in category (sorted) order.
    Neighbours at exactly tied distances (e.g. on a lattice with a ``k`` that
    cuts through a ring) may be picked differently. ``transform`` is not
    offered.

    *``radius`` with ``"delaunay"`` and ``"knn"``.* With ``method="delaunay"``
    a single-number ``radius`` prunes the triangulation to edges of length at
    most ``radius``, whereas squidpy's ``spatial_neighbors(delaunay=True,
    radius=r)`` keeps the whole triangulation for a single number (only an
    interval prunes there; its newer ``spatial_neighbors_delaunay`` prunes). With
    ``method="knn"`` a ``radius`` prunes the kNN graph (each cell keeps those
    of its ``n_neighbors`` nearest cells that lie within ``radius``); squidpy
    cannot build that graph: given a ``radius`` it builds a radius graph
    instead and ignores ``n_neighs``.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> from stepgraph.graph import spatial_graph
    >>> adata = ad.AnnData(np.zeros((100, 3), dtype=np.float32))
    >>> adata.obsm["spatial"] = np.random.default_rng(0).uniform(0, 10, (100, 2))
    >>> spatial_graph(adata, method="knn", n_neighbors=6)
    >>> float(adata.obsp["spatial_connectivities"].sum(axis=1).min())
    6.0
    >>> conn, dist = spatial_graph(adata, method="radius", radius=1.5, copy=True)
    >>> bool(dist.max() <= 1.5)
    True
    """
    check_instance(adata, "adata", AnnData, "an anndata.AnnData")
    settings = _check_arguments(method, n_neighbors, radius, n_rings, percentile, set_diag, symmetric, copy, key_added)
    coords = get_coordinates(adata, spatial_key)
    graph = _build(coords, iter_sections(adata, batch_key), settings, batch_key, progress)
    if copy:
        return graph
    conns_key, dists_key = f"{key_added}_connectivities", f"{key_added}_distances"
    adata.obsp[conns_key] = graph.connectivities
    adata.obsp[dists_key] = graph.distances
    adata.uns[f"{key_added}_neighbors"] = {
        "connectivities_key": conns_key,
        "distances_key": dists_key,
        "params": {
            "method": settings.method,
            "coord_type": "grid" if settings.method == "grid" else "generic",
            "n_neighbors": settings.n_neighbors,
            "radius": settings.radius,
            "n_rings": settings.n_rings,
            "delaunay": settings.method == "delaunay",
            "percentile": settings.percentile,
            "set_diag": settings.set_diag,
            "symmetric": settings.symmetric,
            "transform": None,
            "spatial_key": spatial_key,
            "batch_key": batch_key,
        },
    }
    return None


def _build(coords: np.ndarray, sections, settings: _Settings, batch_key: str | None, progress: bool) -> SpatialGraph:
    """Run the method's builder on every section and assemble the two matrices."""
    n = coords.shape[0]
    build = _BUILDERS[settings.method]
    rows, cols, dists = [], [], []
    tracker = Progress(n, "graph", "cells", enabled=progress)
    for label, idx in sections:
        whole = len(idx) == n  # one section: local indices are global
        r, c, d = build(coords if whole else coords[idx], settings, _section_name(label, batch_key))
        rows.append(r if whole else idx[r])
        cols.append(c if whole else idx[c])
        dists.append(d)
        tracker.update(len(idx))
    tracker.close()
    if settings.set_diag:
        diag = np.arange(n, dtype=np.int64)
        rows.append(diag)
        cols.append(diag)
        dists.append(np.zeros(n))
    edges = (_concat(rows, np.int64), _concat(cols, np.int64), _concat(dists, np.float64))
    del rows, cols, dists
    conn, dist = _to_csr(*edges, n)
    del edges
    if settings.symmetric:
        conn, dist = _symmetrise(conn, dist, coords, euclidean=settings.method != "grid")
    return SpatialGraph(conn, dist)


# --------------------------------------------------------------------------- #
# Argument checks, all here; coordinates and sections are shared with
# stepgraph.graph.convert and the pipeline
# --------------------------------------------------------------------------- #


def _check_arguments(
    method, n_neighbors, radius, n_rings, percentile, set_diag, symmetric, copy, key_added
) -> _Settings:
    method = check_choice(method.lower() if isinstance(method, str) else method, "method", METHODS)
    n_neighbors = check_int(n_neighbors, "n_neighbors", minimum=1)
    n_rings = check_int(n_rings, "n_rings", minimum=1)
    interval, radius = _check_radius(radius, method)
    if percentile is not None:
        if method == "grid":
            raise ValueError("percentile is not used by method='grid' (as in squidpy); leave it None")
        percentile = check_number(percentile, "percentile", minimum=0, maximum=100)
    set_diag, symmetric = check_bool(set_diag, "set_diag"), check_bool(symmetric, "symmetric")
    check_bool(copy, "copy")
    if not isinstance(key_added, str) or not key_added:
        raise ArgumentTypeError(f"key_added must be a non-empty string, got key_added={key_added!r}")
    return _Settings(method, n_neighbors, n_rings, interval, radius, percentile, set_diag, symmetric)


def _check_radius(radius: Any, method: str) -> tuple[tuple[float, float] | None, float | list[float] | None]:
    """The edge-length interval ``(min, max)`` or ``None``, and ``radius`` as ``uns`` stores it."""
    if radius is None:
        if method == "radius":
            raise ValueError("radius is required for method='radius': a distance r or an interval (min, max)")
        return None, None
    if method == "grid":
        raise ValueError("radius is not used by method='grid'; leave it None")
    if isinstance(radius, tuple | list | np.ndarray):
        if len(radius) != 2:
            raise ValueError(f"radius must be a number or an interval (min, max), got radius={radius!r}")
        low, high = sorted(check_number(v, "radius", minimum=0) for v in radius)
        return (low, high), [low, high]
    high = check_number(radius, "radius", minimum=0)
    return (0.0, high), high


def get_coordinates(adata: AnnData, spatial_key: str = "spatial") -> np.ndarray:
    """Return ``adata.obsm[spatial_key]`` as a finite ``float64`` array ``(n_obs, n_dims)``.

    Parameters
    ----------
    adata
        Annotated data.
    spatial_key
        Key of the coordinates in :attr:`anndata.AnnData.obsm`; a numeric array
        or DataFrame.

    Returns
    -------
    numpy.ndarray
        The coordinates; the stored array itself when it already is ``float64``
        (never written to).

    Raises
    ------
    KeyError
        If ``spatial_key`` is not in ``adata.obsm`` (the keys present are listed).
    TypeError
        If the coordinates are not numeric.
    ValueError
        If they are not a 2-D array with 2 or 3 columns, or hold NaN,
        infinite or absurdly large (beyond float32's range) values (the count and the first offending obs name are given).

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.zeros((3, 1), dtype=np.float32))
    >>> adata.obsm["spatial"] = np.arange(6).reshape(3, 2)
    >>> get_coordinates(adata).dtype
    dtype('float64')
    """
    check_key(spatial_key, adata.obsm, "spatial_key", "in adata.obsm")
    raw = adata.obsm[spatial_key]
    if isinstance(raw, pd.DataFrame):
        kinds = {dt.kind for dt in raw.dtypes}
        if not kinds <= set("iuf"):
            raise TypeError(
                f"adata.obsm[{spatial_key!r}] (spatial_key) must hold numbers; its columns "
                f"have dtypes {sorted({str(dt) for dt in raw.dtypes})}."
            )
        raw = raw.to_numpy()
    elif sp.issparse(raw):
        raw = raw.toarray()
    arr = np.asarray(raw)
    if arr.dtype.kind not in "iuf":
        raise TypeError(
            f"adata.obsm[{spatial_key!r}] (spatial_key) must hold numbers (int or float), got dtype {arr.dtype}."
        )
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise ValueError(
            f"adata.obsm[{spatial_key!r}] (spatial_key) must have shape (n_obs, 2) or (n_obs, 3): "
            f"x, y and optionally z per cell; got shape {arr.shape}."
        )
    coords = arr.astype(np.float64, copy=False)
    check_finite(coords, f"adata.obsm[{spatial_key!r}] (spatial_key)", obs_names=adata.obs_names, what="coordinates")
    limit = float(np.finfo(np.float32).max)
    too_large = np.abs(coords).max(axis=1) > limit
    if too_large.any():
        first = adata.obs_names[int(np.argmax(too_large))]
        raise ValueError(
            f"adata.obsm[{spatial_key!r}] (spatial_key) has coordinates beyond +-{limit:.3g} "
            f"(float32's range) for {int(too_large.sum())} cells; the first is obs {first!r}."
        )
    return coords


def section_codes(adata: AnnData, batch_key: str | None) -> tuple[np.ndarray, list[Any]]:
    """Return the section of every cell as ``int64`` codes and the section labels.

    Parameters
    ----------
    adata
        Annotated data.
    batch_key
        Column of :attr:`anndata.AnnData.obs`; ``None`` gives one section.

    Returns
    -------
    codes : numpy.ndarray
        ``int64`` code per cell, indexing ``labels``.
    labels : list
        The categories of a categorical column, else its sorted unique values.

    Raises
    ------
    KeyError
        If ``batch_key`` is not a column of ``adata.obs`` (the columns are listed).
    ValueError
        If some cells have no section label.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> adata = ad.AnnData(np.zeros((3, 1)), obs=pd.DataFrame({"s": ["b", "a", "b"]}))
    >>> section_codes(adata, "s")
    (array([1, 0, 1]), ['a', 'b'])
    """
    if batch_key is None:
        return np.zeros(adata.n_obs, dtype=np.int64), [None]
    check_key(batch_key, adata.obs.columns, "batch_key", "a column of adata.obs")
    codes, categories = category_codes(
        adata.obs[batch_key], f"adata.obs[{batch_key!r}] (batch_key)", obs_names=adata.obs_names
    )
    return codes, list(categories)


def iter_sections(adata: AnnData, batch_key: str | None):
    """Yield ``(label, indices)`` for every non-empty section, indices ascending.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> adata = ad.AnnData(np.zeros((3, 1)), obs=pd.DataFrame({"s": ["b", "a", "b"]}))
    >>> [(label, idx.tolist()) for label, idx in iter_sections(adata, "s")]
    [('a', [1]), ('b', [0, 2])]
    """
    codes, labels = section_codes(adata, batch_key)
    if len(labels) == 1:
        yield labels[0], np.arange(adata.n_obs, dtype=np.int64)
        return
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(labels) + 1))
    for code, label in enumerate(labels):
        if bounds[code + 1] > bounds[code]:
            yield label, order[bounds[code] : bounds[code + 1]]


def _section_name(label: Any, batch_key: str | None) -> str:
    if batch_key is None:
        return "adata"
    return f"section {label!r} of batch_key={batch_key!r}"


# --------------------------------------------------------------------------- #
# One builder per method: a section's coordinates -> local edge arrays
# (rows, cols, lengths), no diagonal
# --------------------------------------------------------------------------- #


def _knn_graph(x: np.ndarray, settings: _Settings, section: str):
    """Each cell to its ``n_neighbors`` nearest other cells, then pruned."""
    k = settings.n_neighbors
    _check_section_size(len(x), k, section)
    dist, index = _knn_query(x, k)
    rows = np.repeat(np.arange(len(x), dtype=np.int64), k)
    return _prune(rows, index.ravel(), dist.ravel(), len(x), settings)


def _radius_graph(x: np.ndarray, settings: _Settings, section: str):
    """Every pair of cells at most ``radius`` apart (the tree applies the upper bound)."""
    tree = cKDTree(x, balanced_tree=False)
    _check_radius_edges(x, tree, settings.interval[1], section)
    pairs = tree.query_pairs(settings.interval[1], output_type="ndarray").astype(np.int64, copy=False)
    i, j = pairs[:, 0], pairs[:, 1]
    d = _lengths(x, i, j)
    rows, cols, d = np.concatenate([i, j]), np.concatenate([j, i]), np.concatenate([d, d])
    return _prune(rows, cols, d, len(x), settings, upper_applied=True)


def _check_radius_edges(x: np.ndarray, tree: cKDTree, radius: float, section: str) -> None:
    """Refuse a radius graph whose edge count (counted by the tree, none built) is beyond
    :data:`MAX_RADIUS_DEGREE` per cell: it would be quadratic in the cells.
    """
    n = len(x)
    edges = int(tree.count_neighbors(tree, radius)) - n  # ordered pairs, without each cell itself
    bound = max(MAX_RADIUS_DEGREE * n, MAX_RADIUS_EDGES_FLOOR)
    if edges <= bound:
        return
    _, counts = np.unique(x, axis=0, return_counts=True)
    shared = int(counts[counts > 1].sum())
    why = (
        f"{shared} cells share their coordinates with another (at most {int(counts.max())} at one point)"
        if shared
        else "no two cells share coordinates, so the radius is far beyond their spacing"
    )
    raise ValueError(
        f"radius={radius:g} would give {section} {edges:.3g} edges ({edges / n:.0f} per cell on average, "
        f"more than the bound of {MAX_RADIUS_DEGREE}; a radius graph that large grows with the square of the "
        f"cells): {why}. Remove duplicate coordinates, lower the radius, or use method='knn'"
    )


def _delaunay_graph(x: np.ndarray, settings: _Settings, section: str):
    """The edges of the section's Delaunay triangulation, then pruned."""
    from scipy.spatial import Delaunay, QhullError

    n, dim = x.shape  # 2 or 3 (get_coordinates)
    if n < dim + 1:
        raise ValueError(f"method='delaunay' needs at least {dim + 1} cells in {dim}-D, but {section} has only {n}.")
    try:
        tri = Delaunay(x)  # Qhull's default options, as squidpy
    except QhullError as err:
        raise ValueError(
            f"method='delaunay' cannot triangulate {section}: its points are degenerate "
            f"(e.g. all on one line). Qhull said: {str(err).splitlines()[0]}"
        ) from err
    indptr, indices = tri.vertex_neighbor_vertices
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    cols = indices.astype(np.int64)
    if len(tri.coplanar):
        rows, cols = _share_vertices(rows, cols, n, tri.coplanar)
    return _prune(rows, cols, _lengths(x, rows, cols), n, settings)


def _grid_graph(x: np.ndarray, settings: _Settings, section: str):
    """Lattice rings: the nearest spots closer than 1.3 median spacings, then
    ``n_rings - 1`` further rings; the "distance" of an edge is its ring.
    """
    n, k = len(x), settings.n_neighbors
    _check_section_size(n, k, section)
    dist, index = _knn_query(x, k)
    keep = dist < np.median(dist) * _GRID_CUTOFF
    rows = np.repeat(np.arange(n, dtype=np.int64), k)[keep.ravel()]
    cols = index[keep]
    if settings.n_rings == 1:
        return rows, cols, np.ones(len(rows))
    return _rings(rows, cols, n, settings.n_rings)


def _rings(rows, cols, n: int, n_rings: int):
    """Breadth-first rings over the (directed) first-ring graph with self loops:
    ring ``r`` holds the cells first reached in ``r`` steps; its distance is ``r``.
    """
    step = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)) + sp.eye(n, format="csr")
    reached = step.copy()
    frontier = step
    for ring in range(2, n_rings + 1):
        walk = frontier @ step
        walk.data[:] = 1.0
        seen = reached.copy()
        seen.data[:] = 1.0
        frontier = walk - walk.multiply(seen)
        frontier.eliminate_zeros()
        frontier.data[:] = float(ring)
        reached = reached + frontier
    reached = reached.tocoo()
    off_diag = reached.row != reached.col
    return (
        reached.row[off_diag].astype(np.int64),
        reached.col[off_diag].astype(np.int64),
        reached.data[off_diag].astype(np.float64),
    )


# The dispatch table: one builder per name of METHODS.
_BUILDERS = {"knn": _knn_graph, "radius": _radius_graph, "delaunay": _delaunay_graph, "grid": _grid_graph}


def _check_section_size(n: int, k: int, section: str) -> None:
    if n <= k:
        raise ValueError(
            f"n_neighbors={k} must be smaller than the number of cells, but "
            f"{section} has only {n}; lower `n_neighbors` or merge sections."
        )


def _prune(rows, cols, d, n: int, settings: _Settings, upper_applied: bool = False):
    """Keep the edges whose length lies in ``settings.interval`` and within ``settings.percentile``."""
    keep = None
    if settings.interval is not None:
        low, high = settings.interval
        if not upper_applied:
            keep = (d >= low) & (d <= high)
        elif low > 0:
            keep = d >= low
    if settings.percentile is not None:
        # squidpy's sample: edge lengths, edges cut by the interval as zeros, and
        # the zero self-distance of every cell.
        sample = d if keep is None else np.where(keep, d, 0.0)
        threshold = np.percentile(np.concatenate([sample, np.zeros(n)]), settings.percentile)
        keep = d <= threshold if keep is None else keep & (d <= threshold)
    return (rows, cols, d) if keep is None else (rows[keep], cols[keep], d[keep])


def _knn_query(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other points of every point: ``(dist, index)``, shape ``(n, k)``."""
    n = len(x)
    tree = cKDTree(x, balanced_tree=False)
    # Querying in the tree's leaf order keeps neighbouring queries in cache
    # (2-3x faster than the obs order on a million cells).
    order = tree.indices
    d, nb = tree.query(x[order], k=k + 1, workers=-1)
    if np.array_equal(nb[:, 0], order):  # every point found itself first
        d, nb = d[:, 1:], nb[:, 1:]
    else:
        # Drop the query point itself by index, not by distance: with duplicated
        # coordinates another cell can come first. Rows where the point is not
        # among the k + 1 (more than k duplicates) drop their last candidate.
        is_self = nb == order[:, None]
        is_self[~is_self.any(axis=1), -1] = True
        keep = ~is_self
        d, nb = d[keep].reshape(n, k), nb[keep].reshape(n, k)
    dist = np.empty((n, k))
    index = np.empty((n, k), dtype=np.int64)
    dist[order] = d
    index[order] = nb
    return dist, index


def _share_vertices(rows, cols, n, coplanar):
    """Give the points Qhull left out (duplicates) the edges of their nearest vertex.

    Every point ``a`` gets a representative vertex ``rep[a]`` (itself, or for a
    coplanar point its nearest vertex). Each vertex edge ``(u, v)`` becomes all
    pairs ``(a, b)`` with ``rep[a] = u`` and ``rep[b] = v``, and the members of
    one group are joined to each other.
    """
    rep = np.arange(n, dtype=np.int64)
    rep[coplanar[:, 0]] = coplanar[:, 2]
    size = np.bincount(rep, minlength=n)
    members = np.argsort(rep, kind="stable")
    start = np.cumsum(size) - size
    shared = np.flatnonzero(size > 1)
    u = np.concatenate([rows, shared])
    v = np.concatenate([cols, shared])
    count = size[u] * size[v]
    edge = np.repeat(np.arange(len(u)), count)
    t = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    su, sv = u[edge], v[edge]
    a = members[start[su] + t // size[sv]]
    b = members[start[sv] + t % size[sv]]
    keep = a != b
    return a[keep], b[keep]


def _lengths(x: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    diff = x[i] - x[j]
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


# --------------------------------------------------------------------------- #
# Assembly
# --------------------------------------------------------------------------- #


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    if not parts:
        return np.empty(0, dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)


def _symmetrise(conn, dist, coords, euclidean):
    """Union of the edges and their reverses.

    Euclidean lengths are recomputed on the union; grid ring numbers take the
    larger of the two directions where both exist (rings are symmetric on a
    regular lattice).
    """
    sym = (conn + conn.T).tocsr()
    sym.sort_indices()
    n = sym.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(sym.indptr))
    if euclidean:
        values = _lengths(coords, rows, sym.indices)
    else:
        values = np.maximum(_aligned_values(sym, dist), _aligned_values(sym, _sorted_csr(dist.T)))
    dist = sp.csr_matrix((values, sym.indices.copy(), sym.indptr.copy()), shape=(n, n))
    sym.data = np.ones(sym.nnz, dtype=np.float32)
    return sym, dist


def _sorted_csr(mat) -> sp.csr_matrix:
    mat = mat.tocsr()
    mat.sort_indices()
    return mat


def _to_csr(rows, cols, d, n) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Connectivities and distances CSR with one shared (copied) pattern, sorted indices.

    Edges are unique. Zero distances stay stored, so both patterns are equal.
    """
    idx_dtype = np.int32 if max(n, len(rows)) < np.iinfo(np.int32).max else np.int64
    if len(rows) == 0 or np.all(rows[1:] >= rows[:-1]):
        # Edges already grouped by row (one section, or sections in obs order):
        # the row pointer is a running count, only columns within a row need sorting.
        indptr = np.zeros(n + 1, dtype=idx_dtype)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        dist = sp.csr_matrix((d, cols.astype(idx_dtype), indptr), shape=(n, n))
    else:
        dist = sp.coo_matrix((d, (rows.astype(idx_dtype), cols.astype(idx_dtype))), shape=(n, n)).tocsr()
    dist.sort_indices()
    conn = sp.csr_matrix(
        (np.ones(dist.nnz, dtype=np.float32), dist.indices.copy(), dist.indptr.copy()),
        shape=(n, n),
    )
    conn.has_sorted_indices = True
    return conn, dist


def _aligned_values(pattern: sp.csr_matrix, values: sp.csr_matrix) -> np.ndarray:
    """``values[i, j]`` for every stored ``(i, j)`` of ``pattern``, 0 where absent."""
    if np.array_equal(pattern.indptr, values.indptr) and np.array_equal(pattern.indices, values.indices):
        return np.asarray(values.data, dtype=np.float64)
    n = pattern.shape[1]
    want = np.repeat(np.arange(pattern.shape[0], dtype=np.int64), np.diff(pattern.indptr))
    want = want * n + pattern.indices
    have = np.repeat(np.arange(values.shape[0], dtype=np.int64), np.diff(values.indptr))
    have = have * n + values.indices  # sorted: rows ascending, indices sorted per row
    out = np.zeros(len(want))
    if len(have) == 0:
        return out
    at = np.minimum(np.searchsorted(have, want), len(have) - 1)
    found = have[at] == want
    out[found] = values.data[at[found]]
    return out
