"""Seeding and capturing the random number generators: the same seed gives the same draws, and a
captured state, restored (also after a ``weights_only`` load), gives the draws that followed it."""

import random

import numpy as np
import pytest
import torch

from stepgraph._validation import ArgumentTypeError
from stepgraph.train.rng import get_rng_state, seed_everything, set_rng_state


def draws():
    """A few draws from each global generator (NumPy's Gaussian uses its cached value)."""
    return (
        [random.random() for _ in range(3)],
        random.getrandbits(64),
        np.random.standard_normal(3).tolist(),
        np.random.randint(0, 1000, 4).tolist(),
        torch.rand(4).tolist(),
        torch.randint(0, 1000, (4,)).tolist(),
    )


def test_the_same_seed_gives_the_same_draws():
    seed_everything(11)
    first = draws()
    seed_everything(11)
    assert draws() == first
    seed_everything(12)
    assert draws() != first
    seed_everything(2**40 + 11)  # beyond NumPy's 32-bit seeds: still accepted
    with pytest.raises(ArgumentTypeError, match="seed"):
        seed_everything(1.5)


def test_a_restored_state_gives_the_draws_that_followed_its_capture():
    seed_everything(3)
    draws()
    np.random.standard_normal()  # an odd number of Gaussians: NumPy now holds a cached one
    state = get_rng_state()
    after_capture = draws()
    draws()  # move every generator on
    set_rng_state(state)
    assert draws() == after_capture


def test_the_state_loads_with_weights_only_and_restores_the_same(tmp_path):
    seed_everything(5)
    np.random.standard_normal()
    torch.save(get_rng_state(), tmp_path / "rng.pt")
    after_capture = draws()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == after_capture


def test_numpys_own_state_tuple_is_accepted():
    seed_everything(9)
    np.random.standard_normal()
    state = get_rng_state()
    state["numpy"] = np.random.get_state()  # as older checkpoints stored it
    after_capture = draws()
    set_rng_state(state)
    assert draws() == after_capture
