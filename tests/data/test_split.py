"""One splitter for every training path: train_valid_split."""

import numpy as np
import pytest
import torch

from stepgraph.data.split import train_valid_split


def test_a_validation_set_alone_is_completed_by_every_other_position():
    train, valid = train_valid_split(6, valid_ind=[4, 1])
    assert valid.tolist() == [4, 1] and train.tolist() == [0, 2, 3, 5]


def test_the_complement_is_taken_out_of_the_pool_when_given():
    train, _ = train_valid_split(10, valid_ind=[3], pool=torch.tensor([1, 3, 5, 7]))
    assert train.tolist() == [1, 5, 7]


def test_masks_and_positions_give_the_same_split():
    mask = np.zeros(5, dtype=bool)
    mask[[0, 2]] = True
    assert train_valid_split(5, mask, None)[0].tolist() == train_valid_split(5, [0, 2])[0].tolist() == [0, 2]


def test_nothing_given_stays_nothing_and_an_unknown_size_takes_positions_as_they_are():
    assert train_valid_split(5) == (None, None)
    train, valid = train_valid_split(None, valid_ind=[7])
    assert train is None and valid.tolist() == [7]


def test_an_overlap_and_a_position_out_of_range_are_refused_by_name():
    with pytest.raises(ValueError, match="disjoint.*1 position"):
        train_valid_split(5, [0, 1], [1, 2])
    with pytest.raises(IndexError, match="valid_ind"):
        train_valid_split(5, None, [9])
