"""The layer-wise embedding pass (``predict_layerwise``) on a large random graph.

A random spatial graph (uniform 2-D coordinates, each node joined to its
``--k`` nearest neighbours with scipy's cKDTree) and random input features
are embedded by :class:`stepgraph.models.GraphAutoencoder` (the pipeline's
GAT by default: 20 inputs, hidden 64, latent 30, 4 sections) with
:func:`stepgraph.train.layerwise.predict_layerwise`. Reported: seconds per
pass (each repeat, and the best), with ``--threads`` torch threads. The
pipeline's embedding stage is this pass plus the copy into ``obsm``.

Example (the figures in docs/benchmarks.md)::

    python benchmarks/layerwise_embedding.py --n-nodes 1000000 --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import RESULTS, write_json
from scipy.spatial import cKDTree
from torch_geometric.data import Data

from stepgraph.models import GraphAutoencoder
from stepgraph.train.layerwise import predict_layerwise


class RandomRows:
    """The dataset protocol ``predict_layerwise`` reads: input rows and sections."""

    def __init__(self, n_nodes: int, n_features: int, n_sections: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n_nodes, n_features, generator=generator)
        self.batch_label = torch.randint(0, n_sections, (n_nodes,), generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def features(self, index) -> torch.Tensor:
        return self.x[index]

    def labels(self, name: str, index) -> torch.Tensor:
        return self.batch_label[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-nodes", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=7, help="neighbours per node")
    parser.add_argument("--conv", default="gat", choices=["gat", "gcn", "sage"])
    parser.add_argument("--in-dim", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--latent", type=int, default=30)
    parser.add_argument("--sections", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "layerwise_embedding.json"), help="JSON output ('' to skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    xy = np.random.default_rng(args.seed).uniform(0, np.sqrt(args.n_nodes), (args.n_nodes, 2))
    _, neighbours = cKDTree(xy).query(xy, args.k + 1)
    src = torch.from_numpy(neighbours[:, 1:].reshape(-1))
    dst = torch.arange(args.n_nodes).repeat_interleave(args.k)  # sorted by target, as to_pyg writes them
    data = Data(edge_index=torch.stack([src, dst]), num_nodes=args.n_nodes)
    rows = RandomRows(args.n_nodes, args.in_dim, args.sections, args.seed)
    model = GraphAutoencoder(
        args.in_dim, args.hidden, args.latent, conv=args.conv, n_batches=args.sections, activation="elu"
    )
    plan = model.layerwise("encode")
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        predict_layerwise(model, plan, data, rows, "cpu")
        seconds.append(time.perf_counter() - start)
    result = {
        "n_nodes": args.n_nodes,
        "edges": int(src.numel()),
        "conv": args.conv,
        "threads": args.threads,
        "seconds": [round(s, 3) for s in seconds],
        "best_s": round(min(seconds), 3),
    }
    print(result)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
