"""Node features gathered by the loader (GatherFeatures), in memory and from a backed file in
worker processes, and loaders derived for other seeds that keep every option."""

import anndata as ad
import numpy as np
import pytest
import torch

from stepgraph import BaseDataset, Trainer
from stepgraph.data.gather import FEATURES_GATHERED, GatherFeatures
from stepgraph.data.loaders import derive_neighbor_loader, graph_loader, node_loaders
from stepgraph.graph import spatial_graph, to_pyg
from stepgraph.models import GraphAutoencoder
from stepgraph.synthetic import synthetic_tissue


@pytest.fixture(scope="module")
def tissue():
    adata = synthetic_tissue(n_cells=400, n_genes=20, seed=3)
    spatial_graph(adata, n_neighbors=5, batch_key="section")
    return adata, to_pyg(adata, batch_key="section")


def test_each_batch_carries_the_datasets_rows_of_its_nodes(tissue):
    adata, data = tissue
    dataset = BaseDataset(adata, batch_key="section")
    loader, _ = node_loaders(data, [3, 2], 64, seed=0, backend="builtin", dataset=dataset)
    seen = 0
    for batch in loader:
        assert getattr(batch, FEATURES_GATHERED) is True
        assert torch.equal(batch.x, dataset.features(batch.n_id))
        assert torch.equal(batch.batch_label, dataset.labels("batch_label", batch.n_id))
        seen += batch.batch_size
    assert seen == adata.n_obs


def test_a_transform_of_yours_runs_after_the_gather(tissue):
    adata, data = tissue
    dataset = BaseDataset(adata)

    def doubled(batch):
        batch.x = batch.x * 2
        return batch

    loader = graph_loader(data, 1, 100, backend="builtin", dataset=dataset, transform=doubled)
    batch = next(iter(loader))
    assert torch.equal(batch.x, 2 * dataset.features(batch.n_id))
    with pytest.raises(TypeError, match="features"):
        GatherFeatures(adata)


def _train(tissue, gathered, epochs=2):
    adata, data = tissue
    dataset = BaseDataset(adata, batch_key="section")
    torch.manual_seed(0)
    model = GraphAutoencoder(dataset.n_vars, hidden_dim=8, latent_dim=4, n_batches=dataset.n_batches)
    trainer = Trainer(model, progress=False, trace_func=lambda m: None, seed=0)
    loaders = node_loaders(
        data,
        [3, 2],
        64,
        train_ind=np.arange(300),
        valid_ind=np.arange(300, 400),
        seed=0,
        backend="builtin",
        dataset=dataset if gathered else None,
    )
    trainer.train_node_sampler(epochs=epochs, gloader=loaders, dataset=dataset)
    return trainer


def test_training_on_gathered_batches_equals_the_in_loop_gather(tissue):
    in_loop, in_loader = _train(tissue, gathered=False), _train(tissue, gathered=True)
    assert in_loader.history == in_loop.history
    for name, value in in_loop.model.state_dict().items():
        assert torch.equal(value, in_loader.model.state_dict()[name])


def test_workers_read_a_backed_file_each_on_its_own_handle(tissue, tmp_path):
    adata, data = tissue
    stored = adata.copy()
    stored.write_h5ad(tmp_path / "t.h5ad", compression="gzip")  # compressed: read through h5py, not a map
    backed = BaseDataset(ad.read_h5ad(tmp_path / "t.h5ad", backed="r"), batch_key="section")
    memory = BaseDataset(adata, batch_key="section")
    loader, _ = node_loaders(data, [3, 2], 50, seed=0, backend="builtin", dataset=backed, num_workers=2)
    batches = list(loader)
    assert len(batches) == 8
    for batch in batches:
        assert torch.equal(batch.x, memory.features(batch.n_id))


def test_a_derived_loader_keeps_every_option(tissue):
    adata, data = tissue
    dataset = BaseDataset(adata)
    loader, valid = node_loaders(
        data,
        [2],
        32,
        train_ind=np.arange(200),
        valid_ind=np.arange(200, 260),
        seed=0,
        backend="builtin",
        dataset=dataset,
        num_workers=1,
        persistent_workers=True,
        drop_last=True,
        pin_memory=False,
        prefetch_factor=3,
    )
    for derived in (valid, derive_neighbor_loader(loader, np.arange(50), shuffle=False)):
        assert derived.transform is loader.transform
        assert derived.persistent_workers and derived.prefetch_factor == 3
        assert derived.num_workers == 1
        assert not derived.drop_last  # a validation loader sees every seed
    assert derive_neighbor_loader(loader, np.arange(50), shuffle=True).drop_last  # a training one keeps it
    assert sum(b.batch_size for b in valid) == 60  # 60 seeds in batches of 32: the last one is kept
    batch = next(iter(valid))
    assert torch.equal(batch.x, dataset.features(batch.n_id))
