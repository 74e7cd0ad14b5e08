import os

import pytest
import torch

from stepgraph import EarlyStopping
from stepgraph.train.checkpointing import load_checkpoint
from stepgraph.train.early_stopping import EarlyStoppingGroup


def first_stop(values, **kwargs):
    """1-based index of the check at which early_stop turned True (None if never)."""
    es = EarlyStopping(path=None, **kwargs)
    for i, v in enumerate(values, start=1):
        es(v)
        if es.early_stop:
            return i
    return None


@pytest.mark.parametrize(
    "values, kwargs, expected",
    [
        ([1.0, 0.9, 0.95, 0.96, 0.97], {"patience": 3}, 5),
        ([1.0, 0.9, 0.95, 0.96, 0.8, 0.85], {"patience": 3}, None),
        ([1.0, 0.95, 0.92, 0.85, 0.86], {"patience": 3, "delta": 0.1}, None),
        ([1.0, 0.95, 0.92, 0.91], {"patience": 3, "delta": 0.1}, 4),
        ([1.0, 1.0, 1.0], {"patience": 2}, 3),  # equal is not better
        ([0.1, 0.5, 0.4, 0.3], {"patience": 2, "mode": "max"}, 4),
        ([0.1, 0.5, 0.6, 0.55], {"patience": 2, "mode": "max"}, None),
        ([0.1, 0.15, 0.18], {"patience": 2, "mode": "max", "delta": 0.1}, 3),
    ],
)
def test_stops_at_the_right_check(values, kwargs, expected):
    assert first_stop(values, **kwargs) == expected


def test_documented_defaults():
    es = EarlyStopping()
    assert (es.patience, es.verbose, es.delta, es.path, es.trace_func, es.mode) == (
        7,
        False,
        0,
        "checkpoint.pt",
        print,
        "min",
    )


def test_writes_best_weights_atomically(tmp_path):
    path = tmp_path / "best.pt"
    model = torch.nn.Linear(3, 1)
    es = EarlyStopping(patience=5, path=path)
    es(1.0, model)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    es(2.0, model)  # worse: the file must still hold the first weights
    on_disk = load_checkpoint(path)
    assert torch.equal(on_disk["weight"], saved["weight"])
    es(0.5, model)  # better: now the new weights
    assert torch.equal(load_checkpoint(path)["weight"], model.weight.detach())
    assert os.listdir(tmp_path) == ["best.pt"]  # no temporary file left behind


def test_state_dict_round_trip_continues_identically():
    values = [1.0, 0.8, 0.9, 0.85, 0.95, 0.99]
    straight = EarlyStopping(patience=3, path=None)
    for v in values:
        straight(v)
    first = EarlyStopping(patience=3, path=None)
    for v in values[:3]:
        first(v)
    resumed = EarlyStopping(patience=3, path=None)
    resumed.load_state_dict(first.state_dict())
    for v in values[3:]:
        resumed(v)
    assert resumed.state_dict() == straight.state_dict()
    assert resumed.early_stop is True


def test_verbose_messages_go_to_trace_func():
    messages = []
    es = EarlyStopping(patience=1, verbose=True, path=None, trace_func=messages.append)
    es(1.0)
    es(2.0)
    assert any("improved" in m for m in messages)
    assert any("counter: 1 out of 1" in m for m in messages)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"patience": 0}, "patience"), ({"delta": -1}, "delta"), ({"mode": "up"}, "mode")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)


def test_an_improvement_revokes_the_stop_signal():
    es = EarlyStopping(patience=2, path=None)
    for v in [1.0, 1.1, 1.2]:
        es(v)
    assert es.early_stop
    es(0.5)
    assert not es.early_stop and es.counter == 0


def test_early_stopping_group_rules_and_reason():
    group = EarlyStoppingGroup(stop_on="all", trace_func=lambda m: None)
    group.default_config.update(patience=2)
    group.lossconfig["b"] = {"patience": 4}
    values, total = group.monitored({"val_a": 1.0, "val_b": 2.0, "val_logged": 9.0, "a": 5.0}, ["a", "b"])
    assert values == {"val_a": 1.0, "val_b": 2.0} and total == 3.0
    stops = [group.step({"val_a": 1.0, "val_b": 2.0}) for _ in range(5)]
    assert group.monitors["val_a"].patience == 2 and group.monitors["val_b"].patience == 4
    assert stops == [False, False, False, False, True]  # b stalls after 4 checks, a after 2
    assert group.stop_code == "all_stalled" and "val_a" in group.stop_reason and "val_b" in group.stop_reason

    any_group = EarlyStoppingGroup(stop_on="any", trace_func=lambda m: None)
    any_group.default_config.update(patience=1)
    any_group.step({"val_a": 1.0, "val_b": 1.0})
    assert any_group.step({"val_a": 0.5, "val_b": 1.0})
    assert any_group.stop_code == "any_stalled" and "val_a" not in any_group.stop_reason

    total_group = EarlyStoppingGroup(stop_on="total", trace_func=lambda m: None)
    values, total = total_group.monitored({"val_a": 1.0, "val_b": 0.5})
    assert values == {"val_total": 1.5}
    restored = EarlyStoppingGroup(stop_on="all")
    restored.load_state_dict(group.state_dict())
    assert restored.stop_reason == group.stop_reason
    assert {k: m.counter for k, m in restored.monitors.items()} == {k: m.counter for k, m in group.monitors.items()}
