"""Callbacks: the hooks a user's code sees, stopping with a reason, state in ``last.pt``,
checkpoints by any monitor (min or max, top k) and early-stopping thresholds (the loggers are
in test_loggers.py)."""

import math

import numpy as np
import pytest
import torch

from stepgraph import BaseDataset, Trainer
from stepgraph.train.callbacks import Callback, CallbackList
from stepgraph.train.checkpointing import ModelCheckpoint, load_checkpoint
from stepgraph.train.early_stopping import EarlyStopping


class Classifier(torch.nn.Module):
    """A linear classifier whose loss dict holds a loss and a logged accuracy (a float)."""

    def __init__(self, n_in=6, n_classes=3):
        super().__init__()
        self.linear = torch.nn.Linear(n_in, n_classes)

    def loss(self, x, ind=None, **inputs):
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
        logits = self.linear(x)
        accuracy = float((logits.argmax(1) == y).float().mean())
        return {"ce_loss": torch.nn.functional.cross_entropy(logits, y), "accuracy": accuracy}


def matrix(n=300, n_in=6, seed=0):
    return torch.as_tensor(np.random.default_rng(seed).normal(size=(n, n_in)), dtype=torch.float32)


def fit(callbacks=(), epochs=6, checkpoint_dir=None, resume_from=None, lr=0.05, **trainer_options):
    torch.manual_seed(0)
    trainer = Trainer(
        Classifier(),
        progress=False,
        trace_func=lambda m: None,
        seed=0,
        checkpoint_dir=checkpoint_dir,
        callbacks=callbacks,
        **trainer_options,
    )
    trainer.init_optimizer(lr=lr)
    X = matrix()
    loaders = Trainer.make_loaders(_dataset(X), 50, split_rate=0.2, seed=0)
    stopped = trainer.train_batch(epochs=epochs, loaders=loaders, resume_from=resume_from)
    return trainer, stopped


def _dataset(X):
    import anndata as ad

    return BaseDataset(ad.AnnData(X=X.numpy()))


class Recorder(Callback):
    """Records every hook call; stops the fit at ``stop_at``; its state is the count of batches."""

    def __init__(self, stop_at=None):
        self.calls, self.batches, self.epochs, self.stop_at = [], [], [], stop_at
        self.seen = 0

    def on_fit_start(self, trainer):
        self.calls.append("fit_start")

    def on_train_batch_end(self, trainer, losses, step):
        self.batches.append((trainer.loop_state.epoch, step, {k: float(v) for k, v in losses.items()}))
        self.seen += 1

    def on_validation_end(self, trainer, metrics):
        self.calls.append(("validation", sorted(metrics)))

    def on_epoch_end(self, trainer, metrics):
        self.epochs.append(dict(metrics))
        if self.stop_at is not None and metrics["epoch"] == self.stop_at:
            trainer.request_stop(f"told to stop at epoch {self.stop_at}")

    def on_fit_end(self, trainer):
        self.calls.append("fit_end")

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


def test_a_callback_sees_every_batch_and_epoch_and_stops_with_its_reason(tmp_path):
    recorder = Recorder(stop_at=3)
    messages = []
    trainer = Trainer(
        Classifier(), progress=False, trace_func=messages.append, seed=0, callbacks=[recorder], use_earlystop=False
    )
    loaders = Trainer.make_loaders(_dataset(matrix()), 50, split_rate=0.2, seed=0)
    stopped = trainer.train_batch(epochs=10, loaders=loaders)
    assert stopped is True and len(trainer.history) == 3
    assert trainer.stop_reason == "told to stop at epoch 3"
    assert any("told to stop at epoch 3" in m for m in messages)
    # every optimizer step: 240 training rows in batches of 50 -> 5 per epoch
    assert [(e, s) for e, s, _ in recorder.batches] == [(e, s) for e in (1, 2, 3) for s in range(5)]
    assert all(set(losses) == {"ce_loss", "accuracy"} for _, _, losses in recorder.batches)
    # the epoch's metrics are its history row plus the totals
    for row, metrics in zip(trainer.history, recorder.epochs):
        assert {k: metrics[k] for k in row} == row
        assert metrics["total"] == pytest.approx(row["ce_loss"])
        assert metrics["val_total"] == pytest.approx(row["val_ce_loss"])  # the accuracy is logged, not summed
    assert recorder.calls[0] == "fit_start" and recorder.calls[-1] == "fit_end"
    assert recorder.calls[1] == ("validation", ["val_accuracy", "val_ce_loss"])


def test_a_callback_state_resumes_bitwise_from_last_pt(tmp_path):
    straight_recorder = Recorder()
    straight, _ = fit([straight_recorder], epochs=6, checkpoint_dir=tmp_path / "straight", use_earlystop=False)

    first = Recorder()
    fit([first], epochs=3, checkpoint_dir=tmp_path / "run", use_earlystop=False)
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["callbacks"]["Recorder"] == {"seen": first.seen} and first.seen == 3 * 5
    resumed_recorder = Recorder()
    resumed, _ = fit(
        [resumed_recorder],
        epochs=6,
        checkpoint_dir=tmp_path / "run",
        resume_from=tmp_path / "run" / "last.pt",
        use_earlystop=False,
    )
    assert resumed_recorder.seen == straight_recorder.seen == 6 * 5
    assert resumed.history == straight.history
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name])


def test_resume_refuses_a_state_of_other_callbacks(tmp_path):
    fit([Recorder()], epochs=2, checkpoint_dir=tmp_path / "run")
    with pytest.raises(ValueError, match="same callbacks"):
        fit([], epochs=4, checkpoint_dir=tmp_path / "run", resume_from=tmp_path / "run" / "last.pt")


class WeightLog(Callback):
    def __init__(self):
        self.weights = {}

    def on_epoch_end(self, trainer, metrics):
        self.weights[metrics["epoch"]] = {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_checkpoint_monitors_val_accuracy_in_max_mode_and_keeps_the_top_3(tmp_path):
    weights = WeightLog()
    checkpoint = ModelCheckpoint(tmp_path / "ckpt", monitor="val_accuracy", mode="max", save_top_k=3)
    trainer, _ = fit([weights, checkpoint], epochs=8, lr=0.2, use_earlystop=False, restore_best=True)
    assert trainer.checkpoints is checkpoint and trainer.checkpoint_dir == tmp_path / "ckpt"
    scores = {row["epoch"]: row["val_accuracy"] for row in trainer.history}
    assert len(set(scores.values())) > 3, "the test needs epochs of different accuracy"
    order = sorted(scores, key=lambda e: -scores[e])  # stable: the earlier of equal epochs first
    top = order[:3]
    files = sorted(p.name for p in (tmp_path / "ckpt").glob("epoch=*.pt"))
    assert files == sorted(f"epoch={e:04d}.pt" for e in top)
    for epoch in top:
        saved = load_checkpoint(tmp_path / "ckpt" / f"epoch={epoch:04d}.pt")
        assert all(torch.equal(saved[k], weights.weights[epoch][k]) for k in saved)
    best = load_checkpoint(tmp_path / "ckpt" / "best.pt")
    assert all(torch.equal(best[k], weights.weights[order[0]][k]) for k in best)
    # restore_best loaded the most accurate epoch, not the lowest loss
    assert all(torch.equal(v, weights.weights[order[0]][k]) for k, v in trainer.model.state_dict().items())
    assert (tmp_path / "ckpt" / "last.pt").is_file()


def test_checkpoint_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="save_top_k=3 keeps files"):
        ModelCheckpoint(None, save_top_k=3)
    with pytest.raises(ValueError, match="mode"):
        ModelCheckpoint(tmp_path, mode="maximum")
    with pytest.raises(ValueError, match="differ"):
        Trainer(Classifier(), checkpoint_dir=tmp_path / "a", callbacks=[ModelCheckpoint(tmp_path / "b")])
    with pytest.raises(KeyError, match="val_f1"):
        fit([ModelCheckpoint(tmp_path, monitor="val_f1")], epochs=1)
    with pytest.raises(TypeError, match="pass an instance"):
        Trainer(Classifier(), callbacks=[Recorder])


def test_save_last_false_writes_no_training_state(tmp_path):
    fit([ModelCheckpoint(tmp_path, save_last=False)], epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


# ------------------------------------------------------------- early stopping
def test_early_stopping_thresholds_and_non_finite_values():
    reached = EarlyStopping(patience=100, path=None, stopping_threshold=0.5)
    for value in (0.9, 0.7, 0.45):
        reached(value)
    assert reached.early_stop and "stopping threshold" in reached.stop_reason

    diverged = EarlyStopping(patience=100, path=None, divergence_threshold=10.0)
    diverged(1.0)
    assert not diverged.early_stop
    diverged(12.0)
    assert diverged.early_stop and "divergence threshold" in diverged.stop_reason

    nan = EarlyStopping(patience=100, path=None)
    nan(1.0)
    nan(math.nan)
    assert nan.early_stop and "not finite" in nan.stop_reason
    tolerant = EarlyStopping(patience=100, path=None, check_finite=False)
    tolerant(math.nan)
    assert not tolerant.early_stop

    maximise = EarlyStopping(patience=100, path=None, mode="max", stopping_threshold=0.9)
    maximise(0.5)
    assert not maximise.early_stop
    maximise(0.95)
    assert maximise.early_stop


def test_early_stopping_as_a_callback_stops_on_a_metric_in_max_mode():
    stopper = EarlyStopping(monitor="val_accuracy", mode="max", patience=100, stopping_threshold=0.6, path=None)
    trainer, stopped = fit([stopper], epochs=30, lr=0.2, use_earlystop=False)
    accuracies = [row["val_accuracy"] for row in trainer.history]
    assert stopped and accuracies[-1] >= 0.6 and all(a < 0.6 for a in accuracies[:-1])
    assert trainer.stop_reason.startswith("val_accuracy: ") and "stopping threshold" in trainer.stop_reason


def test_early_stopping_in_callbacks_needs_a_monitor():
    with pytest.raises(ValueError, match="without monitor="):
        Trainer(Classifier(), callbacks=[EarlyStopping(path=None)])


def test_callback_list_checks_its_items_and_names_repeated_states():
    with pytest.raises(TypeError, match="none of the hooks"):
        CallbackList([object()])
    a, b = Recorder(), Recorder()
    a.seen, b.seen = 1, 2
    assert CallbackList([a, b]).state_dict() == {"Recorder": {"seen": 1}, "Recorder#2": {"seen": 2}}
    assert CallbackList([a]).wants("on_train_batch_end") and not CallbackList([WeightLog()]).wants("on_train_batch_end")


class Writer:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, step))


def test_a_run_resumes_without_the_writer_it_had(tmp_path):
    torch.manual_seed(0)
    loaders = Trainer.make_loaders(_dataset(matrix()), 50, split_rate=0.2, seed=0)
    first = Trainer(Classifier(), progress=False, trace_func=lambda m: None, seed=0, checkpoint_dir=tmp_path)
    first.train_batch(epochs=2, loaders=loaders, writer=Writer())
    again = Trainer(Classifier(), progress=False, trace_func=lambda m: None, seed=0, checkpoint_dir=tmp_path)
    again.train_batch(epochs=3, loaders=loaders, resume_from=tmp_path / "last.pt")
    assert len(again.history) == 3


def test_an_epoch_loop_of_your_own_keeps_the_best_weights_through_check_early_stop(tmp_path):
    from stepgraph import train_loop_formatter

    class OwnLoop(Trainer):
        values = [3.0, 1.0, 2.0]

        @train_loop_formatter
        def fit_values(self, state):
            with torch.no_grad():
                self.model.weight.fill_(float(state.epoch))  # weights that name their epoch
            self.history.append({"epoch": state.epoch})
            return self.check_early_stop({"val_loss": self.values[state.epoch - 1]})

    trainer = OwnLoop(torch.nn.Linear(1, 1, bias=False), progress=False, checkpoint_dir=tmp_path, restore_best=True)
    trainer.fit_values(epochs=3)
    assert trainer.best.best_score == 1.0 and (tmp_path / "best.pt").is_file()
    assert float(trainer.model.weight) == 2.0  # epoch 2, the lowest value, restored


def test_an_early_stopping_callback_starts_afresh_in_each_fit():
    stopper = EarlyStopping(monitor="val_ce_loss", patience=2, path=None, mode="max")  # the loss falls: it stalls
    trainer = Trainer(Classifier(), progress=False, trace_func=lambda m: None, seed=0, callbacks=[stopper])
    loaders = Trainer.make_loaders(_dataset(matrix()), 50, split_rate=0.2, seed=0)
    trainer.train_batch(epochs=10, loaders=loaders)
    first = len(trainer.history)
    assert stopper.early_stop and first < 10
    trainer.train_batch(epochs=10, loaders=loaders)
    assert len(trainer.history) == first  # the same stop, from a fresh counter, not at once
