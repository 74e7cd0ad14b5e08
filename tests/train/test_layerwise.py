"""Layer-wise inference (Trainer.predict_layerwise) against the whole-graph forward pass
and the full-neighbourhood path (predict_gloader)."""

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from stepgraph import BaseDataset, Trainer, graph_loader, spatial_graph, to_pyg
from stepgraph.models import GraphAutoencoder
from stepgraph.train.layerwise import LayerwisePlan, layerwise_plan, predict_layerwise
from tests.conftest import TinyAutoencoder, make_adata


@pytest.fixture(scope="module")
def tissue():
    adata = make_adata(n_obs=300, n_vars=12, seed=3)
    spatial_graph(adata, method="knn", n_neighbors=6, batch_key="section")
    data = to_pyg(adata, batch_key="section")
    return adata, data, BaseDataset(adata, batch_key="section")


def _model(conv, n_batches=0):
    torch.manual_seed(1)
    model = GraphAutoencoder(
        12, hidden_dim=16, latent_dim=5, n_layers=2, conv=conv, n_batches=n_batches, activation="elu"
    )
    with torch.no_grad():  # GCN's and SAGE's biases start at zero: make them count
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("conv", ["gat", "gcn", "sage"])
def test_layerwise_equals_the_whole_graph_forward_pass(tissue, conv):
    adata, data, dataset = tissue
    model = _model(conv)
    x = dataset.features(np.arange(adata.n_obs))
    with torch.no_grad():
        whole = model.encode(x, data.edge_index, data.edge_weight)
    trainer = Trainer(model, progress=False)
    for chunk in (7, 64, 10_000):  # chunk boundaries cut edges: every chunk reads its in-neighbours
        out = trainer.predict_layerwise(data, dataset, chunk_size=chunk)
        assert out.shape == (adata.n_obs, 5)
        torch.testing.assert_close(out, whole, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("conv", ["gat", "sage"])
def test_layerwise_equals_the_full_neighbourhood_path(tissue, conv):
    _, data, dataset = tissue
    trainer = Trainer(_model(conv), progress=False)
    full = trainer.predict_gloader(graph_loader(data, n_layers=2, batch_size=50, backend="builtin"), dataset)
    out = trainer.predict_layerwise(data, dataset, chunk_size=40)
    torch.testing.assert_close(out, full, rtol=1e-4, atol=1e-5)


def test_gcn_neighbourhood_path_normalises_on_the_subgraph(tissue):
    # the full-neighbourhood path computes GCN's degrees on each batch's subgraph, where the
    # outermost hop has no in-edges: it differs from the whole graph, which layer-wise matches
    _, data, dataset = tissue
    trainer = Trainer(_model("gcn"), progress=False)
    full = trainer.predict_gloader(graph_loader(data, n_layers=2, batch_size=50, backend="builtin"), dataset)
    out = trainer.predict_layerwise(data, dataset)
    assert not torch.allclose(out, full, atol=1e-4)


def test_forward_with_sections_and_unsorted_edges(tissue):
    adata, data, dataset = tissue
    model = _model("gat", n_batches=2)
    perm = torch.randperm(data.edge_index.size(1))
    shuffled = Data(edge_index=data.edge_index[:, perm], num_nodes=data.num_nodes)
    x = dataset.features(np.arange(adata.n_obs))
    with torch.no_grad():
        whole = model(x, data.edge_index, batch_label=dataset.batch_label)
    out = Trainer(model, progress=False).predict_layerwise(shuffled, dataset, method="forward", chunk_size=33)
    assert out.shape == (adata.n_obs, 12)
    torch.testing.assert_close(out, whole, rtol=1e-4, atol=1e-5)


def test_a_loader_is_read_for_its_graph_and_training_mode_is_restored(tissue):
    _, data, dataset = tissue
    model = _model("sage").train()
    trainer = Trainer(model, progress=False)
    loader = graph_loader(data, n_layers=2, batch_size=64, backend="builtin")
    out = trainer.predict_layerwise(loader, dataset)
    assert model.training
    torch.testing.assert_close(out, trainer.predict_layerwise(data, dataset))


def test_models_without_a_plan_use_the_full_neighbourhood_path(tissue):
    adata, data, dataset = tissue

    class Encoder(TinyAutoencoder):
        def encode(self, x, edge_index, **inputs):
            return self.encoder(x)

    model = Encoder(12)
    assert layerwise_plan(model) is None
    assert layerwise_plan(_model("gat"), "loss") is None
    trainer = Trainer(model, progress=False)
    loader = graph_loader(data, n_layers=1, batch_size=64, backend="builtin")
    out = trainer.predict_layerwise(loader, dataset)
    with torch.no_grad():
        torch.testing.assert_close(out, model.encoder(dataset.features(np.arange(adata.n_obs))))
    with pytest.raises(TypeError, match="NeighborLoader"):
        trainer.predict_layerwise(data, dataset)


def test_plan_checks(tissue):
    _, data, dataset = tissue
    model = _model("gat")
    plan = layerwise_plan(model)
    assert isinstance(plan, LayerwisePlan) and len(plan.layers) == 2
    with pytest.raises(ValueError, match="chunk_size"):
        predict_layerwise(model, plan, data, dataset, torch.device("cpu"), chunk_size=0)
    small = Data(edge_index=data.edge_index[:, :10], num_nodes=10)
    with pytest.raises(ValueError, match="one row per graph node"):
        predict_layerwise(model, plan, small, dataset, torch.device("cpu"))
