import math

import numpy as np
import pytest
import torch

from stepgraph import BaseDataset, Trainer
from stepgraph.train.trainer import NonFiniteLossError
from tests.conftest import TinyAutoencoder


class RecordingWriter:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


class ScriptedModel(torch.nn.Module):
    """Training pulls ``w`` towards 0; validation returns scripted values.

    Each validation call records the current weight, so a test can tell which
    epoch's weights were restored.
    """

    def __init__(self, val_script):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([5.0]))
        self.val_script = {k: list(v) for k, v in val_script.items()}
        self.seen_w = []

    def loss(self, x, ind=None, **kwargs):
        if self.training:
            base = (self.w**2).sum()
            return {k: base for k in self.val_script}
        self.seen_w.append(self.w.detach().clone())
        return {k: torch.tensor(v.pop(0)) + 0 * self.w.sum() for k, v in self.val_script.items()}


def quiet_trainer(model, **kwargs):
    return Trainer(model, progress=False, trace_func=lambda msg: None, **kwargs)


def dense_X(adata):
    return torch.from_numpy(adata.X.toarray())


def test_loss_falls_through_train(adata):
    trainer = quiet_trainer(TinyAutoencoder(adata.n_vars))
    trainer.init_optimizer(lr=0.02)
    X = dense_X(adata)
    train_ind, valid_ind = trainer.split_X(X, 0.2)
    trainer.train(epochs=60, X=X, train_ind=train_ind, valid_ind=valid_ind)
    first, last = trainer.history[0], trainer.history[-1]
    assert last["recon_loss"] < 0.5 * first["recon_loss"]
    assert last["val_recon_loss"] < 0.5 * first["val_recon_loss"]


def test_loss_falls_through_train_batch_and_writer_gets_scalars(adata):
    ds = BaseDataset(adata, batch_key="section")
    trainer = quiet_trainer(TinyAutoencoder(adata.n_vars, n_batches=ds.n_batches))
    trainer.init_optimizer(lr=0.02)
    loaders = Trainer.make_loaders(ds, 32, split_rate=0.2)
    writer = RecordingWriter()
    trainer.train_batch(epochs=8, loaders=loaders, writer=writer)
    assert [h["epoch"] for h in trainer.history] == list(range(1, 9))
    assert trainer.history[-1]["recon_loss"] < 0.5 * trainer.history[0]["recon_loss"]
    tags = {(tag, step) for tag, _, step in writer.scalars}
    for epoch in range(1, 9):
        assert ("recon_loss", epoch) in tags and ("val_recon_loss", epoch) in tags
    logged = {(t, s): v for t, v, s in writer.scalars}
    assert logged[("val_recon_loss", 8)] == pytest.approx(trainer.history[-1]["val_recon_loss"])


def test_epoch_means_are_weighted_by_batch_size(adata):
    # a model whose loss is the batch mean of x[:, 0]: the epoch mean over
    # uneven batches must equal the mean over all rows.
    class MeanModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def loss(self, x, **kw):
            return {"m": x[:, 0].mean() + 0 * self.p}

    ds = BaseDataset(adata)
    loader = Trainer.make_loaders(ds, 30, split_rate=0, shuffle=False)[0]  # 400 = 13*30 + 10
    trainer = quiet_trainer(MeanModel())
    trainer.init_optimizer(lr=1e-9)
    trainer.train_batch(epochs=1, loaders=(loader, None))
    assert trainer.history[0]["m"] == pytest.approx(float(adata.X[:, 0].mean()), rel=1e-5)


def _tensors_requiring_grad(obj, seen=None, path="trainer"):
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [path] if (obj.requires_grad or obj.grad_fn is not None) else []
    if isinstance(obj, (torch.nn.Module, torch.optim.Optimizer)):
        return []  # parameters legitimately require grad
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += _tensors_requiring_grad(v, seen, f"{path}[{k!r}]")
    elif isinstance(obj, (list, tuple, set)):
        for i, v in enumerate(obj):
            found += _tensors_requiring_grad(v, seen, f"{path}[{i}]")
    elif hasattr(obj, "__dict__"):
        for k, v in vars(obj).items():
            found += _tensors_requiring_grad(v, seen, f"{path}.{k}")
    return found


def test_no_tensor_held_after_training_requires_grad(adata):
    ds = BaseDataset(adata)
    trainer = quiet_trainer(TinyAutoencoder(adata.n_vars))
    trainer.train_batch(epochs=2, loaders=Trainer.make_loaders(ds, 64))
    assert _tensors_requiring_grad(trainer) == []
    # the STEP-style plain-dict accumulation stores detached 0-d tensors, not graphs
    total = {}
    out = TinyAutoencoder(adata.n_vars).loss(dense_X(adata))
    trainer.cum_loss(out, total, n_batch=0)
    assert total["recon_loss"].dim() == 0 and not total["recon_loss"].requires_grad


def test_early_stopping_stops_and_restores_best_weights(tmp_path):
    model = ScriptedModel({"loss": [3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    messages = []
    trainer = Trainer(model, progress=False, trace_func=messages.append, checkpoint_dir=tmp_path)
    trainer.init_optimizer(lr=0.1)
    trainer.defualt_lcfg["patience"] = 3
    X = torch.zeros(4, 1)
    stopped = trainer.train(epochs=8, X=X, train_ind=[0, 1], valid_ind=[2, 3])
    assert stopped is True
    assert len(trainer.history) == 6  # best at 3, then 3 checks without improvement
    assert any("epoch 6/8" in m and "val_loss" in m for m in messages)
    assert (tmp_path / "best.pt").exists()
    assert torch.equal(model.w.detach(), model.seen_w[2])  # weights of epoch 3
    assert not torch.equal(model.seen_w[2], model.seen_w[5])


def test_restore_best_can_be_switched_off():
    model = ScriptedModel({"loss": [3.0, 2.0, 1.0, 2.0, 3.0, 4.0]})
    trainer = quiet_trainer(model, restore_best=False)
    trainer.init_optimizer(lr=0.1)
    trainer.defualt_lcfg["patience"] = 3
    trainer.train(epochs=6, X=torch.zeros(4, 1), train_ind=[0, 1], valid_ind=[2, 3])
    assert not torch.equal(model.w.detach(), model.seen_w[2])


@pytest.mark.parametrize("stop_on, expected_epochs", [("all", 8), ("any", 4), ("total", 8)])
def test_stop_rules(stop_on, expected_epochs):
    # "a" plateaus from epoch 1; "b" keeps improving, enough to keep the total improving
    script = {"a": [1.0] * 8, "b": [8.0 - i for i in range(8)]}
    trainer = quiet_trainer(ScriptedModel(script), stop_on=stop_on)
    trainer.init_optimizer(lr=0.1)
    trainer.defualt_lcfg["patience"] = 3
    trainer.train(epochs=8, X=torch.zeros(4, 1), train_ind=[0, 1], valid_ind=[2, 3])
    assert len(trainer.history) == expected_epochs
    expected_keys = {"val_total"} if stop_on == "total" else {"val_a", "val_b"}
    assert set(trainer.early_stopping) == expected_keys


def test_lossconfig_overrides_default_per_loss():
    script = {"a": [1.0] * 8, "b": [1.0] * 8}
    trainer = quiet_trainer(ScriptedModel(script), stop_on="any")
    trainer.init_optimizer(lr=0.1)
    trainer.lossconfig = {"a": {"patience": 6}, "val_b": {"patience": 2}}
    trainer.train(epochs=8, X=torch.zeros(4, 1), train_ind=[0, 1], valid_ind=[2, 3])
    assert trainer.early_stopping["val_a"].patience == 6
    assert trainer.early_stopping["val_b"].patience == 2
    assert len(trainer.history) == 3
    assert "val_b" in trainer.stop_reason and "val_a" not in trainer.stop_reason


def test_epochs_one_reports_one_of_one(adata, capsys):
    trainer = Trainer(TinyAutoencoder(adata.n_vars), trace_func=lambda m: None)
    trainer.train(epochs=1, X=dense_X(adata))
    err = capsys.readouterr().err
    assert "Epoch 1/1" in err and "2/1" not in err
    assert len(trainer.history) == 1


def test_non_finite_loss_raises_before_weights_change(adata):
    class Exploding(TinyAutoencoder):
        def loss(self, x, **kw):
            out = super().loss(x, **kw)
            out["bad_loss"] = next(iter(out.values())) * float("nan")  # a loss: it carries a gradient
            return out

    model = Exploding(adata.n_vars)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(model)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1.*bad_loss=nan"):
        trainer.train(epochs=3, X=dense_X(adata))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_loss_dict_without_tensor_is_a_clear_error(adata):
    class NoTensor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def loss(self, x, **kw):
            return {"score": 1.0}

    with pytest.raises(TypeError, match="no tensor"):
        quiet_trainer(NoTensor()).train(epochs=1, X=dense_X(adata))


def test_graph_ids_is_popped_and_non_tensor_values_are_logged_only(adata):
    class WithMeta(TinyAutoencoder):
        def loss(self, x, **kw):
            out = super().loss(x, **kw)
            out["graph_ids"] = torch.arange(3)
            out["n_cells"] = float(x.shape[0])
            return out

    trainer = quiet_trainer(WithMeta(adata.n_vars))
    trainer.train(epochs=2, X=dense_X(adata))
    assert "graph_ids" not in trainer.history[-1]
    assert trainer.history[-1]["n_cells"] == adata.n_obs


def test_init_optimizer_stages_and_batch_embedding():
    model = TinyAutoencoder(10, n_batches=3)
    trainer = quiet_trainer(model)
    opt = trainer.init_optimizer(lr=1e-3, stage=1)
    assert len(opt.param_groups) == 1
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))

    opt = trainer.init_optimizer(lr=1e-3, tune_lr=1e-5, stage=2, tune_batch_embedding=False)
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert by_lr[1e-5] == {id(p) for p in model.encoder.parameters()}
    assert by_lr[1e-3] == {id(p) for p in model.decoder.parameters()}
    assert not model.batch_embedding.weight.requires_grad

    opt = trainer.init_optimizer(lr=1e-3, tune_lr=1e-5, stage=2, tune_batch_embedding=True)
    assert model.batch_embedding.weight.requires_grad
    assert id(model.batch_embedding.weight) in {id(p) for g in opt.param_groups if g["lr"] == 1e-3 for p in g["params"]}


def test_init_optimizer_bad_input():
    trainer = quiet_trainer(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="backbone_parameters"):
        trainer.init_optimizer(stage=2)
    with pytest.raises(ValueError, match="stage"):
        trainer.init_optimizer(stage=3)
    with pytest.raises(ValueError, match="lr"):
        trainer.init_optimizer(lr=-1)


def test_multistep_scheduler_steps_once_per_epoch(adata):
    trainer = quiet_trainer(TinyAutoencoder(adata.n_vars))
    trainer.init_optimizer(lr=0.1)
    trainer.set_lr_scheduler(gamma=0.5, milestones=[2, 4])
    trainer.train(epochs=5, X=dense_X(adata))
    assert [h["lr"] for h in trainer.history] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_plateau_scheduler_receives_validation_loss():
    model = ScriptedModel({"loss": [1.0] * 6})
    trainer = quiet_trainer(model)
    trainer.init_optimizer(lr=0.1)
    trainer.defualt_lcfg["patience"] = 100
    trainer.set_lr_scheduler(lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1, factor=0.5))
    trainer.train(epochs=6, X=torch.zeros(4, 1), train_ind=[0, 1], valid_ind=[2, 3])
    # the training loss keeps falling, so only the flat validation loss can reduce the lr
    assert trainer.history[-1]["loss"] < trainer.history[0]["loss"]
    assert trainer.optimizer.param_groups[0]["lr"] < 0.1


def test_split_x_honours_small_rates_and_zero():
    trainer = quiet_trainer(torch.nn.Linear(2, 2), seed=7)
    X = np.zeros((200, 2))
    train_ind, valid_ind = trainer.split_X(X, 0.05)
    assert len(valid_ind) == 10 and len(train_ind) == 190
    assert not set(train_ind.tolist()) & set(valid_ind.tolist())
    again = trainer.split_X(X, 0.05)[1]
    assert torch.equal(again, valid_ind)
    train_ind, valid_ind = trainer.split_X(X, 0)
    assert valid_ind is None and len(train_ind) == 200
    with pytest.raises(ValueError, match="split_rate"):
        trainer.split_X(X, 1.0)


def test_overlapping_indices_and_bad_epochs(adata):
    trainer = quiet_trainer(TinyAutoencoder(adata.n_vars))
    X = dense_X(adata)
    with pytest.raises(ValueError, match="overlap"):
        trainer.train(epochs=1, X=X, train_ind=[0, 1, 2], valid_ind=[2, 3])
    with pytest.raises(IndexError, match="train_ind"):
        trainer.train(epochs=1, X=X, train_ind=[0, 10_000])
    with pytest.raises(ValueError, match="duplicated"):
        trainer.train(epochs=1, X=X, train_ind=[0, 0, 1])
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="epochs"):
            trainer.train(epochs=bad, X=X)


def test_format_loss_dict_shows_value_over_best():
    trainer = quiet_trainer(ScriptedModel({"loss": [2.0, 1.0, 3.0]}))
    trainer.init_optimizer(lr=0.1)
    trainer.train(epochs=3, X=torch.zeros(4, 1), train_ind=[0, 1], valid_ind=[2, 3])
    text = trainer.format_loss_dict({"loss": 0.5}, {}, {"val_loss": 3.0}, endepoch=True)
    assert "loss=0.5000" in text and "val_loss=3.0000/1.0000" in text


def test_history_is_finite_and_default_lcfg_alias(adata):
    trainer = quiet_trainer(TinyAutoencoder(adata.n_vars))
    assert trainer.default_lcfg is trainer.defualt_lcfg
    trainer.train(epochs=2, X=dense_X(adata))
    assert all(math.isfinite(h["recon_loss"]) for h in trainer.history)


def test_early_stopping_monitors_losses_not_logged_values(adata):
    class LogsACount(TinyAutoencoder):
        def loss(self, x, **kw):
            out = super().loss(x, **kw)
            out["n_cells"] = float(x.shape[0])  # constant: would "plateau" at once
            return out

    trainer = quiet_trainer(LogsACount(adata.n_vars), stop_on="any")
    trainer.init_optimizer(lr=0.01)
    trainer.defualt_lcfg["patience"] = 2
    X = dense_X(adata)
    trainer.train(epochs=6, X=X, train_ind=np.arange(300), valid_ind=np.arange(300, 400))
    assert set(trainer.early_stopping) == {"val_recon_loss"}
    assert len(trainer.history) == 6 and "val_n_cells" in trainer.history[-1]


def test_split_x_accepts_sparse_matrices(adata):
    train_ind, valid_ind = quiet_trainer(torch.nn.Linear(2, 2)).split_X(adata.X, 0.25)
    assert len(train_ind) + len(valid_ind) == adata.n_obs and len(valid_ind) == 100


def test_all_rule_does_not_stop_while_a_loss_still_improves():
    # "a" runs out of patience at epoch 3, then improves again; "b" plateaus later
    script = {"a": [1.0, 1.1, 1.2, 0.5, 0.4, 0.3], "b": [1.0, 0.9, 0.8, 0.7, 0.75, 0.8]}
    trainer = quiet_trainer(ScriptedModel(script), stop_on="all")
    trainer.init_optimizer(lr=0.1)
    trainer.defualt_lcfg["patience"] = 2
    stopped = trainer.train(epochs=6, X=torch.zeros(4, 1), train_ind=[0, 1], valid_ind=[2, 3])
    assert stopped is False and len(trainer.history) == 6


def test_train_with_only_valid_ind_trains_on_the_other_rows(adata):
    seen = []

    class Recording(TinyAutoencoder):
        def loss(self, x, ind=None, **kw):
            if self.training:
                seen.append(ind.clone())
            return super().loss(x, ind=ind, **kw)

    trainer = quiet_trainer(Recording(adata.n_vars))
    trainer.train(epochs=1, X=dense_X(adata), valid_ind=np.arange(300, 400))
    assert torch.equal(seen[0], torch.arange(300))
