"""The trainer's loss meter, through its public face: its state round-trips."""

import pytest
import torch


def test_meter_state_round_trips():
    from stepgraph import LossMeter

    meter = LossMeter()
    meter.update({"a": torch.tensor(2.0)}, weight=2)
    sums, weights = meter.state()
    other = LossMeter()
    other.load_state({k: 2 * float(v) for k, v in sums.items()}, {k: 2 * w for k, w in weights.items()})
    assert other.compute() == meter.compute() == {"a": 2.0}
    with pytest.raises(ValueError, match="same keys"):
        other.load_state({"a": 1.0}, {})
