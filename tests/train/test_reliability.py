"""Determinism, faults and the bad-input battery."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from stepgraph import BaseDataset, Trainer
from stepgraph.data.loaders import node_loaders
from stepgraph.graph import spatial_graph
from stepgraph.pipeline import log_normalise
from stepgraph.train.checkpointing import load_checkpoint
from stepgraph.train.trainer import NonFiniteLossError
from tests.conftest import TinyAutoencoder, make_adata
from tests.train.conftest import PATHS, run_path


@pytest.mark.parametrize("path", PATHS)
def test_same_seed_same_losses_other_seed_differs(path, small_tissue, tmp_path):
    a = run_path(path, small_tissue, 3, tmp_path / "a", seed=1)
    b = run_path(path, small_tissue, 3, tmp_path / "b", seed=1)
    c = run_path(path, small_tissue, 3, tmp_path / "c", seed=2)
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
            epochs=1, loaders=Trainer.make_loaders(ds, 50, split_rate=0)
        )


def test_validation_index_checks_and_batch_size(small_tissue):
    adata, data, dataset = small_tissue
    trainer = Trainer(TinyAutoencoder(dataset.n_vars), progress=False)
    X = dataset.features(np.arange(len(dataset)))
    with pytest.raises(IndexError, match="valid_ind"):
        trainer.train(epochs=1, X=X, train_ind=[0, 1], valid_ind=[-1])
    with pytest.raises(ValueError, match="duplicated"):
        trainer.train(epochs=1, X=X, train_ind=[0, 1], valid_ind=[3, 3])
    with pytest.raises(ValueError, match="overlap"):
        node_loaders(data, [3], 16, backend="builtin")  # fine
        trainer.train_node_sampler(
            epochs=1,
            gloader=node_loaders(data, [3], 16, backend="builtin")[0],
            dataset=dataset,
            train_ind=[1, 2, 3],
            valid_ind=[3, 4],
        )
    with pytest.raises(ValueError, match="batch_size"):
        Trainer.make_loaders(dataset, -3)
