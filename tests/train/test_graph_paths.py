"""Both graph training paths end to end on a synthetic two-section tissue."""

import numpy as np
import pytest
import torch

from stepgraph import BaseDataset, Trainer
from stepgraph.data.loaders import graph_loader, node_loaders
from stepgraph.graph import spatial_graph, to_pyg
from stepgraph.models import GraphAutoencoder
from stepgraph.synthetic import synthetic_tissue

from .test_trainer import _tensors_requiring_grad


@pytest.fixture(scope="module")
def tissue():
    adata = synthetic_tissue(n_cells=800, n_genes=40, seed=3)
    adata.layers["log1p"] = adata.X.copy()
    adata.layers["log1p"].data = np.log1p(adata.layers["log1p"].data)
    spatial_graph(adata, method="knn", n_neighbors=6, batch_key="section")
    data = to_pyg(adata, batch_key="section")
    dataset = BaseDataset(adata, layer_key="log1p", batch_key="section")
    rng = np.random.default_rng(0)
    perm = rng.permutation(adata.n_obs)
    return adata, data, dataset, np.sort(perm[160:]), np.sort(perm[:160])


def make_trainer(dataset, conv="gcn", lr=0.01, **kwargs):
    torch.manual_seed(0)
    model = GraphAutoencoder(dataset.n_vars, hidden_dim=32, latent_dim=8, conv=conv, n_batches=dataset.n_batches)
    trainer = Trainer(model, progress=False, trace_func=lambda m: None, **kwargs)
    trainer.init_optimizer(lr=lr)
    return trainer


@pytest.mark.parametrize("path", ["node_sampler", "graph_batch"])
def test_graph_paths_train_and_validate(tissue, path):
    adata, data, dataset, train_ind, valid_ind = tissue
    trainer = make_trainer(dataset)
    if path == "node_sampler":
        loader, _ = node_loaders(data, [10, 5], batch_size=128, backend="builtin")
        trainer.train_node_sampler(epochs=6, gloader=loader, dataset=dataset, train_ind=train_ind, valid_ind=valid_ind)
    else:
        loader = graph_loader(data, n_layers=2, batch_size=200, backend="builtin")
        trainer.train_graph_batch(epochs=6, gloader=loader, dataset=dataset, train_ind=train_ind, valid_ind=valid_ind)
    first, last = trainer.history[0], trainer.history[-1]
    assert {"recon_loss", "val_recon_loss"} <= set(last)
    assert last["recon_loss"] < 0.7 * first["recon_loss"]
    assert last["val_recon_loss"] < first["val_recon_loss"]
    assert _tensors_requiring_grad(trainer) == []


def test_without_valid_ind_there_are_no_val_keys(tissue):
    adata, data, dataset, train_ind, valid_ind = tissue
    trainer = make_trainer(dataset)
    trainer.train_graph_batch(epochs=1, gloader=graph_loader(data, 2, 400, backend="builtin"), dataset=dataset)
    assert not any(k.startswith("val_") for k in trainer.history[-1])


@pytest.mark.parametrize("given_train", [True, False])
@pytest.mark.parametrize("path", ["node", "graph"])
def test_train_and_valid_nodes_never_swap_roles(tissue, path, given_train):
    adata, data, dataset, train_ind, valid_ind = tissue
    trainer = make_trainer(dataset)
    seen = {True: [], False: []}

    def recording_call(batch, ind, step):
        seen[trainer.model.training].append(batch.n_id[ind].clone())
        return trainer.handle_ginput_tuple(batch, ind, step)

    if path == "node":
        loader, _ = node_loaders(data, [5, 5], batch_size=100, backend="builtin")
        trainer.train_node_sampler(
            epochs=2,
            gloader=loader,
            dataset=dataset,
            train_ind=train_ind if given_train else None,
            valid_ind=valid_ind,
            call_func=recording_call,
        )
    else:
        loader = graph_loader(data, 2, batch_size=100, backend="builtin")
        trainer.train_graph_batch(
            epochs=2,
            gloader=loader,
            dataset=dataset,
            train_ind=train_ind if given_train else None,
            valid_ind=valid_ind,
            call_func=recording_call,
        )
    trained = torch.cat(seen[True]).numpy()
    validated = torch.cat(seen[False]).numpy()
    # every train node is trained on twice (2 epochs), every valid node validated twice;
    # without train_ind, training uses every node that is not validated
    np.testing.assert_array_equal(np.sort(trained), np.sort(np.repeat(train_ind, 2)))
    np.testing.assert_array_equal(np.sort(validated), np.sort(np.repeat(valid_ind, 2)))


def test_early_stopping_triggers_on_a_plateau(tissue):
    adata, data, dataset, train_ind, valid_ind = tissue
    trainer = make_trainer(dataset, lr=1e-12)  # weights do not move: validation is flat
    trainer.lossconfig.clear()  # STEP's per-loss defaults off: defualt_lcfg applies to every loss
    trainer.defualt_lcfg.update(patience=2, delta=1e-2)  # above the sampling noise of validation
    loader, valid_loader = node_loaders(data, [5, 5], 200, train_ind=train_ind, valid_ind=valid_ind, backend="builtin")
    stopped = trainer.train_node_sampler(epochs=20, gloader=(loader, valid_loader), dataset=dataset)
    assert stopped is True
    assert len(trainer.history) == 3
    assert "val_recon_loss" in trainer.stop_reason


def test_full_neighbourhood_validation_equals_full_graph_loss(tissue):
    # with mean aggregation (SAGE), full 2-hop neighbourhoods reproduce the
    # whole-graph computation exactly, so validate_gloader must equal it
    adata, data, dataset, train_ind, valid_ind = tissue
    trainer = make_trainer(dataset, conv="sage")
    loader = graph_loader(data, n_layers=2, batch_size=150, backend="builtin")
    via_loader = trainer.validate_gloader(loader, valid_ind=valid_ind, dataset=dataset)
    x, b = dataset[np.arange(len(dataset))]
    trainer.model.eval()
    with torch.no_grad():
        full = trainer.model.loss(x, ind=torch.as_tensor(valid_ind), edge_index=data.edge_index, batch_label=b)
    assert via_loader["val_recon_loss"] == pytest.approx(float(full["recon_loss"]), rel=1e-4)


def test_graph_paths_reject_bad_input(tissue):
    adata, data, dataset, train_ind, valid_ind = tissue
    trainer = make_trainer(dataset)
    loader = graph_loader(data, 2, 200, backend="builtin")
    other = BaseDataset(adata[:100].copy())
    with pytest.raises(ValueError, match="graph has 800 nodes"):
        trainer.train_graph_batch(epochs=1, gloader=loader, dataset=other)
    with pytest.raises(ValueError, match="overlap"):
        trainer.train_graph_batch(
            epochs=1, gloader=loader, dataset=dataset, train_ind=train_ind, valid_ind=train_ind[:5]
        )
    with pytest.raises(ValueError, match="num_neighbors"):
        node_loaders(data, [0, 5])
    with pytest.raises(ValueError, match="n_layers"):
        graph_loader(data, n_layers=0)
