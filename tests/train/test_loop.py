"""The loop skeleton (``train_loop_formatter``), on a Trainer subclass's own per-epoch method: the
looping method's signature, a stop that ends the loop after its epoch, the checked arguments and
the callbacks' fit hooks."""

import inspect

import pytest
import torch

from stepgraph import Trainer
from stepgraph._validation import ArgumentTypeError
from stepgraph.train.callbacks import Callback
from stepgraph.train.loop import train_loop_formatter
from stepgraph.train.state import LoopState


class EpochTrainer(Trainer):
    """A Trainer with one more training method, which records each epoch and stops at ``stop_at``."""

    def __init__(self, **kwargs):
        super().__init__(torch.nn.Linear(2, 1), progress=False, trace_func=lambda m: None, **kwargs)
        self.seen, self.states, self.fail_at = [], [], None

    @train_loop_formatter
    def run(self, state, stop_at=None, *, tag="run"):
        """Record the epoch; stop after epoch ``stop_at``; fail at epoch ``self.fail_at``."""
        self.seen.append((state.epoch, state.epochs, tag))
        self.states.append(state)
        if state.epoch == self.fail_at:
            raise RuntimeError("the epoch failed")
        return state.epoch == stop_at


class Hooks(Callback):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, trainer):
        self.calls.append("fit_start")

    def on_exception(self, trainer, exception):
        self.calls.append(("exception", str(exception)))

    def on_fit_end(self, trainer):
        self.calls.append("fit_end")


class Scalars:
    def add_scalar(self, tag, value, step):
        pass


def test_the_looping_method_takes_epochs_first_and_the_loop_keywords_last():
    params = inspect.signature(EpochTrainer.run).parameters
    assert list(params)[:3] == ["self", "epochs", "stop_at"]  # the epoch's `state` is the loop's, not the caller's
    assert "state" not in params
    assert params["epochs"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert params["epochs"].default is inspect.Parameter.empty
    assert params["stop_at"].default is None
    keyword_only = {n: p.default for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keyword_only == {"tag": "run", "writer": None, "writer_every": "epoch", "resume_from": None}
    bound = inspect.signature(EpochTrainer(use_earlystop=False).run)
    assert list(bound.parameters)[0] == "epochs"
    assert EpochTrainer.run.__name__ == "run" and EpochTrainer.run.__doc__.startswith("Record the epoch")


def test_an_epoch_returning_true_stops_the_loop_after_that_epoch():
    trainer = EpochTrainer(use_earlystop=False)
    assert trainer.run(5, 2, tag="a") is True
    assert trainer.seen == [(1, 5, "a"), (2, 5, "a")]
    assert all(isinstance(s, LoopState) for s in trainer.states) and trainer.loop_state is trainer.states[-1]

    trainer.seen.clear()
    assert trainer.run(epochs=3) is False
    assert trainer.seen == [(1, 3, "run"), (2, 3, "run"), (3, 3, "run")]

    trainer.seen.clear()
    assert trainer.run(1, stop_at=1) is True and trainer.seen == [(1, 1, "run")]


def test_the_writer_and_its_mode_reach_the_epochs_state():
    trainer = EpochTrainer(use_earlystop=False)
    writer = Scalars()
    trainer.run(2, writer=writer, writer_every="step")
    assert [(s.writer, s.writer_every) for s in trainer.states] == [(writer, "step")] * 2


@pytest.mark.parametrize("epochs, error", [(0, ValueError), (-3, ValueError), (1.5, ArgumentTypeError)])
def test_epochs_must_be_an_int_of_at_least_1(epochs, error):
    trainer = EpochTrainer(use_earlystop=False)
    with pytest.raises(error, match="epochs"):
        trainer.run(epochs)
    assert trainer.seen == []


def test_writer_every_must_be_epoch_or_step():
    trainer = EpochTrainer(use_earlystop=False)
    with pytest.raises(ValueError, match="writer_every"):
        trainer.run(2, writer_every="batch")
    assert trainer.seen == []


def test_the_callbacks_see_the_fit_start_and_end_or_the_exception():
    hooks = Hooks()
    trainer = EpochTrainer(use_earlystop=False, callbacks=[hooks])
    trainer.run(2)
    assert hooks.calls == ["fit_start", "fit_end"]

    hooks.calls.clear()
    trainer.seen.clear()
    trainer.fail_at = 2
    with pytest.raises(RuntimeError, match="the epoch failed"):
        trainer.run(3)
    assert hooks.calls == ["fit_start", ("exception", "the epoch failed")]
    assert [epoch for epoch, _, _ in trainer.seen] == [1, 2]
