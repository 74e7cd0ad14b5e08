"""Spatial graphs (stepgraph.graph.spatial) and their PyG form (stepgraph.graph.convert).

References are computed independently: all pairwise distances with numpy on a
few hundred points, scipy's Delaunay simplices, a hexagonal lattice built here.
"""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial import Delaunay

from stepgraph.graph import SpatialGraph, spatial_graph, to_pyg

N = 300


def make_adata(n=N, dim=2, seed=0, sections=None, scale=10.0):
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(
        X=np.zeros((n, 2), dtype=np.float32),
        obs=pd.DataFrame(index=[f"cell{i}" for i in range(n)]),
    )
    adata.obsm["spatial"] = rng.uniform(0, scale, size=(n, dim))
    if sections is not None:
        adata.obs["section"] = pd.Categorical(rng.choice(sections, n))
    return adata


def pairwise(x):
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def edge_set(mat):
    coo = sp.coo_matrix(mat)
    keep = coo.data != 0
    return set(zip(coo.row[keep].tolist(), coo.col[keep].tolist(), strict=True))


def dense_ref_knn(x, k):
    d = pairwise(x)
    np.fill_diagonal(d, np.inf)
    nbrs = np.argsort(d, axis=1)[:, :k]
    return {(i, int(j)) for i in range(len(x)) for j in nbrs[i]}, d


def hex_lattice(n_rows, n_cols, spacing=100.0):
    r, c = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    x = c + 0.5 * (r % 2)
    y = r * np.sqrt(3) / 2
    return np.column_stack([x.ravel(), y.ravel()]) * spacing, r.ravel(), c.ravel()


# --------------------------------------------------------------------------- #
# Edges against independent references
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("k", [1, 6, 10])
def test_knn_equals_brute_force(dim, k):
    adata = make_adata(dim=dim, seed=dim + k)
    conn, dist = spatial_graph(adata, method="knn", n_neighbors=k, copy=True)
    ref, d = dense_ref_knn(adata.obsm["spatial"], k)
    assert edge_set(conn) == ref
    assert np.all(np.diff(conn.indptr) == k)
    coo = dist.tocoo()
    np.testing.assert_allclose(coo.data, d[coo.row, coo.col])


@pytest.mark.parametrize("dim", [2, 3])
def test_radius_equals_brute_force(dim):
    adata = make_adata(dim=dim, seed=10 + dim)
    r = 1.2 if dim == 2 else 2.0
    conn, dist = spatial_graph(adata, method="radius", radius=r, copy=True)
    d = pairwise(adata.obsm["spatial"])
    rows, cols = np.nonzero((d <= r) & ~np.eye(N, dtype=bool))
    assert edge_set(conn) == set(zip(rows.tolist(), cols.tolist(), strict=True))
    assert len(rows) > N  # the test would be vacuous on an empty graph
    coo = dist.tocoo()
    np.testing.assert_allclose(coo.data, d[coo.row, coo.col])


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("interval", [(0.5, 1.5), (1.5, 0.5), [0.8, 2.0]])
def test_radius_interval_equals_brute_force(dim, interval):
    adata = make_adata(dim=dim, seed=20 + dim)
    conn, _ = spatial_graph(adata, method="radius", radius=interval, copy=True)
    lo, hi = sorted(interval)
    d = pairwise(adata.obsm["spatial"])
    rows, cols = np.nonzero((d >= lo) & (d <= hi) & ~np.eye(N, dtype=bool))
    assert len(rows) > 0
    assert edge_set(conn) == set(zip(rows.tolist(), cols.tolist(), strict=True))


@pytest.mark.parametrize("dim", [2, 3])
def test_delaunay_equals_scipy_triangulation(dim):
    adata = make_adata(n=150, dim=dim, seed=30 + dim)
    x = adata.obsm["spatial"]
    conn, dist = spatial_graph(adata, method="delaunay", copy=True)
    ref = set()
    for simplex in Delaunay(x).simplices:
        for a in simplex:
            for b in simplex:
                if a != b:
                    ref.add((int(a), int(b)))
    assert edge_set(conn) == ref
    coo = dist.tocoo()
    np.testing.assert_allclose(coo.data, np.linalg.norm(x[coo.row] - x[coo.col], axis=1))


@pytest.mark.parametrize("method, seed, radius", [("delaunay", 40, 0.8), ("knn", 41, 0.5)])
def test_pruned_by_radius(method, seed, radius):
    adata = make_adata(seed=seed)
    _, dist = spatial_graph(adata, method=method, copy=True)
    pruned, _ = spatial_graph(adata, method=method, radius=radius, copy=True)
    coo = dist.tocoo()
    expected = {(r, c) for r, c, v in zip(coo.row, coo.col, coo.data, strict=True) if v <= radius}
    assert edge_set(pruned) == expected
    assert 0 < len(expected) < dist.nnz


@pytest.mark.parametrize("method,kwargs", [("knn", {}), ("radius", {"radius": 1.5}), ("delaunay", {})])
def test_percentile_prunes_long_edges(method, kwargs):
    adata = make_adata(seed=50)
    _, full = spatial_graph(adata, method=method, copy=True, **kwargs)
    conn, dist = spatial_graph(adata, method=method, percentile=75, copy=True, **kwargs)
    # documented rule (squidpy's): percentile over edge lengths plus one zero per cell
    threshold = np.percentile(np.concatenate([full.data, np.zeros(N)]), 75)
    coo = full.tocoo()
    expected = {(r, c) for r, c, v in zip(coo.row, coo.col, coo.data, strict=True) if v <= threshold}
    assert edge_set(conn) == expected
    assert dist.max() <= threshold
    assert conn.nnz < full.nnz


def test_hex_grid_rings():
    coords, r, c = hex_lattice(12, 14)
    adata = ad.AnnData(np.zeros((len(coords), 1), dtype=np.float32))
    adata.obsm["spatial"] = coords
    interior1 = (r >= 1) & (r <= 10) & (c >= 1) & (c <= 12)
    interior2 = (r >= 2) & (r <= 9) & (c >= 2) & (c <= 11)

    conn1, dist1 = spatial_graph(adata, method="grid", copy=True)
    deg1 = np.asarray(conn1.sum(axis=1)).ravel()
    assert np.all(deg1[interior1] == 6)
    assert np.all(deg1 <= 6) and np.all(deg1 >= 2)
    np.testing.assert_array_equal(dist1.data, 1.0)
    # first-ring neighbours are exactly one lattice spacing apart
    coo = conn1.tocoo()
    np.testing.assert_allclose(np.linalg.norm(coords[coo.row] - coords[coo.col], axis=1), 100.0)

    conn2, dist2 = spatial_graph(adata, method="grid", n_rings=2, copy=True)
    deg2 = np.asarray(conn2.sum(axis=1)).ravel()
    assert np.all(deg2[interior2] == 18)
    # ring 1 keeps distance 1, the new ring gets distance 2, at most 2 spacings away
    ring1 = edge_set(conn1)
    coo2 = dist2.tocoo()
    for i, j, v in zip(coo2.row, coo2.col, coo2.data, strict=True):
        assert v == (1.0 if (i, j) in ring1 else 2.0)
    lengths = np.linalg.norm(coords[coo2.row] - coords[coo2.col], axis=1)
    assert lengths.max() <= 200.0 + 1e-9
    assert ring1 < edge_set(conn2)


def test_grid_rejects_radius_and_percentile():
    adata = make_adata()
    with pytest.raises(ValueError, match="radius"):
        spatial_graph(adata, method="grid", radius=1.0)
    with pytest.raises(ValueError, match="percentile"):
        spatial_graph(adata, method="grid", percentile=90)


# --------------------------------------------------------------------------- #
# Sections
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "method,kwargs",
    [("knn", {}), ("radius", {"radius": 1.5}), ("delaunay", {}), ("knn", {"percentile": 80})],
)
def test_sections_never_joined_and_built_alone(method, kwargs):
    # sections interleaved in obs order and overlapping in space
    adata = make_adata(n=360, seed=60, sections=["s1", "s2", "s3"])
    conn, dist = spatial_graph(adata, method=method, batch_key="section", copy=True, **kwargs)
    labels = adata.obs["section"].to_numpy()
    coo = conn.tocoo()
    assert np.all(labels[coo.row] == labels[coo.col])
    # each section's block equals the graph of that section alone
    for s in ["s1", "s2", "s3"]:
        idx = np.flatnonzero(labels == s)
        alone, alone_dist = spatial_graph(adata[idx].copy(), method=method, copy=True, **kwargs)
        assert edge_set(conn[idx][:, idx]) == edge_set(alone)
        np.testing.assert_allclose(dist[idx][:, idx].toarray(), alone_dist.toarray())


def test_sections_grid_and_non_categorical_column():
    coords, _, _ = hex_lattice(8, 8)
    adata = ad.AnnData(np.zeros((2 * len(coords), 1), dtype=np.float32))
    adata.obsm["spatial"] = np.vstack([coords, coords])  # two sections, same place
    adata.obs["sample"] = ["a"] * len(coords) + ["b"] * len(coords)  # plain strings
    conn, _ = spatial_graph(adata, method="grid", batch_key="sample", copy=True)
    coo = conn.tocoo()
    assert np.all((coo.row < len(coords)) == (coo.col < len(coords)))
    top = conn[: len(coords)][:, : len(coords)]
    bottom = conn[len(coords) :][:, len(coords) :]
    assert edge_set(top) == edge_set(bottom)
    assert top.nnz > 0


# --------------------------------------------------------------------------- #
# Layout, dtypes, options
# --------------------------------------------------------------------------- #


def test_obsp_uns_layout_and_dtypes():
    adata = make_adata(sections=["a", "b"])
    before_obs = adata.obs.copy()
    before_coords = adata.obsm["spatial"].copy()
    out = spatial_graph(adata, method="radius", radius=(0.2, 1.5), batch_key="section", key_added="niche")
    assert out is None
    assert set(adata.obsp.keys()) == {"niche_connectivities", "niche_distances"}
    conn = adata.obsp["niche_connectivities"]
    dist = adata.obsp["niche_distances"]
    for mat in (conn, dist):
        assert sp.issparse(mat) and mat.format == "csr"
        assert mat.shape == (N, N)
        assert mat.has_sorted_indices
    assert conn.dtype == np.float32 and dist.dtype == np.float64
    np.testing.assert_array_equal(conn.data, 1.0)
    np.testing.assert_array_equal(conn.indptr, dist.indptr)
    np.testing.assert_array_equal(conn.indices, dist.indices)
    info = adata.uns["niche_neighbors"]
    assert info["connectivities_key"] == "niche_connectivities"
    assert info["distances_key"] == "niche_distances"
    params = info["params"]
    assert params["method"] == "radius" and params["coord_type"] == "generic"
    assert params["radius"] == [0.2, 1.5]
    assert params["batch_key"] == "section" and params["spatial_key"] == "spatial"
    assert {"n_neighbors", "transform", "n_rings", "set_diag", "percentile"} <= set(params)
    # nothing else changed
    pd.testing.assert_frame_equal(adata.obs, before_obs)
    np.testing.assert_array_equal(adata.obsm["spatial"], before_coords)
    assert set(adata.uns.keys()) == {"niche_neighbors"}


def test_copy_true_returns_and_leaves_adata_untouched():
    adata = make_adata()
    adata.obsm["spatial"] = np.round(adata.obsm["spatial"] * 100).astype(np.int64)  # int coords
    coords = adata.obsm["spatial"].copy()
    result = spatial_graph(adata, method="knn", copy=True)
    assert isinstance(result, SpatialGraph)
    conn, dist = result
    assert conn is result.connectivities and dist is result.distances
    assert conn.shape == (N, N) and conn.nnz == 6 * N
    assert len(adata.obsp.keys()) == 0 and len(adata.uns.keys()) == 0
    assert adata.obsm["spatial"].dtype == np.int64
    np.testing.assert_array_equal(adata.obsm["spatial"], coords)


def test_set_diag():
    adata = make_adata()
    conn, dist = spatial_graph(adata, method="knn", set_diag=True, copy=True)
    np.testing.assert_array_equal(conn.diagonal(), 1.0)
    np.testing.assert_array_equal(np.diff(conn.indptr), 7)
    # the zero self-distance is stored, so both patterns stay equal
    np.testing.assert_array_equal(conn.indices, dist.indices)
    assert np.all(dist.diagonal() == 0)
    plain, _ = spatial_graph(adata, method="knn", copy=True)
    assert edge_set(conn) - edge_set(plain) == {(i, i) for i in range(N)}


def test_symmetric():
    adata = make_adata(seed=70)
    directed, _ = spatial_graph(adata, method="knn", copy=True)
    assert (directed != directed.T).nnz > 0  # knn is directed by default, as squidpy
    conn, dist = spatial_graph(adata, method="knn", symmetric=True, copy=True)
    assert (conn != conn.T).nnz == 0
    assert edge_set(conn) == edge_set(directed) | edge_set(directed.T)
    x = adata.obsm["spatial"]
    coo = dist.tocoo()
    np.testing.assert_allclose(coo.data, np.linalg.norm(x[coo.row] - x[coo.col], axis=1))
    # grid rings symmetrised too
    coords, _, _ = hex_lattice(6, 6)
    grid = ad.AnnData(np.zeros((len(coords), 1), dtype=np.float32))
    grid.obsm["spatial"] = coords + np.random.default_rng(0).normal(0, 3, coords.shape)
    gconn, gdist = spatial_graph(grid, method="grid", n_rings=2, symmetric=True, copy=True)
    assert (gconn != gconn.T).nnz == 0
    assert set(np.unique(gdist.data)) <= {1.0, 2.0}


def test_duplicate_coordinates():
    adata = make_adata(seed=80)
    x = adata.obsm["spatial"]
    x[1] = x[0]
    x[2] = x[0]  # three cells at one place
    x[10] = x[11]
    conn, dist = spatial_graph(adata, method="knn", n_neighbors=4, copy=True)
    assert np.all(np.diff(conn.indptr) == 4)
    assert conn.diagonal().sum() == 0
    assert {(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (10, 11), (11, 10)} <= edge_set(conn)
    assert dist[0, 1] == 0 and conn[0, 1] == 1
    np.testing.assert_array_equal(conn.indices, dist.indices)

    rconn, _ = spatial_graph(adata, method="radius", radius=0.5, copy=True)
    assert {(0, 1), (1, 2), (10, 11)} <= edge_set(rconn)

    dconn, ddist = spatial_graph(adata, method="delaunay", copy=True)
    deg = np.diff(dconn.indptr)
    assert np.all(deg >= 3)  # every copy has neighbours, none is left out
    assert (dconn != dconn.T).nnz == 0
    assert {(0, 1), (1, 2), (2, 0), (10, 11)} <= edge_set(dconn)
    # the copies share the neighbourhood of their location
    others = lambda i, group: {j for (a, j) in edge_set(dconn) if a == i} - group  # noqa: E731
    assert others(0, {0, 1, 2}) == others(1, {0, 1, 2}) == others(2, {0, 1, 2})
    assert ddist[0, 1] == 0 and np.all(ddist.diagonal() == 0)


def test_h5ad_round_trip(tmp_path):
    adata = make_adata(sections=["a", "b"])
    spatial_graph(adata, method="radius", radius=(0.1, 1.4), batch_key="section", percentile=90)
    path = tmp_path / "graph.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    for key in ("spatial_connectivities", "spatial_distances"):
        assert sp.issparse(back.obsp[key])
        assert (back.obsp[key] != adata.obsp[key]).nnz == 0
    params = back.uns["spatial_neighbors"]["params"]
    assert params["method"] == "radius"
    assert list(params["radius"]) == [0.1, 1.4]
    assert params["percentile"] == 90
    assert back.uns["spatial_neighbors"]["connectivities_key"] == "spatial_connectivities"
    data = to_pyg(back, batch_key="section")
    assert data.edge_index.shape[1] == adata.obsp["spatial_connectivities"].nnz


# --------------------------------------------------------------------------- #
# to_pyg
# --------------------------------------------------------------------------- #


def test_to_pyg_matches_obsp():
    torch = pytest.importorskip("torch")
    adata = make_adata(seed=90, sections=["b", "a", "c"])
    spatial_graph(adata, method="knn", n_neighbors=5, batch_key="section")
    data = to_pyg(adata, batch_key="section")
    conn = adata.obsp["spatial_connectivities"]
    dist = adata.obsp["spatial_distances"]
    E = conn.nnz

    assert data.num_nodes == N
    assert data.edge_index.dtype == torch.int64 and data.edge_index.shape == (2, E)
    assert data.edge_attr.dtype == torch.float32 and data.edge_attr.shape == (E, 1)
    assert data.edge_weight.dtype == torch.float32 and data.edge_weight.shape == (E,)
    assert data.pos.dtype == torch.float32 and data.pos.shape == (N, 2)
    assert data.section.dtype == torch.int64 and data.section.shape == (N,)
    assert data.x is None  # node features are served per mini-batch, not stored

    src, dst = data.edge_index.numpy()
    # edge j -> i for every stored (i, j): target = row, source = neighbour
    assert set(zip(dst.tolist(), src.tolist(), strict=True)) == edge_set(conn)
    np.testing.assert_allclose(data.edge_attr[:, 0].numpy(), np.asarray(dist[dst, src]).ravel(), rtol=1e-6)
    # edge_weight holds the connectivities by default, the distances on request
    np.testing.assert_array_equal(data.edge_weight.numpy(), np.asarray(conn[dst, src]).ravel())
    by_distance = to_pyg(adata, batch_key="section", edge_weight="distances")
    np.testing.assert_array_equal(by_distance.edge_weight.numpy(), data.edge_attr[:, 0].numpy())
    # sorted by target, then source (CSC order of edge_index)
    key = dst.astype(np.int64) * N + src
    assert np.all(np.diff(key) > 0)
    # every target has its k neighbours as sources
    assert np.all(np.bincount(dst, minlength=N) == 5)
    np.testing.assert_allclose(data.pos.numpy(), adata.obsm["spatial"].astype(np.float32))
    labels = adata.obs["section"].cat.categories[data.section.numpy()]
    np.testing.assert_array_equal(labels, adata.obs["section"].to_numpy())
    assert sorted(set(data.section.tolist())) == [0, 1, 2]


def test_to_pyg_options_and_squidpy_style_distances():
    adata = make_adata(seed=91)
    adata.obsm["spatial"][5] = adata.obsm["spatial"][6]
    spatial_graph(adata, method="knn", key_added="g")
    # squidpy drops zero distances from its distance matrix: emulate that
    dist = adata.obsp["g_distances"].copy()
    dist.eliminate_zeros()
    adata.obsp["g_distances"] = dist
    data = to_pyg(adata, key="g", pos=False, edge_weight="connectivities")
    assert data.edge_index.shape[1] == 6 * N
    assert not hasattr(data, "pos") or data.pos is None
    assert not hasattr(data, "section") or data.section is None
    np.testing.assert_array_equal(data.edge_weight.numpy(), 1.0)
    src, dst = data.edge_index.numpy()
    x = adata.obsm["spatial"]
    np.testing.assert_allclose(
        data.edge_attr[:, 0].numpy(), np.linalg.norm(x[dst] - x[src], axis=1), rtol=1e-5, atol=1e-6
    )
    assert data.edge_attr[(dst == 5) & (src == 6)].item() == 0.0
    none = to_pyg(adata, key="g", edge_weight=None)
    assert getattr(none, "edge_weight", None) is None


def test_to_pyg_missing_graph():
    adata = make_adata()
    with pytest.raises(KeyError, match=r"spatial_graph"):
        to_pyg(adata)
    spatial_graph(adata)
    with pytest.raises(KeyError, match="other"):
        to_pyg(adata, key="other")
    with pytest.raises(KeyError, match="batch_key"):
        to_pyg(adata, batch_key="nope")
    with pytest.raises(ValueError, match="edge_weight"):
        to_pyg(adata, edge_weight="inverse")


def test_to_pyg_neighbor_loader_accepts_sorted_edges():
    pytest.importorskip("torch_geometric")
    from torch_geometric.loader import NeighborLoader

    adata = make_adata(seed=92)
    spatial_graph(adata, n_neighbors=4)
    data = to_pyg(adata)
    try:
        loader = NeighborLoader(data, num_neighbors=[4], batch_size=16, is_sorted=True)
        batch = next(iter(loader))
    except ImportError as err:  # no sampling backend (pyg-lib / torch-sparse) installed
        pytest.skip(str(err))
    # the seed nodes' sampled neighbours are their k nearest
    conn = adata.obsp["spatial_connectivities"]
    n_id = batch.n_id.numpy()
    src, dst = batch.edge_index.numpy()
    for seed_local in range(batch.batch_size):
        got = set(n_id[src[dst == seed_local]].tolist())
        assert got == set(conn[n_id[seed_local]].indices.tolist())


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


def test_error_missing_obsm_key():
    adata = make_adata()
    adata.obsm["X_umap"] = np.zeros((N, 2))
    with pytest.raises(KeyError, match=r"spatial_key='xy'.*'spatial', 'X_umap'"):
        spatial_graph(adata, spatial_key="xy")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_error_non_finite_coordinates(bad):
    adata = make_adata()
    adata.obsm["spatial"][[7, 9, 20], 1] = bad
    with pytest.raises(ValueError, match=r"spatial_key.*NaN or infinite.*3 of 300.*'cell7'"):
        spatial_graph(adata)
    assert len(adata.obsp.keys()) == 0


def test_error_non_numeric_coordinates():
    adata = make_adata()
    adata.obsm["spatial"] = np.array([["a", "b"]] * N)
    with pytest.raises(TypeError, match="spatial_key"):
        spatial_graph(adata)
    adata.obsm["spatial"] = pd.DataFrame({"x": np.arange(N), "y": ["a"] * N}, index=adata.obs_names)
    with pytest.raises(TypeError, match="spatial_key"):
        spatial_graph(adata)


def test_dataframe_coordinates_accepted():
    adata = make_adata()
    coords = adata.obsm["spatial"].copy()
    adata.obsm["spatial"] = pd.DataFrame(coords, index=adata.obs_names, columns=["x", "y"])
    conn, _ = spatial_graph(adata, copy=True)
    ref, _ = dense_ref_knn(coords, 6)
    assert edge_set(conn) == ref


def test_error_section_too_small():
    adata = make_adata(n=40)
    adata.obs["section"] = pd.Categorical(["big"] * 35 + ["tiny"] * 5)
    with pytest.raises(ValueError, match=r"n_neighbors=6.*'tiny'.*only 5"):
        spatial_graph(adata, batch_key="section")
    with pytest.raises(ValueError, match=r"n_neighbors=6.*only 5"):
        spatial_graph(adata[-5:].copy())
    spatial_graph(adata, batch_key="section", n_neighbors=4)  # fits now
    # radius has no such limit
    spatial_graph(adata, method="radius", radius=1.0, batch_key="section")


def test_error_unknown_method_and_bad_arguments():
    adata = make_adata()
    with pytest.raises(ValueError, match="method"):
        spatial_graph(adata, method="gabriel")
    with pytest.raises(ValueError, match="radius"):
        spatial_graph(adata, method="radius")
    with pytest.raises(TypeError, match="radius"):
        spatial_graph(adata, method="radius", radius="far")
    with pytest.raises(ValueError, match="radius"):
        spatial_graph(adata, method="radius", radius=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="radius"):
        spatial_graph(adata, method="radius", radius=-1.0)
    with pytest.raises(ValueError, match="n_neighbors"):
        spatial_graph(adata, n_neighbors=0)
    with pytest.raises(TypeError, match="n_neighbors"):
        spatial_graph(adata, n_neighbors=2.5)
    with pytest.raises(ValueError, match="n_rings"):
        spatial_graph(adata, method="grid", n_rings=0)
    with pytest.raises(ValueError, match="percentile"):
        spatial_graph(adata, percentile=120)
    with pytest.raises(TypeError, match="adata"):
        spatial_graph(adata.obsm["spatial"])
    assert len(adata.obsp.keys()) == 0 and len(adata.uns.keys()) == 0


def test_error_missing_batch_key():
    adata = make_adata(sections=["a", "b"])
    with pytest.raises(KeyError, match=r"batch_key='sample'.*'section'"):
        spatial_graph(adata, batch_key="sample")
    adata.obs["partial"] = pd.Categorical(["a"] * (N - 2) + [np.nan, np.nan])
    with pytest.raises(ValueError, match=r"batch_key.*no missing values, got 2 missing.*'cell298'"):
        spatial_graph(adata, batch_key="partial")


def test_error_delaunay_degenerate():
    adata = make_adata(n=20)
    adata.obsm["spatial"] = np.column_stack([np.arange(20.0), 2 * np.arange(20.0)])  # a line
    with pytest.raises(ValueError, match="delaunay.*degenerate"):
        spatial_graph(adata, method="delaunay")


@pytest.mark.parametrize("n_dims", [1, 4])
def test_error_coordinates_not_2d_or_3d(n_dims):
    adata = make_adata(n=20)
    adata.obsm["spatial"] = np.arange(20.0 * n_dims).reshape(20, n_dims)
    with pytest.raises(ValueError, match=rf"\(n_obs, 2\) or \(n_obs, 3\).*\(20, {n_dims}\)"):
        spatial_graph(adata)


# --------------------------------------------------------------------------- #
# squidpy, when installed
# --------------------------------------------------------------------------- #


_SQUIDPY_OLD_STYLE = {  # the deprecated spatial_neighbors' way of naming each method
    "knn": {"coord_type": "generic"},
    "radius": {"coord_type": "generic"},
    "delaunay": {"coord_type": "generic", "delaunay": True},
    "grid": {"coord_type": "grid"},
}


def squidpy_graph(sq, adata, method, **kwargs):
    """squidpy's graph with ``copy=True``: its ``spatial_neighbors_<method>``
    where present (squidpy >= 1.8), else the deprecated ``spatial_neighbors``."""
    build = getattr(sq.gr, f"spatial_neighbors_{method}", None)
    if build is not None:
        return build(adata, copy=True, **kwargs)
    return sq.gr.spatial_neighbors(adata, copy=True, **_SQUIDPY_OLD_STYLE[method], **kwargs)


def test_same_edges_as_squidpy():
    sq = pytest.importorskip("squidpy")
    adata = make_adata(n=400, seed=100, sections=["a", "b"])
    cases = [
        ("knn", {}, {"n_neighs": 6}),
        ("knn", {"percentile": 80}, {"n_neighs": 6, "percentile": 80}),
        ("radius", {"radius": 1.5}, {"radius": 1.5}),
        ("radius", {"radius": (0.5, 1.5)}, {"radius": (0.5, 1.5)}),
        ("delaunay", {}, {}),
        ("knn", {"set_diag": True}, {"set_diag": True}),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method, ours, theirs in cases:
            conn, dist = spatial_graph(adata, method=method, batch_key="section", copy=True, **ours)
            sconn, sdist = squidpy_graph(sq, adata, method, library_key="section", **theirs)
            assert edge_set(conn) == edge_set(sconn), (method, ours)
            np.testing.assert_allclose(dist.toarray(), sdist.toarray())
        coords, _, _ = hex_lattice(10, 12)
        grid = ad.AnnData(np.zeros((len(coords), 1), dtype=np.float32))
        grid.obsm["spatial"] = coords
        for rings in (1, 2):
            conn, dist = spatial_graph(grid, method="grid", n_rings=rings, copy=True)
            sconn, sdist = squidpy_graph(sq, grid, "grid", n_rings=rings)
            assert edge_set(conn) == edge_set(sconn)
            np.testing.assert_allclose(dist.toarray(), sdist.toarray())
