"""The optimizer and scheduler set-up: parameter groups by training stage, frozen batch embeddings,
MultiStepLR over milestones, and errors that name the argument."""

import pytest
import torch

from stepgraph.train.optim import build_optimizer, build_scheduler
from tests.conftest import TinyAutoencoder


class Smoothed(torch.nn.Module):
    """STEP's stage-2 convention: a pretrained body, a new ``smoother`` and a batch embedding."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(4, 3)
        self.smoother = torch.nn.Linear(3, 3)
        self.batch_embedding = torch.nn.Embedding(2, 3)


def ids(params):
    return {id(p) for p in params}


def lr_of(optimizer):
    """{id(parameter): its group's learning rate}."""
    return {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}


def test_stage_1_trains_every_parameter_at_lr():
    model = TinyAutoencoder(6, n_batches=2)
    optimizer = build_optimizer(model, lr=0.01, tune_lr=0.002)
    assert isinstance(optimizer, torch.optim.Adam) and len(optimizer.param_groups) == 1
    assert lr_of(optimizer) == {id(p): 0.01 for p in model.parameters()}


def test_stage_2_puts_the_backbone_at_tune_lr_and_the_rest_at_lr():
    model = TinyAutoencoder(6, n_batches=2)
    optimizer = build_optimizer(model, lr=0.01, tune_lr=0.002, stage=2)
    rates = lr_of(optimizer)
    assert set(rates) == ids(model.parameters())
    assert {rates[i] for i in ids(model.encoder.parameters())} == {0.002}  # backbone_parameters()
    assert {rates[i] for i in ids(model.decoder.parameters())} == {0.01}
    assert {rates[i] for i in ids(model.batch_embedding.parameters())} == {0.01}  # beside a backbone: at lr


def test_stage_2_with_a_smoother_trains_it_at_lr_and_the_rest_at_tune_lr():
    model = Smoothed()
    rates = lr_of(build_optimizer(model, lr=0.01, tune_lr=0.002, stage=2))
    assert {rates[i] for i in ids(model.smoother.parameters())} == {0.01}
    assert {rates[i] for i in ids(model.body.parameters())} == {0.002}
    assert {rates[i] for i in ids(model.batch_embedding.parameters())} == {0.002}  # beside a smoother: tune_lr


@pytest.mark.parametrize("stage", [1, 2])
def test_batch_embeddings_are_frozen_and_left_out_unless_tuned(stage):
    model = TinyAutoencoder(6, n_batches=2)
    rates = lr_of(build_optimizer(model, stage=stage, tune_batch_embedding=False))
    assert not any(p.requires_grad for p in model.batch_embedding.parameters())
    assert set(rates) == ids(model.encoder.parameters()) | ids(model.decoder.parameters())
    rates = lr_of(build_optimizer(model, stage=stage, tune_batch_embedding=True))  # unfrozen again
    assert all(p.requires_grad for p in model.batch_embedding.parameters())
    assert ids(model.batch_embedding.parameters()) <= set(rates)


def test_optimizer_errors_name_the_argument():
    with pytest.raises(ValueError, match="stage=2 needs the model"):
        build_optimizer(torch.nn.Linear(3, 2), stage=2)
    with pytest.raises(ValueError, match="stage"):
        build_optimizer(torch.nn.Linear(3, 2), stage=3)
    with pytest.raises(ValueError, match="tune_lr"):
        build_optimizer(torch.nn.Linear(3, 2), tune_lr=0)
    with pytest.raises(ValueError, match="lr"):
        build_optimizer(torch.nn.Linear(3, 2), lr=-0.1)
    frozen = torch.nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(frozen)


def rates_per_epoch(scheduler, optimizer, epochs):
    rates = []
    for _ in range(epochs):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_default_scheduler_decays_by_gamma_at_each_milestone_in_any_order():
    optimizer = build_optimizer(torch.nn.Linear(3, 2), lr=1.0)
    scheduler = build_scheduler(optimizer, gamma=0.5, milestones=(4, 2))
    assert isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR)
    assert rates_per_epoch(scheduler, optimizer, 5) == [1.0, 0.5, 0.5, 0.25, 0.25]

    optimizer = build_optimizer(torch.nn.Linear(3, 2), lr=1.0)
    assert rates_per_epoch(build_scheduler(optimizer), optimizer, 3) == [1.0, 1.0, 1.0]  # no milestone


def test_a_scheduler_or_a_callable_building_one_is_taken_on_the_same_optimizer():
    optimizer = build_optimizer(torch.nn.Linear(3, 2), lr=1.0)
    given = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    assert build_scheduler(optimizer, given) is given
    built = build_scheduler(optimizer, lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5))
    assert isinstance(built, torch.optim.lr_scheduler.ExponentialLR) and built.optimizer is optimizer


def test_scheduler_errors_name_the_argument():
    optimizer = build_optimizer(torch.nn.Linear(3, 2))
    with pytest.raises(TypeError, match="lr_scheduler must be a torch scheduler"):
        build_scheduler(optimizer, 3)
    with pytest.raises(TypeError, match="lr_scheduler of type NoneType"):
        build_scheduler(optimizer, lambda opt: None)
    other = build_optimizer(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="lr_scheduler must be built on trainer.optimizer"):
        build_scheduler(optimizer, torch.optim.lr_scheduler.StepLR(other, step_size=1))
