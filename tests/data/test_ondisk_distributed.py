"""On-disk features under DDP: two real gloo processes, each reading its own rows."""

import anndata as ad
import numpy as np
import pytest
import torch
import torch.distributed as dist

from stepgraph import BaseDataset, Trainer
from stepgraph.data.loaders import node_loaders
from stepgraph.graph import spatial_graph, to_pyg
from stepgraph.models import GraphAutoencoder
from stepgraph.pipeline import log_normalise
from stepgraph.synthetic import synthetic_tissue
from tests.conftest import run_ranks

WORLD = 2
TIMEOUT_S = 180


def train(path, backed: bool, ckpt_dir):
    """Two epochs of node-sampled training; returns (history, weights, rows read from disk)."""
    adata = ad.read_h5ad(path, backed="r" if backed else None)
    dataset = BaseDataset(adata, batch_key="section", row_transform=log_normalise)
    spatial_graph(adata, n_neighbors=5, batch_key="section")  # obsp is in memory, X is not
    data = to_pyg(adata, batch_key="section")
    torch.manual_seed(0)
    model = GraphAutoencoder(dataset.n_vars, hidden_dim=16, latent_dim=4, n_batches=2)
    trainer = Trainer(model, progress=False, trace_func=lambda m: None, checkpoint_dir=ckpt_dir)
    trainer.init_optimizer(lr=0.01)
    loaders = node_loaders(data, [4, 3], 50, train_ind=np.arange(500), valid_ind=np.arange(500, 600))
    trainer.train_node_sampler(epochs=2, gloader=loaders, dataset=dataset)
    rows_read = dataset.reader.rows_read if dataset.reader is not None else None
    return trainer.history, {k: v.clone() for k, v in model.state_dict().items()}, rows_read


def _worker(rank, init_file, path, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        result = {"backed": train(path, True, f"{out_dir}/b{rank}"), "memory": train(path, False, f"{out_dir}/m{rank}")}
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def tissue_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ondisk") / "tissue.h5ad"
    synthetic_tissue(n_cells=600, n_genes=30, seed=4).write_h5ad(path)
    return path


def test_backed_features_under_ddp(tissue_file, tmp_path):
    results = run_ranks(_worker, (str(tmp_path / "init"), str(tissue_file), str(tmp_path)), tmp_path, WORLD, TIMEOUT_S)

    for r in range(WORLD):
        (h_disk, w_disk, _), (h_mem, w_mem, _) = results[r]["backed"], results[r]["memory"]
        assert h_disk == h_mem  # reading from disk changes nothing in training
        for key in w_mem:
            assert torch.equal(w_disk[key], w_mem[key]), key
    for key in results[0]["backed"][1]:
        assert torch.equal(results[0]["backed"][1][key], results[1]["backed"][1][key]), key

    # each rank read the rows of its own batches only: about half of what one
    # process training on all seeds reads
    _, _, single = train(str(tissue_file), True, str(tmp_path / "single"))
    for r in range(WORLD):
        assert results[r]["backed"][2] < 0.75 * single
