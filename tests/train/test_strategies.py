"""The trainer's strategy, through its public face: single-device without a process group, a
teardown at the end of every fit, and a trainer that never branches on the distributed mode."""

import pytest
import torch

from stepgraph import Trainer
from stepgraph.train.strategies import SingleDeviceStrategy, Strategy, make_strategy
from tests.conftest import TinyAutoencoder


def test_without_a_process_group_the_strategy_is_single_device():
    strategy = make_strategy(None, model=torch.nn.Linear(2, 2))
    assert isinstance(strategy, SingleDeviceStrategy) and isinstance(strategy, Strategy)
    assert not strategy.is_distributed and strategy.is_main and strategy.device == torch.device("cpu")
    assert make_strategy(False, device="meta").device == torch.device("meta")  # the device at construction
    ind = torch.arange(10)
    assert strategy.shard(ind, 1, 0, shuffle=True, pad=True) is ind
    assert strategy.gather("x") == ["x"]
    with pytest.raises(TypeError, match="abstract"):
        Strategy("cpu")


class CountingStrategy(SingleDeviceStrategy):
    teardowns = 0

    def teardown(self):
        CountingStrategy.teardowns += 1


def test_every_fit_ends_with_the_strategys_teardown(adata):
    trainer = Trainer(TinyAutoencoder(adata.n_vars), progress=False, trace_func=lambda m: None)
    trainer.strategy = CountingStrategy(trainer.device)
    X = torch.from_numpy(adata.X.toarray())
    trainer.train(epochs=2, X=X)
    assert CountingStrategy.teardowns == 1
    with pytest.raises(ValueError, match="overlap"):  # a fit that fails still tears down
        trainer.train(epochs=2, X=X, train_ind=[0, 1], valid_ind=[1, 2])
    assert CountingStrategy.teardowns == 2


def test_trainer_never_branches_on_distributed_mode():
    import inspect

    from stepgraph.train import trainer as trainer_module

    source = inspect.getsource(trainer_module)
    assert "self.distributed" not in source and "is_distributed()" not in source
