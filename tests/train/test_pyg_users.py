"""A PyG or Lightning user's training code on the Trainer: their own ``Data`` (no
stepgraph dataset), metrics that are not losses, their optimizer and schedule,
gradient accumulation, test and predict, and their loader left as it is."""

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Data
from torch_geometric.loader import NeighborLoader
from torch_geometric.nn import GCNConv, GraphSAGE

from stepgraph import Trainer
from stepgraph.data.loaders import graph_loader, node_loaders
from stepgraph.data.sampler import make_neighbor_sampler
from stepgraph.train.callbacks import Callback
from stepgraph.train.checkpointing import ModelCheckpoint
from stepgraph.train.early_stopping import EarlyStopping


def two_class_graph(n=120, seed=0):
    """A ring of nodes whose class is which half of the ring they sit in; features noisy."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) >= n // 2).long()
    x = F.one_hot(y, 2).float() + 0.8 * torch.randn(n, 2, generator=g)
    i = torch.arange(n)
    edge_index = torch.cat([torch.stack([i, (i + 1) % n]), torch.stack([(i + 1) % n, i])], 1)
    mask = torch.rand(n, generator=g) < 0.7
    return Data(x=x, y=y, edge_index=edge_index, train_mask=mask, val_mask=~mask)


class GCN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = GCNConv(2, 2)

    def forward(self, x, edge_index):
        return self.conv(x, edge_index)


def accuracy_call(model):
    """A PyG user's loss call: cross-entropy on the loss nodes, and an accuracy beside it."""

    def call(batch, ind, step):
        out = model(batch.x, batch.edge_index)[ind]
        y = batch.y[ind]
        return {"loss": F.cross_entropy(out, y), "acc": (out.argmax(-1) == y).float().mean()}

    return call


def quiet(model, **kwargs):
    return Trainer(model, progress=False, trace_func=lambda m: None, **kwargs)


def test_your_data_trains_without_a_dataset_and_an_accuracy_is_logged_not_trained_on():
    data = two_class_graph()
    model = GCN()
    seen = []

    class Metrics(Callback):
        def on_epoch_end(self, trainer, metrics):
            seen.append(dict(metrics))

    trainer = quiet(model, seed=0, callbacks=[Metrics()])
    trainer.init_optimizer(lr=0.05)
    loader = graph_loader(data, n_layers=1, batch_size=40)
    idx = torch.arange(data.num_nodes)
    trainer.train_graph_batch(
        epochs=5,
        gloader=loader,
        train_ind=idx[data.train_mask],
        valid_ind=idx[data.val_mask],
        call_func=accuracy_call(model),
    )
    row = seen[-1]
    assert {"acc", "val_acc", "loss", "val_loss"} <= set(trainer.history[-1])
    assert row["total"] == pytest.approx(row["loss"]) and row["val_total"] == pytest.approx(row["val_loss"])
    assert 0.0 <= row["val_acc"] <= 1.0 and row["val_acc"] != row["val_total"]
    assert trainer.stopping.monitors and all("acc" not in name for name in trainer.stopping.monitors)


def test_stopping_and_best_weights_follow_a_metric_in_max_mode(tmp_path):
    data = two_class_graph(seed=1)
    model = GCN()
    trainer = quiet(
        model,
        seed=0,
        use_earlystop=False,
        restore_best=True,
        callbacks=[
            ModelCheckpoint(tmp_path, monitor="val_acc", mode="max"),
            EarlyStopping(monitor="val_acc", mode="max", patience=3, delta=0.0, path=None),
        ],
    )
    trainer.init_optimizer(lr=0.05)
    idx = torch.arange(data.num_nodes)
    trainer.train_graph_batch(
        epochs=30,
        gloader=graph_loader(data, n_layers=1, batch_size=data.num_nodes),
        train_ind=idx[data.train_mask],
        valid_ind=idx[data.val_mask],
        call_func=accuracy_call(model),
    )
    accs = [row["val_acc"] for row in trainer.history]
    assert len(accs) < 30 and "val_acc" in trainer.stop_reason  # stopped by the metric
    # the weights kept are those of the best accuracy; the validation loader is the one validation used
    # (GCN's normalisation sees the sampled subgraph, so the same nodes in another loader score otherwise)
    test = trainer.test(trainer.active_feed.valid_loader, call_func=accuracy_call(model))
    assert set(test) == {"test_loss", "test_acc"} and test["test_acc"] == pytest.approx(max(accs))


def test_the_default_call_passes_the_batch_attributes_its_loss_names():
    data = two_class_graph()
    seen = {}

    class Named(GCN):
        def loss(self, x, ind=None, edge_index=None, y=None, train_mask=None):
            seen["y"], seen["mask"] = y, train_mask
            return {"loss": F.cross_entropy(self(x, edge_index)[ind], y[ind])}

    trainer = quiet(Named(), seed=0)
    trainer.train_node_sampler(epochs=1, gloader=node_loaders(data, [3], 30, backend="builtin", seed=0)[0])
    assert seen["y"] is not None and seen["y"].dtype == torch.long and seen["mask"].dtype == torch.bool


def test_a_derived_loader_shuffles_from_torchs_generator_when_yours_has_none():
    data = two_class_graph()
    sampler = make_neighbor_sampler(data, [2], backend="builtin")
    loader = NeighborLoader(data, [2], batch_size=10, shuffle=True, neighbor_sampler=sampler)
    from stepgraph.data.loaders import derive_neighbor_loader

    def first_seeds(seed):
        torch.manual_seed(seed)
        derived = derive_neighbor_loader(loader, torch.arange(60), shuffle=True)
        assert derived.generator is None
        return next(iter(derived)).n_id[:10].tolist()

    assert first_seeds(1) == first_seeds(1) and first_seeds(1) != first_seeds(2)


def test_your_optimizer_class_keywords_groups_or_a_ready_one():
    model = torch.nn.Linear(3, 1)
    trainer = quiet(model)
    opt = trainer.init_optimizer(lr=0.01, optimizer=torch.optim.AdamW, weight_decay=0.5)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.5
    groups = [{"params": [model.weight], "lr": 0.1}, {"params": [model.bias]}]
    opt = trainer.init_optimizer(lr=0.01, optimizer=torch.optim.SGD, params=groups)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    ready = torch.optim.SGD(model.parameters(), lr=0.3)
    assert trainer.init_optimizer(optimizer=ready) is ready is trainer.optimizer
    with pytest.raises(ValueError, match="optimizer must be built on this trainer's model"):
        trainer.init_optimizer(optimizer=torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))


class Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def loss(self, x, ind=None, y=None, batch_label=None):
        x = x if ind is None else x[ind]
        return {"mse": F.mse_loss(self.lin(x).squeeze(-1), x.sum(-1))}


def _batches(n_batches, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches * size, 3, generator=g)
    return [(x[i * size : (i + 1) * size],) for i in range(n_batches)]


def test_gradient_accumulation_steps_as_one_batch_of_the_same_samples():
    torch.manual_seed(0)
    a, b = Regression(), Regression()
    b.load_state_dict(a.state_dict())
    small = quiet(a, accumulate_grad_batches=2, use_earlystop=False)
    small.init_optimizer(lr=0.1, optimizer=torch.optim.SGD)
    small.train_batch(epochs=1, loaders=(_batches(4, 5), None))  # 4 batches: 2 optimizer steps
    large = quiet(b, use_earlystop=False)
    large.init_optimizer(lr=0.1, optimizer=torch.optim.SGD)
    x = torch.cat([t[0] for t in _batches(4, 5)])
    large.train_batch(epochs=1, loaders=([(x[:10],), (x[10:],)], None))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_a_leftover_batch_steps_at_the_end_of_the_epoch():
    model = Regression()
    before = model.lin.weight.detach().clone()
    trainer = quiet(model, accumulate_grad_batches=4, use_earlystop=False)
    trainer.init_optimizer(lr=0.1, optimizer=torch.optim.SGD)
    trainer.train_batch(epochs=1, loaders=(_batches(1, 5), None))
    assert not torch.equal(model.lin.weight, before)


def test_a_one_cycle_schedule_stepped_per_step_reaches_its_peak_and_per_epoch_warns():
    model = Regression()
    trainer = quiet(model, use_earlystop=False)
    trainer.init_optimizer(lr=0.01, optimizer=torch.optim.SGD)
    lrs = []
    trainer.set_lr_scheduler(
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=8, pct_start=0.5), interval="step"
    )
    original = trainer.optimizer_step

    def record():
        original()
        lrs.append(trainer.optimizer.param_groups[0]["lr"])

    trainer.optimizer_step = record
    trainer.train_batch(epochs=2, loaders=(_batches(4, 5), None))
    assert max(lrs) == pytest.approx(1.0, rel=1e-3) and len(lrs) >= 8
    trainer.init_optimizer(lr=0.01)
    trainer.set_lr_scheduler(lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=8))
    with pytest.warns(UserWarning, match="interval='step'"):
        trainer.train_batch(epochs=2, loaders=(_batches(4, 5), None))


def test_call_func_batches_reach_the_model_on_the_trainers_device():
    data = two_class_graph()
    devices = []
    model = GCN()

    def call(batch, ind, step):
        devices.append((batch.x.device, ind.device))
        return {"loss": F.cross_entropy(model(batch.x, batch.edge_index)[ind], batch.y[ind])}

    trainer = quiet(model, device="cpu")
    trainer.train_node_sampler(
        epochs=1, gloader=node_loaders(data, [3], 60, backend="builtin", seed=0)[0], call_func=call
    )
    assert devices and all(d == (trainer.device, trainer.device) for d in devices)


def test_predict_gives_one_row_per_node_from_your_data_and_layerwise_serves_pyg_models():
    data = two_class_graph()
    torch.manual_seed(0)
    model = GraphSAGE(2, 8, num_layers=2, out_channels=3)
    trainer = quiet(model)
    model.eval()
    with torch.no_grad():
        full = model(data.x, data.edge_index)
    by_batches = trainer.predict(graph_loader(data, n_layers=2, batch_size=25), method="forward")
    assert by_batches.shape == full.shape and torch.allclose(by_batches, full, atol=1e-5)
    layerwise = trainer.predict_layerwise(data)
    assert torch.allclose(layerwise, full, atol=1e-5)
    outputs = trainer.predict([data, data], func=lambda batch: model(batch.x, batch.edge_index).sum(-1))
    assert outputs.shape == (2 * data.num_nodes,)


def test_restoring_earlier_weights_is_said_in_the_log():
    said = []

    class Scripted(torch.nn.Module):
        """Validation loss 3, 1, 2, 4: epoch 2 is the best."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.calls = 0

        def loss(self, x, ind=None):
            if not self.training:
                self.calls += 1
                return {"loss": self.w * 0 + [3.0, 1.0, 2.0, 4.0][self.calls - 1]}
            return {"loss": (self.w - 1) ** 2}

    trainer = Trainer(Scripted(), progress=False, trace_func=said.append, lossconfig={}, restore_best=True)
    trainer.train(epochs=4, X=torch.zeros(10, 1), valid_ind=[0, 1])
    assert any("Restored the best weights, of epoch 2" in line for line in said)


def test_link_level_epochs_weigh_batches_by_their_supervision_edges():
    from torch_geometric.loader import LinkNeighborLoader

    from stepgraph.train.feeds import graph_batch_weight

    data = two_class_graph(n=60)
    g = torch.Generator().manual_seed(0)
    pos = data.edge_index[:, ::2]
    neg = torch.randint(60, pos.shape, generator=g)
    label_index, labels = torch.cat([pos, neg], 1), torch.cat([torch.ones(pos.shape[1]), torch.zeros(pos.shape[1])])
    sampler = make_neighbor_sampler(data, [3], backend="builtin")

    def links(index, label, batch_size):
        return LinkNeighborLoader(
            data, [3], edge_label_index=index, edge_label=label, batch_size=batch_size, neighbor_sampler=sampler
        )

    model = GCN()

    def call(batch, ind, step):
        h = model(batch.x, batch.edge_index)
        score = (h[batch.edge_label_index[0]] * h[batch.edge_label_index[1]]).sum(-1)
        return {"bce": F.binary_cross_entropy_with_logits(score, batch.edge_label)}

    train, valid = links(label_index[:, ::2], labels[::2], 16), links(label_index[:, 1::2], labels[1::2], 25)
    trainer = quiet(model, seed=0, lossconfig={})
    trainer.train_graph_batch(epochs=2, gloader=(train, valid), call_func=call)
    batches = list(valid)
    assert {graph_batch_weight(b) for b in batches} == {25, label_index.shape[1] // 2 - 25 * (len(batches) - 1)}
    model.eval()
    with torch.no_grad():
        per_edge = sum(float(call(b, None, 0)["bce"]) * graph_batch_weight(b) for b in batches)
    assert trainer.history[-1]["val_bce"] == pytest.approx(per_edge / (label_index.shape[1] // 2), rel=1e-6)


def test_with_valid_ind_your_loader_keeps_its_transform_and_torchs_seed_sets_the_order():
    data = two_class_graph()
    seen = []

    def mark(batch):  # a transform of yours
        batch.marked = True
        return batch

    def first_batches(seed):
        torch.manual_seed(seed)
        sampler = make_neighbor_sampler(data, [2], backend="builtin")
        loader = NeighborLoader(data, [2], batch_size=20, shuffle=True, transform=mark, neighbor_sampler=sampler)
        model = GCN()
        order = []

        def call(batch, ind, step):
            seen.append(getattr(batch, "marked", False))
            if model.training:
                order.append(batch.n_id[ind].tolist())
            return {"loss": F.cross_entropy(model(batch.x, batch.edge_index)[ind], batch.y[ind])}

        trainer = quiet(model, lossconfig={})
        trainer.train_node_sampler(epochs=1, gloader=loader, valid_ind=torch.arange(30), call_func=call)
        assert trainer.active_feed.train_loader.transform is mark
        return order

    assert first_batches(1) == first_batches(1) and first_batches(1) != first_batches(2)
    assert seen and all(seen)  # every batch, training and validation, went through your transform


def test_sgd_with_weight_decay_and_two_parameter_groups_trains():
    model = Regression()
    trainer = quiet(model, use_earlystop=False)
    groups = [{"params": [model.lin.weight], "weight_decay": 0.1}, {"params": [model.lin.bias], "lr": 0.01}]
    trainer.init_optimizer(lr=0.05, optimizer=torch.optim.SGD, params=groups, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train_batch(epochs=5, loaders=(_batches(4, 8), None))
    opt = trainer.optimizer
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.01]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0]
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert trainer.history[-1]["mse"] < trainer.history[0]["mse"]


# ------------------------------------------------------------------ review findings, each a regression test
def test_your_call_gets_a_copy_of_your_data_on_the_device_and_your_data_stays_put():
    from stepgraph.train.feeds import on_device

    data = two_class_graph()
    seen = {}
    on_device(lambda batch: seen.setdefault("device", batch.x.device), "meta")(data)
    assert seen["device"].type == "meta" and data.x.device.type == "cpu"


def test_validation_moves_your_batches_as_training_does(monkeypatch):
    import stepgraph.train.feeds as feeds

    moved = []
    original = feeds.batch_to

    def counting(batch, device):
        moved.append(device)
        return original(batch, device)

    monkeypatch.setattr(feeds, "batch_to", counting)
    data = two_class_graph()
    model = GCN()
    trainer = quiet(model, seed=0, lossconfig={})
    loader = node_loaders(data, [2], 40, backend="builtin", seed=0)[0]
    trainer.train_node_sampler(epochs=1, gloader=loader, valid_ind=torch.arange(40), call_func=accuracy_call(model))
    n_train = len(moved)
    trainer.validate_gloader(trainer.active_feed.valid_loader, call_func=accuracy_call(model))
    assert n_train > 0 and len(moved) > n_train


def test_a_per_step_schedule_resumes_from_an_interrupt_and_its_interval_is_checked(tmp_path):
    class StopAt(Callback):
        def on_train_batch_end(self, trainer, losses, step):
            if trainer.loop_state.epoch == 2 and step == 1:
                raise KeyboardInterrupt

    def make(callbacks=()):
        model = Regression()
        torch.manual_seed(0)
        trainer = quiet(model, use_earlystop=False, checkpoint_dir=tmp_path, callbacks=list(callbacks))
        trainer.init_optimizer(lr=0.01, optimizer=torch.optim.SGD)
        trainer.set_lr_scheduler(
            lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=12), interval="step"
        )
        return trainer

    first = make([StopAt()])
    assert first.train_batch(epochs=3, loaders=(_batches(4, 5), None)) is False and first.interrupted
    resumed = make()
    resumed.train_batch(epochs=3, loaders=(_batches(4, 5), None), resume_from=tmp_path / "interrupted.pt")
    assert resumed.lr_scheduler.last_epoch == 12 and len(resumed.history) == 3
    other = make()
    other.set_lr_scheduler(lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1))  # per epoch now
    with pytest.raises(ValueError, match="per step"):
        other.train_batch(epochs=3, loaders=(_batches(4, 5), None), resume_from=tmp_path / "last.pt")


def test_a_refused_interval_leaves_the_scheduler_as_it_was():
    trainer = quiet(Regression())
    trainer.init_optimizer()
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        trainer.set_lr_scheduler(torch.optim.lr_scheduler.ReduceLROnPlateau(trainer.optimizer), interval="step")
    assert trainer.lr_scheduler is None and trainer.lr_scheduler_interval == "epoch"


def test_a_step_style_loop_monitors_its_losses_not_a_detached_metric():
    class WithMetric(Regression):
        def loss(self, x, ind=None, y=None, batch_label=None):
            err = self.lin(x).squeeze(-1) - x.sum(-1)
            return {"mse": (err**2).mean(), "mae": err.abs().mean().detach()}

    trainer = quiet(WithMetric())
    x = _batches(1, 8)[0]
    losses = trainer.handle_input_tuple(x)
    trainer.update_model_params(losses, epoch=1)
    monitors = trainer.setup_early_stopping(losses)
    assert list(monitors) == ["val_mse"]
    assert trainer.check_early_stop({"val_mse": 1.0, "val_mae": 0.5}) is False


def test_an_interrupted_accumulation_window_is_not_carried_into_the_next_fit():
    class Fails(Callback):
        def on_train_batch_end(self, trainer, losses, step):
            if step == 1:
                raise RuntimeError("stop here")

    model = Regression()
    trainer = quiet(model, accumulate_grad_batches=4, use_earlystop=False, callbacks=[Fails()])
    trainer.init_optimizer(lr=0.1, optimizer=torch.optim.SGD)
    with pytest.raises(RuntimeError, match="stop here"):
        trainer.train_batch(epochs=1, loaders=(_batches(4, 5), None))
    assert trainer._accumulated == 2
    trainer.callbacks = []
    trainer.begin_fit()
    assert trainer._accumulated == 0 and all(p.grad is None for p in model.parameters())


def test_a_short_accumulation_window_steps_with_the_mean_gradient():
    def weights(k):
        torch.manual_seed(0)
        model = Regression()
        trainer = quiet(model, accumulate_grad_batches=k, use_earlystop=False)
        trainer.init_optimizer(lr=0.1, optimizer=torch.optim.SGD)
        trainer.train(epochs=2, X=_batches(1, 6)[0][0])  # one batch per epoch
        return model.lin.weight.detach().clone()

    assert torch.allclose(weights(4), weights(1))


def test_a_graph_in_a_list_splits_its_nodes_by_a_mask():
    data = two_class_graph()
    model = GCN()
    seen = []

    def call(batch, ind, step):
        seen.append((model.training, None if ind is None else ind.numel()))
        return {"loss": F.cross_entropy(model(batch.x, batch.edge_index)[ind], batch.y[ind])}

    trainer = quiet(model, lossconfig={})
    trainer.train_graph_batch(epochs=1, gloader=[data], valid_ind=data.val_mask, call_func=call)
    assert seen == [(True, int(data.train_mask.sum())), (False, int(data.val_mask.sum()))]


def test_pyg_inference_is_used_only_where_it_computes_the_model():
    from stepgraph.train.trainer import _pyg_inference_serves

    data = two_class_graph()
    assert _pyg_inference_serves(GraphSAGE(2, 4, num_layers=2), "encode", data)
    assert not _pyg_inference_serves(GraphSAGE(2, 4, num_layers=2, jk="cat"), "encode", data)
    weighted = data.clone()
    weighted.edge_weight = torch.rand(data.num_edges)
    assert not _pyg_inference_serves(GraphSAGE(2, 4, num_layers=2), "encode", weighted)
    with pytest.raises(TypeError, match="layerwise"):
        quiet(GraphSAGE(2, 4, num_layers=2, jk="cat")).predict_layerwise(data)


def test_predict_refuses_func_with_a_neighbor_loader_and_test_takes_a_list_of_tensor_batches():
    data = two_class_graph()
    trainer = quiet(GCN())
    with pytest.raises(TypeError, match="method="):
        trainer.predict(graph_loader(data, n_layers=1, batch_size=30), func=lambda batch: batch.x)
    reg = quiet(Regression())
    assert set(reg.test(_batches(2, 5))) == {"test_mse"}
