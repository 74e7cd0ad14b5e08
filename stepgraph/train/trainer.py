"""The Trainer: STEP's trainer API over one shared training core.

Every training path (``train``, ``train_batch``, ``train_node_sampler``,
``train_graph_batch``) turns its input into a sequence of steps and a loss
call, then hands both to :meth:`Trainer._run_epoch`, the one place where
losses are summed and back-propagated (:meth:`Trainer.update_model_params`),
accumulated (:class:`~stepgraph.LossMeter`), validated, logged and checked for
early stopping (:meth:`Trainer._end_epoch`).
"""

from __future__ import annotations

import gc
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from stepgraph.data.loaders import derive_neighbor_loader
from stepgraph.data.loaders import make_loaders as _make_loaders
from stepgraph.data.split import random_split_indices
from stepgraph.train import distributed as ddp
from stepgraph.train.checkpoint import atomic_save, load_checkpoint
from stepgraph.train.early_stopping import EarlyStopping
from stepgraph.train.loop import train_loop_formatter
from stepgraph.train.meter import LossMeter, tensor_losses
from stepgraph.train.rng import get_rng_state, seed_everything, set_rng_state

__all__ = ["Trainer", "NonFiniteLossError"]

#: Names given, in order, to the members of a tensor batch tuple.
INPUT_NAMES = ("x", "batch_label", "class_label")
STOP_RULES = ("all", "any", "total")
NONFINITE_POLICIES = ("raise", "skip")
STATE_FORMAT = "stepgraph-training-state"


class NonFiniteLossError(FloatingPointError):
    """A training loss is NaN or infinite; the weights were not updated."""


def _batch_weight(batch) -> int:
    """Number of samples in a batch: the length of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    for item in batch:
        if isinstance(item, torch.Tensor) and item.dim() > 0:
            return item.shape[0]
    return 1


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _as_index_tensor(ind, name: str, n: int) -> torch.Tensor:
    ind = torch.as_tensor(np.asarray(ind) if not isinstance(ind, torch.Tensor) else ind)
    if ind.dtype == torch.bool:
        if ind.numel() != n:
            raise ValueError(f"{name} is a boolean mask of length {ind.numel()}, expected {n}")
        ind = ind.nonzero().flatten()
    if ind.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must hold integer positions, got dtype {ind.dtype}")
    ind = ind.long().flatten()
    if ind.numel() == 0:
        raise ValueError(f"{name} is empty")
    if ind.min() < 0 or ind.max() >= n:
        raise IndexError(f"{name} holds positions outside [0, {n}): "
                         f"min {int(ind.min())}, max {int(ind.max())}")
    if torch.unique(ind).numel() != ind.numel():
        raise ValueError(f"{name} holds duplicated positions")
    return ind


def _check_disjoint(train_ind: torch.Tensor, valid_ind: torch.Tensor | None) -> None:
    if valid_ind is not None and torch.isin(valid_ind, train_ind).any():
        n = int(torch.isin(valid_ind, train_ind).sum())
        raise ValueError(f"train_ind and valid_ind overlap in {n} positions; they must be disjoint")


class Trainer:
    """Train a model whose losses come back as a dict of named scalars.

    The public methods and attributes are those of STEP's trainer; see
    ``docs/`` for the differences. A model meets the *loss-dict contract*:
    ``model.loss(x, ind=None, **named_inputs)`` returns ``{"name": scalar
    tensor, ...}``; tensor values are summed for the backward pass, other values
    are only logged, and ``graph_ids`` is metadata.

    Parameters
    ----------
    model
        The :class:`torch.nn.Module` to train.
    device
        Where batches are moved; defaults to the device of the model's first
        parameter.
    checkpoint_dir
        Folder of the checkpoints: ``best.pt`` (best weights), ``last.pt``
        (whole training state, for ``resume_from``) and ``interrupted.pt``
        (after Ctrl-C); a fresh temporary folder when ``None``.
    seed
        Seed of the whole run: every training call starts by seeding Python,
        NumPy and torch with it (:func:`~stepgraph.train.rng.seed_everything`),
        so shuffling, sampling and dropout repeat; :meth:`split_X` uses it
        too. ``None`` leaves the global generators alone.
    grad_clip
        Clip the gradients' global norm to this value; ``None`` does not clip.
    stop_on
        Early-stopping rule over the validation losses: ``"all"`` (stop when
        every loss has stopped improving, STEP's rule), ``"any"`` (when one has)
        or ``"total"`` (one monitor on the sum of the validation losses).
    restore_best
        Load the best weights (lowest total validation loss) at the end of
        training when a checkpoint was written.
    progress
        Show tqdm progress bars.
    trace_func
        Receives the trainer's messages (early stopping reports).
    checkpoint_every
        Write the whole training state to ``checkpoint_dir / "last.pt"`` every
        this many epochs (and at the end); 0 never writes it.
    distributed
        Train data-parallel over a ``torch.distributed`` process group
        (DistributedDataParallel). ``None`` (default) does so when launched by
        ``torchrun`` (``WORLD_SIZE`` > 1) or when a group is initialised;
        see ``docs/distributed.md``.
    find_unused_parameters
        Passed to DistributedDataParallel (for models whose losses skip some
        parameters).
    on_nonfinite
        ``"raise"`` (default) stops at a NaN or infinite training loss with
        :class:`NonFiniteLossError`; ``"skip"`` skips such batches without
        touching the weights and counts them in :attr:`skipped_batches`.

    Attributes
    ----------
    model : torch.nn.Module
        The model being trained.
    optimizer : torch.optim.Optimizer or None
        Set by :meth:`init_optimizer` (called with defaults on first training).
    lr_scheduler : torch.optim.lr_scheduler.LRScheduler or None
        Set by :meth:`set_lr_scheduler`; stepped once per epoch.
    early_stopping : dict[str, EarlyStopping]
        One monitor per validation loss, created at the first validation.
    lossconfig : dict
        Per-loss :class:`EarlyStopping` settings, keyed by loss name (with or
        without the ``val_`` prefix), e.g. ``{"recon_loss": {"patience": 5}}``.
    defualt_lcfg : dict
        Settings for losses not in ``lossconfig`` (STEP's spelling; also
        reachable as ``default_lcfg``).
    history : list[dict]
        One record per epoch of the last run: ``epoch``, the train losses, the
        ``val_`` losses and ``lr``.

    Examples
    --------
    >>> trainer = Trainer(model)                                           # doctest: +SKIP
    >>> trainer.init_optimizer(lr=1e-3)                                    # doctest: +SKIP
    >>> train_loader, valid_loader = Trainer.make_loaders(dataset, 256)    # doctest: +SKIP
    >>> trainer.train_batch(epochs=20, loaders=(train_loader, valid_loader))  # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, *, device: str | torch.device | None = None,
                 checkpoint_dir: str | Path | None = None, seed: int | None = 0,
                 grad_clip: float | None = None, stop_on: str = "all", restore_best: bool = True,
                 progress: bool = True, trace_func: Callable[[str], Any] = print,
                 checkpoint_every: int = 1, on_nonfinite: str = "raise",
                 distributed: bool | None = None, find_unused_parameters: bool = False):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if stop_on not in STOP_RULES:
            raise ValueError(f"stop_on must be one of {STOP_RULES}, got stop_on={stop_on!r}")
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got on_nonfinite={on_nonfinite!r}")
        if not isinstance(checkpoint_every, int) or checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be an int >= 0, got checkpoint_every={checkpoint_every!r}")
        if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)):
            raise TypeError(f"seed must be an int or None, got seed={seed!r}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got grad_clip={grad_clip!r}")
        self.model = model
        self.distributed = ddp.init_distributed() if distributed in (None, True) else False
        if distributed and not self.distributed:
            raise ValueError("distributed=True but no torch.distributed process group with more than "
                             "one process was found; launch with torchrun")
        self.find_unused_parameters = find_unused_parameters
        if self.distributed and on_nonfinite == "skip":
            raise ValueError("on_nonfinite='skip' is not supported in distributed training: a batch "
                             "skipped on one rank would leave the others waiting in backward")
        self._ddp = None
        self._synced_forward = False
        if device is None and self.distributed and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        if device is None:
            first = next(model.parameters(), None)
            device = first.device if first is not None else "cpu"
        self.device = torch.device(device)
        self.model.to(self.device)
        self.seed = seed
        self.grad_clip = grad_clip
        self.stop_on = stop_on
        self.restore_best = restore_best
        main = ddp.is_main_process()
        self.progress = progress and main
        self.trace_func = trace_func if main else (lambda message: None)
        self.checkpoint_every = checkpoint_every
        self.on_nonfinite = on_nonfinite
        self.skipped_batches = 0
        self.interrupted = False
        self._checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler = None
        self.early_stopping: dict[str, EarlyStopping] = {}
        self.lossconfig: dict[str, dict] = {}
        self.defualt_lcfg: dict[str, Any] = {"patience": 10, "delta": 0.0, "mode": "min",
                                             "verbose": False, "path": None}
        self.history: list[dict[str, float]] = []
        self.stop_reason: str | None = None
        self.best: EarlyStopping | None = None
        self._tensor_keys: set[str] = set()
        self.graph_dataset = None

    # ------------------------------------------------------------------ setup
    @property
    def default_lcfg(self) -> dict[str, Any]:
        """Correctly spelled alias of :attr:`defualt_lcfg`."""
        return self.defualt_lcfg

    @default_lcfg.setter
    def default_lcfg(self, value: dict[str, Any]) -> None:
        self.defualt_lcfg = value

    @property
    def checkpoint_dir(self) -> Path:
        """Folder holding ``best.pt`` (created on first use)."""
        if self._checkpoint_dir is None:
            self._checkpoint_dir = Path(tempfile.mkdtemp(prefix="stepgraph-"))
        self._checkpoint_dir.mkdir(parents=True, exist_ok=True)
        return self._checkpoint_dir

    @property
    def net(self) -> torch.nn.Module:
        """The user's model (:attr:`model` is never wrapped; the DDP wrapper is internal)."""
        return self.model

    def _ddp_module(self):
        """The DistributedDataParallel wrapper, built at first use (after the
        optimizer has decided which parameters train)."""
        if self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(ddp.LossForward(self.model), device_ids=ids,
                                                find_unused_parameters=self.find_unused_parameters)
            self._ddp_params = {id(p) for p in self.model.parameters() if p.requires_grad}
        return self._ddp

    def _model_loss(self, *args, **kwargs):
        """Call ``model.loss``; through DDP when training distributed, so that the
        backward pass synchronises the gradients."""
        if self.distributed and self.model.training and torch.is_grad_enabled():
            self._synced_forward = True
            return self._ddp_module()(*args, **kwargs)
        return self.model.loss(*args, **kwargs)

    def mode_switch_to_train(self) -> None:
        """Put the model in training mode."""
        self.model.train()

    def init_optimizer(self, lr: float = 0.001, tune_lr: float = 0.0001, stage: int = 1,
                       tune_batch_embedding: bool = True) -> torch.optim.Optimizer:
        """Create the Adam optimizer.

        Stage 1 trains every parameter at ``lr``. Stage 2 fine-tunes: the
        model's pretrained backbone, the parameters returned by its
        ``backbone_parameters()`` method, train at ``tune_lr`` and every other
        parameter at ``lr``. Batch-embedding parameters, those whose name
        contains ``"batch_embedding"``, are trained at ``lr`` when
        ``tune_batch_embedding`` is true and frozen (``requires_grad=False``,
        left out of the optimizer) otherwise, in either stage.

        Parameters
        ----------
        lr
            Learning rate of the (non-backbone) parameters.
        tune_lr
            Learning rate of the backbone in stage 2.
        stage
            1 (train all) or 2 (fine-tune).
        tune_batch_embedding
            Whether batch-embedding parameters are trained.
        """
        for name, value in (("lr", lr), ("tune_lr", tune_lr)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {name}={value!r}")
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got stage={stage!r}")
        net = self.net
        batch_emb = {id(p) for n, p in net.named_parameters() if "batch_embedding" in n}
        for p in net.parameters():
            if id(p) in batch_emb:
                p.requires_grad_(bool(tune_batch_embedding))
        backbone: set[int] = set()
        if stage == 2:
            hook = getattr(net, "backbone_parameters", None)
            if not callable(hook):
                raise ValueError(
                    "stage=2 needs the model to define backbone_parameters(), returning the "
                    "pretrained parameters to fine-tune at tune_lr"
                )
            backbone = {id(p) for p in hook() if id(p) not in batch_emb}
        params = [p for p in net.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        groups = [{"params": [p for p in params if id(p) not in backbone], "lr": lr}]
        if backbone:
            groups.append({"params": [p for p in params if id(p) in backbone], "lr": tune_lr})
        groups = [g for g in groups if g["params"]]
        self.optimizer = torch.optim.Adam(groups, lr=lr)
        self.lr_scheduler = None
        if self._ddp is not None and {id(p) for p in params} != self._ddp_params:
            self._ddp = None  # the trainable parameters changed: DDP must be rebuilt
        return self.optimizer

    def set_lr_scheduler(self, lr_scheduler=None, gamma: float = 0.1, milestones: Iterable[int] = ()):
        """Set the learning-rate scheduler, stepped once per epoch.

        Parameters
        ----------
        lr_scheduler
            A scheduler built on :attr:`optimizer`, or a callable taking the
            optimizer and returning one. ``None`` builds
            :class:`~torch.optim.lr_scheduler.MultiStepLR` from ``gamma`` and
            ``milestones``. A :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau`
            is stepped with the total validation loss (training loss without
            validation).
        gamma
            Multiplicative factor of learning-rate decay (``MultiStepLR``).
        milestones
            Epochs at which the learning rate decays (``MultiStepLR``).
        """
        if self.optimizer is None:
            self.init_optimizer()
        if lr_scheduler is None:
            lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(
                self.optimizer, milestones=sorted(int(m) for m in milestones), gamma=gamma)
        elif callable(lr_scheduler) and not hasattr(lr_scheduler, "step"):
            lr_scheduler = lr_scheduler(self.optimizer)
        if not hasattr(lr_scheduler, "step"):
            raise TypeError(f"lr_scheduler must be a torch scheduler, got {type(lr_scheduler).__name__}")
        if getattr(lr_scheduler, "optimizer", self.optimizer) is not self.optimizer:
            raise ValueError("lr_scheduler was built on another optimizer than trainer.optimizer")
        self.lr_scheduler = lr_scheduler
        return lr_scheduler

    # ------------------------------------------------------------ the core
    def update_model_params(self, loss_dict: Mapping[str, Any], epoch: int, step: int | None = None
                            ) -> torch.Tensor | None:
        """Sum the tensor losses, back-propagate, clip and step the optimizer.

        Parameters
        ----------
        loss_dict
            Named losses; tensor values are summed, others ignored.
        epoch
            Current epoch, for error messages.
        step
            Current step within the epoch, for error messages.

        Returns
        -------
        torch.Tensor or None
            The detached total loss; ``None`` when a non-finite batch was
            skipped (``on_nonfinite="skip"``).

        Raises
        ------
        NonFiniteLossError
            When the total is NaN or infinite; raised before the weights change.
        """
        if self.optimizer is None:
            self.init_optimizer()
        losses = tensor_losses(loss_dict)
        if not losses:
            raise TypeError(
                "the loss dict holds no tensor to back-propagate; keys were "
                f"{list(loss_dict)} (values must be scalar tensors)"
            )
        total = sum(losses.values())
        if total.dim() != 0 and total.numel() != 1:
            raise ValueError(f"losses must be scalars, got a total of shape {tuple(total.shape)}")
        if not bool(torch.isfinite(total)):
            if self.on_nonfinite == "skip":
                self.skipped_batches += 1
                return None
            values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            where = f"epoch {epoch}" + ("" if step is None else f", step {step}")
            raise NonFiniteLossError(
                f"non-finite training loss at {where}: {values}; the weights were not updated "
                f"(the last good state is in {self.checkpoint_dir / 'last.pt'} if it was written)")
        self._tensor_keys.update(losses)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.distributed:
            if not self._synced_forward:  # a call_func called model.loss itself, bypassing DDP
                ddp.all_reduce_gradients(self.model)
            self._synced_forward = False
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return total.detach()

    def cum_loss(self, loss_dict: Mapping[str, Any], total_loss_dict, use_earlystop: bool = False,
                 n_batch: int = -1, n_epoch: int = -1, weight: float = 1.0):
        """Accumulate one batch's losses into the epoch's running means.

        Parameters
        ----------
        loss_dict
            The batch's losses.
        total_loss_dict
            A :class:`~stepgraph.LossMeter` (updated with ``weight``), or a
            plain dict of running means, updated as the mean over ``n_batch``
            batches (STEP's form).
        use_earlystop
            Set up early stopping from these keys when not yet done.
        n_batch
            1-based number of batches seen, for the plain-dict form.
        n_epoch
            Current epoch (unused; kept for STEP's signature).
        weight
            The batch's weight (its number of samples) for a ``LossMeter``.

        Returns
        -------
        LossMeter or dict
            ``total_loss_dict``, updated. Values are detached: nothing kept
            here holds an autograd graph.
        """
        if isinstance(total_loss_dict, LossMeter):
            total_loss_dict.update(loss_dict, weight)
        else:
            n = max(int(n_batch), 1)
            for key, value in loss_dict.items():
                if key == "graph_ids":
                    continue
                value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
                prev = total_loss_dict.get(key, 0.0)
                total_loss_dict[key] = prev + (value - prev) / n
        if use_earlystop and not self.early_stopping:
            self.setup_early_stopping(loss_dict)
        return total_loss_dict

    def _steps(self, batches, state):
        total = len(batches) if hasattr(batches, "__len__") else None
        if not self.progress or total == 1:
            return batches
        return tqdm(batches, total=total, leave=False, desc="step", dynamic_ncols=True)

    def _run_epoch(self, state: dict, batches: Iterable, loss_call: Callable,
                   validate: Callable[[], dict] | None = None) -> bool:
        """Train one epoch: the shared core of every training path.

        Parameters
        ----------
        state
            The loop state (see :func:`~stepgraph.train_loop_formatter`).
        batches
            Iterable of whatever ``loss_call`` takes.
        loss_call
            ``loss_call(batch, step) -> (loss_dict, weight)``, or ``None`` to
            skip a batch.
        validate
            Returns the epoch's ``val_`` losses; ``None`` when there is no
            validation set.

        Returns
        -------
        bool
            Whether early stopping fired.
        """
        self.mode_switch_to_train()
        if self.optimizer is None:  # before the first forward (which may build DDP)
            self.init_optimizer()
        meter = LossMeter()
        self._train_steps(state, batches, loss_call, meter)
        ddp.all_reduce_meter(meter)
        if not len(meter):
            raise ValueError(f"epoch {state['epoch']} had no training batch")
        train_losses = meter.compute()
        valid_losses = validate() if validate is not None else {}
        return self._end_epoch(state, train_losses, valid_losses)

    def _train_steps(self, state: dict, batches: Iterable, loss_call: Callable, meter: LossMeter) -> None:
        keys = None
        last_shown = time.monotonic()
        for step, batch in enumerate(self._steps(batches, state)):
            out = loss_call(batch, step)
            if out is None:  # nothing to train on in this batch (e.g. no train node)
                continue
            loss_dict, weight = out
            loss_dict = dict(loss_dict)
            loss_dict.pop("graph_ids", None)
            if keys is None:
                keys = set(loss_dict)
            elif set(loss_dict) != keys:
                raise ValueError(f"the loss dict's keys changed at epoch {state['epoch']}, step {step}: "
                                 f"{sorted(loss_dict)} instead of {sorted(keys)}")
            if self.update_model_params(loss_dict, state["epoch"], step) is None:
                continue
            self.cum_loss(loss_dict, meter, weight=weight)
            state["step"] += 1
            if self.progress and time.monotonic() - last_shown > 1.0:
                state["tbar"].set_postfix_str(self.format_loss_dict(meter.compute(), state))
                last_shown = time.monotonic()

    def _evaluate(self, batches: Iterable, loss_call: Callable) -> dict[str, float]:
        """Validation through the same meter: eval mode, no grad, ``val_`` keys."""
        was_training = self.model.training
        self.model.eval()
        meter = LossMeter()
        try:
            with torch.no_grad():
                for step, batch in enumerate(batches):
                    out = loss_call(batch, step)
                    if out is not None:
                        meter.update(*out)
        finally:
            self.model.train(was_training)
        ddp.all_reduce_meter(meter)
        return {f"val_{k}": v for k, v in meter.compute().items()}

    def _total(self, losses: Mapping[str, float], prefix: str = "") -> float:
        keys = [prefix + k for k in sorted(self._tensor_keys) if prefix + k in losses]
        return float(sum(losses[k] for k in keys)) if keys else math.nan

    def _end_epoch(self, state: dict, train_losses: dict, valid_losses: dict) -> bool:
        epoch = state["epoch"]
        lr = self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else math.nan
        self.history.append({"epoch": epoch, **train_losses, **valid_losses, "lr": lr})
        writer = state.get("writer")
        if writer is not None and ddp.is_main_process():
            for key, value in {**train_losses, **valid_losses}.items():
                writer.add_scalar(key, value, epoch)
        stop = self.check_early_stop(valid_losses) if valid_losses else False
        if self.lr_scheduler is not None:
            if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                monitored = self._total(valid_losses, "val_") if valid_losses else self._total(train_losses)
                self.lr_scheduler.step(monitored)
            else:
                self.lr_scheduler.step()
        if self.progress:
            state["tbar"].set_postfix_str(
                self.format_loss_dict(train_losses, state, valid_losses, endepoch=True))
        return stop

    # ------------------------------------------------------ early stopping
    def begin_fit(self) -> None:
        """Start a new run: seed the generators (when :attr:`seed` is set) and
        reset the early-stopping monitors, history and stop reason."""
        if self.distributed:
            # An earlier Trainer's DDP wrapper left for the garbage collector may
            # talk to the process group when it is freed; collect it here, at
            # the same point on every rank, not at a random moment mid-epoch.
            gc.collect()
            ddp.broadcast_module(self.model)  # every rank starts from rank 0's weights
        if self.seed is not None:
            seed_everything(self.seed)
        self.skipped_batches = 0
        self.interrupted = False
        self.early_stopping = {}
        self.history = []
        self.stop_reason = None
        self.best = None
        self._tensor_keys = set()

    def setup_early_stopping(self, loss_dict: Mapping[str, Any]) -> dict[str, EarlyStopping]:
        """Create one :class:`EarlyStopping` per ``val_`` loss in ``loss_dict``.

        Settings come from :attr:`lossconfig` (by loss name, with or without
        ``val_``) over :attr:`defualt_lcfg`. With ``stop_on="total"`` a single
        monitor, ``val_total``, watches the sum of the validation losses.
        """
        keys = [k for k in loss_dict if k.startswith("val_") and k != "val_graph_ids"]
        if self.stop_on == "total":
            keys = ["val_total"]
        self.early_stopping = {}
        for key in keys:
            cfg = {**self.defualt_lcfg,
                   **self.lossconfig.get(key[4:], {}), **self.lossconfig.get(key, {})}
            cfg.setdefault("trace_func", self.trace_func)
            try:
                self.early_stopping[key] = EarlyStopping(**cfg)
            except TypeError as err:
                raise TypeError(f"invalid early-stopping settings for {key!r}: {cfg}: {err}") from None
        return self.early_stopping

    def check_early_stop(self, total_loss_dict: Mapping[str, float]) -> bool:
        """Feed the validation losses to the monitors; decide whether to stop.

        Also tracks the best total validation loss and writes its weights to
        ``checkpoint_dir / "best.pt"``.

        Returns
        -------
        bool
            ``True`` when the :attr:`stop_on` rule is met.
        """
        val = {k: float(v) for k, v in total_loss_dict.items() if k.startswith("val_")}
        if self._tensor_keys:  # monitor losses only, not values the model logs
            val = {k: v for k, v in val.items() if k[4:] in self._tensor_keys}
        if not val:
            return False
        total = self._total(val, "val_")
        if math.isnan(total):  # no train step seen yet: all val_ values count
            total = float(sum(val.values()))
        if self.stop_on == "total":
            val = {"val_total": total}
        if not self.early_stopping:
            self.setup_early_stopping(val)
        for key, es in self.early_stopping.items():
            if key not in val:
                raise KeyError(f"validation loss {key!r} was monitored but is missing now; "
                               f"got {sorted(val)}")
            es(val[key], self.model if ddp.is_main_process() else None)
        if self.best is None:
            self.best = EarlyStopping(patience=1 << 30, path=self.checkpoint_dir / "best.pt",
                                      trace_func=self.trace_func)
        self.best(total, self.model if ddp.is_main_process() else None)
        stopped = [k for k, es in self.early_stopping.items() if es.early_stop]
        stop = bool(stopped) and (len(stopped) == len(self.early_stopping) or self.stop_on == "any")
        if stop:
            detail = ", ".join(f"{k} (best {self.early_stopping[k].best_score:.4g}, no improvement "
                               f"for {self.early_stopping[k].counter} checks)" for k in stopped)
            self.stop_reason = f"stopped on {detail}"
        return stop

    def restore_best_weights(self) -> bool:
        """Load the best checkpoint of the last run, if one was written.

        Returns
        -------
        bool
            Whether weights were restored.
        """
        written = self.best is not None and self.best.checkpoint_written
        if self.distributed:  # rank 0 holds the file; every rank gets its weights
            written = ddp.all_gather_objects(written)[0]
            if written and ddp.is_main_process():
                self.model.load_state_dict(load_checkpoint(self.best.path, map_location=self.device))
            if written:
                ddp.broadcast_module(self.model)
            return written
        if not written:
            return False
        self.model.load_state_dict(load_checkpoint(self.best.path, map_location=self.device))
        return True

    def format_loss_dict(self, loss_dict: Mapping[str, float], state: Mapping[str, Any],
                         valid_loss_dict: Mapping[str, float] | None = None,
                         endepoch: bool = False) -> str:
        """Progress-bar text: ``name=value`` per loss, validation as ``value/best``.

        Parameters
        ----------
        loss_dict
            Training losses (floats).
        state
            The loop state; unused here, kept for STEP's signature.
        valid_loss_dict
            Validation losses, shown with the best value seen so far.
        endepoch
            Whether the epoch has ended (validation is only shown then).
        """
        parts = [f"{k}={float(v):.4f}" for k, v in loss_dict.items() if k != "graph_ids"]
        if valid_loss_dict and endepoch:
            for key, value in valid_loss_dict.items():
                es = self.early_stopping.get(key)
                best = es.best_score if es is not None and es.best_score is not None else value
                parts.append(f"{key}={float(value):.4f}/{float(best):.4f}")
        return ", ".join(parts)

    # ------------------------------------------------------ data parallel
    def _shard(self, indices, state: dict, shuffle: bool, pad: bool) -> torch.Tensor:
        """This rank's share of ``indices`` for the current epoch (shared-seed permutation;
        ``pad`` for training, so every rank runs the same number of steps)."""
        indices = indices.cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
        return torch.from_numpy(ddp.shard_indices(indices, state["epoch"], self.seed or 0, shuffle, pad))

    @staticmethod
    def _loader_seeds(loader) -> torch.Tensor:
        """The seed nodes a NeighborLoader visits."""
        nodes = loader.input_data.node
        return torch.arange(loader.data.num_nodes) if nodes is None else nodes

    def _sharded_loaders(self, state: dict, train_loader, valid_loader):
        """DataLoaders over this rank's shard, reshuffled per epoch with a shared seed."""
        if "ddp_loaders" not in state:
            from torch.utils.data import DataLoader, RandomSampler

            def shard(loader, shuffle, pad):
                if loader is None:
                    return None
                sampler = ddp.ShardSampler(len(loader.dataset), shuffle, seed=self.seed or 0, pad=pad)
                return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                                  collate_fn=loader.collate_fn, num_workers=loader.num_workers,
                                  drop_last=loader.drop_last)

            state["ddp_loaders"] = (
                shard(train_loader, isinstance(train_loader.sampler, RandomSampler), pad=True),
                shard(valid_loader, False, pad=False))
        for loader in state["ddp_loaders"]:
            if loader is not None:
                loader.sampler.set_epoch(state["epoch"])
        return state["ddp_loaders"]

    # ----------------------------------------------------- training state
    @staticmethod
    def _track_generators(state: dict, *loaders) -> None:
        """Remember the loaders' shuffling generators (saved in checkpoints); on a
        resumed run, give them back their saved states."""
        if "generators" in state:
            return
        gens = [loader.generator for loader in loaders
                if loader is not None and getattr(loader, "generator", None) is not None]
        state["generators"] = gens
        pending = state.pop("resume_generators", None)
        if pending is not None:
            if len(pending) != len(gens):
                raise ValueError(f"resume_from: the checkpoint holds {len(pending)} loader generator "
                                 f"state(s) but the loaders given have {len(gens)}; resume with the same "
                                 "loaders (same shuffle settings) as the interrupted run")
            for gen, gen_state in zip(gens, pending):
                gen.set_state(gen_state)

    def save_training_state(self, path, state: dict, completed: int | None = None,
                            stopped: bool = False, gather: bool = True) -> Path:
        """Write the whole training state to ``path``, atomically.

        It holds the model, optimizer, LR scheduler, every early-stopping
        monitor, the epoch and step, the history, the RNG states of Python,
        NumPy and torch, and the states of the loaders' shuffling generators.

        Parameters
        ----------
        path
            Destination file.
        state
            The loop state.
        completed
            Number of completed epochs; ``state["epoch"]`` by default.
        stopped
            Whether early stopping had fired.
        gather
            In distributed runs, collect every rank's RNG state (a collective
            call: every rank must call it); rank 0 alone writes the file.
        """
        rng_states = ddp.all_gather_objects(get_rng_state()) if gather else [get_rng_state()]
        if not ddp.is_main_process():
            return Path(path)
        payload = {
            "format": STATE_FORMAT,
            "version": 1,
            "epoch": state["epoch"] if completed is None else completed,
            "step": state["step"],
            "stopped": stopped,
            "model": self.net.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "lr_scheduler": None if self.lr_scheduler is None else self.lr_scheduler.state_dict(),
            "early_stopping": {k: es.state_dict() for k, es in self.early_stopping.items()},
            "best": None if self.best is None else self.best.state_dict(),
            "history": list(self.history),
            "stop_reason": self.stop_reason,
            "tensor_keys": sorted(self._tensor_keys),
            "skipped_batches": self.skipped_batches,
            "rng": rng_states,
            "generators": [g.get_state() for g in state.get("generators", [])],
        }
        return atomic_save(payload, path)

    def load_training_state(self, path, state: dict) -> tuple[int, bool]:
        """Restore a state written by :meth:`save_training_state`.

        Call it (through ``resume_from=``) with the same model architecture,
        optimizer set-up and loaders as the run that wrote it.

        Returns
        -------
        completed, stopped
            The number of completed epochs and whether early stopping had fired.

        Raises
        ------
        ValueError
            When the file is not a stepgraph training state or was written for
            another model.
        """
        payload = load_checkpoint(path, map_location=self.device)
        if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
            raise ValueError(f"resume_from={str(path)!r} is not a stepgraph training state "
                             "(expected last.pt or interrupted.pt written by the Trainer)")
        try:
            self.net.load_state_dict(payload["model"])
        except RuntimeError as err:
            detail = " ".join(str(err).split())[:300]
            raise ValueError(f"resume_from={str(path)!r} was written for another model: {detail}") from None
        if payload["optimizer"] is not None:
            if self.optimizer is None:
                self.init_optimizer()
            try:
                self.optimizer.load_state_dict(payload["optimizer"])
            except ValueError as err:
                raise ValueError(f"resume_from={str(path)!r}: the optimizer differs from the saved one "
                                 f"({err}); call init_optimizer as in the interrupted run") from None
        if payload["lr_scheduler"] is not None:
            if self.lr_scheduler is None:
                raise ValueError(f"resume_from={str(path)!r} holds an LR scheduler state; call "
                                 "set_lr_scheduler as in the interrupted run before resuming")
            self.lr_scheduler.load_state_dict(payload["lr_scheduler"])
        self.early_stopping = {}
        for key, es_state in payload["early_stopping"].items():
            cfg = {k: es_state[k] for k in ("patience", "delta", "mode", "path")}
            self.early_stopping[key] = EarlyStopping(trace_func=self.trace_func, **cfg)
            self.early_stopping[key].load_state_dict(es_state)
        self.best = None
        if payload["best"] is not None:
            # the best weights so far move into this trainer's checkpoint_dir
            self.best = EarlyStopping(patience=payload["best"]["patience"],
                                      path=self.checkpoint_dir / "best.pt", trace_func=self.trace_func)
            self.best.load_state_dict({**payload["best"], "path": self.best.path})
            old = Path(payload["best"]["path"]) if payload["best"]["path"] else None
            if ddp.is_main_process() and self.best.checkpoint_written and old != self.best.path:
                if old is not None and old.is_file():
                    atomic_save(load_checkpoint(old), self.best.path)
                else:
                    self.best.checkpoint_written = False
        self.history = list(payload["history"])
        self.stop_reason = payload["stop_reason"]
        self._tensor_keys = set(payload["tensor_keys"])
        self.skipped_batches = payload["skipped_batches"]
        self.interrupted = False
        rng_states = payload["rng"]
        set_rng_state(rng_states[ddp.rank()] if len(rng_states) == ddp.world_size() else rng_states[0])
        state["step"] = payload["step"]
        state["epoch"] = payload["epoch"]
        state["resume_generators"] = payload["generators"]
        return payload["epoch"], payload["stopped"]

    # ---------------------------------------------------------- splitting
    def split_X(self, X, split_rate: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Seeded random split of the rows of ``X``.

        Parameters
        ----------
        X
            Array-like with samples in rows.
        split_rate
            Share of rows for validation, in [0, 1); every positive share is
            honoured (at least one validation row), 0 gives no validation set.

        Returns
        -------
        train_ind, valid_ind
            Sorted int64 index tensors; ``valid_ind`` is ``None`` when
            ``split_rate`` is 0.
        """
        n = X.shape[0] if hasattr(X, "shape") else len(X)
        train_ind, valid_ind = random_split_indices(n, split_rate, seed=self.seed or 0)
        if train_ind.size == 0:
            raise ValueError(f"split_rate={split_rate} leaves no training rows out of {n}")
        return torch.from_numpy(train_ind), (torch.from_numpy(valid_ind) if valid_ind.size else None)

    # ------------------------------------------------------- loss calls
    def loss(self, X, ind=None, **kwargs):
        """Loss of the full-matrix path; defaults to ``model.loss(X, ind=ind, **kwargs)``."""
        return self._model_loss(X, ind=ind, **kwargs)

    def handle_input_tuple(self, input_tuple):
        """Loss dict of one tensor batch.

        A tuple ``(x, batch_label, class_label)`` (as many as the dataset's
        mode gives) calls ``model.loss(x, batch_label=..., class_label=...)``;
        a dict calls ``model.loss(**batch)``; a tensor ``model.loss(x)``.
        """
        batch = _to_device(input_tuple, self.device)
        if isinstance(batch, torch.Tensor):
            return self._model_loss(batch)
        if isinstance(batch, Mapping):
            return self._model_loss(**batch)
        if len(batch) > len(INPUT_NAMES):
            raise ValueError(f"a batch tuple holds at most {len(INPUT_NAMES)} items "
                             f"{INPUT_NAMES}, got {len(batch)}")
        named = {name: value for name, value in zip(INPUT_NAMES[1:], batch[1:])}
        return self._model_loss(batch[0], **named)

    # ------------------------------------------------------ training paths
    @staticmethod
    def _split_loaders(loaders):
        if isinstance(loaders, (tuple, list)):
            if len(loaders) == 1:
                return loaders[0], None
            if len(loaders) != 2:
                raise ValueError(f"loaders must be (train_loader, valid_loader), got {len(loaders)} items")
            return loaders[0], loaders[1]
        return loaders, None

    @train_loop_formatter
    def train_batch(self, state: dict, loaders, call_func: Callable | None = None) -> bool:
        """Train one epoch over tensor batches (decorated: call with ``epochs=``).

        Parameters
        ----------
        state
            Supplied by the loop.
        loaders
            ``(train_loader, valid_loader)``; ``valid_loader`` may be ``None``.
            A single loader trains without validation.
        call_func
            ``call_func(batch) -> loss_dict``; defaults to
            :meth:`handle_input_tuple`.

        Returns
        -------
        bool
            Whether to stop early.
        """
        train_loader, valid_loader = self._split_loaders(loaders)
        if self.distributed:
            train_loader, valid_loader = self._sharded_loaders(state, train_loader, valid_loader)
        self._track_generators(state, train_loader, valid_loader)
        call = call_func or self.handle_input_tuple

        def loss_call(batch, step):
            return call(batch), _batch_weight(batch)

        validate = None if valid_loader is None else (lambda: self.validate_loader(valid_loader, call_func))
        return self._run_epoch(state, train_loader, loss_call, validate)

    @train_loop_formatter
    def train(self, state: dict, X, train_ind=None, valid_ind=None, call_func: Callable | None = None,
              **kwargs) -> bool:
        """Train one full-matrix step per epoch (decorated: call with ``epochs=``).

        Parameters
        ----------
        state
            Supplied by the loop.
        X
            The whole input matrix (tensor or array), samples in rows.
        train_ind
            Rows to train on; all rows when ``None``.
        valid_ind
            Rows to validate on; no validation when ``None``. Must not overlap
            ``train_ind``.
        call_func
            ``call_func(X, ind=..., **kwargs) -> loss_dict``; defaults to
            :meth:`loss`.
        **kwargs
            Passed to the loss call.
        """
        X = _to_device(torch.as_tensor(X), self.device)
        n = X.shape[0]
        valid_ind = None if valid_ind is None else _as_index_tensor(valid_ind, "valid_ind", n)
        if train_ind is not None:
            train_ind = _as_index_tensor(train_ind, "train_ind", n)
        elif valid_ind is not None:  # train on the rows that are not validated
            train_ind = torch.ones(n, dtype=torch.bool).index_fill_(0, valid_ind, False).nonzero().flatten()
        else:
            train_ind = torch.arange(n)
        if not state.setdefault("checked_indices", False):
            _check_disjoint(train_ind, valid_ind)
            state["checked_indices"] = True
        call = call_func or self.loss
        if self.distributed:  # every rank holds X and trains on its share of the rows
            train_ind = self._shard(train_ind, state, shuffle=False, pad=True)
            valid_ind = None if valid_ind is None else self._shard(valid_ind, state, shuffle=False, pad=False)
        train_ind = train_ind.to(self.device)

        def loss_call(ind, step):
            return call(X, ind=ind.to(self.device), **kwargs), ind.numel()

        validate = None
        if valid_ind is not None:  # a rank's validation share may be empty: no batch then
            valid_batches = [valid_ind] if valid_ind.numel() else []
            validate = lambda: self._evaluate(valid_batches, loss_call)  # noqa: E731
        return self._run_epoch(state, [train_ind], loss_call, validate)

    # ----------------------------------------------------------- validation
    def validate_loader(self, loader, call_func: Callable | None = None) -> dict[str, float]:
        """Mean losses over a loader in eval mode without gradients.

        Returns
        -------
        dict
            ``{"val_<name>": mean}``, weighted by batch size.
        """
        call = call_func or self.handle_input_tuple
        return self._evaluate(loader, lambda batch, step: (call(batch), _batch_weight(batch)))

    def validate_X(self, X, ind=None, call_func: Callable | None = None, **kwargs) -> dict[str, float]:
        """Losses of the full-matrix path on rows ``ind`` (all when ``None``), in eval mode."""
        X = _to_device(torch.as_tensor(X), self.device)
        ind = torch.arange(X.shape[0]) if ind is None else _as_index_tensor(ind, "ind", X.shape[0])
        ind = ind.to(self.device)
        call = call_func or self.loss
        return self._evaluate([ind], lambda i, step: (call(X, ind=i, **kwargs), i.numel()))

    # ------------------------------------------------------- graph paths
    def _graph_inputs(self, batch, dataset) -> dict[str, Any]:
        """Model inputs of a NeighborLoader batch: features of ``batch.n_id`` from
        ``dataset`` (sparse rows densified here), edges, edge weights and batch labels."""
        n_id = batch.n_id
        inputs = {"x": dataset.features(n_id).to(self.device, non_blocking=True),
                  "edge_index": batch.edge_index.to(self.device, non_blocking=True)}
        if getattr(batch, "edge_weight", None) is not None:
            inputs["edge_weight"] = batch.edge_weight.to(self.device, non_blocking=True)
        if dataset.batch_label is not None:
            inputs["batch_label"] = dataset.labels("batch_label", n_id).to(self.device, non_blocking=True)
        return inputs

    def handle_ginput_tuple(self, input_tuple, ind=None, step=None):
        """Loss dict of one ``NeighborLoader`` batch.

        Gathers the features of ``batch.n_id`` from the dataset being trained
        on (sparse rows densified per batch), its batch labels when it has
        sections, and calls ``model.loss(x, ind=ind, edge_index=...,
        edge_weight=..., batch_label=...)``.

        Parameters
        ----------
        input_tuple
            A batch from :class:`torch_geometric.loader.NeighborLoader`.
        ind
            Local positions of the nodes the loss is computed on; the seed
            nodes (``0..batch.batch_size-1``) when ``None``.
        step
            Step within the epoch (for subclasses that schedule by step).
        """
        if self.graph_dataset is None:
            raise RuntimeError("handle_ginput_tuple needs trainer.graph_dataset; it is set by "
                               "train_node_sampler / train_graph_batch / validate_gloader")
        if ind is None:
            ind = torch.arange(input_tuple.batch_size)
        inputs = self._graph_inputs(input_tuple, self.graph_dataset)
        return self._model_loss(inputs.pop("x"), ind=ind.to(self.device), **inputs)

    def _graph_loss_call(self, mask: torch.Tensor | None, call_func: Callable | None):
        """``loss_call`` over NeighborLoader batches: losses on the seed nodes, restricted
        to ``mask`` (a boolean node mask) when given; batches without such seeds are skipped."""
        call = call_func or self.handle_ginput_tuple

        def loss_call(batch, step):
            ind = torch.arange(batch.batch_size)
            if mask is not None:
                ind = mask[batch.n_id[:batch.batch_size]].nonzero().flatten()
                if ind.numel() == 0:
                    if not (self.distributed and self.model.training):
                        return None
                    # every rank must run the same synchronised backward passes:
                    # a batch without loss nodes contributes zero loss, weight 0
                    losses = call(batch, torch.zeros(1, dtype=torch.long), step)
                    return {k: v * 0 if isinstance(v, torch.Tensor) else v for k, v in losses.items()}, 0
            return call(batch, ind, step), ind.numel()

        return loss_call

    def _set_graph_dataset(self, gloader, dataset) -> torch.Tensor | None:
        if not hasattr(dataset, "features"):
            raise TypeError(f"dataset must be a stepgraph BaseDataset, got {type(dataset).__name__}")
        data = getattr(gloader, "data", None)
        num_nodes = getattr(data, "num_nodes", None)
        if num_nodes is not None and num_nodes != len(dataset):
            raise ValueError(f"dataset has {len(dataset)} rows but the graph has {num_nodes} nodes; "
                             "graph node i must be dataset row i")
        self.graph_dataset = dataset
        return num_nodes

    @staticmethod
    def _node_mask(ind, name: str, num_nodes: int) -> torch.Tensor | None:
        if ind is None:
            return None
        mask = torch.zeros(num_nodes, dtype=torch.bool)
        mask[_as_index_tensor(ind, name, num_nodes)] = True
        return mask

    @train_loop_formatter
    def train_node_sampler(self, state: dict, gloader, dataset, train_ind=None, valid_ind=None,
                           call_func: Callable | None = None) -> bool:
        """Train one epoch over sampled neighbourhoods (decorated: call with ``epochs=``).

        Parameters
        ----------
        state
            Supplied by the loop.
        gloader
            A :class:`~torch_geometric.loader.NeighborLoader` with sampled
            fan-outs (see :func:`~stepgraph.data.loaders.node_loaders`), or a
            ``(train_loader, valid_loader)`` pair.
        dataset
            The :class:`~stepgraph.BaseDataset` whose row ``i`` is graph node ``i``.
        train_ind
            Seed nodes to train on; the loader's own input nodes when ``None``.
            When given, a loader over these seeds is derived from ``gloader``.
        valid_ind
            Seed nodes to validate on; a non-shuffled loader over them is
            derived from ``gloader`` (unless a pair was given).
        call_func
            ``call_func(batch, ind, step) -> loss_dict``; defaults to
            :meth:`handle_ginput_tuple`.
        """
        if state["epoch"] == 1 or "node_loaders" not in state:
            train_loader, valid_loader = self._split_loaders(gloader)
            num_nodes = self._set_graph_dataset(train_loader, dataset)
            t = None if train_ind is None else _as_index_tensor(train_ind, "train_ind", num_nodes)
            v = None if valid_ind is None else _as_index_tensor(valid_ind, "valid_ind", num_nodes)
            if t is None and v is not None:  # train on the loader's seeds that are not validated
                seeds = self._loader_seeds(train_loader)
                t = seeds[~torch.isin(seeds, v)]
            if t is not None:
                _check_disjoint(t, v)
                train_loader = derive_neighbor_loader(train_loader, t, shuffle=True)
            if v is not None and valid_loader is None:
                valid_loader = derive_neighbor_loader(train_loader, v, shuffle=False)
            if valid_loader is not None:
                _check_disjoint(self._loader_seeds(train_loader), self._loader_seeds(valid_loader))
            state["node_loaders"] = (train_loader, valid_loader)
        train_loader, valid_loader = state["node_loaders"]
        if self.distributed:
            train_loader = derive_neighbor_loader(
                train_loader, self._shard(self._loader_seeds(train_loader), state, shuffle=True, pad=True),
                shuffle=False)
            if valid_loader is not None:
                valid_loader = derive_neighbor_loader(
                    valid_loader, self._shard(self._loader_seeds(valid_loader), state, shuffle=False, pad=False),
                    shuffle=False)
        self._track_generators(state, train_loader, valid_loader)
        self.graph_dataset = dataset
        validate = None if valid_loader is None else (
            lambda: self.validate_gloader(valid_loader, call_func=call_func))
        return self._run_epoch(state, train_loader, self._graph_loss_call(None, call_func), validate)

    @train_loop_formatter
    def train_graph_batch(self, state: dict, gloader, dataset, train_ind=None, valid_ind=None,
                          call_func: Callable | None = None) -> bool:
        """Train one epoch over full neighbourhoods, losses masked to ``train_ind``.

        The loader (see :func:`~stepgraph.data.loaders.graph_loader`) visits
        every node with its complete ``n_layers``-hop neighbourhood. Training
        losses are computed on the seed nodes in ``train_ind`` only; validation
        re-visits the graph in eval mode without gradients and computes the
        losses on the seed nodes in ``valid_ind``.

        Parameters
        ----------
        state
            Supplied by the loop.
        gloader
            A :class:`~torch_geometric.loader.NeighborLoader` with
            ``num_neighbors=[-1] * n_layers`` over all nodes.
        dataset
            The :class:`~stepgraph.BaseDataset` whose row ``i`` is graph node ``i``.
        train_ind
            Nodes whose losses are trained on; all nodes when ``None``.
        valid_ind
            Nodes whose losses are validated; no validation when ``None``.
        call_func
            ``call_func(batch, ind, step) -> loss_dict``; defaults to
            :meth:`handle_ginput_tuple`.
        """
        if state["epoch"] == 1 or "graph_masks" not in state:
            num_nodes = self._set_graph_dataset(gloader, dataset)
            t = None if train_ind is None else _as_index_tensor(train_ind, "train_ind", num_nodes)
            v = None if valid_ind is None else _as_index_tensor(valid_ind, "valid_ind", num_nodes)
            if t is not None:
                _check_disjoint(t, v)
            train_mask = self._node_mask(t, "train_ind", num_nodes)
            valid_mask = self._node_mask(v, "valid_ind", num_nodes)
            if train_mask is None and valid_mask is not None:
                train_mask = ~valid_mask  # never train on the validation nodes
            state["graph_masks"] = (train_mask, valid_mask)
        train_mask, valid_mask = state["graph_masks"]
        if self.distributed:
            gloader = derive_neighbor_loader(
                gloader, self._shard(self._loader_seeds(gloader), state, shuffle=True, pad=True), shuffle=False)
        self._track_generators(state, gloader)
        self.graph_dataset = dataset
        validate = None if valid_mask is None else (
            lambda: self._evaluate(gloader, self._graph_loss_call(valid_mask, call_func)))
        return self._run_epoch(state, gloader, self._graph_loss_call(train_mask, call_func), validate)

    def validate_gloader(self, gloader, valid_ind=None, dataset=None,
                         call_func: Callable | None = None) -> dict[str, float]:
        """Mean losses over a ``NeighborLoader``'s seed nodes, in eval mode without gradients.

        Parameters
        ----------
        gloader
            The loader to evaluate.
        valid_ind
            Restrict the losses to seed nodes in ``valid_ind``; all seeds when ``None``.
        dataset
            The dataset serving node features; defaults to the one being trained on.
        call_func
            ``call_func(batch, ind, step) -> loss_dict``.

        Returns
        -------
        dict
            ``{"val_<name>": mean}``, weighted by the number of loss nodes.
        """
        if dataset is not None:
            self._set_graph_dataset(gloader, dataset)
        num_nodes = gloader.data.num_nodes
        mask = self._node_mask(valid_ind, "valid_ind", num_nodes)
        return self._evaluate(gloader, self._graph_loss_call(mask, call_func))

    def predict_gloader(self, gloader, dataset=None, method: str = "encode") -> torch.Tensor:
        """Run ``model.<method>`` over every seed node of a ``NeighborLoader``.

        Typically used with a full-neighbourhood :func:`~stepgraph.data.loaders.graph_loader`
        to embed every cell: the output for a seed node is computed from its
        complete neighbourhood, in eval mode and without gradients.

        Parameters
        ----------
        gloader
            The loader; its seed nodes are the nodes predicted.
        dataset
            The dataset serving node features; defaults to the one trained on.
        method
            Name of the model's method, called as ``method(x, edge_index,
            edge_weight=..., batch_label=...)``.

        Returns
        -------
        torch.Tensor
            One row per graph node (in node order), on the CPU; rows of
            nodes that were never a seed are zero.
        """
        if dataset is not None:
            self._set_graph_dataset(gloader, dataset)
        if self.graph_dataset is None:
            raise ValueError("predict_gloader needs dataset= (no graph dataset trained on yet)")
        func = getattr(self.net, method, None)
        if not callable(func):
            raise AttributeError(f"the model has no method {method!r}")
        was_training = self.model.training
        self.model.eval()
        out = None
        try:
            with torch.no_grad():
                for batch in gloader:
                    inputs = self._graph_inputs(batch, self.graph_dataset)
                    seeds = batch.n_id[:batch.batch_size]
                    pred = func(inputs.pop("x"), inputs.pop("edge_index"), **inputs)
                    pred = pred[:batch.batch_size].detach().cpu()
                    if out is None:
                        out = torch.zeros((gloader.data.num_nodes, *pred.shape[1:]), dtype=pred.dtype)
                    out[seeds] = pred
        finally:
            self.model.train(was_training)
        return out

    # ----------------------------------------------------------- loaders
    @staticmethod
    def make_loaders(dataset, batch_size: int, split_rate: float = 0.2, shuffle: bool = True,
                     obs_key: str | None = None, **kwargs):
        """Training and validation loaders; see :func:`stepgraph.data.loaders.make_loaders`."""
        return _make_loaders(dataset, batch_size, split_rate, shuffle, obs_key, **kwargs)
