"""Trainer(precision=...): bfloat16 autocast of the forward passes; the CUDA path (pinned,
non-blocking copies), whose tests run only on a GPU (marked ``cuda``)."""

import pytest
import torch

from stepgraph import BaseDataset, Trainer, node_loaders, spatial_graph, to_pyg
from stepgraph.models import GraphAutoencoder
from stepgraph.train import feeds
from tests.conftest import make_adata

no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def graph():
    adata = make_adata(n_obs=300, n_vars=12, seed=4)
    spatial_graph(adata, method="knn", n_neighbors=6, batch_key="section")
    return to_pyg(adata, batch_key="section"), BaseDataset(adata, batch_key="section")


class Recording(GraphAutoencoder):
    """The reference model, recording the dtype its decoder computes in."""

    def decode(self, z, batch_label=None):
        out = super().decode(z, batch_label)
        self.seen = out.dtype
        return out


def _fit(graph, device="cpu", **options):
    data, dataset = graph
    torch.manual_seed(0)
    model = Recording(12, hidden_dim=16, latent_dim=4, conv="gat", n_batches=2)
    trainer = Trainer(model, device=device, progress=False, seed=0, **options)
    loaders = node_loaders(
        data,
        [5, 3],
        batch_size=64,
        train_ind=torch.arange(240),
        valid_ind=torch.arange(240, 300),
        seed=0,
        backend="builtin",
    )
    trainer.train_node_sampler(epochs=2, gloader=loaders, dataset=dataset)
    return trainer, model


@pytest.mark.parametrize(
    ("precision", "dtype"), [("32", torch.float32), (32, torch.float32), ("bf16-mixed", torch.bfloat16)]
)
def test_the_forward_pass_runs_in_the_precision_asked(graph, precision, dtype):
    trainer, model = _fit(graph, precision=precision)
    assert model.seen == dtype  # training and validation ran under it
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32
    assert all(torch.isfinite(torch.tensor(row["val_recon_loss"])) for row in trainer.history)
    embedding = trainer.predict_layerwise(*graph)
    assert embedding.dtype == torch.float32 and bool(torch.isfinite(embedding).all())


def test_bf16_predictions_are_close_to_float32(graph):
    trainer, _ = _fit(graph, precision="bf16-mixed")
    low = trainer.predict_layerwise(*graph)
    trainer.precision = "32"
    full = trainer.predict_layerwise(*graph)
    assert not torch.equal(low, full)
    torch.testing.assert_close(low, full, rtol=0.05, atol=0.05)


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of .*precision='16-mixed'"):
        Trainer(torch.nn.Linear(2, 2), precision="16-mixed")


@pytest.mark.cuda
@no_cuda
def test_batches_reach_the_gpu_through_pinned_memory():
    out = feeds.to_device({"x": torch.ones(3, 2), "ids": [torch.arange(3)]}, torch.device("cuda"))
    torch.cuda.synchronize()
    assert out["x"].is_cuda and out["ids"][0].is_cuda
    assert float(out["x"].sum()) == 6.0


@pytest.mark.cuda
@no_cuda
@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_training_and_layerwise_embedding_on_cuda(graph, precision):
    trainer, model = _fit(graph, device="cuda", precision=precision)
    assert next(model.parameters()).is_cuda
    on_gpu = trainer.predict_layerwise(*graph)
    assert on_gpu.device.type == "cpu" and on_gpu.dtype == torch.float32
    cpu = Trainer(model.cpu(), progress=False).predict_layerwise(*graph)
    tolerance = 1e-4 if precision == "32" else 0.05
    torch.testing.assert_close(on_gpu, cpu, rtol=tolerance, atol=tolerance)
