"""Progress of long work: a bar on a terminal, plain lines in a log."""

import io
import pathlib
import subprocess
import sys
import textwrap

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


def test_training_counts_postfix_and_unknown_totals_in_plain_lines():
    log = io.StringIO()
    with Progress(None, "Epoch 2/5 steps", "batches", interval=0, stream=log, final_line=False) as steps:
        steps.set_postfix("recon_loss=0.5000")
        steps.update()
    with Progress(5, "Epoch 1/5", "epochs", stream=log, initial=1, interval=3600) as epochs:
        epochs.set_description("Epoch 5/5")
        epochs.set_postfix("recon_loss=0.2500")
        epochs.update(4)
    assert log.getvalue().splitlines() == [
        "Epoch 2/5 steps: 1 batches, 0 s, recon_loss=0.5000",  # no total: a count, no share
        "Epoch 5/5: 5/5 epochs (100%), 0 s, recon_loss=0.2500",  # the step counter wrote no last line
    ]


TRAINING = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from stepgraph import BaseDataset, Trainer
    from tests.conftest import TinyAutoencoder, make_adata
    dataset = BaseDataset(make_adata(n_obs=300))
    trainer = Trainer(TinyAutoencoder(dataset.n_vars), trace_func=print)  # progress on, the default
    trainer.train_batch(epochs=3, loaders=Trainer.make_loaders(dataset, 20))
    print("done")
""")


def test_training_into_a_log_file_writes_lines_without_carriage_returns(tmp_path):
    root = str(pathlib.Path(__file__).resolve().parents[1])
    log = tmp_path / "train.log"
    with open(log, "w") as out:  # stdout and stderr into a file, as `make demo > log 2>&1`
        subprocess.run(
            [sys.executable, "-c", TRAINING.format(root=root)],
            stdout=out,
            stderr=out,
            check=True,
            timeout=120,
            cwd=tmp_path,
        )
    text = log.read_text()
    assert "\r" not in text and "\x1b[" not in text, text[:500]
    assert "Epoch 3/3: 3/3 epochs (100%)" in text and "recon_loss=" in text and text.rstrip().endswith("done")
    assert list(tmp_path.iterdir()) == [log]  # and no checkpoint file either
