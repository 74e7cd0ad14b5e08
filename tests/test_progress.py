"""Progress of long work: a bar on a terminal, plain lines in a log."""

import io

import numpy as np

from stepgraph.graph import spatial_graph
from stepgraph.progress import Progress, TrackedLoader, track

from .conftest import make_adata


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_plain_lines_not_carriage_returns():
    log = io.StringIO()
    assert list(track(range(5), 5, "embedding", "batches", interval=0, stream=log)) == list(range(5))
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[-1].startswith("embedding: 5/5 batches (100%)")
    assert len(lines) == 6  # one per update (interval 0), one at the end


def test_lines_are_rate_limited_and_disabled_progress_is_silent():
    log = io.StringIO()
    with Progress(1000, "graph", "cells", interval=3600, stream=log) as progress:
        for _ in range(1000):
            progress.update()
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[0]]  # the final line only
    assert "1,000/1,000 cells" in log.getvalue()
    silent = io.StringIO()
    list(track(range(3), 3, "x", enabled=False, stream=silent))
    assert silent.getvalue() == ""


def test_a_terminal_gets_a_bar():
    term = FakeTerminal()
    list(track(range(3), 3, "embedding", stream=term))
    assert "embedding" in term.getvalue() and "\r" in term.getvalue()


def test_graph_building_reports_progress(capsys):
    adata = make_adata()
    spatial_graph(adata, batch_key="section", progress=True)
    err = capsys.readouterr().err  # pytest's capture is not a terminal: plain lines
    assert "graph: 400/400 cells (100%)" in err
    assert adata.obsp["spatial_connectivities"].shape == (400, 400)
    loader = TrackedLoader([np.arange(3), np.arange(2)], "embedding", enabled=False)
    assert len(loader) == 2 and [len(b) for b in loader] == [3, 2]
