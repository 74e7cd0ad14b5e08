"""Resume, determinism, faults and the bad-input battery."""

import random
import signal
import subprocess
import sys
import textwrap
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from stepgraph import BaseDataset, Trainer
from stepgraph.data.loaders import graph_loader, node_loaders
from stepgraph.graph import spatial_graph, to_pyg
from stepgraph.models import GraphAutoencoder
from stepgraph.pipeline import log_normalise
from stepgraph.synthetic import synthetic_tissue
from stepgraph.train.checkpointing import load_checkpoint
from stepgraph.train.trainer import NonFiniteLossError

from tests.conftest import TinyAutoencoder, make_adata


@pytest.fixture(scope="module")
def tissue():
    adata = synthetic_tissue(n_cells=500, n_genes=30, seed=5)
    spatial_graph(adata, n_neighbors=5, batch_key="section")
    data = to_pyg(adata, batch_key="section", edge_weight="connectivities")
    dataset = BaseDataset(ad.AnnData(X=log_normalise(adata.X), obs=adata.obs[["section"]]),
                          batch_key="section")
    return adata, data, dataset


def run_path(path, tissue, epochs, checkpoint_dir, seed=0, resume_from=None):
    """Train ``epochs`` epochs on one path, from a freshly built model and loaders."""
    adata, data, dataset = tissue
    torch.manual_seed(seed)  # model initialisation
    if path in ("train", "train_batch"):
        model = TinyAutoencoder(dataset.n_vars)
    else:
        model = GraphAutoencoder(dataset.n_vars, hidden_dim=16, latent_dim=4, dropout=0.1,
                                 n_batches=dataset.n_batches)
    trainer = Trainer(model, progress=False, trace_func=lambda m: None, seed=seed,
                      checkpoint_dir=checkpoint_dir)
    trainer.init_optimizer(lr=0.01)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(adata.n_obs)
    train_ind, valid_ind = np.sort(perm[100:]), np.sort(perm[:100])
    if path == "train":
        X = dataset.features(np.arange(len(dataset)))
        trainer.train(epochs=epochs, X=X, train_ind=train_ind, valid_ind=valid_ind, resume_from=resume_from)
    elif path == "train_batch":
        loaders = Trainer.make_loaders(dataset, 64, split_rate=0.2, seed=seed)
        trainer.train_batch(epochs=epochs, loaders=loaders, resume_from=resume_from)
    elif path == "node_sampler":
        loaders = node_loaders(data, [4, 3], 64, train_ind=train_ind, valid_ind=valid_ind,
                               seed=seed, backend="builtin")
        trainer.train_node_sampler(epochs=epochs, gloader=loaders, dataset=dataset, resume_from=resume_from)
    else:
        loader = graph_loader(data, 2, 128, shuffle=True, seed=seed, backend="builtin")
        trainer.train_graph_batch(epochs=epochs, gloader=loader, dataset=dataset, train_ind=train_ind,
                                  valid_ind=valid_ind, resume_from=resume_from)
    return trainer


PATHS = ["train", "train_batch", "node_sampler", "graph_batch"]


@pytest.mark.parametrize("path", PATHS)
def test_resumed_run_equals_straight_run_bitwise(path, tissue, tmp_path):
    straight = run_path(path, tissue, 4, tmp_path / "straight")
    first = run_path(path, tissue, 2, tmp_path / "split")
    assert len(first.history) == 2
    resumed = run_path(path, tissue, 4, tmp_path / "resumed", resume_from=tmp_path / "split" / "last.pt")
    assert resumed.history == straight.history  # every loss, every epoch, exactly
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_same_seed_same_losses_other_seed_differs(path, tissue, tmp_path):
    a = run_path(path, tissue, 3, tmp_path / "a", seed=1)
    b = run_path(path, tissue, 3, tmp_path / "b", seed=1)
    c = run_path(path, tissue, 3, tmp_path / "c", seed=2)
    assert a.history == b.history
    assert a.history != c.history


def test_other_seed_gives_other_splits(adata):
    ds = BaseDataset(adata)
    v1 = Trainer.make_loaders(ds, 32, seed=1)[1].dataset.indices
    v2 = Trainer.make_loaders(ds, 32, seed=2)[1].dataset.indices
    assert not np.array_equal(v1, v2)
    t1 = Trainer(torch.nn.Linear(2, 2), seed=1).split_X(np.zeros((100, 2)), 0.2)[1]
    t2 = Trainer(torch.nn.Linear(2, 2), seed=2).split_X(np.zeros((100, 2)), 0.2)[1]
    assert not torch.equal(t1, t2)


def test_keyboard_interrupt_saves_a_resumable_state(tissue, tmp_path):
    adata, data, dataset = tissue
    messages = []
    trainer = Trainer(TinyAutoencoder(dataset.n_vars), progress=False, trace_func=messages.append,
                      checkpoint_dir=tmp_path)
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
    trainer.train_batch(epochs=5, loaders=Trainer.make_loaders(dataset, 64),
                        resume_from=tmp_path / "interrupted.pt")
    assert [h["epoch"] for h in trainer.history] == [1, 2, 3, 4, 5]


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
    import pathlib

    root = str(pathlib.Path(__file__).resolve().parents[2])
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT.format(root=root, ckpt=str(tmp_path / "ckpt")))
    last = tmp_path / "ckpt" / "last.pt"
    rng = random.Random(0)
    epochs_seen = []
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
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


def test_non_finite_loss_raise_names_loss_epoch_step_and_keeps_last_state(tmp_path):
    adata = make_adata()
    ds = BaseDataset(adata)

    class NanAtEpoch3(TinyAutoencoder):
        calls = 0

        def loss(self, x, **kw):
            out = super().loss(x, **kw)
            if self.training:
                NanAtEpoch3.calls += 1
                if NanAtEpoch3.calls == 16:  # epoch 3, step 1 (7 batches per epoch)
                    out["recon_loss"] = out["recon_loss"] * float("inf")
            return out

    trainer = Trainer(NanAtEpoch3(ds.n_vars), progress=False, checkpoint_dir=tmp_path)
    loader = Trainer.make_loaders(ds, 64, split_rate=0)
    with pytest.raises(NonFiniteLossError, match=r"epoch 3, step 1: recon_loss=inf"):
        trainer.train_batch(epochs=5, loaders=loader)
    assert load_checkpoint(tmp_path / "last.pt")["progress"]["epoch"] == 2


def test_non_finite_batches_can_be_skipped_and_counted():
    ds = BaseDataset(make_adata())

    class NanEveryThird(TinyAutoencoder):
        calls = 0

        def loss(self, x, **kw):
            out = super().loss(x, **kw)
            NanEveryThird.calls += 1
            if NanEveryThird.calls % 3 == 0:
                out["recon_loss"] = out["recon_loss"] * float("nan")
            return out

    model = NanEveryThird(ds.n_vars)
    trainer = Trainer(model, progress=False, on_nonfinite="skip")
    trainer.train_batch(epochs=2, loaders=Trainer.make_loaders(ds, 40, split_rate=0))
    assert trainer.skipped_batches == 20 // 3  # 10 batches per epoch, 20 calls
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert np.isfinite(trainer.history[-1]["recon_loss"])


def test_checkpoint_of_another_model_or_corrupt_file(tissue, tmp_path):
    run_path("train", tissue, 1, tmp_path / "a")
    adata, data, dataset = tissue
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


# ----------------------------------------------------------------- bad input
def test_empty_anndata():
    with pytest.raises(ValueError, match="no observations"):
        BaseDataset(ad.AnnData(np.zeros((0, 3), np.float32)))


def test_single_cell_trains_without_validation():
    adata = make_adata(n_obs=1)
    trainer = Trainer(TinyAutoencoder(adata.n_vars), progress=False)
    train_ind, valid_ind = trainer.split_X(np.zeros((1, 2)), 0.2)
    assert valid_ind is None and train_ind.tolist() == [0]
    train_loader, valid_loader = Trainer.make_loaders(BaseDataset(adata), 1)
    assert valid_loader is None
    trainer.train_batch(epochs=1, loaders=(train_loader, valid_loader))
    assert len(trainer.history) == 1


def test_all_zero_expression_is_handled():
    adata = ad.AnnData(sp.csr_matrix((50, 8), dtype=np.float32))
    normalised = log_normalise(adata.X)
    assert normalised.nnz == 0 and adata.X.nnz == 0
    trainer = Trainer(TinyAutoencoder(8), progress=False)
    trainer.train_batch(epochs=2, loaders=Trainer.make_loaders(BaseDataset(adata), 10))
    assert np.isfinite(trainer.history[-1]["recon_loss"])


@pytest.mark.parametrize("sparse", [True, False])
def test_nan_in_x(sparse):
    X = np.ones((6, 3), np.float32)
    X[4, 2] = np.nan
    adata = ad.AnnData(sp.csr_matrix(X) if sparse else X)
    with pytest.raises(ValueError, match=r"adata.X holds 1 NaN.*'4'"):
        BaseDataset(adata)


def test_string_coordinates():
    adata = make_adata(n_obs=20)
    adata.obsm["spatial"] = pd.DataFrame({"x": ["a"] * 20, "y": ["b"] * 20}, index=adata.obs_names)
    with pytest.raises((TypeError, ValueError), match="spatial"):
        spatial_graph(adata)


def test_loss_keys_changing_between_steps():
    ds = BaseDataset(make_adata())

    class Changing(TinyAutoencoder):
        calls = 0

        def loss(self, x, **kw):
            out = super().loss(x, **kw)
            Changing.calls += 1
            if Changing.calls == 3:
                out["extra_loss"] = out["recon_loss"] * 0
            return out

    with pytest.raises(ValueError, match=r"keys changed at epoch 1, step 2"):
        Trainer(Changing(ds.n_vars), progress=False).train_batch(
            epochs=1, loaders=Trainer.make_loaders(ds, 50, split_rate=0))


def test_validation_index_checks_and_batch_size(tissue):
    adata, data, dataset = tissue
    trainer = Trainer(TinyAutoencoder(dataset.n_vars), progress=False)
    X = dataset.features(np.arange(len(dataset)))
    with pytest.raises(IndexError, match="valid_ind"):
        trainer.train(epochs=1, X=X, train_ind=[0, 1], valid_ind=[-1])
    with pytest.raises(ValueError, match="duplicated"):
        trainer.train(epochs=1, X=X, train_ind=[0, 1], valid_ind=[3, 3])
    with pytest.raises(ValueError, match="overlap"):
        node_loaders(data, [3], 16, backend="builtin")  # fine
        trainer.train_node_sampler(epochs=1, gloader=node_loaders(data, [3], 16, backend="builtin")[0],
                                   dataset=dataset, train_ind=[1, 2, 3], valid_ind=[3, 4])
    with pytest.raises(ValueError, match="batch_size"):
        Trainer.make_loaders(dataset, -3)
