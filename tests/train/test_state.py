"""The trainer's loop state, through its public face: read and written like STEP's ``state`` dict."""

import pytest

from stepgraph.train.state import LoopState


def test_loop_state_reads_like_steps_dict():
    state = LoopState(epoch=3, epochs=10, step=7)
    assert state["epoch"] == "3/10" and state["epoch_val"] == state.epoch == 3  # STEP's text, our int
    assert state.get("epochs") == 10 and state.get("missing", 5) == 5
    state["epoch"] = "4/10"  # STEP-style code may write the text back
    assert state.epoch == 4 and state["last_epoch"] is False
    state["mine"] = [1]
    state["step"] = 8
    assert state.step == 8 and state.extra == {"mine": [1]}
    assert "mine" in state and "epoch" in state and "other" not in state
    assert state.setdefault("mine", None) == [1] and state.setdefault("new", 2) == 2
    assert set(state.keys()) >= {"epoch", "epochs", "step", "tbar", "writer", "mine", "new"}
    with pytest.raises(KeyError):
        state["nope"]
