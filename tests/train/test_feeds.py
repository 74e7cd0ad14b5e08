"""The trainer's feeds, through their public faces: every path validates through its public
``validate_*`` hook, checks its arguments before the first epoch, holds its derived loaders
and passes the per-hop counts only to models that name them."""

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
from stepgraph.train.feeds import NodeSamplingFeed
from tests.conftest import TinyAutoencoder


@pytest.fixture(scope="module")
def tissue():
    adata = synthetic_tissue(n_cells=300, n_genes=20, seed=3)
    spatial_graph(adata, n_neighbors=4, batch_key="section")
    data = to_pyg(adata, batch_key="section")
    dataset = BaseDataset(ad.AnnData(X=log_normalise(adata.X), obs=adata.obs[["section"]]), batch_key="section")
    return data, dataset


class CountingTrainer(Trainer):
    """Every validate_* hook counts its calls and shifts the losses by a marker."""

    MARK = 1000.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, progress=False, trace_func=lambda m: None, **kwargs)
        self.calls = {"validate_X": 0, "validate_loader": 0, "validate_gloader": 0}

    def _marked(self, name, losses):
        self.calls[name] += 1
        return {k: v + self.MARK for k, v in losses.items()}

    def validate_X(self, X, ind=None, call_func=None, **kwargs):
        return self._marked("validate_X", super().validate_X(X, ind, call_func, **kwargs))

    def validate_loader(self, loader, call_func=None):
        return self._marked("validate_loader", super().validate_loader(loader, call_func))

    def validate_gloader(self, gloader, valid_ind=None, dataset=None, call_func=None):
        return self._marked("validate_gloader", super().validate_gloader(gloader, valid_ind, dataset, call_func))


@pytest.mark.parametrize(
    "path, hook",
    [
        ("train", "validate_X"),
        ("train_batch", "validate_loader"),
        ("train_node_sampler", "validate_gloader"),
        ("train_graph_batch", "validate_gloader"),
    ],
)
def test_every_path_validates_through_its_public_hook(path, hook, tissue, tmp_path):
    data, dataset = tissue
    n = len(dataset)
    train_ind, valid_ind = np.arange(0, n - 60), np.arange(n - 60, n)
    graph = path in ("train_node_sampler", "train_graph_batch")
    model = (
        GraphAutoencoder(dataset.n_vars, hidden_dim=8, latent_dim=4, n_batches=2)
        if graph
        else TinyAutoencoder(dataset.n_vars)
    )
    trainer = CountingTrainer(model, checkpoint_dir=tmp_path)
    if path == "train":
        trainer.train(epochs=3, X=dataset.features(np.arange(n)), train_ind=train_ind, valid_ind=valid_ind)
    elif path == "train_batch":
        trainer.train_batch(epochs=3, loaders=Trainer.make_loaders(dataset, 64, split_rate=0.2))
    elif path == "train_node_sampler":
        loaders = node_loaders(data, [3, 2], 64, train_ind=train_ind, valid_ind=valid_ind, backend="builtin")
        trainer.train_node_sampler(epochs=3, gloader=loaders, dataset=dataset)
    else:
        trainer.train_graph_batch(
            epochs=3,
            gloader=graph_loader(data, 2, 64, backend="builtin"),
            dataset=dataset,
            train_ind=train_ind,
            valid_ind=valid_ind,
        )
    assert trainer.calls[hook] == 3
    assert sum(trainer.calls.values()) == 3
    # the override's values are what the run recorded and monitored
    assert all(h["val_recon_loss"] > CountingTrainer.MARK for h in trainer.history)
    assert trainer.early_stopping["val_recon_loss"].best_score > CountingTrainer.MARK


def test_a_path_checks_its_arguments_before_the_first_epoch(tissue, tmp_path):
    data, dataset = tissue
    trainer = CountingTrainer(
        GraphAutoencoder(dataset.n_vars, hidden_dim=8, latent_dim=4, n_batches=2), checkpoint_dir=tmp_path
    )
    with pytest.raises(ValueError, match="disjoint"):
        trainer.train_graph_batch(
            epochs=2,
            gloader=graph_loader(data, 2, 64, backend="builtin"),
            dataset=dataset,
            train_ind=[0, 1, 2],
            valid_ind=[2, 3],
        )
    assert trainer.history == [] and not (tmp_path / "last.pt").exists()


def test_the_active_feed_holds_the_derived_loaders_and_its_dataset(tissue, tmp_path):
    data, dataset = tissue
    trainer = CountingTrainer(
        GraphAutoencoder(dataset.n_vars, hidden_dim=8, latent_dim=4, n_batches=2), checkpoint_dir=tmp_path
    )
    loader = node_loaders(data, [3], 50, backend="builtin")[0]
    trainer.train_node_sampler(epochs=1, gloader=loader, dataset=dataset, valid_ind=np.arange(40))
    feed = trainer.active_feed
    assert isinstance(feed, NodeSamplingFeed) and feed.dataset is dataset is trainer.graph_dataset
    seeds = feed.train_loader.input_data.node
    assert len(seeds) == len(dataset) - 40 and not np.isin(np.arange(40), seeds.numpy()).any()
    assert len(feed.generators) == 1  # the shuffled training loader's, restored on resume


def test_per_hop_counts_reach_only_models_that_name_them(tissue, tmp_path):
    data, dataset = tissue
    seen = []

    class Trimming(GraphAutoencoder):
        def loss(
            self,
            x,
            ind=None,
            edge_index=None,
            edge_weight=None,
            batch_label=None,
            num_sampled_nodes_per_hop=None,
            num_sampled_edges_per_hop=None,
        ):
            seen.append((num_sampled_nodes_per_hop, num_sampled_edges_per_hop, x.shape[0]))
            return super().loss(
                x, ind, edge_index, edge_weight, batch_label, num_sampled_nodes_per_hop, num_sampled_edges_per_hop
            )

    class Plain(torch.nn.Module):  # a strict signature: an unexpected keyword would raise
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(dataset.n_vars, dataset.n_vars)

        def loss(self, x, ind=None, edge_index=None, edge_weight=None, batch_label=None):
            return {"recon_loss": torch.nn.functional.mse_loss(self.lin(x)[ind], x[ind])}

    loader = node_loaders(data, [3, 2], 64, backend="builtin")[0]
    model = Trimming(dataset.n_vars, hidden_dim=8, latent_dim=4, n_batches=2)
    CountingTrainer(model, checkpoint_dir=tmp_path / "a").train_node_sampler(epochs=1, gloader=loader, dataset=dataset)
    nodes, edges, n = seen[0]
    assert len(nodes) == 3 and len(edges) == 2 and sum(nodes) == n and nodes[0] <= 64
    CountingTrainer(Plain(), checkpoint_dir=tmp_path / "b").train_node_sampler(
        epochs=1, gloader=loader, dataset=dataset
    )


def test_a_feed_runs_on_a_context_without_a_trainer(tissue):
    """The feeds read a FeedContext only: a plain context with a loss call trains a batch
    and validates through its own validation call."""
    from stepgraph.train.feeds import FeedContext, FullNeighbourhoodFeed
    from stepgraph.train.strategies import SingleDeviceStrategy

    data, dataset = tissue
    seen = {}

    def loss(batch, ind, step):  # stepgraph's form: local positions of the loss nodes
        seen.setdefault("ind", []).append(ind)
        return {"n": torch.tensor(float(ind.numel()))}

    def validate_gloader(loader, dataset=None, call_func=None, **kwargs):
        seen["validated"] = (loader, dataset)
        return {"val_n": torch.tensor(0.0)}

    context = FeedContext(strategy=SingleDeviceStrategy("cpu"), validate_gloader=validate_gloader)
    loader = graph_loader(data, batch_size=len(dataset), backend="builtin")
    feed = FullNeighbourhoodFeed(context, loader, dataset, valid_ind=np.arange(10), call_func=loss)
    batches = list(feed.train_batches(1))
    out = feed.loss(batches[0], 0)
    assert out is not None and out[1] == len(dataset) - 10  # every node but the validation ones
    assert not np.isin(np.arange(10), batches[0].n_id[seen["ind"][0]].numpy()).any()
    assert feed.validate(1) == {"val_n": torch.tensor(0.0)} and seen["validated"][1] is dataset


def test_a_context_without_a_loss_call_says_what_it_needs(tissue):
    from stepgraph.train.feeds import FeedContext, MatrixFeed
    from stepgraph.train.strategies import SingleDeviceStrategy

    with pytest.raises(TypeError, match="call_func=.*matrix_call"):
        MatrixFeed(FeedContext(strategy=SingleDeviceStrategy("cpu")), torch.zeros(4, 2))
