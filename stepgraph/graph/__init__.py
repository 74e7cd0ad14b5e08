"""Spatial neighbour graphs from AnnData coordinates, and their PyG form.

- :func:`spatial_graph` writes squidpy's ``obsp``/``uns`` layout
  (``spatial_connectivities``, ``spatial_distances``, ``spatial_neighbors``).
- :func:`to_pyg` turns that graph into a :class:`torch_geometric.data.Data`.
"""

from stepgraph.graph.convert import to_pyg
from stepgraph.graph.spatial import METHODS, SpatialGraph, get_coordinates, spatial_graph

__all__ = ["METHODS", "SpatialGraph", "get_coordinates", "spatial_graph", "to_pyg"]
