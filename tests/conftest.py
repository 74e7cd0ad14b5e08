"""Shared fixtures: a small real AnnData and a small real model."""

import errno

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch


def make_adata(n_obs=400, n_vars=24, seed=0, sparse=True):
    """A low-rank expression matrix with two sections and three cell types."""
    rng = np.random.default_rng(seed)
    cell_type = rng.integers(0, 3, n_obs)
    programs = rng.gamma(2.0, 1.0, size=(3, n_vars))
    X = rng.poisson(programs[cell_type]).astype(np.float32)
    X = np.log1p(X)
    adata = ad.AnnData(
        X=sp.csr_matrix(X) if sparse else X,
        obs=pd.DataFrame(
            {
                "section": pd.Categorical(np.where(np.arange(n_obs) < n_obs // 2, "s1", "s2")),
                "cell_type": pd.Categorical(np.array(["T", "B", "NK"])[cell_type]),
            },
            index=[f"cell{i}" for i in range(n_obs)],
        ),
    )
    adata.obsm["spatial"] = rng.uniform(0, 100, size=(n_obs, 2))
    return adata


class TinyAutoencoder(torch.nn.Module):
    """A linear autoencoder meeting the loss-dict contract."""

    def __init__(self, n_vars, latent=4, n_batches=0):
        super().__init__()
        self.encoder = torch.nn.Linear(n_vars, latent)
        self.decoder = torch.nn.Linear(latent, n_vars)
        if n_batches:
            self.batch_embedding = torch.nn.Embedding(n_batches, latent)

    def backbone_parameters(self):
        return self.encoder.parameters()

    def loss(self, x, ind=None, batch_label=None, class_label=None):
        if ind is not None:
            x = x[ind]
            batch_label = None if batch_label is None else batch_label[ind]
        z = self.encoder(x)
        if batch_label is not None and hasattr(self, "batch_embedding"):
            z = z + self.batch_embedding(batch_label)
        return {"recon_loss": torch.nn.functional.mse_loss(self.decoder(z), x)}


@pytest.fixture
def adata():
    return make_adata()


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def run_ranks(worker, args, out_dir, world=2, timeout_s=180):
    """Run ``worker(rank, *args)`` in ``world`` real processes (spawned) and return
    what each saved to ``out_dir / f"rank{rank}.pt"``; fail (killing them) after
    ``timeout_s`` seconds, so a hang fails instead of blocking the suite."""
    import time

    import torch.multiprocessing as mp

    context = mp.start_processes(worker, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"distributed workers did not finish within {timeout_s} s (a hang?)")
    return [torch.load(f"{out_dir}/rank{rank}.pt", weights_only=False) for rank in range(world)]


def disk_full_save(when=lambda obj: True):
    """A ``torch.save`` that writes part of the file, then fails as a full disk does, for
    the objects ``when`` selects (monkeypatch it over ``torch.save``)."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if when(obj):
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    return save
