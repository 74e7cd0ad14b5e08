"""Turn an AnnData with a spatial graph into a :class:`torch_geometric.data.Data`."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from stepgraph._validation import check_choice, check_instance
from stepgraph.graph.spatial import _aligned_values, get_coordinates, section_codes

__all__ = ["to_pyg"]

_WEIGHTS = ("distances", "connectivities")


def to_pyg(
    adata: AnnData,
    key: str = "spatial",
    batch_key: str | None = None,
    *,
    spatial_key: str | None = None,
    pos: bool = True,
    edge_weight: str | None = "connectivities",
):
    """Build a :class:`torch_geometric.data.Data` holding the graph of :func:`spatial_graph`.

    Only the graph travels: node features stay in ``adata`` and are served per
    mini-batch by the dataset (gathered by ``batch.n_id``), so a million-cell
    matrix is never copied into the ``Data`` object.

    Edge direction and order: row ``i`` of ``obsp[f"{key}_connectivities"]``
    lists the neighbours ``j`` of cell ``i``; each becomes the edge ``j -> i``
    (``edge_index[0]`` = source = neighbour, ``edge_index[1]`` = target = the
    cell), so a message-passing layer aggregates a cell's own neighbours into it.
    Edges are sorted by target, then by source: this is the CSR order of the
    matrix and the CSC order of ``edge_index`` that PyG's neighbour samplers
    use, so ``NeighborLoader(..., is_sorted=True)`` can skip its sort. For a
    symmetric graph the direction does not matter.

    Parameters
    ----------
    adata
        Annotated data on which :func:`~stepgraph.graph.spatial_graph` was run.
    key
        The ``key_added`` of that call: the graph is read from
        ``adata.uns[f"{key}_neighbors"]`` (its ``connectivities_key`` and
        ``distances_key``), or from ``obsp[f"{key}_connectivities"]`` and
        ``obsp[f"{key}_distances"]`` when ``uns`` lacks it (e.g. a graph written
        by squidpy under another name).
    batch_key
        Column of ``adata.obs`` with the section of each cell; stored as
        ``data.section`` (``int64`` codes, in category / sorted order).
        ``None`` stores no section.
    spatial_key
        Key of the coordinates in ``adata.obsm`` for ``data.pos``; by default
        the one the graph was built from (``params["spatial_key"]``), else
        ``"spatial"``.
    pos
        Whether to store the coordinates as ``data.pos``.
    edge_weight
        What goes into ``data.edge_weight``: ``"connectivities"`` (the matrix
        values, ``1.0`` unless transformed; default), ``"distances"`` (the edge
        lengths) or ``None`` for no ``edge_weight``. The default suits models
        that read ``edge_weight`` as a strength (``GCNConv`` does, and
        stepgraph's trainer passes it on): distances would weigh far
        neighbours most. The distances are always in ``data.edge_attr``.

    Returns
    -------
    torch_geometric.data.Data
        With

        - ``edge_index``: ``int64`` ``[2, E]``, sorted by target then source;
        - ``edge_attr``: ``float32`` ``[E, 1]``, the edge distances;
        - ``edge_weight``: ``float32`` ``[E]`` (see ``edge_weight``);
        - ``num_nodes``: ``adata.n_obs``;
        - ``pos``: ``float32`` ``[N, n_dims]`` coordinates (if ``pos``);
        - ``section``: ``int64`` ``[N]`` section codes (if ``batch_key``).

    Raises
    ------
    KeyError
        If there is no graph under ``key`` (run :func:`spatial_graph` first),
        or ``spatial_key`` / ``batch_key`` is missing.
    ValueError
        If ``edge_weight`` is unknown or a stored matrix is not ``(n_obs, n_obs)``.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> from stepgraph.graph import spatial_graph, to_pyg
    >>> adata = ad.AnnData(np.zeros((50, 3), dtype=np.float32))
    >>> adata.obsm["spatial"] = np.random.default_rng(0).uniform(0, 10, (50, 2))
    >>> spatial_graph(adata, n_neighbors=4)
    >>> data = to_pyg(adata)
    >>> data.edge_index.shape, data.edge_attr.shape, data.num_nodes
    (torch.Size([2, 200]), torch.Size([200, 1]), 50)
    """
    import torch
    from torch_geometric.data import Data

    check_instance(adata, "adata", AnnData, "an anndata.AnnData")
    check_choice(edge_weight, "edge_weight", (*_WEIGHTS, None))

    conn, dist, params = _read_graph(adata, key)
    n = adata.n_obs
    conn = _canonical(conn)
    conn_values = conn.data
    if np.any(conn_values == 0):  # explicit zeros are not edges
        conn = conn.copy()
        conn.eliminate_zeros()
        conn_values = conn.data
    targets = np.repeat(np.arange(n, dtype=np.int64), np.diff(conn.indptr))
    sources = conn.indices.astype(np.int64)
    lengths = _aligned_values(conn, _canonical(dist))

    data = Data(
        edge_index=torch.from_numpy(np.stack([sources, targets])),
        edge_attr=torch.from_numpy(lengths.astype(np.float32)).unsqueeze(1),
        num_nodes=n,
    )
    if edge_weight == "distances":
        data.edge_weight = data.edge_attr.view(-1).clone()
    elif edge_weight == "connectivities":
        data.edge_weight = torch.from_numpy(conn_values.astype(np.float32))
    if pos:
        key_pos = spatial_key or params.get("spatial_key") or "spatial"
        data.pos = torch.from_numpy(get_coordinates(adata, key_pos).astype(np.float32))
    if batch_key is not None:
        codes, _ = section_codes(adata, batch_key)
        data.section = torch.from_numpy(codes)
    return data


def _read_graph(adata: AnnData, key: str):
    info = adata.uns.get(f"{key}_neighbors", {})
    conn_key = info.get("connectivities_key", f"{key}_connectivities")
    dist_key = info.get("distances_key", f"{key}_distances")
    for name in (conn_key, dist_key):
        if name not in adata.obsp:
            raise KeyError(
                f"No spatial graph under key={key!r}: adata.obsp has no {name!r} "
                f"(keys present: {list(adata.obsp.keys())}). Run "
                f"stepgraph.graph.spatial_graph(adata, key_added={key!r}) first."
            )
    conn, dist = adata.obsp[conn_key], adata.obsp[dist_key]
    for name, mat in ((conn_key, conn), (dist_key, dist)):
        if mat.shape != (adata.n_obs, adata.n_obs):
            raise ValueError(f"adata.obsp[{name!r}] has shape {mat.shape}, expected ({adata.n_obs}, {adata.n_obs}).")
    return conn, dist, dict(info.get("params", {}))


def _canonical(mat) -> sp.csr_matrix:
    """CSR with sorted indices, copying only when the stored matrix is not."""
    mat = sp.csr_matrix(mat) if not (sp.issparse(mat) and mat.format == "csr") else mat
    if not mat.has_sorted_indices:
        mat = mat.copy()
        mat.sort_indices()
    return mat
