"""Graph operators (stepgraph.graph.ops): the adjacency pattern, neighbourhood means, smoothing."""

import numpy as np
import pytest
import scipy.sparse as sp

from stepgraph.graph.ops import adjacency_pattern, neighborhood_mean_operator, smooth_over_graph


def weighted_graph():
    # 0-1 (weight 2), 1-2 (weight 0.5), an explicit zero 2-3, a self loop on 3
    rows = np.array([0, 1, 1, 2, 2, 3, 3])
    cols = np.array([1, 0, 2, 1, 3, 2, 3])
    vals = np.array([2.0, 2.0, 0.5, 0.5, 0.0, 0.0, 7.0])
    return sp.csr_matrix((vals, (rows, cols)), shape=(4, 4))


def test_pattern_ignores_weights_explicit_zeros_and_the_diagonal():
    graph = weighted_graph()
    before = graph.copy()
    pattern = adjacency_pattern(graph)
    assert pattern.dtype == np.float64 and pattern.nnz == 4
    assert pattern.toarray().tolist() == [[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    with_loops = adjacency_pattern(graph, self_loops=True).toarray()
    assert np.array_equal(with_loops, pattern.toarray() + np.eye(4))
    sub = adjacency_pattern(graph, self_loops=True, rows=np.array([3, 1]))
    assert sub.toarray().tolist() == [[0, 0, 0, 1], [1, 1, 1, 0]]
    assert np.array_equal(
        adjacency_pattern(graph, rows=np.array([False, True, False, True])).toarray(), pattern.toarray()[[1, 3]]
    )
    assert (graph != before).nnz == 0  # the caller's matrix is untouched


def test_neighbourhood_mean_and_smoothing():
    graph = weighted_graph()
    op = neighborhood_mean_operator(graph)
    assert np.allclose(op.toarray(), [[0.5, 0.5, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0], [0, 0.5, 0.5, 0], [0, 0, 0, 1]])
    values = np.array([[0.0], [3.0], [6.0], [9.0]])
    assert np.allclose(smooth_over_graph(values, graph, 1), op @ values)
    assert np.allclose(smooth_over_graph(values, graph, 2), op @ (op @ values))
    assert np.array_equal(smooth_over_graph(values, graph, 0), values)
    with pytest.raises(ValueError, match="square"):
        neighborhood_mean_operator(graph[:3])


def test_gaussian_knn_kernel_weights_each_neighbour_by_its_distance_within_its_section():
    from stepgraph.graph.ops import gaussian_knn_kernel

    # cell 0 at the origin with neighbours at distances 1 (east), 2 (north) and 3 (west);
    # cells 4 and 5 are a second section placed on top of the first
    xy = np.array([[0, 0], [1, 0], [0, 2], [-3, 0], [0, 0], [1, 0]], dtype=float)
    sections = np.array([0, 0, 0, 0, 1, 1])
    kernel = gaussian_knn_kernel(xy, sections, k=3).toarray()
    d = np.array([1.0, 2.0, 3.0])
    expected = np.exp(-((d / 2.0) ** 2))  # the median of cell 0's three distances is 2
    np.testing.assert_allclose(kernel[0, 1:4], expected / expected.sum())
    assert kernel[0, 0] == 0 and not kernel[0, 4:].any()  # not itself, not the other section
    np.testing.assert_allclose(kernel.sum(axis=1), 1.0)
    assert kernel[4, 5] == 1.0 and not kernel[4, :4].any()  # a section of two: one neighbour, capped k

    phases = gaussian_knn_kernel(xy, sections, k=3, harmonic=1).toarray()[0, 1:4]
    np.testing.assert_allclose(phases, expected / expected.sum() * np.array([1, 1j, -1]), atol=1e-12)


def test_gaussian_knn_kernel_refuses_a_bad_k():
    from stepgraph.graph.ops import gaussian_knn_kernel

    with pytest.raises(ValueError, match="k"):
        gaussian_knn_kernel(np.zeros((3, 2)), k=0)


def test_gaussian_knn_kernel_is_the_same_whatever_its_chunks_of_cells(monkeypatch):
    import stepgraph.graph.ops as ops

    rng = np.random.default_rng(4)
    xy = rng.uniform(0, 30, (500, 2))
    sections = rng.integers(0, 3, 500)  # interleaved: a section's cells are not one run of rows
    sections[:2] = 3  # a section of two cells: one neighbour each
    whole = {m: ops.gaussian_knn_kernel(xy, sections, k=6, harmonic=m) for m in (0, 1)}
    monkeypatch.setattr(ops, "_KERNEL_CHUNK", 7)
    for m, kernel in whole.items():
        chunked = ops.gaussian_knn_kernel(xy, sections, k=6, harmonic=m)
        assert chunked.has_sorted_indices
        for attr in ("data", "indices", "indptr"):
            assert np.array_equal(getattr(chunked, attr), getattr(kernel, attr)), (m, attr)
    assert whole[0][0, 1] > 0 and whole[0][0].nnz == 1  # the two-cell section


def test_unit_phases_point_along_each_offset_and_take_no_direction_for_a_vertical_one():
    from stepgraph.graph.ops import unit_phases

    offsets = np.array([[2.0, 0.0, 0.0], [0.0, -3.0, 1.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    theta = np.array([0.0, -np.pi / 2, 3 * np.pi / 4, 0.0])  # the last: straight up in z
    np.testing.assert_allclose(unit_phases(offsets), np.exp(1j * theta), atol=1e-12)


def test_knn_by_section_keeps_each_section_apart_and_leaves_a_lone_cell_out():
    from stepgraph.graph.ops import knn_by_section

    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 10, (60, 2))
    sections = np.r_[np.zeros(30, int), np.ones(29, int), [2]]  # section 2 holds one cell
    seen = []
    for members, chunks in knn_by_section(xy, sections, k=4, chunk=7):
        for rows, neighbours, distances in chunks:
            cells = members[rows]
            assert (sections[members[neighbours]] == sections[cells][:, None]).all()
            np.testing.assert_allclose(distances, np.linalg.norm(xy[members[neighbours]] - xy[cells][:, None], axis=2))
            assert (np.diff(distances, axis=1) >= 0).all() and (members[neighbours] != cells[:, None]).all()
            seen.append(cells)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(59))  # every cell once, but the lone one
