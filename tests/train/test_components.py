"""The trainer's parts, through their public faces."""

import anndata as ad
import numpy as np
import pytest
import torch

from stepgraph import BaseDataset, Trainer
from stepgraph._validation import (
    ArgumentTypeError,
    as_index,
    category_codes,
    check_choice,
    check_int,
)
from stepgraph.data.loaders import graph_loader, node_loaders
from stepgraph.graph import spatial_graph, to_pyg
from stepgraph.models import GraphAutoencoder
from stepgraph.pipeline import log_normalise
from stepgraph.synthetic import synthetic_tissue
from stepgraph.train.early_stopping import EarlyStoppingGroup
from stepgraph.train.feeds import NodeSamplingFeed
from stepgraph.train.state import LoopState
from stepgraph.train.strategies import SingleDeviceStrategy, Strategy, make_strategy
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


def test_loop_state_reads_like_steps_dict():
    state = LoopState(epoch=3, epochs=10, step=7)
    assert state["epoch"] == "3/10" and state["epoch_val"] == state.epoch == 3  # STEP's text, our int
    assert state.get("epochs") == 10 and state.get("missing", 5) == 5
    state["epoch"] = "4/10"  # STEP-style code may write the text back
    assert state.epoch == 4 and state["last_epoch"] is False
    state["mine"] = [1]
    state["step"] = 8
    assert state.step == 8 and state.extra == {"mine": [1]}
    assert "mine" in state and "epoch" in state and "other" not in state
    assert state.setdefault("mine", None) == [1] and state.setdefault("new", 2) == 2
    assert set(state.keys()) >= {"epoch", "epochs", "step", "tbar", "writer", "mine", "new"}
    with pytest.raises(KeyError):
        state["nope"]


def test_early_stopping_group_rules_and_reason():
    group = EarlyStoppingGroup(stop_on="all", trace_func=lambda m: None)
    group.default_config.update(patience=2)
    group.lossconfig["b"] = {"patience": 4}
    values, total = group.monitored({"val_a": 1.0, "val_b": 2.0, "val_logged": 9.0, "a": 5.0}, ["a", "b"])
    assert values == {"val_a": 1.0, "val_b": 2.0} and total == 3.0
    stops = [group.step({"val_a": 1.0, "val_b": 2.0}) for _ in range(5)]
    assert group.monitors["val_a"].patience == 2 and group.monitors["val_b"].patience == 4
    assert stops == [False, False, False, False, True]  # b stalls after 4 checks, a after 2
    assert group.stop_code == "all_stalled" and "val_a" in group.stop_reason and "val_b" in group.stop_reason

    any_group = EarlyStoppingGroup(stop_on="any", trace_func=lambda m: None)
    any_group.default_config.update(patience=1)
    any_group.step({"val_a": 1.0, "val_b": 1.0})
    assert any_group.step({"val_a": 0.5, "val_b": 1.0})
    assert any_group.stop_code == "any_stalled" and "val_a" not in any_group.stop_reason

    total_group = EarlyStoppingGroup(stop_on="total", trace_func=lambda m: None)
    values, total = total_group.monitored({"val_a": 1.0, "val_b": 0.5})
    assert values == {"val_total": 1.5}
    restored = EarlyStoppingGroup(stop_on="all")
    restored.load_state_dict(group.state_dict())
    assert restored.stop_reason == group.stop_reason
    assert {k: m.counter for k, m in restored.monitors.items()} == {k: m.counter for k, m in group.monitors.items()}


def test_without_a_process_group_the_strategy_is_single_device():
    strategy = make_strategy(None, model=torch.nn.Linear(2, 2))
    assert isinstance(strategy, SingleDeviceStrategy) and isinstance(strategy, Strategy)
    assert not strategy.is_distributed and strategy.is_main and strategy.device == torch.device("cpu")
    assert make_strategy(False, device="meta").device == torch.device("meta")  # the device at construction
    ind = torch.arange(10)
    assert strategy.shard(ind, 1, 0, shuffle=True, pad=True) is ind
    assert strategy.gather("x") == ["x"]
    with pytest.raises(TypeError, match="abstract"):
        Strategy("cpu")


class CountingStrategy(SingleDeviceStrategy):
    teardowns = 0

    def teardown(self):
        CountingStrategy.teardowns += 1


def test_every_fit_ends_with_the_strategys_teardown(adata):
    trainer = Trainer(TinyAutoencoder(adata.n_vars), progress=False, trace_func=lambda m: None)
    trainer.strategy = CountingStrategy(trainer.device)
    X = torch.from_numpy(adata.X.toarray())
    trainer.train(epochs=2, X=X)
    assert CountingStrategy.teardowns == 1
    with pytest.raises(ValueError, match="overlap"):  # a fit that fails still tears down
        trainer.train(epochs=2, X=X, train_ind=[0, 1], valid_ind=[1, 2])
    assert CountingStrategy.teardowns == 2


def test_meter_state_round_trips():
    from stepgraph import LossMeter

    meter = LossMeter()
    meter.update({"a": torch.tensor(2.0)}, weight=2)
    sums, weights = meter.state()
    other = LossMeter()
    other.load_state({k: 2 * float(v) for k, v in sums.items()}, {k: 2 * w for k, w in weights.items()})
    assert other.compute() == meter.compute() == {"a": 2.0}
    with pytest.raises(ValueError, match="same keys"):
        other.load_state({"a": 1.0}, {})


def test_checks_name_the_argument_the_value_and_what_was_expected():
    with pytest.raises(ArgumentTypeError, match=r"epochs must be an int >= 1, got epochs=1.5"):
        check_int(1.5, "epochs", minimum=1)
    with pytest.raises(ValueError, match=r"patience must be an int >= 1, got patience=0"):
        check_int(0, "patience", minimum=1)
    with pytest.raises(ValueError, match=r"mode must be one of 'min', 'max', got mode='up'"):
        check_choice("up", "mode", ("min", "max"))
    with pytest.raises(IndexError, match=r"train_ind must hold positions in \[0, 5\)"):
        as_index([0, 5], "train_ind", 5)
    assert as_index(np.array([True, False, True]), "ind", 3).tolist() == [0, 2]
    with pytest.raises(ValueError, match="boolean mask of length 4"):
        as_index(np.array([True, False, True]), "ind", 4)
    codes, cats = category_codes(["b", "a", None, "b"], "obs_key='x'", allow_missing=True)
    assert codes.tolist() == [1, 0, -1, 1] and list(cats) == ["a", "b"]
    with pytest.raises(ValueError, match=r"obs_key='x' must have no missing values, got 1 missing"):
        category_codes(["b", "a", None], "obs_key='x'")


def test_trainer_never_branches_on_distributed_mode():
    import inspect

    from stepgraph.train import trainer as trainer_module

    source = inspect.getsource(trainer_module)
    assert "self.distributed" not in source and "is_distributed()" not in source


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
