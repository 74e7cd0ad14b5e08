"""The STEP adapter: behaviour that names used to switch on their own is switched by explicit
Trainer arguments (``lossconfig``: STEP's per-loss patience, ``call_form``: STEP's loss-call form,
``per_hop``), whose defaults keep STEP's conventions; and STEP's remembered graph dataset."""

import numpy as np
import pytest
import torch

from stepgraph import Trainer
from stepgraph.data.loaders import node_loaders
from stepgraph.models import GraphAutoencoder


def test_lossconfig_none_is_steps_table_and_an_empty_one_is_none():
    model = torch.nn.Linear(2, 2)
    assert Trainer(model).stopping.config_for("val_recon_loss")["patience"] == 30
    plain = Trainer(model, lossconfig={})
    assert plain.stopping.config_for("val_recon_loss")["patience"] == plain.defualt_lcfg["patience"]
    own = Trainer(model, lossconfig={"mse": {"patience": 3}})
    assert own.stopping.config_for("val_mse")["patience"] == 3
    with pytest.raises(TypeError, match="lossconfig"):
        Trainer(model, lossconfig={"mse": 3})


def _fit(small_tissue, call_func, **options):
    adata, data, dataset = small_tissue
    torch.manual_seed(0)
    model = GraphAutoencoder(dataset.n_vars, hidden_dim=8, latent_dim=4, n_batches=dataset.n_batches)
    trainer = Trainer(model, progress=False, trace_func=lambda m: None, seed=0, **options)
    loaders = node_loaders(data, [3, 2], 128, train_ind=np.arange(400), valid_ind=None, seed=0, backend="builtin")
    trainer.train_node_sampler(epochs=1, gloader=loaders, dataset=dataset, call_func=call_func)
    return trainer


def test_call_form_overrides_the_parameter_name(small_tissue):
    seen = []

    def named_dataset(batch, dataset, ind, step=None):  # STEP's form by its name
        seen.append(("second", type(dataset).__name__, type(ind).__name__))
        x = torch.as_tensor(small_tissue[2].features(batch.n_id[: batch.batch_size]))
        return {"loss": (x.sum() * 0 + torch.nn.Parameter(torch.ones(())) ** 2).squeeze()}

    _fit(small_tissue, named_dataset)
    assert seen[-1][1] == "BaseDataset"  # auto: the dataset is passed second
    seen.clear()
    _fit(small_tissue, named_dataset, call_form="stepgraph")
    assert seen[-1][1] == "Tensor"  # told: (batch, ind, step), so the second argument is ind
    with pytest.raises(ValueError, match="call_form"):
        Trainer(torch.nn.Linear(2, 2), call_form="dgl")


def test_per_hop_false_keeps_the_counts_from_a_model_that_names_them(small_tissue):
    received = []
    original = GraphAutoencoder.loss

    def spy(self, x, *args, **kwargs):
        received.append("num_sampled_nodes_per_hop" in kwargs and kwargs["num_sampled_nodes_per_hop"] is not None)
        return original(self, x, *args, **kwargs)

    GraphAutoencoder.loss = spy
    try:
        spy.__signature__ = __import__("inspect").signature(original)
        _fit(small_tissue, None)
        assert received and all(received)  # by its parameters' names
        received.clear()
        _fit(small_tissue, None, per_hop=False)
        assert received and not any(received)
    finally:
        GraphAutoencoder.loss = original


def test_steps_form_follows_the_form_given_before_the_parameter_name():
    from stepgraph.train.step_adapter import steps_form

    def step_style(batch, dataset, ind, step): ...

    def ours(batch, ind, step): ...

    assert steps_form(step_style) and not steps_form(ours)
    assert not steps_form(step_style, "stepgraph") and steps_form(ours, "step")
    assert not steps_form(len)  # a builtin without a signature: stepgraph's form


def test_the_graph_dataset_is_remembered_only_when_one_is_given():
    from stepgraph.train.step_adapter import GraphDatasetMemory

    memory = GraphDatasetMemory()
    assert memory.graph_dataset is None and memory.remember_graph_dataset(None) is None
    first = object()
    assert memory.remember_graph_dataset(first) is first
    assert memory.remember_graph_dataset(None) is first and memory.graph_dataset is first
