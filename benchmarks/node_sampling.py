"""NeighborLoader throughput: stepgraph's built-in sampler against PyG's native one.

A random spatial graph (uniform 2-D coordinates, k nearest neighbours with
scipy's cKDTree, edges neighbour -> cell) is loaded with
``torch_geometric.loader.NeighborLoader`` through each sampler in turn, in
the same process, alternating backends epoch by epoch:

* ``dense``: a full epoch with a dense feature matrix in ``data.x``
  (sliced by the loader);
* ``genes``: a full epoch with a sparse gene matrix (scipy CSR) kept outside
  the ``Data``; each mini-batch gathers and densifies its rows by ``batch.n_id``;
* ``train``: training epochs of :class:`stepgraph.models.GraphAutoencoder`
  (Adam) on the dense features, losses on the seed nodes, with the resident
  memory after every epoch to show that it stays flat;
* ``backed``: training epochs of :class:`stepgraph.models.GraphAutoencoder`
  through ``Trainer.train_node_sampler`` on the sparse gene matrix written to
  a backed h5ad (``--backed-compression``), read per mini-batch: the features
  gathered in the training loop (``in-loop``, no worker) against gathered by
  the loader (:class:`~stepgraph.data.gather.GatherFeatures`) in
  ``--workers`` worker processes (``loader``), so that disk reads overlap
  training; the ratio is the speed-up of the loader's gather;
* ``trim``: with the built-in sampler, training epochs of the reference model
  as the code before layer-wise trimming ran it (``original``: GCN
  normalised in every layer, latent head on every node), of today's model
  without the per-hop counts (``untrimmed``) and with them (``trimmed``),
  alternating, from the same initial weights; the ratio to ``original`` is
  the speed-up.

Reported per row: seconds per epoch (best of the repeats), sampled nodes per
second, the peak resident memory during the phase (polled from
``/proc/self/statm``) and its growth over the memory before the phase, and the
speed ratio built-in / native (above 1: the built-in sampler is faster).

PyG's native sampler needs ``torch-sparse`` (or ``pyg-lib``); without it only
the built-in sampler is measured. Example (the defaults)::

    python benchmarks/node_sampling.py --n-nodes 1000000 --num-neighbors 10 5 \\
        --batch-size 1024 --out benchmarks/results/node_sampling.json

Run ``python benchmarks/node_sampling.py --help`` for all sizes.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import threading
import time

import numpy as np
import scipy.sparse as sp
import torch
import torch_geometric
import torch_geometric.typing
from _common import RESULTS, markdown_table, peak_rss_mb, write_json
from scipy.spatial import cKDTree
from torch_geometric.data import Data
from torch_geometric.loader import NeighborLoader
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from stepgraph.data.sampler import BuiltinNeighborSampler, has_native_sampler, make_neighbor_sampler
from stepgraph.models import GraphAutoencoder

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_mb() -> float:
    """Current resident memory of this process, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE_MB


class PeakRSS:
    """Polls the resident memory in a thread; ``peak`` is the largest value seen."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.start = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def spatial_knn_graph(n_nodes: int, k: int, seed: int) -> torch.Tensor:
    """Edges neighbour -> cell of the k nearest neighbours of random 2-D points."""
    rng = np.random.default_rng(seed)
    points = rng.random((n_nodes, 2))
    _, idx = cKDTree(points).query(points, k=k + 1, workers=-1)
    src = torch.from_numpy(np.ascontiguousarray(idx[:, 1:]).reshape(-1).astype(np.int64))
    dst = torch.arange(n_nodes).repeat_interleave(k)
    return torch.stack([src, dst])


def random_genes(n_nodes: int, n_genes: int, density: float, seed: int) -> sp.csr_matrix:
    """A CSR log1p-count matrix with ``density * n_genes`` distinct genes per cell.

    Row ``i`` holds one random gene in each of ``nnz`` equal stripes of the
    gene axis, so the columns are distinct and sorted by construction.
    """
    rng = np.random.default_rng(seed)
    per_row = max(1, int(round(density * n_genes)))
    stripe = n_genes // per_row
    cols = np.arange(per_row, dtype=np.int32) * stripe + rng.integers(0, stripe, (n_nodes, per_row), dtype=np.int32)
    values = np.log1p(rng.poisson(2.0, n_nodes * per_row).astype(np.float32) + 1.0)
    indptr = np.arange(0, n_nodes * per_row + 1, per_row, dtype=np.int64)
    return sp.csr_matrix((values, cols.reshape(-1), indptr), shape=(n_nodes, n_genes))


def make_sampler(backend: str, data: Data, num_neighbors: list[int]):
    if backend == "builtin":
        return BuiltinNeighborSampler(data, num_neighbors)
    return make_neighbor_sampler(data, num_neighbors, backend="pyg")


def make_loader(backend, data, args) -> NeighborLoader:
    sampler = make_sampler(backend, data, args.num_neighbors)
    return NeighborLoader(data, args.num_neighbors, batch_size=args.batch_size, shuffle=True, neighbor_sampler=sampler)


def loader_epoch(backend: str, data: Data, args, genes: sp.csr_matrix | None = None) -> dict:
    """Builds a loader and iterates one epoch; with ``genes``, gathers each
    batch's rows densely. The sampler's set-up (CSC conversion) is timed apart."""
    start = time.perf_counter()
    loader = make_loader(backend, data, args)
    setup = time.perf_counter() - start
    nodes = edges = batches = 0
    start = time.perf_counter()
    for batch in loader:
        if genes is not None:
            x = torch.from_numpy(genes[batch.n_id.numpy()].toarray())
            assert x.shape[0] == batch.num_nodes
        nodes += batch.num_nodes
        edges += batch.edge_index.size(1)
        batches += 1
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "setup_seconds": setup,
        "sampled_nodes": nodes,
        "sampled_edges": edges,
        "batches": batches,
    }


def train_epoch(model, optimizer, loader) -> dict:
    nodes = batches = seeds = 0
    total = 0.0
    start = time.perf_counter()
    for batch in loader:
        optimizer.zero_grad(set_to_none=True)
        losses = model.loss(batch.x, ind=torch.arange(batch.batch_size), edge_index=batch.edge_index)
        loss = sum(losses.values())
        loss.backward()
        optimizer.step()
        total += loss.item() * batch.batch_size
        seeds += batch.batch_size
        nodes += batch.num_nodes
        batches += 1
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "sampled_nodes": nodes, "batches": batches, "loss": total / seeds}


def original_loss(model, x, ind, edge_index):
    """The reference model's loss as the code before layer-wise trimming computed
    it: GCN normalised in every layer, latent head on every node, then sliced."""
    h = x
    for conv in model.convs:
        if model.conv_type == "gcn":
            h, _ = conv.lin(h), None
            ei, w = gcn_norm(edge_index, None, x.size(0), add_self_loops=True)
            h = conv.propagate(ei, x=h, edge_weight=w) + conv.bias
        else:
            h = conv(h, edge_index)
        h = model._act(h)
    mu = model.mu(h)[ind]
    return {"recon_loss": torch.nn.functional.mse_loss(model.decode(mu), x[ind])}


def trim_epoch(variant: str, model, optimizer, loader) -> dict:
    """A training epoch of one variant: ``original`` (the code before trimming),
    ``untrimmed`` (today's model without the per-hop counts), ``trimmed``."""
    nodes = batches = 0
    start = time.perf_counter()
    for batch in loader:
        optimizer.zero_grad(set_to_none=True)
        ind = torch.arange(batch.batch_size)
        if variant == "original":
            losses = original_loss(model, batch.x, ind, batch.edge_index)
        elif variant == "untrimmed":
            losses = model.loss(batch.x, ind=ind, edge_index=batch.edge_index)
        else:
            losses = model.loss(
                batch.x,
                ind=ind,
                edge_index=batch.edge_index,
                num_sampled_nodes_per_hop=batch.num_sampled_nodes,
                num_sampled_edges_per_hop=batch.num_sampled_edges,
            )
        sum(losses.values()).backward()
        optimizer.step()
        nodes += batch.num_nodes
        batches += 1
    return {"seconds": time.perf_counter() - start, "sampled_nodes": nodes, "batches": batches}


def backed_phase(args) -> list[dict]:
    """Training epochs on a backed h5ad: features gathered in the loop vs by the loader's workers."""
    import tempfile

    import anndata as ad

    from stepgraph import BaseDataset, Trainer
    from stepgraph.data.loaders import node_loaders

    n = args.backed_nodes
    edge_index = spatial_knn_graph(n, args.k, args.seed)
    genes = random_genes(n, args.n_genes, args.gene_density, args.seed)
    folder = tempfile.mkdtemp(prefix="stepgraph-backed-")
    path = os.path.join(folder, "genes.h5ad")
    ad.AnnData(X=genes).write_h5ad(path, compression=None if args.backed_compression == "none" else "gzip")
    print(f"backed: {n:,} cells x {args.n_genes} genes, {os.path.getsize(path) / 2**20:,.0f} MiB on disk", flush=True)
    del genes
    data = Data(edge_index=edge_index, num_nodes=n)
    dataset = BaseDataset(ad.read_h5ad(path, backed="r"))
    torch.manual_seed(args.seed)
    init = GraphAutoencoder(
        args.n_genes, hidden_dim=args.hidden, latent_dim=args.latent, n_layers=len(args.num_neighbors), conv=args.conv
    )

    def run(variant):
        model = copy.deepcopy(init)
        trainer = Trainer(model, progress=False, trace_func=lambda m: None, seed=args.seed, use_earlystop=False)
        trainer.init_optimizer(lr=1e-3)
        options = {"dataset": dataset, "num_workers": args.workers} if variant == "loader" else {}
        loaders = node_loaders(data, args.num_neighbors, args.batch_size, seed=args.seed, backend="builtin", **options)
        start = time.perf_counter()
        trainer.train_node_sampler(epochs=1, gloader=loaders, dataset=dataset)
        seconds = time.perf_counter() - start
        batches = len(loaders[0])
        return {"seconds": seconds, "sampled_nodes": batches * args.batch_size, "batches": batches}

    rows = measure("backed", ["in-loop", "loader"], args.gene_repeats, run, {"in-loop": "in-loop", "loader": "loader"})
    speed = {row["backend"]: row["s/epoch (best)"] for row in rows}
    for row in rows:
        row["speed-up vs in-loop"] = speed["in-loop"] / row["s/epoch (best)"]
    return rows


def measure(phase: str, backends: list[str], repeats: int, run, labels: dict) -> list[dict]:
    """Runs ``run(backend)`` ``repeats`` times per backend, alternating."""
    runs = {b: [] for b in backends}
    for r in range(repeats):
        order = backends if r % 2 == 0 else backends[::-1]
        for backend in order:
            gc.collect()
            with PeakRSS() as mem:
                out = run(backend)
            out.update(peak_rss_mb=mem.peak, rss_growth_mb=mem.peak - mem.start, rss_after_mb=rss_mb())
            runs[backend].append(out)
            print(
                f"  {phase:6s} {labels[backend]:12s} run {r + 1}: {out['seconds']:.2f} s, "
                f"{out['sampled_nodes'] / out['seconds']:,.0f} nodes/s, "
                f"peak RSS {mem.peak:,.0f} MiB (+{mem.peak - mem.start:,.0f})",
                flush=True,
            )
    rows = []
    for backend, outs in runs.items():
        best = min(outs, key=lambda o: o["seconds"])
        rows.append(
            {
                "phase": phase,
                "backend": backend,
                "s/epoch (best)": best["seconds"],
                "s/epoch (median)": statistics.median(o["seconds"] for o in outs),
                "sampled nodes/s": best["sampled_nodes"] / best["seconds"],
                "nodes/batch": best["sampled_nodes"] / best["batches"],
                "set-up s": best.get("setup_seconds", float("nan")),
                "peak RSS MiB": max(o["peak_rss_mb"] for o in outs),
                "RSS growth MiB": max(o["rss_growth_mb"] for o in outs),
                "runs": outs,
            }
        )
    speed = {row["backend"]: row["sampled nodes/s"] for row in rows}
    if "original" in speed:
        for row in rows:
            row["speed-up vs original"] = row["sampled nodes/s"] / speed["original"]
    elif len(speed) == 2:
        for row in rows:
            if row["backend"] == "builtin":
                row["speed ratio builtin/native"] = speed["builtin"] / speed["native"]
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    size = parser.add_argument_group("sizes")
    size.add_argument("--n-nodes", type=int, default=1_000_000, help="cells in the random spatial graph")
    size.add_argument("--k", type=int, default=6, help="nearest neighbours per cell (edges = n_nodes * k)")
    size.add_argument(
        "--num-neighbors", type=int, nargs="+", default=[10, 5], help="fan-out per hop (-1: all neighbours)"
    )
    size.add_argument("--batch-size", type=int, default=1024, help="seed nodes per mini-batch")
    size.add_argument("--dense-dim", type=int, default=32, help="dense features in data.x (dense and train phases)")
    size.add_argument("--n-genes", type=int, default=2000, help="genes of the sparse matrix")
    size.add_argument("--gene-density", type=float, default=0.05, help="fraction of non-zero genes per cell")
    size.add_argument("--hidden", type=int, default=64, help="GraphAutoencoder hidden_dim")
    size.add_argument("--latent", type=int, default=16, help="GraphAutoencoder latent_dim")
    size.add_argument(
        "--conv",
        default="gcn",
        choices=["gcn", "gat", "sage"],
        help="GraphAutoencoder convolution (the pipeline's model: gat, --dense-dim 20, --activation elu)",
    )
    size.add_argument("--activation", default="relu", choices=["relu", "elu"], help="GraphAutoencoder non-linearity")
    runs = parser.add_argument_group("runs")
    runs.add_argument("--repeats", type=int, default=2, help="dense-feature loader epochs per backend (alternating)")
    runs.add_argument("--gene-repeats", type=int, default=1, help="sparse-gene loader epochs per backend (alternating)")
    runs.add_argument(
        "--train-epochs", type=int, default=3, help="GraphAutoencoder training epochs per backend (alternating)"
    )
    runs.add_argument(
        "--phases",
        nargs="+",
        default=["dense", "genes", "train", "trim"],
        choices=["dense", "genes", "train", "trim", "backed"],
        help="what to measure; trim: built-in sampler, training epochs of the "
        "code before layer-wise trimming, of today's model untrimmed and trimmed",
    )
    runs.add_argument(
        "--backends",
        nargs="+",
        default=["builtin", "native"],
        choices=["builtin", "native"],
        help="samplers: stepgraph's built-in one, PyG's native one",
    )
    runs.add_argument("--backed-nodes", type=int, default=200_000, help="cells of the backed phase's file")
    runs.add_argument(
        "--backed-compression", default="gzip", choices=["gzip", "none"], help="compression of the backed h5ad"
    )
    runs.add_argument("--workers", type=int, default=2, help="loader workers of the backed phase's 'loader' variant")
    runs.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own choice)")
    runs.add_argument("--seed", type=int, default=0)
    runs.add_argument(
        "--out", default=str(RESULTS / "node_sampling.json"), help="JSON file for the results ('' to skip)"
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    backends = list(args.backends)
    native_name = "pyg-lib" if torch_geometric.typing.WITH_PYG_LIB else "torch-sparse"
    if "native" in backends and not has_native_sampler():
        print("torch-sparse not installed: run `pip install --no-build-isolation torch-sparse`")
        backends.remove("native")
    labels = {"builtin": "builtin", "native": native_name}

    print(
        f"torch {torch.__version__}, torch_geometric {torch_geometric.__version__}, "
        f"{torch.get_num_threads()} threads; backends: {[labels[b] for b in backends]}"
    )
    start = time.perf_counter()
    edge_index = spatial_knn_graph(args.n_nodes, args.k, args.seed)
    graph_s = time.perf_counter() - start
    x = torch.randn(args.n_nodes, args.dense_dim)
    data = Data(x=x, edge_index=edge_index, num_nodes=args.n_nodes)
    print(
        f"graph: {args.n_nodes:,} nodes, {edge_index.size(1):,} edges in {graph_s:.1f} s; "
        f"fan-outs {args.num_neighbors}, batch {args.batch_size}",
        flush=True,
    )

    rows: list[dict] = []
    if "dense" in args.phases:
        rows += measure("dense", backends, args.repeats, lambda b: loader_epoch(b, data, args), labels)

    if "genes" in args.phases:
        start = time.perf_counter()
        genes = random_genes(args.n_nodes, args.n_genes, args.gene_density, args.seed)
        print(
            f"genes: {args.n_genes} x {args.n_nodes:,} CSR, {genes.nnz:,} non-zeros "
            f"({(genes.data.nbytes + genes.indices.nbytes + genes.indptr.nbytes) / 2**20:,.0f}"
            f" MiB) in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
        graph_only = Data(edge_index=edge_index, num_nodes=args.n_nodes)
        rows += measure(
            "genes", backends, args.gene_repeats, lambda b: loader_epoch(b, graph_only, args, genes), labels
        )
        del genes, graph_only

    epochs: dict[str, list[dict]] = {}
    if "train" in args.phases:
        models = {}
        for backend in backends:
            torch.manual_seed(args.seed)
            model = GraphAutoencoder(
                args.dense_dim,
                hidden_dim=args.hidden,
                latent_dim=args.latent,
                n_layers=len(args.num_neighbors),
                conv=args.conv,
                activation=args.activation,
            )
            models[backend] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))
            epochs[backend] = []

        def run(backend):
            model, optimizer = models[backend]
            out = train_epoch(model, optimizer, make_loader(backend, data, args))
            gc.collect()
            out["rss_end_mb"] = rss_mb()
            epochs[backend].append({"seconds": out["seconds"], "loss": out["loss"], "rss_mb": out["rss_end_mb"]})
            return out

        rows += measure("train", backends, args.train_epochs, run, labels)

    if "trim" in args.phases:
        variants = ["original", "untrimmed", "trimmed"]
        torch.manual_seed(args.seed)
        init = GraphAutoencoder(
            args.dense_dim,
            hidden_dim=args.hidden,
            latent_dim=args.latent,
            n_layers=len(args.num_neighbors),
            conv=args.conv,
            activation=args.activation,
        )
        models = {}
        for v in variants:
            model = copy.deepcopy(init)
            models[v] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))
        rows += measure(
            "trim",
            variants,
            args.train_epochs,
            lambda v: trim_epoch(v, *models[v], make_loader("builtin", data, args)),
            {v: v for v in variants},
        )

    if "backed" in args.phases:
        rows += backed_phase(args)

    for row in rows:
        row["backend"] = labels.get(row["backend"], row["backend"])
    columns = [
        "phase",
        "backend",
        "s/epoch (best)",
        "s/epoch (median)",
        "sampled nodes/s",
        "nodes/batch",
        "set-up s",
        "speed ratio builtin/native",
        "speed-up vs original",
        "speed-up vs in-loop",
        "peak RSS MiB",
        "RSS growth MiB",
    ]
    print()
    print(markdown_table(rows, columns))
    if epochs:
        print()
        print(
            "RSS after each training epoch (MiB): "
            + "; ".join(f"{labels[b]}: " + ", ".join(f"{e['rss_mb']:,.0f}" for e in es) for b, es in epochs.items())
        )
        print(
            "training loss per epoch: "
            + "; ".join(f"{labels[b]}: " + ", ".join(f"{e['loss']:.4f}" for e in es) for b, es in epochs.items())
        )
    print(f"process peak RSS (ru_maxrss): {peak_rss_mb():,.0f} MiB")

    result = {
        "args": vars(args),
        "versions": {
            "torch": torch.__version__,
            "torch_geometric": torch_geometric.__version__,
            "native_sampler": native_name if has_native_sampler() else None,
        },
        "graph": {"nodes": args.n_nodes, "edges": int(edge_index.size(1)), "build_seconds": graph_s},
        "rows": rows,
        "train_epochs": {labels[b]: es for b, es in epochs.items()},
        "peak_rss_mb": peak_rss_mb(),
    }
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
