"""Both figures colour a domain the same way: by the true domain it overlaps most."""

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from stepgraph.pipeline.figures import domain_palette, save_embedding_figure  # noqa: E402


def test_a_predicted_domain_takes_the_colour_of_the_true_domain_it_overlaps_most():
    truth = pd.Categorical(["a"] * 5 + ["b"] * 5 + ["c"] * 5)
    # predicted "x" is mostly c, "y" mostly a, "z" mostly b, "w" is left over
    predicted = pd.Categorical(["y"] * 4 + ["x"] + ["z"] * 5 + ["x"] * 4 + ["w"])
    palette, truth_colours, colours = domain_palette(predicted, truth)
    names = list(predicted.categories)
    assert truth_colours == {0: 0, 1: 1, 2: 2}
    assert colours[names.index("x")] == 2 and colours[names.index("y")] == 0 and colours[names.index("z")] == 1
    assert colours[names.index("w")] >= 3  # a colour of its own, not one of the true domains'
    assert len(palette) >= 7
    _, _, plain = domain_palette(predicted)
    assert plain == {i: i for i in range(4)}


def test_the_embedding_figure_is_written_with_the_truth(tmp_path):
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(60, 4))
    truth = np.repeat(["a", "b", "c"], 20)
    assert save_embedding_figure(
        embedding, np.repeat([0, 1], 30), ["s0", "s1"], truth[::-1], tmp_path / "e.png", truth=truth
    )
    assert (tmp_path / "e.png").stat().st_size > 0
