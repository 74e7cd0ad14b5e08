"""Loggers: where each epoch's losses and metrics go, as callbacks.

- :class:`ScalarWriter`: anything with ``add_scalar(tag, value, step)`` (the
  ``writer=`` argument of every training call, as STEP's);
- :class:`CSVLogger`: a CSV file, with nothing to install;
- :class:`TensorBoardLogger`: TensorBoard event files (the ``tensorboard`` extra).

Each writes on rank 0 only in a data-parallel run.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from stepgraph._validation import check_choice
from stepgraph.train.callbacks import Callback
from stepgraph.train.checkpointing import atomic_write

__all__ = ["ScalarWriter", "CSVLogger", "TensorBoardLogger"]


class ScalarWriter(Callback):
    """Send the losses to anything with ``add_scalar(tag, value, step)`` (TensorBoard's
    ``SummaryWriter``, or your own object): the ``writer=`` argument of a training call.

    Parameters
    ----------
    writer
        The object receiving the scalars.
    every
        ``"epoch"``: each epoch's train and validation means against the epoch
        number; ``"step"``: every training step's losses against the global
        step (STEP's writer), and the validation values at each epoch's end
        against the same step.
    """

    def __init__(self, writer, every: str = "epoch"):
        if not callable(getattr(writer, "add_scalar", None)):
            raise TypeError(f"writer must have an add_scalar(tag, value, step) method, got {type(writer).__name__}")
        self.writer, self.every = writer, check_choice(every, "every", ("epoch", "step"))

    def on_train_batch_end(self, trainer, losses, step):
        if self.every == "step" and trainer.strategy.is_main:
            for key, value in losses.items():
                if isinstance(value, torch.Tensor):
                    self.writer.add_scalar(key, float(value), trainer.loop_state.step)

    def on_epoch_end(self, trainer, metrics):
        if not trainer.strategy.is_main:
            return
        row = trainer.history[-1]
        if self.every == "epoch":
            logged = {k: v for k, v in row.items() if k not in ("epoch", "lr")}
            at = trainer.loop_state.epoch
        else:
            logged = {k: v for k, v in row.items() if k.startswith("val_")}
            at = trainer.loop_state.step
        for key, value in logged.items():
            self.writer.add_scalar(key, value, at)


class CSVLogger(Callback):
    """Write every epoch's history row to a CSV file (rewritten atomically at each epoch).

    A column that appears later (a metric logged from some epoch on) is added,
    earlier rows leaving it empty. Its rows are part of the callback's state, so
    a resumed run continues the same file.

    Parameters
    ----------
    path
        The CSV file (its folder is created).
    """

    def __init__(self, path: str | Path):
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a file path (str or Path), got path={path!r}")
        self.path = Path(path)
        self.rows: list[dict[str, float]] = []

    def on_fit_start(self, trainer):
        if not trainer.loop_state.first_epoch > 1:  # a new run, not a resumed one
            self.rows = []

    def on_epoch_end(self, trainer, metrics):
        self.rows.append(dict(trainer.history[-1]))
        if not trainer.strategy.is_main:
            return
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        text = io.StringIO()
        table = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        table.writeheader()
        table.writerows(self.rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, lambda tmp: tmp.write_text(text.getvalue()), what="CSV log")

    def state_dict(self):
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state):
        self.rows = [dict(r) for r in state.get("rows", [])]


class TensorBoardLogger(ScalarWriter):
    """Every epoch's losses and metrics in TensorBoard (needs ``tensorboard``: the ``tensorboard`` extra).

    The event file is opened when a fit starts, on rank 0 only.

    Parameters
    ----------
    log_dir
        The event files' folder.
    every
        As :class:`ScalarWriter`.

    Raises
    ------
    ImportError
        When ``tensorboard`` is not installed, saying how to install it.
    """

    def __init__(self, log_dir: str | Path, every: str = "epoch"):
        try:
            import tensorboard  # type: ignore[import-not-found]  # noqa: F401  (SummaryWriter needs it)
        except ImportError as err:
            raise ImportError(
                "TensorBoardLogger needs the tensorboard package: pip install 'stepgraph[tensorboard]' "
                "(or use CSVLogger, which needs nothing)"
            ) from err
        if not isinstance(log_dir, (str, Path)):
            raise TypeError(f"log_dir must be a folder path (str or Path), got log_dir={log_dir!r}")
        self.log_dir = Path(log_dir)
        self.writer, self.every = None, check_choice(every, "every", ("epoch", "step"))

    def on_fit_start(self, trainer):
        if self.writer is None and trainer.strategy.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.log_dir))

    def on_fit_end(self, trainer):
        if self.writer is not None:
            self.writer.flush()
