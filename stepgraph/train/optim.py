"""Optimizer and learning-rate scheduler set-up (STEP's two training stages)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from stepgraph._validation import check_choice, check_number

__all__ = ["build_optimizer", "build_scheduler"]


def build_optimizer(model: torch.nn.Module, lr: float = 0.001, tune_lr: float = 0.0001, stage: int = 1,
                    tune_batch_embedding: bool = True) -> torch.optim.Adam:
    """Adam over ``model``'s trainable parameters, grouped by training stage.

    Stage 1 trains every parameter at ``lr``. Stage 2 fine-tunes: the model's
    pretrained backbone, the parameters its ``backbone_parameters()`` method
    returns, trains at ``tune_lr`` and every other parameter at ``lr``.
    Batch-embedding parameters (whose name contains ``"batch_embedding"``)
    train at ``lr`` when ``tune_batch_embedding`` is true and are frozen
    (``requires_grad=False``, left out) otherwise, in either stage.
    """
    check_number(lr, "lr", positive=True)
    check_number(tune_lr, "tune_lr", positive=True)
    check_choice(stage, "stage", (1, 2))
    batch_emb = {id(p) for n, p in model.named_parameters() if "batch_embedding" in n}
    for p in model.parameters():
        if id(p) in batch_emb:
            p.requires_grad_(bool(tune_batch_embedding))
    backbone: set[int] = set()
    if stage == 2:
        hook = getattr(model, "backbone_parameters", None)
        if not callable(hook):
            raise ValueError("stage=2 needs the model to define backbone_parameters(), returning the "
                             "pretrained parameters to fine-tune at tune_lr")
        backbone = {id(p) for p in hook() if id(p) not in batch_emb}
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": [p for p in params if id(p) not in backbone], "lr": lr},
              {"params": [p for p in params if id(p) in backbone], "lr": tune_lr}]
    return torch.optim.Adam([g for g in groups if g["params"]], lr=lr)


def build_scheduler(optimizer: torch.optim.Optimizer, lr_scheduler=None, gamma: float = 0.1,
                    milestones: Iterable[int] = ()):
    """A learning-rate scheduler on ``optimizer``.

    ``lr_scheduler`` is a scheduler built on ``optimizer``, a callable taking the
    optimizer and returning one, or ``None`` for
    :class:`~torch.optim.lr_scheduler.MultiStepLR` over ``milestones`` and ``gamma``.
    """
    if lr_scheduler is None:
        lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=sorted(int(m) for m in milestones), gamma=gamma)
    elif callable(lr_scheduler) and not hasattr(lr_scheduler, "step"):
        lr_scheduler = lr_scheduler(optimizer)
    if not hasattr(lr_scheduler, "step"):
        raise TypeError(f"lr_scheduler must be a torch scheduler or a callable building one, got "
                        f"lr_scheduler of type {type(lr_scheduler).__name__}")
    if getattr(lr_scheduler, "optimizer", optimizer) is not optimizer:
        raise ValueError("lr_scheduler must be built on trainer.optimizer, got one built on another "
                         "optimizer")
    return lr_scheduler
