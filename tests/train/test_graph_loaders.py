"""The graph methods with loaders stepgraph does not own, as STEP's spatial model uses them.

STEP's ``stSmoother`` hands ``train_node_sampler`` / ``train_graph_batch`` a DGL
loader and its ``StDataset``, and overrides ``handle_ginput_tuple(input_tuple,
dataset, ind, step)``: each batch is a subgraph carrying the dataset rows of its
nodes (``ndata["node_ids"]``). The STEP-shaped classes here are written from
STEP's ``st_funcmodel.py`` and ``utils/dataset.py``, with PyG ``Data`` subgraphs
standing in for DGL's (a list of subgraphs, or a function yielding them).
"""

import random

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from stepgraph import Trainer


class StDataset:
    """STEP's StDataset as its spatial model reads it: ``gene_expr`` and ``batch_label`` tensors."""

    def __init__(self, n_cells=120, n_genes=8, seed=0):
        rng = np.random.default_rng(seed)
        self.gene_expr = torch.from_numpy(rng.gamma(2.0, 1.0, (n_cells, n_genes)).astype(np.float32))
        self.batch_label = torch.zeros(n_cells, dtype=torch.long)

    def __len__(self):
        return len(self.gene_expr)


def subgraphs(n_cells=120, size=30, seed=0):
    """Disjoint random subgraphs covering every cell, each with the rows of its nodes."""
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n_cells))
    out = []
    for node_ids in order.split(size):
        k = len(node_ids)
        ring = torch.stack([torch.arange(k), torch.roll(torch.arange(k), 1)])
        out.append(Data(edge_index=ring, node_ids=node_ids, num_nodes=k))
    return out


class Smoother(torch.nn.Module):
    def __init__(self, n_genes=8):
        super().__init__()
        self.lin = torch.nn.Linear(n_genes, n_genes)

    def loss(self, x, edge_index, ind=None):
        neighbours = torch.zeros_like(x).index_add_(0, edge_index[0], x[edge_index[1]])
        per_node = ((self.lin(x + neighbours) - x) ** 2).mean(dim=1)
        return {"recon_loss": per_node.mean() if ind is None else per_node[ind].mean()}


class StSmoother(Trainer):
    """STEP's spatial model: its own ``handle_ginput_tuple`` in STEP's form."""

    def __init__(self, model, **kwargs):
        super().__init__(model, progress=False, trace_func=lambda m: None, **kwargs)
        self.seen = []  # (training?, grad enabled?, global ids of the loss nodes)

    def handle_ginput_tuple(self, input_tuple, dataset, ind=None, step=None):
        node_ids = input_tuple.node_ids
        x = dataset.gene_expr[node_ids].to(self.device)
        local = None if ind is None else torch.isin(node_ids, ind).nonzero().flatten()
        self.seen.append((self.model.training, torch.is_grad_enabled(), node_ids if local is None else node_ids[local]))
        out = self.loss(x, edge_index=input_tuple.edge_index, ind=local)
        out["graph_ids"] = [0]  # STEP's metadata key
        return out


def test_a_list_of_subgraphs_trains_and_validates_through_steps_handle_ginput_tuple():
    dataset, batches = StDataset(), subgraphs()
    valid_ind = np.arange(0, 120, 4)
    trainer = StSmoother(Smoother())
    trainer.init_optimizer(lr=0.05)
    trainer.train_node_sampler(epochs=3, gloader=batches, dataset=dataset, valid_ind=valid_ind)
    assert [h["epoch"] for h in trainer.history] == [1, 2, 3]
    assert all("val_recon_loss" in h and "graph_ids" not in h for h in trainer.history)
    assert trainer.history[-1]["recon_loss"] < trainer.history[0]["recon_loss"]
    trained = torch.cat([ids for training, _, ids in trainer.seen if training])
    validated = torch.cat([ids for training, grad, ids in trainer.seen if not training and not grad])
    # every other cell trains (never a validation cell), the validation cells validate, each epoch
    assert sorted(trained.tolist()) == sorted(np.repeat(np.setdiff1d(np.arange(120), valid_ind), 3).tolist())
    assert sorted(validated.tolist()) == sorted(np.repeat(valid_ind, 3).tolist())
    assert trainer.early_stopping["val_recon_loss"].best_score is not None  # the shared core monitored it


def test_train_graph_batch_takes_a_function_yielding_subgraphs_and_steps_call_func():
    dataset = StDataset()
    calls = []

    def epoch_of_subgraphs():  # a generator function: a fresh pass each epoch
        yield from subgraphs(seed=len(calls))

    def steps_call(input_tuple, dataset, ind, step):
        calls.append(step)
        return trainer.loss(dataset.gene_expr[input_tuple.node_ids], edge_index=input_tuple.edge_index)

    trainer = Trainer(Smoother(), progress=False, trace_func=lambda m: None)
    trainer.train_graph_batch(epochs=2, gloader=epoch_of_subgraphs, dataset=dataset, call_func=steps_call)
    assert calls == [0, 1, 2, 3] * 2 and len(trainer.history) == 2
    with pytest.raises(TypeError, match="one-shot iterator"):
        trainer.train_graph_batch(epochs=2, gloader=epoch_of_subgraphs(), dataset=dataset, call_func=steps_call)


def test_validation_means_are_per_node_not_per_batch():
    """Subgraphs of 10 and 30 nodes with constant losses 1 and 3: the per-node mean is
    (10 * 1 + 30 * 3) / 40 = 2.5, where STEP's mean of batch means would say 2."""
    batches = [
        Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=n, level=float(level))
        for n, level in ((10, 1.0), (30, 3.0))
    ]
    model = Smoother()
    trainer = Trainer(model, progress=False)

    def constant(batch, ind, step):
        return {"loss": torch.tensor(batch.level) + 0 * model.lin.weight.sum()}

    assert float(trainer.validate_gloader(batches, call_func=constant)["val_loss"]) == pytest.approx(2.5)


def test_a_foreign_loader_needs_a_loss_call_and_says_so():
    trainer = Trainer(Smoother(), progress=False)
    with pytest.raises(
        TypeError,
        match=r"list is not a torch_geometric NeighborLoader.*handle_ginput_tuple\("
        r"self, input_tuple, dataset, ind, step\).*call_func=",
    ):
        trainer.train_node_sampler(epochs=1, gloader=subgraphs(), dataset=StDataset())
    with pytest.raises(TypeError, match="gloader must be a loader"):
        trainer.train_node_sampler(epochs=1, gloader=3, dataset=StDataset(), call_func=lambda b, i, s: {})


def test_training_leaves_the_users_random_state_alone():
    dataset = StDataset()
    torch.manual_seed(123)
    random.seed(7)
    np.random.seed(11)
    python_state, numpy_state = random.getstate(), np.random.get_state()[1].copy()
    trainer = StSmoother(Smoother())
    trainer.train_node_sampler(epochs=2, gloader=subgraphs(), dataset=dataset, valid_ind=np.arange(10))
    assert torch.initial_seed() == 123  # STEP never reseeds; neither does Trainer(seed=None)
    assert random.getstate() == python_state and np.array_equal(np.random.get_state()[1], numpy_state)
    StSmoother(Smoother(), seed=5).train_node_sampler(epochs=1, gloader=subgraphs(), dataset=dataset)
    assert torch.initial_seed() == 5  # a seed the user gives still seeds


class CountingLoader(list):
    """A list of batches that counts how often it is iterated."""

    iterations = 0

    def __iter__(self):
        CountingLoader.iterations += 1
        return super().__iter__()


def test_progress_never_iterates_the_loader(capsys):
    trainer = StSmoother(Smoother())
    trainer.progress = True
    train = CountingLoader(subgraphs())
    trainer.train_node_sampler(epochs=3, gloader=(train, None), dataset=StDataset())
    assert CountingLoader.iterations == 3  # one pass per epoch: the training itself
    assert "Epoch 3/3" in capsys.readouterr().err
