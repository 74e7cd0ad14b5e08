"""Loggers: the history in a CSV file that a resumed run continues, and the scalars that
anything with ``add_scalar`` receives, per epoch or per optimizer step."""

import csv

import pytest

from stepgraph.train.loggers import CSVLogger, ScalarWriter
from tests.train.test_callbacks import Recorder, fit


def test_csv_logger_writes_the_history_and_continues_on_resume(tmp_path):
    log = tmp_path / "metrics.csv"
    straight, _ = fit([CSVLogger(log)], epochs=4, checkpoint_dir=tmp_path / "a", use_earlystop=False)
    with open(log) as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["val_ce_loss"]) for r in rows] == [row["val_ce_loss"] for row in straight.history]

    resumed_log = tmp_path / "resumed.csv"
    fit([CSVLogger(resumed_log)], epochs=2, checkpoint_dir=tmp_path / "b", use_earlystop=False)
    fit(
        [CSVLogger(resumed_log)],
        epochs=4,
        checkpoint_dir=tmp_path / "b",
        resume_from=tmp_path / "b" / "last.pt",
        use_earlystop=False,
    )
    assert resumed_log.read_text() == log.read_text()


def test_scalar_writer_takes_anything_with_add_scalar():
    with pytest.raises(TypeError, match="add_scalar"):
        ScalarWriter(object())


class Scalars:
    """Records every ``add_scalar(tag, value, step)`` call."""

    def __init__(self):
        self.calls = []

    def add_scalar(self, tag, value, step):
        self.calls.append((tag, value, step))


def test_scalar_writer_sends_each_steps_tensor_losses_or_each_epochs_history():
    steps, batches = Scalars(), Recorder()
    trainer, _ = fit([batches, ScalarWriter(steps, "step")], epochs=3, use_earlystop=False)
    assert trainer.loop_state.step == len(batches.batches) == 3 * 5  # 240 training rows in batches of 50
    # one scalar per tensor loss per optimizer step (the accuracy, a float, is only logged), at the global step
    per_step = [call for call in steps.calls if not call[0].startswith("val_")]
    expected = [("ce_loss", losses["ce_loss"], s) for s, (_, _, losses) in enumerate(batches.batches, start=1)]
    assert per_step == expected
    # the validation values at each epoch's end, against that epoch's last global step
    last_step = {epoch: s for s, (epoch, _, _) in enumerate(batches.batches, start=1)}
    per_epoch = [call for call in steps.calls if call[0].startswith("val_")]
    assert per_epoch == [
        (k, v, last_step[row["epoch"]]) for row in trainer.history for k, v in row.items() if k.startswith("val_")
    ]

    epochs = Scalars()
    trainer, _ = fit([ScalarWriter(epochs, "epoch")], epochs=3, use_earlystop=False)
    assert len(trainer.history) == 3 and all({"epoch", "lr"} <= set(row) for row in trainer.history)
    # one scalar per history key but the epoch and the learning rate, per epoch, at the epoch number
    assert epochs.calls == [
        (k, v, row["epoch"]) for row in trainer.history for k, v in row.items() if k not in ("epoch", "lr")
    ]
    assert {tag for tag, _, _ in epochs.calls} == {"ce_loss", "accuracy", "val_ce_loss", "val_accuracy"}
    assert [step for _, _, step in epochs.calls] == [e for e in (1, 2, 3) for _ in range(4)]
