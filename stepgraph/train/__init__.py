"""The training engine: the :class:`~stepgraph.Trainer` facade and the core it runs.

- :mod:`~stepgraph.train.trainer`: the :class:`~stepgraph.Trainer`, STEP's methods, each a few lines;
- :mod:`~stepgraph.train.feeds`: one object per training path (its loaders and its loss call);
- :mod:`~stepgraph.train.loop`, :mod:`~stepgraph.train.state`, :mod:`~stepgraph.train.epoch`:
  the loop around a per-epoch method, its state, and the epoch every path runs;
- :mod:`~stepgraph.train.early_stopping`, :mod:`~stepgraph.train.checkpointing`,
  :mod:`~stepgraph.train.meter`, :mod:`~stepgraph.train.optim`, :mod:`~stepgraph.train.rng`:
  deciding to stop, the checkpoint files, running means of losses, optimizers, random state;
- :mod:`~stepgraph.train.strategies`: one process or DDP, asked by the trainer, never branched on.
"""
