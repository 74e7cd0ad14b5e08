"""Tests of the built-in neighbour sampler through a real NeighborLoader."""

import numpy as np
import pytest
import torch
import torch_geometric.typing
from scipy.spatial import cKDTree
from torch_geometric.data import Data
from torch_geometric.loader import NeighborLoader
from torch_geometric.nn import GCNConv, SAGEConv
from torch_geometric.sampler import NeighborSampler

from stepgraph.data.sampler import BuiltinNeighborSampler, make_neighbor_sampler


def knn_graph(points: np.ndarray, k: int, offset: int = 0) -> torch.Tensor:
    """Edges neighbour -> centre of the k nearest neighbours of every point."""
    _, idx = cKDTree(points).query(points, k=k + 1)
    src = torch.from_numpy(idx[:, 1:].reshape(-1)).long()
    dst = torch.arange(len(points)).repeat_interleave(k)
    return torch.stack([src, dst]) + offset


def symmetric(edge_index: torch.Tensor) -> torch.Tensor:
    """Union of the edges and their reverse, without duplicates."""
    both = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    return torch.unique(both, dim=1)


@pytest.fixture(scope="module")
def graph() -> Data:
    rng = np.random.default_rng(0)
    n = 600
    edge_index = symmetric(knn_graph(rng.random((n, 2)), k=6))  # in-degrees 6 .. ~12
    return Data(
        x=torch.randn(n, 5),
        edge_index=edge_index,
        edge_weight=torch.rand(edge_index.size(1)),
        num_nodes=n,
    )


def loader_for(data, num_neighbors, **kwargs):
    sampler = BuiltinNeighborSampler(
        data, num_neighbors, **{k: kwargs.pop(k) for k in ("replace", "subgraph_type") if k in kwargs}
    )
    return NeighborLoader(data, num_neighbors, neighbor_sampler=sampler, **kwargs)


def in_degree(data):
    return torch.bincount(data.edge_index[1], minlength=data.num_nodes)


def hop_slices(batch):
    """Per hop: (local ids of the nodes that sampled, slice of its edges)."""
    node_ofs = np.cumsum([0] + list(batch.num_sampled_nodes))
    edge_ofs = np.cumsum([0] + list(batch.num_sampled_edges))
    return [
        (torch.arange(node_ofs[h], node_ofs[h + 1]), slice(edge_ofs[h], edge_ofs[h + 1]))
        for h in range(len(batch.num_sampled_edges))
    ]


def batches_as_tuples(loader):
    return [(b.n_id.clone(), b.edge_index.clone(), b.e_id.clone()) for b in loader]


def test_edges_exist_and_map_to_e_id(graph):
    loader = loader_for(graph, [4, 3], batch_size=64, shuffle=True)
    edge_set = set(map(tuple, graph.edge_index.t().tolist()))
    for batch in loader:
        global_edges = batch.n_id[batch.edge_index]
        # Each local edge is the original edge batch.e_id points to ...
        assert torch.equal(global_edges, graph.edge_index[:, batch.e_id])
        assert all(tuple(e) in edge_set for e in global_edges.t().tolist())
        # ... and edge attributes are sliced consistently.
        assert torch.equal(batch.edge_weight, graph.edge_weight[batch.e_id])
        assert torch.equal(batch.x, graph.x[batch.n_id])


@pytest.mark.parametrize("num_neighbors", [[4, 3], [2, 8], [1, 1, 1]])
def test_min_k_degree_distinct_neighbours_per_target(graph, num_neighbors):
    deg = in_degree(graph)
    loader = loader_for(graph, num_neighbors, batch_size=50, shuffle=True)
    for batch in loader:
        assert batch.n_id.unique().numel() == batch.n_id.numel()
        for (targets, edges), k in zip(hop_slices(batch), num_neighbors, strict=True):
            col = batch.edge_index[1, edges]
            e_id = batch.e_id[edges]
            # Only the nodes discovered in the previous hop sample in this hop.
            assert bool(((col >= targets[0]) & (col <= targets[-1])).all()) or col.numel() == 0
            counts = torch.bincount(col - targets[0], minlength=targets.numel())
            expected = deg[batch.n_id[targets]].clamp(max=k)
            assert torch.equal(counts, expected)
            # Without replacement: no edge (and no neighbour) twice per target.
            assert torch.unique(torch.stack([col, e_id]), dim=1).size(1) == col.numel()
            src = batch.n_id[batch.edge_index[0, edges]]
            assert torch.unique(torch.stack([col, src]), dim=1).size(1) == col.numel()


def test_seeds_first_batch_size_and_input_id(graph):
    input_nodes = torch.randperm(graph.num_nodes)[:130]
    loader = loader_for(graph, [3, 3], batch_size=32, input_nodes=input_nodes)
    seen = []
    for i, batch in enumerate(loader):
        expected_ids = torch.arange(i * 32, min((i + 1) * 32, 130))
        assert batch.batch_size == expected_ids.numel()
        assert torch.equal(batch.input_id, expected_ids)
        assert torch.equal(batch.n_id[: batch.batch_size], input_nodes[expected_ids])
        assert batch.num_sampled_nodes[0] == batch.batch_size
        seen.append(batch.n_id[: batch.batch_size])
    assert torch.equal(torch.cat(seen), input_nodes)


def test_boolean_input_nodes(graph):
    mask = torch.zeros(graph.num_nodes, dtype=torch.bool)
    mask[::3] = True
    loader = loader_for(graph, [2], batch_size=1000, input_nodes=mask)
    batch = next(iter(loader))
    assert torch.equal(batch.n_id[: batch.batch_size], mask.nonzero().view(-1))


def test_same_seed_same_batches_other_seed_differs(graph):
    def run(seed):
        torch.manual_seed(seed)
        return batches_as_tuples(loader_for(graph, [3, 2], batch_size=40, shuffle=True))

    first, again, other = run(7), run(7), run(8)
    assert all(torch.equal(a, b) for x, y in zip(first, again, strict=True) for a, b in zip(x, y, strict=True))
    assert not all(x[0].shape == y[0].shape and torch.equal(x[0], y[0]) for x, y in zip(first, other, strict=True))


def test_sampling_is_random_within_seeds(graph):
    # Same seed nodes (no shuffle), different draws in two epochs.
    loader = loader_for(graph, [2, 2], batch_size=100)
    first, second = batches_as_tuples(loader), batches_as_tuples(loader)
    assert any(not torch.equal(a[2], b[2]) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("degree,k", [(10, 3), (12, 11), (100, 40)])  # Floyd, Floyd, sort
def test_neighbours_are_uniform(degree, k):
    # A star: node 0 has `degree` in-neighbours; k are drawn, 3000 times over.
    # The seed is repeated in one batch: every copy samples on its own, as in PyG.
    edge_index = torch.stack([torch.arange(1, degree + 1), torch.zeros(degree, dtype=torch.long)])
    data = Data(edge_index=edge_index, num_nodes=degree + 1)
    loader = loader_for(data, [k], input_nodes=torch.zeros(3000, dtype=torch.long), batch_size=3000)
    torch.manual_seed(0)
    batch = next(iter(loader))
    col = batch.edge_index[1]
    assert torch.equal(torch.bincount(col, minlength=3000), torch.full((3000,), k))
    assert torch.unique(torch.stack([col, batch.e_id]), dim=1).size(1) == 3000 * k
    # Each neighbour is drawn with probability k / degree; allow 5 sd.
    counts = torch.bincount(batch.e_id, minlength=degree).double()
    p = k / degree
    mean, sd = 3000 * p, (3000 * p * (1 - p)) ** 0.5
    assert ((counts - mean).abs() < 5 * sd).all(), counts
    assert batch.n_id[:3000].eq(0).all()
    assert batch.n_id[3000:].sort().values.tolist() == list(range(1, degree + 1))


def test_subsets_are_uniform():
    # All 10 pairs out of 5 neighbours are equally likely (Floyd's algorithm).
    edge_index = torch.stack([torch.arange(1, 6), torch.zeros(5, dtype=torch.long)])
    data = Data(edge_index=edge_index, num_nodes=6)
    loader = loader_for(data, [2], input_nodes=torch.zeros(5000, dtype=torch.long), batch_size=5000)
    torch.manual_seed(0)
    batch = next(iter(loader))
    pairs = batch.e_id.view(5000, 2).sort(dim=1).values
    counts = torch.bincount(pairs[:, 0] * 5 + pairs[:, 1], minlength=25).double()
    counts = counts[counts > 0]
    assert counts.numel() == 10
    assert ((counts - 500).abs() < 5 * 500**0.5).all(), counts


def test_never_crosses_disconnected_sections():
    rng = np.random.default_rng(1)
    n = 300
    edge_index = torch.cat([knn_graph(rng.random((n, 2)), 5), knn_graph(rng.random((n, 2)) + 5.0, 5, offset=n)], dim=1)
    data = Data(x=torch.randn(2 * n, 3), edge_index=edge_index, num_nodes=2 * n)
    section = torch.arange(2 * n) >= n
    for num_neighbors in ([5, 5, 5], [-1, -1]):
        for batch in loader_for(data, num_neighbors, batch_size=17, shuffle=True):
            # No sampled edge joins the two sections ...
            sec = section[batch.n_id]
            assert torch.equal(sec[batch.edge_index[0]], sec[batch.edge_index[1]])
        # ... so seeds from one section reach only that section.
        one = loader_for(data, num_neighbors, input_nodes=torch.arange(n), batch_size=n)
        assert not section[next(iter(one)).n_id].any()
        two = loader_for(data, num_neighbors, input_nodes=torch.arange(n, 2 * n), batch_size=n)
        assert section[next(iter(two)).n_id].all()


def test_fanout_minus_one_takes_full_neighbourhood(graph):
    loader = loader_for(graph, [-1, -1], batch_size=25, shuffle=True)
    for batch in loader:
        hop1_targets, hop1 = hop_slices(batch)[0]
        for local in hop1_targets[:5].tolist():
            node = batch.n_id[local]
            got = batch.e_id[hop1][batch.edge_index[1, hop1] == local].sort().values
            expected = (graph.edge_index[1] == node).nonzero().view(-1)
            assert torch.equal(got, expected)
        # Two full hops reach exactly the 2-hop in-neighbourhood of the seeds.
        seeds = batch.n_id[: batch.batch_size]
        reach = torch.zeros(graph.num_nodes, dtype=torch.bool)
        reach[seeds] = True
        for _ in range(2):
            reach[graph.edge_index[0, reach[graph.edge_index[1]]]] = True
        assert torch.equal(batch.n_id.sort().values, reach.nonzero().view(-1))


def test_replace_draws_exactly_k(graph):
    loader = loader_for(graph, [3, 2], batch_size=64, replace=True)
    for batch in loader:
        for (targets, edges), k in zip(hop_slices(batch), [3, 2], strict=True):
            counts = torch.bincount(batch.edge_index[1, edges] - targets[0], minlength=targets.numel())
            assert bool((counts == k).all())
        assert torch.equal(batch.n_id[batch.edge_index], graph.edge_index[:, batch.e_id])


def test_bidirectional_subgraph(graph):
    loader = loader_for(graph, [3, 3], batch_size=64, subgraph_type="bidirectional")
    batch = next(iter(loader))
    pairs = set(map(tuple, batch.edge_index.t().tolist()))
    assert all((j, i) in pairs for i, j in pairs)


def test_isolated_seed_and_empty_frontier():
    edge_index = torch.tensor([[1], [0]])
    data = Data(edge_index=edge_index, num_nodes=4)
    loader = NeighborLoader(data, [2, 2], batch_size=4, neighbor_sampler=BuiltinNeighborSampler(data, [2, 2]))
    batch = next(iter(loader))
    assert batch.n_id.tolist() == [0, 1, 2, 3]
    assert batch.edge_index.tolist() == [[1], [0]]
    assert batch.num_sampled_nodes == [4, 0, 0]
    assert batch.num_sampled_edges == [1, 0]


def test_gnn_layers_run_on_batches(graph):
    loader = loader_for(graph, [4, 4], batch_size=64)
    gcn, sage = GCNConv(5, 8), SAGEConv(5, 8)
    for batch in loader:
        out = gcn(batch.x, batch.edge_index, batch.edge_weight)[: batch.batch_size]
        assert out.shape == (batch.batch_size, 8) and torch.isfinite(out).all()
        assert sage(batch.x, batch.edge_index).shape == (batch.num_nodes, 8)


def test_seed_embedding_matches_full_graph_with_full_fanout(graph):
    # With all neighbours, a 2-layer GNN on the seeds equals the full-graph result.
    conv1, conv2 = SAGEConv(5, 8), SAGEConv(8, 4)
    full = conv2(conv1(graph.x, graph.edge_index).relu(), graph.edge_index)
    loader = loader_for(graph, [-1, -1], batch_size=50)
    for batch in loader:
        out = conv2(conv1(batch.x, batch.edge_index).relu(), batch.edge_index)
        torch.testing.assert_close(out[: batch.batch_size], full[batch.n_id[: batch.batch_size]])


def test_factory_backends(graph, monkeypatch):
    assert isinstance(make_neighbor_sampler(graph, [2], backend="builtin"), BuiltinNeighborSampler)
    monkeypatch.setattr(torch_geometric.typing, "WITH_PYG_LIB", False)
    monkeypatch.setattr(torch_geometric.typing, "WITH_TORCH_SPARSE", False)
    assert isinstance(make_neighbor_sampler(graph, [2]), BuiltinNeighborSampler)
    with pytest.raises(ImportError, match="pip install --no-build-isolation torch-sparse"):
        make_neighbor_sampler(graph, [2], backend="pyg")
    monkeypatch.setattr(torch_geometric.typing, "WITH_TORCH_SPARSE", True)
    # "auto" stays with the built-in sampler even when torch-sparse is there ...
    assert isinstance(make_neighbor_sampler(graph, [2]), BuiltinNeighborSampler)
    # ... and "pyg" asks for PyG's own
    assert type(make_neighbor_sampler(graph, [2], backend="pyg")) is NeighborSampler
    with pytest.raises(ValueError, match="backend"):
        make_neighbor_sampler(graph, [2], backend="fast")


def test_unsupported_options_are_rejected(graph):
    with pytest.raises(ValueError, match="induced"):
        BuiltinNeighborSampler(graph, [2], subgraph_type="induced")
    with pytest.raises(ValueError, match="disjoint"):
        BuiltinNeighborSampler(graph, [2], disjoint=True)
    with pytest.raises(TypeError, match="Data"):
        BuiltinNeighborSampler(graph.to_dict(), [2])


def test_matches_torch_sparse():
    pytest.importorskip("torch_sparse")
    if not torch_geometric.typing.WITH_TORCH_SPARSE:
        pytest.skip("torch_sparse imports but PyG does not use it")
    rng = np.random.default_rng(2)
    n = 800
    edge_index = symmetric(knn_graph(rng.random((n, 2)), k=6))
    data = Data(edge_index=edge_index, num_nodes=n)
    seeds = torch.randperm(n)[:100]

    def first_batch(sampler, num_neighbors):
        return next(
            iter(NeighborLoader(data, num_neighbors, input_nodes=seeds, batch_size=100, neighbor_sampler=sampler))
        )

    # All neighbours: deterministic, so both give the very same subgraph.
    ours = first_batch(BuiltinNeighborSampler(data, [-1, -1]), [-1, -1])
    theirs = first_batch(make_neighbor_sampler(data, [-1, -1], backend="pyg"), [-1, -1])
    assert torch.equal(ours.n_id, theirs.n_id)
    assert torch.equal(ours.edge_index, theirs.edge_index)
    assert torch.equal(ours.e_id, theirs.e_id)

    # Sampled fan-outs: every target gets min(k, in-degree) edges in each hop.
    deg = in_degree(data)
    for num_neighbors in ([4, 3], [10, 5]):
        ours = first_batch(BuiltinNeighborSampler(data, num_neighbors), num_neighbors)
        theirs = first_batch(make_neighbor_sampler(data, num_neighbors, backend="pyg"), num_neighbors)
        assert torch.equal(ours.n_id[:100], theirs.n_id[:100])
        for b in (ours, theirs):
            row, col = b.edge_index
            hop1 = col < 100
            n_hop1 = int(row[hop1][row[hop1] >= 100].unique().numel())
            targets = [torch.arange(100), torch.arange(100, 100 + n_hop1)]
            for t, k, mask in zip(targets, num_neighbors, [hop1, ~hop1], strict=True):
                counts = torch.bincount(col[mask] - t[0], minlength=t.numel())
                assert torch.equal(counts, deg[b.n_id[t]].clamp(max=k))
        assert ours.num_sampled_edges[0] == int((theirs.edge_index[1] < 100).sum())


def test_dataloader_workers(graph):
    # Each worker process samples with its own copy (lookup table included).
    loader = loader_for(graph, [3, 2], batch_size=100, num_workers=2, multiprocessing_context="fork")
    seeds = []
    for batch in loader:
        assert torch.equal(batch.n_id[batch.edge_index], graph.edge_index[:, batch.e_id])
        seeds.append(batch.n_id[: batch.batch_size])
    assert torch.equal(torch.cat(seeds), torch.arange(graph.num_nodes))


# --------------------------------------------------------------------------- #
# Uniformity of the default sampler, by a chi-square test that a biased one fails
# --------------------------------------------------------------------------- #


def _two_level_tree(n_seeds: int, degree: int) -> Data:
    """Seeds with ``degree`` in-neighbours each, which have ``degree`` of their own.

    Edges are sorted by target and every target has exactly ``degree`` of them,
    so ``e_id % degree`` is the slot of an edge in its target's neighbour list.
    """
    n1 = n_seeds * degree
    targets = torch.arange(n_seeds + n1).repeat_interleave(degree)
    sources = n_seeds + torch.arange(n1 + n1 * degree)
    return Data(edge_index=torch.stack([sources, targets]), num_nodes=n_seeds + n1 + n1 * degree)


def _slot_p_values(sampler, data, n_seeds, degree, fanout):
    """Chi-square p-value of the slot counts in hop 1 and hop 2 (uniform: all equal)."""
    from scipy.stats import chisquare

    loader = NeighborLoader(
        data, [fanout, fanout], input_nodes=torch.arange(n_seeds), batch_size=n_seeds, neighbor_sampler=sampler
    )
    torch.manual_seed(0)
    e_id = next(iter(loader)).e_id
    hop1 = e_id < n_seeds * degree
    return [chisquare(torch.bincount(e_id[mask] % degree, minlength=degree).numpy()).pvalue for mask in (hop1, ~hop1)]


def _floyd_from_half_open_range(deg, k):
    # torch-sparse's variant: t drawn from [0, j) instead of [0, j]
    u = torch.rand(deg.numel(), k, dtype=torch.float64)
    choice = torch.empty(deg.numel(), k, dtype=torch.long)
    for s in range(k):
        j = deg - (k - s)
        t = u[:, s].mul(j).long()
        if s > 0:
            t = torch.where((choice[:, :s] == t.unsqueeze(1)).any(dim=1), j, t)
        choice[:, s] = t
    return choice


def test_default_sampler_is_uniform(monkeypatch):
    # Degree 8, fan-out 3: 2000 seeds draw 6000 hop-1 edges, 6000 hop-1 nodes
    # draw 18000 hop-2 edges; each of the 8 slots must be drawn equally often.
    # Seeded, so the outcome is fixed; the threshold is loose on purpose.
    n_seeds, degree, fanout = 2000, 8, 3
    data = _two_level_tree(n_seeds, degree)
    p_values = _slot_p_values(make_neighbor_sampler(data, [fanout, fanout]), data, n_seeds, degree, fanout)
    assert min(p_values) > 1e-3, p_values

    # The same test rejects a sampler with torch-sparse's off-by-one bias.
    import stepgraph.data.sampler as sampler_module

    monkeypatch.setattr(sampler_module, "_choose_k", _floyd_from_half_open_range)
    p_values = _slot_p_values(BuiltinNeighborSampler(data, [fanout, fanout]), data, n_seeds, degree, fanout)
    assert max(p_values) < 1e-6, p_values


def test_the_builtin_sampler_uses_only_pyg_public_interface():
    """It implements ``BaseSampler.sample_from_nodes`` and imports no private PyG name or module."""
    import ast
    import inspect

    from torch_geometric.sampler import BaseSampler, NeighborSampler

    import stepgraph.data.sampler as module

    assert issubclass(module.BuiltinNeighborSampler, BaseSampler)
    assert not issubclass(module.BuiltinNeighborSampler, NeighborSampler)
    imported = []
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch_geometric"):
            imported += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            imported += [a.name for a in node.names if a.name.startswith("torch_geometric")]
    assert imported, "the test must see the PyG imports"
    private = [name for name in imported if any(part.startswith("_") for part in name.split("."))]
    assert private == []
    # every imported name is exported by its package (listed in the package's __all__ or documented module)
    import importlib

    for name in imported:
        package, _, attr = name.rpartition(".")
        exported = getattr(importlib.import_module(package), "__all__", None)
        if exported is not None and attr and package != "torch_geometric":
            assert attr in exported, f"{name} is not in {package}.__all__"
