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
    assert np.array_equal(adjacency_pattern(graph, rows=np.array([False, True, False, True])).toarray(),
                          pattern.toarray()[[1, 3]])
    assert (graph != before).nnz == 0  # the caller's matrix is untouched


def test_neighbourhood_mean_and_smoothing():
    graph = weighted_graph()
    op = neighborhood_mean_operator(graph)
    assert np.allclose(op.toarray(), [[.5, .5, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0], [0, .5, .5, 0], [0, 0, 0, 1]])
    values = np.array([[0.0], [3.0], [6.0], [9.0]])
    assert np.allclose(smooth_over_graph(values, graph, 1), op @ values)
    assert np.allclose(smooth_over_graph(values, graph, 2), op @ (op @ values))
    assert np.array_equal(smooth_over_graph(values, graph, 0), values)
    with pytest.raises(ValueError, match="square"):
        neighborhood_mean_operator(graph[:3])
