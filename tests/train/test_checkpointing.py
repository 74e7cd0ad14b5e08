"""Checkpoint files: one owner, atomic writes, safe loads, resume, and no file unasked.

Every checkpoint file is written by :mod:`stepgraph.train.checkpointing` through
``atomic_save``: a failed or killed write leaves the previous file whole. A
malicious checkpoint (a pickle whose ``__reduce__`` runs code while it is
loaded) must run nothing on any entry point: ``load_checkpoint``, the CLI's
``--init-weights`` and ``--resume``, ``resume_from=`` of the Trainer, the copy
of the best weights a resumed run makes, and ``restore_best_weights``. A
Trainer without a ``checkpoint_dir`` writes no file. The Trainer is used
through its public API only.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest
import torch

from stepgraph import BaseDataset, EarlyStopping, Trainer
from stepgraph.cli import main
from stepgraph.synthetic import synthetic_tissue
from stepgraph.train.checkpointing import (
    BEST_CHECKPOINT,
    INTERRUPTED_CHECKPOINT,
    LAST_CHECKPOINT,
    BestWeights,
    atomic_save,
    load_checkpoint,
    trusted_checkpoints,
)
from stepgraph.train.rng import get_rng_state, set_rng_state
from tests.conftest import TinyAutoencoder, disk_full_save, make_adata
from tests.train.conftest import PATHS, run_path

STEPGRAPH = pathlib.Path(__file__).resolve().parents[2] / "stepgraph"


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
    trainer = Trainer(
        TinyAutoencoder(dataset.n_vars), progress=False, checkpoint_dir=checkpoint_dir, trace_func=lambda message: None
    )
    trainer.train_batch(epochs=epochs, loaders=Trainer.make_loaders(dataset, 50, seed=0), resume_from=resume_from)
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


def test_corrupt_or_missing_file_keeps_its_own_error(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


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
    cli_refuses(
        ["train", tissue_file, "--out", tmp_path / "second", "--init-weights", evil_weights, *CLI], marker, capsys
    )
    poison(last, load_checkpoint(last), marker)
    cli_refuses(["train", tissue_file, "--out", run, "--resume", *CLI[2:], "--epochs", "2"], marker, capsys)
    # the flag opts in: the payload runs (that is what trusting a file means), then
    # its extra key is refused as not a weight of the model
    assert (
        main(
            [
                "train",
                str(tissue_file),
                "--out",
                str(tmp_path / "third"),
                "--init-weights",
                str(evil_weights),
                "--trust-checkpoint",
                *CLI,
            ]
        )
        == 2
    )
    assert marker.exists()
    assert "Unexpected key(s)" in capsys.readouterr().err


# --------------------------------------------------- what stepgraph writes
def test_interrupted_and_last_states_load_weights_only(tmp_path):
    dataset = BaseDataset(make_adata(n_obs=200))
    trainer = Trainer(
        TinyAutoencoder(dataset.n_vars), progress=False, checkpoint_dir=tmp_path, trace_func=lambda message: None
    )
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


# ----------------------------------------------------------- atomic writes
def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("failing", ["save", "fsync"])
def test_atomic_save_that_fails_keeps_the_previous_file(failing, tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    atomic_save({"w": torch.arange(3)}, path)
    before = digest(path)
    if failing == "save":
        monkeypatch.setattr(torch, "save", disk_full_save())
    else:

        def fsync(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match=r"could not write checkpoint .*state\.pt.*disk is full.*left intact") as info:
        atomic_save({"w": torch.arange(1000)}, path)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert digest(path) == before and torch.equal(load_checkpoint(path)["w"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_atomic_save_of_a_new_file_on_a_full_disk_says_nothing_was_written(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", disk_full_save())
    with pytest.raises(OSError, match="disk is full.*no file was written"):
        atomic_save({"w": torch.zeros(2)}, tmp_path / "new.pt")
    assert list(tmp_path.iterdir()) == []


def test_atomic_save_keeps_the_previous_file_when_pickling_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"bad": Unpicklable()}, path)
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(2))
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_one_module_writes_every_checkpoint_file():
    writers = sorted(
        str(path.relative_to(STEPGRAPH))
        for path in STEPGRAPH.rglob("*.py")
        if any(call in path.read_text(encoding="utf-8") for call in ("atomic_save(", "torch.save("))
    )
    assert writers == ["train/checkpointing.py"]
    assert (BEST_CHECKPOINT, LAST_CHECKPOINT, INTERRUPTED_CHECKPOINT) == ("best.pt", "last.pt", "interrupted.pt")


# ------------------------------------------------------------- best weights
def test_best_weights_keeps_the_lowest_value_and_its_weights(tmp_path):
    model = torch.nn.Linear(2, 1)
    best = BestWeights(tmp_path / "best.pt")
    for value, fill in [(2.0, 1.0), (float("nan"), 2.0), (1.0, 3.0), (1.0, 4.0), (1.5, 5.0)]:
        with torch.no_grad():
            model.weight.fill_(fill)
        best.update(value, model)
    assert best.best_score == 1.0
    assert torch.all(load_checkpoint(tmp_path / "best.pt")["weight"] == 3.0)  # first of the ties
    moved = BestWeights(tmp_path / "new" / "best.pt")
    moved.load_state_dict(best.state_dict())  # a resumed run in another folder copies the file
    assert moved.checkpoint_written and torch.all(load_checkpoint(moved.path)["weight"] == 3.0)
    silent = BestWeights(tmp_path / "rank1.pt", write=False)
    silent.update(0.1, model)
    assert silent.best_score == 0.1 and not silent.path.exists() and not silent.has_weights


def test_best_weights_without_a_path_stay_in_memory_and_round_trip(tmp_path):
    model = torch.nn.Linear(2, 1)
    best = BestWeights()
    with torch.no_grad():
        model.weight.fill_(3.0)
    best.update(1.0, model)
    with torch.no_grad():
        model.weight.fill_(9.0)  # the kept copy is not the live tensor
    assert best.has_weights and not best.checkpoint_written
    best.restore(model)
    assert torch.all(model.weight == 3.0)
    into_file = BestWeights(tmp_path / "best.pt")  # the weights travel with the training state
    into_file.load_state_dict(best.state_dict())
    assert into_file.checkpoint_written and torch.all(load_checkpoint(into_file.path)["weight"] == 3.0)
    assert list(tmp_path.iterdir()) == [tmp_path / "best.pt"]


# ------------------------------------------------------- no file unasked
class ScriptedModel(torch.nn.Module):
    """Validation returns scripted values; each validation records the weight it saw."""

    def __init__(self, script):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([5.0]))
        self.script, self.seen = list(script), []

    def loss(self, x, ind=None):
        if self.training:
            return {"loss": (self.w**2).sum()}
        self.seen.append(self.w.detach().clone())
        return {"loss": torch.tensor(self.script.pop(0)) + 0 * self.w.sum()}


def _stepgraph_temp_folders() -> set[str]:
    return {p.name for p in pathlib.Path(tempfile.gettempdir()).glob("stepgraph-*")}


def test_a_trainer_without_checkpoint_dir_writes_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = _stepgraph_temp_folders()
    model = ScriptedModel([3.0, 1.0, 2.0, 4.0, 5.0])
    messages = []
    trainer = Trainer(model, progress=False, trace_func=messages.append)
    trainer.init_optimizer(lr=0.1)
    trainer.defualt_lcfg["patience"] = 3
    X = torch.zeros(4, 1)
    assert trainer.train(epochs=5, X=X, train_ind=[0, 1], valid_ind=[2, 3]) is True
    assert trainer.checkpoint_dir is None and trainer.best.path is None
    assert torch.equal(model.w.detach(), model.seen[1])  # the best (epoch 2) weights, kept in memory
    dataset = BaseDataset(make_adata(n_obs=100))
    quiet = Trainer(TinyAutoencoder(dataset.n_vars), progress=False, trace_func=messages.append)

    def interrupting(batch):
        raise KeyboardInterrupt

    assert quiet.train_batch(epochs=2, loaders=Trainer.make_loaders(dataset, 50), call_func=interrupting) is False
    assert "no training state was saved (no checkpoint_dir)" in messages[-1]
    assert list(tmp_path.iterdir()) == [] and _stepgraph_temp_folders() == before


def test_an_early_stopping_path_the_user_gave_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = ScriptedModel([3.0, 1.0, 2.0])
    trainer = Trainer(model, progress=False, trace_func=lambda m: None, restore_best=False)
    trainer.init_optimizer(lr=0.1)
    trainer.lossconfig["loss"] = {"patience": 5, "path": tmp_path / "mine.pt"}  # STEP's EarlyStopping(path=)
    trainer.train(epochs=3, X=torch.zeros(4, 1), train_ind=[0, 1], valid_ind=[2, 3])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.pt"]
    assert torch.equal(load_checkpoint(tmp_path / "mine.pt")["w"], model.seen[1])
    standalone = EarlyStopping(patience=2, path=tmp_path / "alone.pt")
    standalone(1.0, model)
    assert torch.equal(load_checkpoint(tmp_path / "alone.pt")["w"], model.w.detach())


# ------------------------------------------------------------------- resume
@pytest.mark.parametrize("path", PATHS)
def test_resumed_run_equals_straight_run_bitwise(path, small_tissue, tmp_path):
    straight = run_path(path, small_tissue, 4, tmp_path / "straight")
    first = run_path(path, small_tissue, 2, tmp_path / "split")
    assert len(first.history) == 2
    resumed = run_path(path, small_tissue, 4, tmp_path / "resumed", resume_from=tmp_path / "split" / "last.pt")
    assert resumed.history == straight.history  # every loss, every epoch, exactly
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(a, b)


def test_keyboard_interrupt_saves_a_resumable_state(small_tissue, tmp_path):
    adata, data, dataset = small_tissue
    messages = []
    trainer = Trainer(
        TinyAutoencoder(dataset.n_vars), progress=False, trace_func=messages.append, checkpoint_dir=tmp_path
    )
    loaders = Trainer.make_loaders(dataset, 64)
    calls = {"n": 0}

    def interrupting(batch):
        calls["n"] += trainer.model.training  # count training batches only
        if calls["n"] == 15:  # during epoch 3 (7 train batches per epoch)
            raise KeyboardInterrupt
        return trainer.handle_input_tuple(batch)

    assert trainer.train_batch(epochs=5, loaders=loaders, call_func=interrupting) is False
    assert trainer.interrupted
    assert (tmp_path / "interrupted.pt").is_file()
    assert any("resume_from=" in m and "interrupted.pt" in m for m in messages)
    assert load_checkpoint(tmp_path / "interrupted.pt")["progress"]["epoch"] == 2
    trainer.train_batch(epochs=5, loaders=Trainer.make_loaders(dataset, 64), resume_from=tmp_path / "interrupted.pt")
    assert [h["epoch"] for h in trainer.history] == [1, 2, 3, 4, 5]


def test_an_interrupt_inside_torch_save_still_saves_a_resumable_state(small_tissue, tmp_path, monkeypatch):
    # an interrupt that lands in torch.save's writes makes its zip writer fail on cleanup with a
    # RuntimeError ("unexpected pos"); the loop must still see the interrupt and write interrupted.pt
    import io

    from stepgraph.train import checkpointing

    adata, data, dataset = small_tissue
    trainer = Trainer(
        TinyAutoencoder(dataset.n_vars), progress=False, trace_func=lambda m: None, checkpoint_dir=tmp_path
    )
    saves = {"n": 0}

    class CutShort(io.FileIO):
        def write(self, data):
            if self.tell() > 200:  # part of the way into the second last.pt
                raise KeyboardInterrupt
            return super().write(data)

    def opening(path, mode="r", *args, **kwargs):
        if "w" in mode and ".last.pt." in str(path):
            saves["n"] += 1
            if saves["n"] == 2:
                return CutShort(path, mode)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpointing, "open", opening, raising=False)
    assert trainer.train_batch(epochs=5, loaders=Trainer.make_loaders(dataset, 64)) is False
    monkeypatch.undo()
    assert trainer.interrupted and saves["n"] == 2
    assert load_checkpoint(tmp_path / "last.pt")["progress"]["epoch"] == 1  # the last whole file, intact
    assert load_checkpoint(tmp_path / "interrupted.pt")["progress"]["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {root!r})
    from tests.conftest import TinyAutoencoder, make_adata
    from stepgraph import BaseDataset, Trainer
    ds = BaseDataset(make_adata(n_obs=300))
    model = TinyAutoencoder(ds.n_vars, latent=64)
    trainer = Trainer(model, progress=False, checkpoint_dir={ckpt!r}, trace_func=lambda m: None)
    trainer.train_batch(epochs=100000, loaders=Trainer.make_loaders(ds, 30))
""")


def test_killed_process_always_leaves_a_readable_checkpoint(tmp_path):
    root = str(pathlib.Path(__file__).resolve().parents[2])
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT.format(root=root, ckpt=str(tmp_path / "ckpt")))
    last = tmp_path / "ckpt" / "last.pt"
    rng = random.Random(0)
    epochs_seen = []
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            start_mtime = last.stat().st_mtime_ns if last.exists() else None
            while (not last.exists() or last.stat().st_mtime_ns == start_mtime) and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment, often mid-write
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        state = load_checkpoint(last)  # must never be torn
        assert state["format"] == "stepgraph-training-state"
        epochs_seen.append(state["progress"]["epoch"])
        assert state["progress"]["epoch"] == len(state["trainer"]["history"]) >= 1
    assert len(set(epochs_seen)) >= 1


def test_checkpoint_of_another_model_or_corrupt_file(small_tissue, tmp_path):
    run_path("train", small_tissue, 1, tmp_path / "a")
    adata, data, dataset = small_tissue
    other = Trainer(TinyAutoencoder(dataset.n_vars, latent=7), progress=False)
    X = dataset.features(np.arange(len(dataset)))
    with pytest.raises(ValueError, match="written for another model"):
        other.train(epochs=2, X=X, resume_from=tmp_path / "a" / "last.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        other.train(epochs=2, X=X, resume_from=bad)
    weights_only = tmp_path / "weights.pt"
    torch.save(other.model.state_dict(), weights_only)
    with pytest.raises(ValueError, match="not a stepgraph training state"):
        other.train(epochs=2, X=X, resume_from=weights_only)


def test_resume_into_another_folder_brings_the_best_weights(adata, tmp_path):
    X = torch.from_numpy(adata.X.toarray())
    first = Trainer(
        TinyAutoencoder(adata.n_vars), progress=False, trace_func=lambda m: None, checkpoint_dir=tmp_path / "a"
    )
    first.train(epochs=2, X=X, train_ind=np.arange(300), valid_ind=np.arange(300, 400))
    second = Trainer(
        TinyAutoencoder(adata.n_vars), progress=False, trace_func=lambda m: None, checkpoint_dir=tmp_path / "b"
    )
    second.train(
        epochs=3, X=X, train_ind=np.arange(300), valid_ind=np.arange(300, 400), resume_from=tmp_path / "a" / "last.pt"
    )
    assert (tmp_path / "b" / "best.pt").is_file() and second.best.path == tmp_path / "b" / "best.pt"
    assert [h["epoch"] for h in second.history] == [1, 2, 3]
