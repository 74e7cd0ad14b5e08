"""Shared by the trainer's tests: a small two-section tissue and one run per training path."""

import anndata as ad
import numpy as np
import pytest
import torch

from stepgraph import BaseDataset, Trainer
from stepgraph.data.loaders import graph_loader, node_loaders
from stepgraph.graph import spatial_graph, to_pyg
from stepgraph.models import GraphAutoencoder
from stepgraph.pipeline import log_normalise
from stepgraph.synthetic import synthetic_tissue
from tests.conftest import TinyAutoencoder

#: The four training methods, as ``run_path`` names them.
PATHS = ["train", "train_batch", "node_sampler", "graph_batch"]


@pytest.fixture(scope="module")
def small_tissue():
    """500 cells in two sections: ``(adata, data, dataset)``."""
    adata = synthetic_tissue(n_cells=500, n_genes=30, seed=5)
    spatial_graph(adata, n_neighbors=5, batch_key="section")
    data = to_pyg(adata, batch_key="section", edge_weight="connectivities")
    dataset = BaseDataset(ad.AnnData(X=log_normalise(adata.X), obs=adata.obs[["section"]]), batch_key="section")
    return adata, data, dataset


def run_path(path, tissue, epochs, checkpoint_dir, seed=0, resume_from=None):
    """Train ``epochs`` epochs on one path, from a freshly built model and loaders."""
    adata, data, dataset = tissue
    torch.manual_seed(seed)  # model initialisation
    if path in ("train", "train_batch"):
        model = TinyAutoencoder(dataset.n_vars)
    else:
        model = GraphAutoencoder(dataset.n_vars, hidden_dim=16, latent_dim=4, dropout=0.1, n_batches=dataset.n_batches)
    trainer = Trainer(model, progress=False, trace_func=lambda m: None, seed=seed, checkpoint_dir=checkpoint_dir)
    trainer.init_optimizer(lr=0.01)
    perm = np.random.default_rng(seed).permutation(adata.n_obs)
    train_ind, valid_ind = np.sort(perm[100:]), np.sort(perm[:100])
    if path == "train":
        X = dataset.features(np.arange(len(dataset)))
        trainer.train(epochs=epochs, X=X, train_ind=train_ind, valid_ind=valid_ind, resume_from=resume_from)
    elif path == "train_batch":
        loaders = Trainer.make_loaders(dataset, 64, split_rate=0.2, seed=seed)
        trainer.train_batch(epochs=epochs, loaders=loaders, resume_from=resume_from)
    elif path == "node_sampler":
        loaders = node_loaders(data, [4, 3], 64, train_ind=train_ind, valid_ind=valid_ind, seed=seed, backend="builtin")
        trainer.train_node_sampler(epochs=epochs, gloader=loaders, dataset=dataset, resume_from=resume_from)
    else:
        loader = graph_loader(data, 2, 128, shuffle=True, seed=seed, backend="builtin")
        trainer.train_graph_batch(
            epochs=epochs,
            gloader=loader,
            dataset=dataset,
            train_ind=train_ind,
            valid_ind=valid_ind,
            resume_from=resume_from,
        )
    return trainer
