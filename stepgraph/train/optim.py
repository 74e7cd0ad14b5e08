"""Optimizer and learning-rate scheduler set-up (STEP's two training stages)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

import torch

from stepgraph._validation import check_choice, check_number

__all__ = ["build_optimizer", "build_scheduler"]


#: Name fragments of batch-embedding parameters: trained when ``tune_batch_embedding``, else frozen.
BATCH_EMBEDDING_NAMES = ("batch_embedding", "batch_readout")


def build_optimizer(
    model: torch.nn.Module,
    lr: float = 0.001,
    tune_lr: float = 0.0001,
    stage: int = 1,
    tune_batch_embedding: bool = True,
    optimizer: type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer] | None = None,
    params: Iterable | None = None,
    **optimizer_kwargs,
) -> torch.optim.Optimizer:
    """An optimizer (Adam by default) over ``model``'s trainable parameters, grouped by training stage.

    ``optimizer`` (a class such as :class:`torch.optim.AdamW`, or any callable
    ``optimizer(params, lr=lr, **optimizer_kwargs)``) replaces Adam, and
    ``optimizer_kwargs`` (``weight_decay=``, ``betas=``, ...) reach it. Parameter
    groups of your own go in ``params`` (a list of dicts, as torch's optimizers
    take them; a group without ``"lr"`` gets ``lr``): they replace the stage's groups.

    Stage 1 trains every parameter at ``lr``. Stage 2 fine-tunes a pretrained
    model, in one of two ways:

    - the model defines ``backbone_parameters()``: those parameters (the
      pretrained backbone) train at ``tune_lr``, every other one at ``lr``;
    - otherwise the model has a ``smoother`` submodule (STEP's models after
      ``init_smoother_with_builtin()``): STEP's convention, the new ``smoother``
      at ``lr`` and the rest of the model at ``tune_lr``.

    Batch-embedding parameters (whose name contains ``"batch_embedding"`` or
    ``"batch_readout"``) are frozen (``requires_grad=False``, left out) when
    ``tune_batch_embedding`` is false, in either stage; otherwise they train at
    ``lr`` beside a ``backbone_parameters()`` backbone and at ``tune_lr`` beside a
    ``smoother`` (as in STEP).

    Raises
    ------
    ValueError
        For ``stage=2`` when the model has neither ``backbone_parameters()`` nor a
        ``smoother``, or when it has no trainable parameter.
    """
    check_number(lr, "lr", positive=True)
    check_number(tune_lr, "tune_lr", positive=True)
    check_choice(stage, "stage", (1, 2))
    batch_emb = {id(p) for n, p in model.named_parameters() if any(k in n for k in BATCH_EMBEDDING_NAMES)}
    for p in model.parameters():
        if id(p) in batch_emb:
            p.requires_grad_(bool(tune_batch_embedding))
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    fast = {id(p) for p in trainable}  # the parameters at lr; the rest train at tune_lr
    if stage == 2:
        hook = getattr(model, "backbone_parameters", None)
        smoother = getattr(model, "smoother", None)
        if callable(hook):
            fast -= {id(p) for p in hook() if id(p) not in batch_emb}
        elif isinstance(smoother, torch.nn.Module):
            fast = {id(p) for p in smoother.parameters()}
        else:
            raise ValueError(
                f"stage=2 needs the model ({type(model).__name__}) to define "
                "backbone_parameters(), returning the pretrained parameters to fine-tune "
                "at tune_lr, or to have a `smoother` submodule (STEP's convention: the "
                "smoother at lr, the rest of the model at tune_lr)"
            )
    groups = [
        {"params": [p for p in trainable if id(p) in fast], "lr": lr},
        {"params": [p for p in trainable if id(p) not in fast], "lr": tune_lr},
    ]
    groups = [g for g in groups if g["params"]] if params is None else list(params)
    if not groups:
        raise ValueError("params must hold at least one parameter group, got an empty list")
    make = cast(Callable[..., torch.optim.Optimizer], torch.optim.Adam if optimizer is None else optimizer)
    if not callable(make):
        raise TypeError(f"optimizer must be an optimizer class or a callable, got {type(make).__name__}")
    return make(groups, lr=lr, **optimizer_kwargs)


def build_scheduler(
    optimizer: torch.optim.Optimizer, lr_scheduler=None, gamma: float = 0.1, milestones: Iterable[int] = ()
):
    """A learning-rate scheduler on ``optimizer``.

    ``lr_scheduler`` is a scheduler built on ``optimizer``, a callable taking the
    optimizer and returning one, or ``None`` for
    :class:`~torch.optim.lr_scheduler.MultiStepLR` over ``milestones`` and ``gamma``.
    """
    if lr_scheduler is None:
        lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=sorted(int(m) for m in milestones), gamma=gamma
        )
    elif callable(lr_scheduler) and not hasattr(lr_scheduler, "step"):
        lr_scheduler = lr_scheduler(optimizer)
    if not hasattr(lr_scheduler, "step"):
        raise TypeError(
            f"lr_scheduler must be a torch scheduler or a callable building one, got "
            f"lr_scheduler of type {type(lr_scheduler).__name__}"
        )
    if getattr(lr_scheduler, "optimizer", optimizer) is not optimizer:
        raise ValueError("lr_scheduler must be built on trainer.optimizer, got one built on another optimizer")
    return lr_scheduler
