"""Checkpoints hold no code.

A malicious checkpoint (a pickle whose ``__reduce__`` runs code while it is
loaded) must run nothing on any entry point: ``load_checkpoint``, the CLI's
``--init-weights`` and ``--resume``, ``resume_from=`` of the Trainer, the copy
of the best weights a resumed run makes, and ``restore_best_weights``. The
Trainer is used through its public API only. Every file stepgraph writes loads
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from stepgraph import BaseDataset, Trainer
from stepgraph.cli import main
from stepgraph.synthetic import synthetic_tissue
from stepgraph.train.checkpointing import atomic_save, load_checkpoint, trusted_checkpoints
from stepgraph.train.rng import get_rng_state, set_rng_state

from tests.conftest import TinyAutoencoder, make_adata


class Payload:
    """Unpickling this object runs ``exec``: here it creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('the payload ran')",)


def poison(path, payload: dict, marker) -> None:
    """Write ``payload`` plus a code-running object to ``path`` (as an attacker would)."""
    torch.save({**payload, "__extra__": Payload(marker)}, path)


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PAYLOAD_RAN"


def assert_refused(err, marker):
    message = str(err.value)
    assert "refused checkpoint" in message and "could run code" in message, message
    assert not marker.exists(), "the payload ran"


def train_tiny(checkpoint_dir, epochs=2, resume_from=None):
    dataset = BaseDataset(make_adata(n_obs=200))
    trainer = Trainer(TinyAutoencoder(dataset.n_vars), progress=False, checkpoint_dir=checkpoint_dir,
                      trace_func=lambda message: None)
    trainer.train_batch(epochs=epochs, loaders=Trainer.make_loaders(dataset, 50, seed=0),
                        resume_from=resume_from)
    return trainer


# ------------------------------------------------------------ load_checkpoint
def test_the_payload_is_real_when_trusted(tmp_path, marker):
    """The control: loading the file in full does run the payload."""
    path = tmp_path / "evil.pt"
    poison(path, {"weight": torch.ones(2)}, marker)
    loaded = load_checkpoint(path, trusted=True)
    assert marker.read_text() == "the payload ran"
    assert torch.equal(loaded["weight"], torch.ones(2))


def test_load_checkpoint_refuses_code(tmp_path, marker):
    path = tmp_path / "evil.pt"
    poison(path, {"weight": torch.ones(2)}, marker)
    with pytest.raises(ValueError) as err:
        load_checkpoint(path)
    assert_refused(err, marker)
    message = str(err.value)
    assert "(such as exec)" in message and "trusted=True" in message and "--trust-checkpoint" in message


def test_trusted_checkpoints_block_opts_in_and_ends(tmp_path, marker):
    path = tmp_path / "evil.pt"
    poison(path, {}, marker)
    with trusted_checkpoints(False):
        with pytest.raises(ValueError, match="could run code"):
            load_checkpoint(path)
    assert not marker.exists()
    with trusted_checkpoints():
        load_checkpoint(path)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError, match="could run code"):  # trust ends with the block
        load_checkpoint(path)
    assert not marker.exists()


def test_corrupt_file_keeps_its_own_error(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_checkpoint(path)


# --------------------------------------------------------------- the Trainer
def test_resume_from_a_malicious_file(tmp_path, marker):
    train_tiny(tmp_path / "run")
    evil = tmp_path / "last_evil.pt"
    poison(evil, load_checkpoint(tmp_path / "run" / "last.pt"), marker)
    with pytest.raises(ValueError) as err:
        train_tiny(tmp_path / "other", epochs=4, resume_from=evil)
    assert_refused(err, marker)


def test_resume_that_copies_a_malicious_best_checkpoint(tmp_path, marker):
    """A resumed run in a new folder copies the best weights of the old one (the
    early-stopping state points at them): that file is loaded safely too."""
    first = train_tiny(tmp_path / "run")
    assert (tmp_path / "run" / "best.pt").is_file()
    poison(tmp_path / "run" / "best.pt", dict(first.model.state_dict()), marker)
    with pytest.raises(ValueError) as err:
        train_tiny(tmp_path / "other", epochs=4, resume_from=tmp_path / "run" / "last.pt")
    assert_refused(err, marker)


def test_restore_best_weights_from_a_malicious_file(tmp_path, marker):
    trainer = train_tiny(tmp_path / "run")
    poison(tmp_path / "run" / "best.pt", dict(trainer.model.state_dict()), marker)
    with pytest.raises(ValueError) as err:
        trainer.restore_best_weights()
    assert_refused(err, marker)


# ------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def tissue_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("security") / "tissue.h5ad"
    synthetic_tissue(n_cells=200, n_genes=20, seed=4).write_h5ad(path)
    return path


CLI = ["--epochs", "1", "--batch-size", "64", "--fanout", "3", "--quiet"]


def cli_refuses(argv, marker, capsys):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could run code" in err and "--trust-checkpoint" in err, err
    assert not marker.exists(), "the payload ran"


def test_cli_init_weights_and_resume_refuse_code(tissue_file, tmp_path, marker, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tissue_file), "--out", str(run), *CLI]) == 0
    last, best = run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"
    # every file stepgraph writes holds tensors and plain types only
    for path in (last, best):
        torch.load(path, weights_only=True)
    evil_weights = tmp_path / "weights.pt"
    poison(evil_weights, load_checkpoint(best), marker)
    cli_refuses(["train", tissue_file, "--out", tmp_path / "second", "--init-weights", evil_weights, *CLI],
                marker, capsys)
    poison(last, load_checkpoint(last), marker)
    cli_refuses(["train", tissue_file, "--out", run, "--resume", *CLI[2:], "--epochs", "2"], marker, capsys)
    # the flag opts in: the payload runs (that is what trusting a file means), then
    # its extra key is refused as not a weight of the model
    assert main(["train", str(tissue_file), "--out", str(tmp_path / "third"), "--init-weights",
                 str(evil_weights), "--trust-checkpoint", *CLI]) == 2
    assert marker.exists()
    assert "Unexpected key(s)" in capsys.readouterr().err


# --------------------------------------------------- what stepgraph writes
def test_interrupted_and_last_states_load_weights_only(tmp_path):
    dataset = BaseDataset(make_adata(n_obs=200))
    trainer = Trainer(TinyAutoencoder(dataset.n_vars), progress=False, checkpoint_dir=tmp_path,
                      trace_func=lambda message: None)
    calls = {"n": 0}

    def interrupting(batch):
        calls["n"] += trainer.model.training
        if calls["n"] == 6:  # during epoch 2
            raise KeyboardInterrupt
        return trainer.handle_input_tuple(batch)

    trainer.train_batch(epochs=3, loaders=Trainer.make_loaders(dataset, 50, seed=0), call_func=interrupting)
    for name in ("last.pt", "interrupted.pt", "best.pt"):
        torch.load(tmp_path / name, weights_only=True)


def test_rng_state_round_trips_bitwise_through_a_weights_only_file(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    atomic_save(get_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt"))  # weights_only=True
    got = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_an_older_rng_state_loads_only_when_trusted(tmp_path):
    """Older stepgraph versions stored NumPy's state as an array: refused by default, and
    restored bitwise when the file is trusted."""
    np.random.seed(5)
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(old, tmp_path / "old.pt")
    expected = np.random.standard_normal(4)
    with pytest.raises(ValueError, match=r"could run code.*trusted=True"):
        load_checkpoint(tmp_path / "old.pt")
    np.random.seed(0)
    set_rng_state(load_checkpoint(tmp_path / "old.pt", trusted=True))
    np.testing.assert_array_equal(np.random.standard_normal(4), expected)
