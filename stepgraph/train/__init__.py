"""The training engine behind :class:`~stepgraph.Trainer`.

- :mod:`~stepgraph.train.trainer`: the Trainer, STEP's API as a thin facade;
- :mod:`~stepgraph.train.feeds`: one feed per way of feeding a model (matrix,
  tensor batches, node sampling, full neighbourhoods, any other graph loader);
- :mod:`~stepgraph.train.layerwise`: inference one layer for every node at a time;
- :mod:`~stepgraph.train.loop`, :mod:`~stepgraph.train.state`,
  :mod:`~stepgraph.train.epoch`: the loop skeleton, its ``LoopState``, and the
  epoch core shared by every feed;
- :mod:`~stepgraph.train.early_stopping`: decides when to stop, and why;
- :mod:`~stepgraph.train.checkpointing`: the one owner of checkpoint files;
- :mod:`~stepgraph.train.strategies` and :mod:`~stepgraph.train.distributed`:
  one process or DDP, and the process-group helpers;
- :mod:`~stepgraph.train.meter`, :mod:`~stepgraph.train.optim`,
  :mod:`~stepgraph.train.rng`: loss means, optimizers, random states.
"""
