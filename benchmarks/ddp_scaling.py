"""Data-parallel scaling: 1 process vs N processes (gloo, CPU) on one machine.

Trains the reference GraphAutoencoder with ``Trainer.train_node_sampler`` on a
synthetic tissue, once with a single process and once with ``--procs``
processes (each with ``--threads`` torch threads), and reports seconds per
epoch, training seeds per second per process and in total, and the speed-up.
Each process trains on its shard of the seed nodes with the same per-process
batch size, so N processes run 1/N of the steps each.

Run ``python benchmarks/ddp_scaling.py --help`` for the sizes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _common import RESULTS, markdown_table, write_json


def _run(rank: int, world: int, init_file: str, args, queue) -> None:
    import anndata as ad

    from stepgraph import (
        BaseDataset,
        Trainer,
        node_loaders,
        spatial_graph,
        synthetic_tissue,
        to_pyg,
    )
    from stepgraph.models import GraphAutoencoder
    from stepgraph.pipeline import log_normalise

    torch.set_num_threads(args.threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    adata = synthetic_tissue(n_cells=args.n_cells, n_genes=args.n_genes, seed=0)
    spatial_graph(adata, n_neighbors=6, batch_key="section")
    data = to_pyg(adata, batch_key="section")
    dataset = BaseDataset(ad.AnnData(X=log_normalise(adata.X), obs=adata.obs[["section"]]), batch_key="section")
    torch.manual_seed(0)
    model = GraphAutoencoder(dataset.n_vars, hidden_dim=64, latent_dim=16, n_batches=dataset.n_batches)
    trainer = Trainer(model, progress=False, trace_func=lambda m: None, checkpoint_every=0)
    trainer.init_optimizer(lr=1e-3)
    loader, _ = node_loaders(data, [10, 5], args.batch_size, backend="builtin")
    times = []
    for _ in range(args.epochs):
        if world > 1:
            dist.barrier()
        start = time.perf_counter()
        trainer.train_node_sampler(epochs=1, gloader=loader, dataset=dataset)
        if world > 1:
            dist.barrier()
        times.append(time.perf_counter() - start)
    if rank == 0:
        queue.put({"seconds_per_epoch": statistics.median(times[1:] or times), "all": times})
    if world > 1:
        dist.destroy_process_group()


def measure(world: int, args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init_file = tempfile.mktemp(prefix="stepgraph-ddp-")
    procs = [ctx.Process(target=_run, args=(r, world, init_file, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    result = queue.get(timeout=3600)
    for p in procs:
        p.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-cells", type=int, default=100_000, help="cells (default 100000)")
    parser.add_argument("--n-genes", type=int, default=100, help="genes (default 100)")
    parser.add_argument("--batch-size", type=int, default=1024, help="seeds per batch per process (default 1024)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs; the first is warm-up (default 3)")
    parser.add_argument("--procs", type=int, default=2, help="processes of the parallel run (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--out", default=str(RESULTS / "ddp_scaling.json"), help="JSON output")
    args = parser.parse_args()

    rows = []
    for world in (1, args.procs):
        result = measure(world, args)
        seeds_per_s = args.n_cells / result["seconds_per_epoch"]
        rows.append(
            {
                "processes": world,
                "threads/process": args.threads,
                "s/epoch": result["seconds_per_epoch"],
                "seeds/s total": seeds_per_s,
                "seeds/s per process": seeds_per_s / world,
            }
        )
    rows[1]["speed-up"] = rows[0]["s/epoch"] / rows[1]["s/epoch"]
    rows[0]["speed-up"] = 1.0
    print(f"node sampling [10, 5], {args.n_cells} cells, batch {args.batch_size} per process, gloo on CPU")
    print(
        markdown_table(
            rows, ["processes", "threads/process", "s/epoch", "seeds/s total", "seeds/s per process", "speed-up"]
        )
    )
    write_json(args.out, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
