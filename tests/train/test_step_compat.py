"""STEP-style usage ports with import changes only.

Each test is written from STEP's documented behaviour, not from stepgraph's code.
"""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from stepgraph import BaseDataset, EarlyStopping, Trainer, train_loop_formatter
from stepgraph.data.loaders import node_loaders
from stepgraph.graph import spatial_graph, to_pyg
from stepgraph.pipeline import log_normalise
from stepgraph.synthetic import synthetic_tissue
from tests.conftest import TinyAutoencoder, make_adata


def quiet(model, **kwargs):
    return Trainer(model, progress=False, trace_func=lambda m: None, **kwargs)


class RecordingModel(torch.nn.Module):
    """Records the keyword arguments its loss receives."""

    def __init__(self, n_vars):
        super().__init__()
        self.lin = torch.nn.Linear(n_vars, n_vars)
        self.calls = []

    def loss(self, x, **kwargs):
        self.calls.append({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()})
        return {"recon_loss": torch.nn.functional.mse_loss(self.lin(x), x)}


def test_cum_loss_takes_steps_zero_based_index_and_gives_the_arithmetic_mean():
    trainer = quiet(torch.nn.Linear(1, 1))
    values = [4.0, 1.0, 7.0, 2.0]
    total = {}
    for i, value in enumerate(values):  # STEP: cum_loss(loss_dict, total, n_batch=i)
        total = trainer.cum_loss({"recon_loss": torch.tensor(value, requires_grad=True)}, total, n_batch=i)
        assert total["recon_loss"].item() == pytest.approx(np.mean(values[: i + 1]))
    assert not total["recon_loss"].requires_grad
    with pytest.raises(ValueError, match="n_batch"):
        trainer.cum_loss({"recon_loss": torch.tensor(1.0)}, {}, n_batch=-1)


def test_a_users_collate_fn_gets_per_sample_items(adata):
    seen = []

    def collate(items):  # STEP-style: a list of per-sample tuples
        seen.append(len(items))
        return torch.stack([item[0] for item in items]), torch.stack([item[1] for item in items])

    dataset = BaseDataset(adata, batch_key="section")
    train_loader, _ = Trainer.make_loaders(dataset, 32, collate_fn=collate)
    x, batch_label = next(iter(train_loader))
    assert seen == [32] and x.shape == (32, adata.n_vars) and batch_label.shape == (32,)
    # each collated row is one cell: its features and its own section
    rows = [int(np.flatnonzero((adata.X.toarray() == x[i].numpy()).all(axis=1))[0]) for i in range(4)]
    assert batch_label[:4].tolist() == dataset.batch_label[rows].tolist()


def test_batch_size_larger_than_the_dataset_gives_one_batch_per_epoch(adata):
    dataset = BaseDataset(adata)
    train_loader, valid_loader = Trainer.make_loaders(dataset, 1024, split_rate=0.2)  # STEP's default
    assert len(train_loader) == 1 and len(valid_loader) == 1
    trainer = quiet(TinyAutoencoder(adata.n_vars))
    trainer.train_batch(epochs=2, loaders=(train_loader, valid_loader))
    assert [h["epoch"] for h in trainer.history] == [1, 2]


def test_a_category_with_missing_values_splits_with_a_warning(adata):
    labels = adata.obs["cell_type"].astype(object).to_numpy()
    labels[::5] = np.nan  # unlabelled cells, as in STEP's refinement step
    adata.obs["label"] = pd.Categorical(labels)
    dataset = BaseDataset(adata)
    with pytest.warns(UserWarning, match="no category"):
        train_loader, valid_loader = Trainer.make_loaders(dataset, 32, split_rate=0.25, obs_key="label")
    train, valid = train_loader.dataset.indices, valid_loader.dataset.indices
    assert len(np.intersect1d(train, valid)) == 0 and len(train) + len(valid) == adata.n_obs
    missing = np.flatnonzero(pd.isna(labels))
    assert 0 < np.isin(missing, valid).sum() < len(missing)  # the unlabelled cells are split too
    assert adata.obs["label"].isna().sum() == len(missing)  # the user's column is untouched


def test_multi_batches_with_ct_tuples_reach_the_right_arguments(adata):
    dataset = BaseDataset(adata, batch_key="section", class_key="cell_type")
    assert dataset.mode == "multi_batches_with_ct"
    x, class_label, batch_label = dataset.fetch(np.arange(6))  # STEP's order: batch label last
    assert torch.equal(batch_label, torch.as_tensor(dataset.batch_label[:6]))
    assert torch.equal(class_label, torch.as_tensor(dataset.class_label[:6]))
    model = RecordingModel(adata.n_vars)
    trainer = quiet(model)
    trainer.train_batch(epochs=1, loaders=Trainer.make_loaders(dataset, 400, split_rate=0, shuffle=False))
    call = model.calls[0]
    order = np.arange(adata.n_obs)
    assert torch.equal(call["batch_label"], torch.as_tensor(dataset.batch_label[order]))
    assert torch.equal(call["class_label"], torch.as_tensor(dataset.class_label[order]))
    assert trainer.input_names == ("x", "class_label", "batch_label")  # from the dataset's mode
    # a hand-made STEP tuple without a dataset mode is read by its length, batch label last
    model.calls.clear()
    trainer = quiet(model)
    assert trainer.input_names is None
    trainer.handle_input_tuple((torch.ones(3, adata.n_vars), torch.tensor([5, 6, 7]), torch.tensor([0, 1, 0])))
    assert model.calls[-1]["class_label"].tolist() == [5, 6, 7]
    assert model.calls[-1]["batch_label"].tolist() == [0, 1, 0]


class SpatialTrainer(Trainer):
    """A STEP spatial subclass: overrides ``loss`` and ``handle_ginput_tuple`` with
    STEP's signature (dataset second, ``ind`` as global node ids)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, progress=False, trace_func=lambda m: None, **kwargs)
        self.global_ids, self.loss_calls = [], 0

    def loss(self, X, ind=None, **kwargs):
        self.loss_calls += 1
        return super().loss(X, ind=ind, **kwargs)

    def handle_ginput_tuple(self, input_tuple, dataset, ind, step):
        self.global_ids.append(ind.clone())
        x = dataset.features(input_tuple.n_id)
        local = torch.nonzero(torch.isin(input_tuple.n_id, ind)).flatten()
        return self.loss(x, ind=local, edge_index=input_tuple.edge_index)


def test_a_step_spatial_subclass_trains_with_its_own_handle_ginput_tuple():
    adata = synthetic_tissue(n_cells=300, n_genes=16, seed=2)
    spatial_graph(adata, n_neighbors=4, batch_key="section")
    data = to_pyg(adata, batch_key="section")
    dataset = BaseDataset(ad.AnnData(X=log_normalise(adata.X)))

    class GraphLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(16, 16)

        def loss(self, x, ind=None, edge_index=None):
            return {"recon_loss": torch.nn.functional.mse_loss(self.lin(x)[ind], x[ind])}

    trainer = SpatialTrainer(GraphLinear())
    train_ind, valid_ind = np.arange(240), np.arange(240, 300)
    loaders = node_loaders(data, [3], 50, train_ind=train_ind, valid_ind=valid_ind, backend="builtin")
    trainer.train_node_sampler(epochs=2, gloader=loaders, dataset=dataset)
    seen = torch.cat(trainer.global_ids)
    assert set(seen.tolist()) == set(range(300))  # global ids of the seeds: training and validation
    assert trainer.loss_calls == len(trainer.global_ids)  # every batch went through self.loss
    assert len(trainer.history) == 2 and "val_recon_loss" in trainer.history[0]


def test_overriding_loss_changes_train_batch(adata):
    class Scaled(Trainer):
        def loss(self, X, ind=None, **kwargs):
            losses = super().loss(X, ind=ind, **kwargs)
            return {k: v * 0 + 123.0 for k, v in losses.items()}

    trainer = Scaled(TinyAutoencoder(adata.n_vars), progress=False, trace_func=lambda m: None)
    trainer.train_batch(epochs=1, loaders=Trainer.make_loaders(BaseDataset(adata), 64))
    assert trainer.history[0]["recon_loss"] == pytest.approx(123.0)


def test_use_earlystop_false_trains_every_epoch_without_monitors(tmp_path):
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def loss(self, x, ind=None):
            return {"recon_loss": self.w.sum() * 0 + 1.0}  # never improves

    for use in (True, False):
        trainer = quiet(Flat(), use_earlystop=use, checkpoint_dir=tmp_path / str(use))
        trainer.lossconfig["recon_loss"]["patience"] = 1  # STEP code edits the entries in place
        stopped = trainer.train(epochs=6, X=torch.zeros(4, 1), train_ind=[0, 1], valid_ind=[2, 3])
        if use:
            assert stopped and len(trainer.history) == 2 and trainer.restore_best
        else:
            assert not stopped and len(trainer.history) == 6
            assert trainer.early_stopping == {} and trainer.restore_best is False


def test_steps_lossconfig_defaults_ship_and_edit_in_place():
    trainer = quiet(torch.nn.Linear(1, 1))
    assert trainer.lossconfig["recon_loss"] == {"patience": 30, "delta": 1e-2}
    assert trainer.lossconfig["kl_loss"] == {"patience": 10, "delta": 1e-3}
    assert trainer.lossconfig["cl_loss"] == {"patience": 20, "delta": 1e-4}
    assert trainer.lossconfig["gate_loss"] == {"patience": 15, "delta": 1e-3}
    assert (trainer.defualt_lcfg["patience"], trainer.defualt_lcfg["delta"]) == (15, 1e-3)
    trainer.lossconfig["kl_loss"]["patience"] = 1
    monitors = trainer.setup_early_stopping(
        {"recon_loss": torch.tensor(1.0), "kl_loss": torch.tensor(2.0), "other": torch.tensor(0.0), "logged": 3.0}
    )
    assert sorted(monitors) == ["val_kl_loss", "val_other", "val_recon_loss"]  # training keys, STEP's form
    assert monitors["val_kl_loss"].patience == 1 and monitors["val_recon_loss"].delta == 1e-2
    assert monitors["val_other"].patience == 15
    assert sorted(trainer.setup_early_stopping({"val_recon_loss": 1.0})) == ["val_recon_loss"]


def test_validate_and_format_return_what_step_callers_use(adata):
    dataset = BaseDataset(adata)
    trainer = quiet(TinyAutoencoder(adata.n_vars))
    _, valid_loader = Trainer.make_loaders(dataset, 64)
    losses = trainer.validate_loader(valid_loader)
    assert isinstance(losses["val_recon_loss"].item(), float)  # STEP callers call .item()
    assert float(losses["val_recon_loss"]) > 0
    X = dataset.features(np.arange(len(dataset)))
    assert trainer.validate_X(X, ind=[0, 1, 2])["val_recon_loss"].dim() == 0
    state = {}
    text = trainer.format_loss_dict({"recon_loss": 0.5}, state, {"val_recon_loss": 0.25}, endepoch=True)
    assert state["loss_dict"] == "recon_loss=0.5000"  # STEP writes the text into state
    assert state["validation"].startswith("val_recon_loss=0.2500")
    assert text.startswith("recon_loss=0.5000") and "val_recon_loss" in text


def test_a_step_style_epoch_function_reads_steps_state_keys():
    seen = []

    class Custom(Trainer):
        @train_loop_formatter
        def my_train(self, state, X):
            seen.append(
                (
                    state["epoch"],
                    state["epoch_val"],
                    state["last_epoch"],
                    state["is_init"],
                    isinstance(state["start_time"], float),
                )
            )
            losses = self.loss(X)
            self.update_model_params(losses, state["epoch_val"])
            return False

    trainer = Custom(TinyAutoencoder(3), progress=False, trace_func=lambda m: None)
    trainer.my_train(epochs=3, X=torch.ones(4, 3))
    assert seen == [("1/3", 1, False, True, True), ("2/3", 2, False, False, True), ("3/3", 3, True, False, True)]


def test_writer_every_step_logs_each_step_against_the_global_step(adata):
    class Writer:
        def __init__(self):
            self.rows = []

        def add_scalar(self, tag, value, step):
            self.rows.append((tag, step))

    dataset = BaseDataset(adata)
    loaders = Trainer.make_loaders(dataset, 100, split_rate=0.25)  # 3 training steps per epoch
    writer = Writer()
    quiet(TinyAutoencoder(adata.n_vars)).train_batch(epochs=2, loaders=loaders, writer=writer, writer_every="step")
    assert [s for t, s in writer.rows if t == "recon_loss"] == [1, 2, 3, 4, 5, 6]
    assert [s for t, s in writer.rows if t == "val_recon_loss"] == [3, 6]
    with pytest.raises(ValueError, match="writer_every"):
        quiet(TinyAutoencoder(adata.n_vars)).train_batch(epochs=1, loaders=loaders, writer_every="batch")


def test_early_stopping_keeps_its_documented_differences_from_step():
    es = EarlyStopping(patience=2, path=None)
    for value in [1.0, 1.0, 1.0]:  # STEP (<=) would count equal values as improvements forever
        es(value)
    assert es.early_stop and es.best_score == 1.0  # the loss itself, not minus the loss
    float_patience = EarlyStopping(patience=1.5, path=None)  # STEP accepts a float patience
    for value in [1.0, 2.0, 2.0]:
        float_patience(value)
    assert float_patience.early_stop and float_patience.counter == 2


def test_make_adata_is_untouched_by_the_compat_paths():
    adata = make_adata(n_obs=50)
    before = adata.obs.copy()
    Trainer.make_loaders(BaseDataset(adata, batch_key="section"), 10, obs_key="section")
    pd.testing.assert_frame_equal(adata.obs, before)


def test_steps_train_graph_batch_call_without_a_dataset_uses_the_last_one():
    from stepgraph.data.loaders import graph_loader
    from stepgraph.models import GraphAutoencoder

    adata = synthetic_tissue(n_cells=200, n_genes=12, seed=6)
    spatial_graph(adata, n_neighbors=4, batch_key="section")
    data = to_pyg(adata, batch_key="section")
    dataset = BaseDataset(ad.AnnData(X=log_normalise(adata.X)))
    trainer = quiet(GraphAutoencoder(12, hidden_dim=8, latent_dim=4))
    with pytest.raises(TypeError, match="dataset"):
        trainer.train_graph_batch(1, graph_loader(data, 2, 64, backend="builtin"), train_ind=np.arange(150))
    trainer.validate_gloader(graph_loader(data, 2, 64, backend="builtin"), dataset=dataset)  # sets it
    trainer.train_graph_batch(
        2, graph_loader(data, 2, 64, backend="builtin"), train_ind=np.arange(150), valid_ind=np.arange(150, 200)
    )  # STEP's call shape
    assert len(trainer.history) == 2 and "val_recon_loss" in trainer.history[-1]
