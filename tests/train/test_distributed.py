"""Data-parallel training with two real gloo processes on the CPU."""

import os

import anndata as ad
import numpy as np
import pytest
import torch
import torch.distributed as dist

from stepgraph import BaseDataset, Trainer
from stepgraph.data.loaders import graph_loader, node_loaders
from stepgraph.graph import spatial_graph, to_pyg
from stepgraph.models import GraphAutoencoder
from stepgraph.pipeline import log_normalise
from stepgraph.synthetic import synthetic_tissue
from tests.conftest import TinyAutoencoder, make_adata, run_ranks

WORLD = 2
TIMEOUT_S = 180


def quiet(model, **kwargs):
    return Trainer(model, progress=False, trace_func=lambda m: None, **kwargs)


def tensor_scenarios(ckpt_dir, batch_size):
    """The two tensor paths; deterministic data, no shuffling, so 2 ranks x b equals 1 x 2b."""
    adata = make_adata(n_obs=400)
    dataset = BaseDataset(adata)
    X = dataset.features(np.arange(400))
    out = {}
    torch.manual_seed(0)
    trainer = quiet(TinyAutoencoder(dataset.n_vars), checkpoint_dir=f"{ckpt_dir}/train")
    trainer.init_optimizer(lr=0.01)
    trainer.train(epochs=4, X=X, train_ind=np.arange(320), valid_ind=np.arange(320, 400))
    out["train"] = (trainer.history, {k: v.clone() for k, v in trainer.model.state_dict().items()})

    torch.manual_seed(0)
    trainer = quiet(TinyAutoencoder(dataset.n_vars), checkpoint_dir=f"{ckpt_dir}/train_batch")
    trainer.init_optimizer(lr=0.01)
    loaders = Trainer.make_loaders(dataset, batch_size, split_rate=0.2, shuffle=False)
    trainer.train_batch(epochs=4, loaders=loaders)
    out["train_batch"] = (trainer.history, {k: v.clone() for k, v in trainer.model.state_dict().items()})
    return out


def graph_scenarios(ckpt_dir):
    adata = synthetic_tissue(n_cells=600, n_genes=30, seed=4)
    spatial_graph(adata, n_neighbors=5, batch_key="section")
    data = to_pyg(adata, batch_key="section")
    dataset = BaseDataset(ad.AnnData(X=log_normalise(adata.X), obs=adata.obs[["section"]]), batch_key="section")
    perm = np.random.default_rng(0).permutation(600)
    train_ind, valid_ind = np.sort(perm[:481]), np.sort(perm[481:])  # odd sizes: uneven shards
    out = {}
    for path in ("node_sampler", "graph_batch"):
        torch.manual_seed(0)
        model = GraphAutoencoder(dataset.n_vars, hidden_dim=16, latent_dim=4, n_batches=2)
        trainer = quiet(model, checkpoint_dir=f"{ckpt_dir}/{path}")
        trainer.init_optimizer(lr=0.01)
        if path == "node_sampler":
            loaders = node_loaders(data, [4, 3], 50, train_ind=train_ind, valid_ind=valid_ind, backend="builtin")
            trainer.train_node_sampler(epochs=4, gloader=loaders, dataset=dataset)
        else:
            loader = graph_loader(data, 2, 70, shuffle=True, backend="builtin")
            trainer.train_graph_batch(
                epochs=4, gloader=loader, dataset=dataset, train_ind=train_ind, valid_ind=valid_ind
            )
        out[path] = (trainer.history, {k: v.clone() for k, v in model.state_dict().items()})

    # early stopping on a plateau: weights barely move, the validation loss is flat
    torch.manual_seed(0)
    trainer = quiet(
        GraphAutoencoder(dataset.n_vars, hidden_dim=8, latent_dim=4, n_batches=2), checkpoint_dir=f"{ckpt_dir}/stop"
    )
    trainer.init_optimizer(lr=1e-12)
    trainer.lossconfig["recon_loss"] = {"patience": 2, "delta": 0.05}  # sampling noise stays below delta
    loaders = node_loaders(data, [3], 64, train_ind=train_ind, valid_ind=valid_ind, backend="builtin")
    stopped = trainer.train_node_sampler(epochs=30, gloader=loaders, dataset=dataset)
    out["early_stop"] = (stopped, len(trainer.history))

    # uneven shards in batches: 101 rows, batch 10 -> 6 batches on rank 0, 5 on rank 1
    small = BaseDataset(make_adata(n_obs=101))
    trainer = quiet(TinyAutoencoder(small.n_vars), checkpoint_dir=f"{ckpt_dir}/uneven")
    trainer.train_batch(epochs=2, loaders=Trainer.make_loaders(small, 10, split_rate=0))
    out["uneven"] = (trainer.history, {k: v.clone() for k, v in trainer.model.state_dict().items()})
    return out


def edge_scenarios(ckpt_dir):
    """A call_func that bypasses the DDP wrapper; a validation set smaller than the world."""
    dataset = BaseDataset(make_adata(n_obs=120))
    out = {}
    torch.manual_seed(rank_seed())  # different initial weights per rank: DDP must align them
    trainer = quiet(TinyAutoencoder(dataset.n_vars), checkpoint_dir=f"{ckpt_dir}/callfunc", restore_best=False)
    trainer.init_optimizer(lr=0.01)
    direct = lambda batch: trainer.model.loss(batch[0])  # noqa: E731
    trainer.train_batch(epochs=2, loaders=Trainer.make_loaders(dataset, 20, split_rate=0), call_func=direct)
    out["callfunc"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer = quiet(TinyAutoencoder(dataset.n_vars), checkpoint_dir=f"{ckpt_dir}/smallvalid")
    X = dataset.features(np.arange(120))
    trainer.train(epochs=2, X=X, train_ind=np.arange(119), valid_ind=[119])
    out["small_valid"] = trainer.history
    try:  # a loader stepgraph cannot shard (a list of subgraphs) is refused, naming it
        quiet(TinyAutoencoder(dataset.n_vars)).train_node_sampler(
            epochs=1, gloader=[X[:10], X[10:20]], call_func=lambda batch, ind, step: {}
        )
    except ValueError as err:
        out["foreign_loader"] = str(err)
    return out


def rank_seed():
    return dist.get_rank() + 100


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        result = {
            "tensor": tensor_scenarios(f"{out_dir}/ckpt{rank}", batch_size=32),
            "graph": graph_scenarios(f"{out_dir}/ckpt{rank}"),
            "edge": edge_scenarios(f"{out_dir}/ckpt{rank}"),
        }
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    return run_ranks(_worker, (str(out_dir / "init"), str(out_dir)), out_dir, WORLD, TIMEOUT_S), out_dir


def _assert_same_params(a, b):
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(
    "kind, path",
    [
        ("tensor", "train"),
        ("tensor", "train_batch"),
        ("graph", "node_sampler"),
        ("graph", "graph_batch"),
        ("graph", "uneven"),
    ],
)
def test_every_path_ends_with_identical_parameters_and_losses_on_both_ranks(ranks, kind, path):
    results, _ = ranks
    (h0, p0), (h1, p1) = results[0][kind][path], results[1][kind][path]
    _assert_same_params(p0, p1)
    assert h0 == h1  # all-reduced losses: every rank sees the same numbers
    assert h0[-1]["recon_loss"] < h0[0]["recon_loss"]


@pytest.mark.parametrize("path", ["train", "train_batch"])
def test_losses_match_a_single_process_run_with_the_same_global_batch(ranks, path, tmp_path):
    results, _ = ranks
    history, params = results[0]["tensor"][path]
    single_history, single_params = tensor_scenarios(str(tmp_path), batch_size=32 * WORLD)[path]
    # stated tolerance: relative 1e-4 (float summation order differs)
    for dist_epoch, single_epoch in zip(history, single_history):
        for key in ("recon_loss", "val_recon_loss"):
            assert dist_epoch[key] == pytest.approx(single_epoch[key], rel=1e-4), (key, dist_epoch["epoch"])
    for key in params:
        torch.testing.assert_close(params[key], single_params[key], rtol=1e-4, atol=1e-5)


def test_early_stopping_stops_both_ranks_at_the_same_epoch(ranks):
    results, _ = ranks
    assert results[0]["graph"]["early_stop"] == results[1]["graph"]["early_stop"]
    stopped, epochs = results[0]["graph"]["early_stop"]
    assert stopped and epochs == 3


def test_a_call_func_bypassing_ddp_still_keeps_ranks_identical(ranks):
    results, _ = ranks
    _assert_same_params(results[0]["edge"]["callfunc"], results[1]["edge"]["callfunc"])


def test_a_validation_set_smaller_than_the_world_is_fine(ranks):
    results, _ = ranks
    h0, h1 = results[0]["edge"]["small_valid"], results[1]["edge"]["small_valid"]
    assert h0 == h1 and all(np.isfinite(h["val_recon_loss"]) for h in h0)


def test_a_loader_that_cannot_be_sharded_is_refused_by_name(ranks):
    results, _ = ranks
    for rank in range(WORLD):
        message = results[rank]["edge"].get("foreign_loader", "")
        assert "gloader of type list cannot be sharded over ranks" in message and "NeighborLoader" in message


def test_only_rank_zero_writes_checkpoints(ranks):
    _, out_dir = ranks
    assert (out_dir / "ckpt0" / "train" / "last.pt").is_file()
    assert (out_dir / "ckpt0" / "train" / "best.pt").is_file()
    assert not (out_dir / "ckpt1" / "train" / "last.pt").exists()
    assert not (out_dir / "ckpt1" / "train" / "best.pt").exists()


def test_not_distributed_without_a_process_group():
    assert os.environ.get("WORLD_SIZE") in (None, "1")
    assert quiet(torch.nn.Linear(2, 2)).distributed is False
    with pytest.raises(ValueError, match="torchrun"):
        Trainer(torch.nn.Linear(2, 2), distributed=True)
