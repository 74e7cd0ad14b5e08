"""The epoch core runs on any object with the EpochHooks members, not only a Trainer."""

import pytest
import torch

from stepgraph.train.callbacks import Callback, CallbackList
from stepgraph.train.early_stopping import EarlyStoppingGroup
from stepgraph.train.epoch import EpochHooks, run_epoch
from stepgraph.train.meter import LossMeter
from stepgraph.train.state import LoopState
from stepgraph.train.strategies import SingleDeviceStrategy


class MinimalHooks:
    """Plain SGD on a one-parameter model, with none of the Trainer's machinery."""

    def __init__(self, callbacks=()):
        self.model = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.constant_(self.model.weight, 2.0)
        self.optimizer = None
        self.strategy = SingleDeviceStrategy("cpu")
        self.stopping = EarlyStoppingGroup("all")
        self.history = []
        self.progress = False
        self.stop_requested = False
        self.steps = 0
        self._callbacks = CallbackList(callbacks)

    def mode_switch_to_train(self):
        self.model.train()

    def init_optimizer(self):
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()

    def update_model_params(self, loss_dict, epoch, step=None):
        self.optimizer.zero_grad()
        loss_dict["mse"].backward()
        self.optimizer.step()
        self.steps += 1
        return loss_dict["mse"].detach()

    def cum_loss(self, loss_dict, total_loss_dict, *, weight=1.0):
        total_loss_dict.update(loss_dict, weight)

    def check_early_stop(self, total_loss_dict):
        return False

    def format_loss_dict(self, loss_dict, state, valid_loss_dict=None, endepoch=False):
        return ""

    def fit_callbacks(self, writer=None, writer_every="epoch"):
        return self._callbacks

    def request_stop(self, reason):
        self.stop_requested = True


class Feed:
    """Two batches of 2 and 1 rows: y = 0, so the loss is (w x)^2."""

    batches = [torch.tensor([[1.0], [1.0]]), torch.tensor([[2.0]])]

    def __init__(self, hooks):
        self.hooks = hooks

    def train_batches(self, epoch):
        return self.batches

    def loss(self, batch, step):
        return {"mse": (self.hooks.model(batch) ** 2).mean()}, len(batch)

    def validate(self, epoch):
        with torch.no_grad():
            return {"val_mse": float((self.hooks.model(torch.tensor([[1.0]])) ** 2).mean())}


class Counter(Callback):
    def __init__(self):
        self.batches, self.epochs = 0, []

    def on_train_batch_end(self, trainer, losses, step):
        self.batches += 1

    def on_epoch_end(self, trainer, metrics):
        self.epochs.append(metrics)


def test_a_non_trainer_object_meets_the_protocol_and_runs_an_epoch():
    counter = Counter()
    hooks = MinimalHooks([counter])
    assert isinstance(hooks, EpochHooks)
    state = LoopState(epoch=1, epochs=1)
    stop = run_epoch(hooks, state, Feed(hooks), LossMeter(), {"mse"})
    assert stop is False and hooks.steps == 2 and counter.batches == 2
    # step 1: w=2, batch [1,1]: loss 4, grad 2*w*1 = 4 -> w = 1.6; step 2: x=2: loss (3.2)^2, weight 1
    expected_train = (2 * 4.0 + 1 * 3.2**2) / 3
    w_after = 1.6 - 0.1 * (2 * 1.6 * 4.0)
    row = hooks.history[0]
    assert row["mse"] == pytest.approx(expected_train) and row["val_mse"] == pytest.approx(w_after**2)
    assert row["lr"] == pytest.approx(0.1) and row["epoch"] == 1
    assert counter.epochs[0]["val_total"] == pytest.approx(w_after**2)


def test_a_stop_request_ends_the_epoch_with_stop():
    hooks = MinimalHooks()
    hooks.stop_requested = True
    assert run_epoch(hooks, LoopState(epoch=1, epochs=3), Feed(hooks), LossMeter(), {"mse"}) is True


def test_an_epoch_without_a_batch_is_an_error():
    hooks = MinimalHooks()
    feed = Feed(hooks)
    feed.batches = []
    with pytest.raises(ValueError, match="no training batch"):
        run_epoch(hooks, LoopState(epoch=4, epochs=5), feed, LossMeter(), {"mse"})
