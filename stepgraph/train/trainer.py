"""The Trainer: STEP's trainer API as a thin facade over one shared core.

Each training method (``train``, ``train_batch``, ``train_node_sampler``,
``train_graph_batch``) is a few lines over a feed (:mod:`stepgraph.train.feeds`)
built once per call by :func:`~stepgraph.train_loop_formatter`
(:mod:`stepgraph.train.loop`). Every epoch of every feed runs
:func:`~stepgraph.train.epoch.run_epoch`: the feed's batches and loss call, the
optimizer step (:meth:`Trainer.update_model_params`), the
:class:`~stepgraph.LossMeter`, validation through the public ``validate_*``
hooks, then the epoch's end: history, writer, early stopping
(:class:`~stepgraph.train.early_stopping.EarlyStoppingGroup`), best weights and
the callbacks (:mod:`stepgraph.train.callbacks`: the LR scheduler, the
loggers, the user's own, and the
:class:`~stepgraph.train.checkpointing.ModelCheckpoint`, which owns every
checkpoint file). Data parallelism is the strategy's business
(:mod:`stepgraph.train.strategies`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, SupportsFloat, TypeVar, cast

import numpy as np
import torch

from stepgraph._validation import as_index, check_choice, check_int, check_number
from stepgraph.data.loaders import make_loaders as _make_loaders
from stepgraph.data.split import random_split_indices
from stepgraph.train import feeds, layerwise
from stepgraph.train.callbacks import CallbackList, LRSchedulerStep
from stepgraph.train.checkpointing import ModelCheckpoint, TrainingCheckpoint
from stepgraph.train.early_stopping import EarlyStopping, EarlyStoppingGroup
from stepgraph.train.epoch import evaluate, run_epoch
from stepgraph.train.loop import train_loop_formatter
from stepgraph.train.meter import LossMeter, running_mean_update, tensor_losses, trained_losses, without_metadata
from stepgraph.train.optim import build_optimizer, build_scheduler
from stepgraph.train.rng import seed_everything
from stepgraph.train.state import LoopState
from stepgraph.train.step_adapter import (
    CALL_FORMS,
    STEP_DEFAULT_LCFG,
    STEP_LOSSCONFIG,
    GraphDatasetMemory,
    steps_form,
)
from stepgraph.train.strategies import Strategy, make_strategy

__all__ = ["Trainer", "NonFiniteLossError"]

#: Names given to the members of a tensor batch tuple by its length, in STEP's
#: order (the batch label is always last); a dataset's mode names them exactly.
INPUT_NAMES = {
    1: ("x",),
    2: ("x", "batch_label"),
    3: ("x", "class_label", "batch_label"),
    4: ("x", "rep", "domains", "batch_label"),
}
NONFINITE_POLICIES = ("raise", "skip")
#: The ``precision`` values (Lightning's names) and the one each stands for.
PRECISIONS = {"32": "32", "32-true": "32", "bf16-mixed": "bf16-mixed", "bf16": "bf16-mixed"}


def _as_tensors(losses: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Losses as 0-d tensors, as STEP's methods return them (``.item()`` and ``float()`` both work)."""
    return {k: torch.tensor(float(v), dtype=torch.float64) for k, v in losses.items()}


_MaybeTensor = TypeVar("_MaybeTensor", torch.Tensor, None)


def _full_precision(out: _MaybeTensor) -> _MaybeTensor:
    """Predictions made under bfloat16 autocast, as float32 (others as they are)."""
    return out.float() if out is not None and out.dtype == torch.bfloat16 else out


class NonFiniteLossError(FloatingPointError):
    """A training loss is NaN or infinite; the weights were not updated."""


class Trainer(GraphDatasetMemory):
    """Train a model whose losses come back as a dict of named scalars.

    STEP's trainer API (differences in ``docs/porting-from-step.md``). The model
    meets the *loss-dict contract*: ``model.loss(x, ind=None, **inputs)`` returns
    ``{"name": scalar tensor, ...}``; tensors are summed for the backward pass,
    other values are only logged, and ``graph_ids`` is metadata.

    Parameters
    ----------
    model
        The :class:`torch.nn.Module` to train.
    device
        Where batches are moved; the device of the model's first parameter by default.
    checkpoint_dir
        Folder of ``best.pt`` (best weights), ``last.pt`` (whole training state,
        for ``resume_from``) and ``interrupted.pt`` (Ctrl-C). ``None`` (default)
        writes no file: the best weights are kept in memory (a CPU copy).
    seed
        When given, every training call seeds Python, NumPy and torch with it,
        so shuffling, sampling and dropout repeat; :meth:`split_X` uses it too.
        ``None`` (default, as STEP): the global generators are left alone, so a
        ``torch.manual_seed(s)`` of yours stays in force.
    grad_clip
        Clip the gradients' global norm to this value; ``None`` does not clip.
    accumulate_grad_batches
        Step the optimizer once every this many training batches, on the mean
        of their gradients (each batch's loss is divided by it; Lightning's
        argument). Batches left at the end of an epoch step once more. Under DDP
        every backward pass still reduces the gradients over ranks.
    stop_on
        ``"all"`` (stop when every validation loss stalled, STEP's rule), ``"any"``
        (when one has) or ``"total"`` (one monitor on their sum).
    restore_best
        Load the best weights (by the checkpoint's ``monitor``: the lowest total
        validation loss by default) at the end of training;
        ``None`` (default): when :attr:`use_earlystop` is on. STEP keeps the last
        weights: ``restore_best=False`` does the same.
    use_earlystop
        Build early-stopping monitors and stop early (STEP's switch, also an
        attribute); when false every path trains all its epochs.
    progress
        Show progress (:mod:`stepgraph.progress`): a bar on a terminal, a plain
        line every few seconds in a log.
    trace_func
        Receives the trainer's messages (early stopping reports).
    checkpoint_every
        Write the training state to ``checkpoint_dir / "last.pt"`` every this many
        epochs (and at the end); 0 never does (nor does a Trainer without ``checkpoint_dir``).
    distributed
        Train data-parallel (DDP). ``None``: when launched by ``torchrun`` or inside
        a process group of several processes; see ``docs/distributed.md``.
    find_unused_parameters
        Passed to DistributedDataParallel.
    precision
        ``"32"`` (default; also ``32``, ``"32-true"``): float32 throughout.
        ``"bf16-mixed"``: the forward passes (training, validation, prediction)
        run under :func:`torch.autocast` with bfloat16 on :attr:`device`, while
        the weights, gradients and optimizer state stay float32, as Lightning's
        ``precision="bf16-mixed"``; it needs no loss scaling. Worth it on GPUs
        with bfloat16 units (Ampere and later); on a CPU it is often slower.
    on_nonfinite
        ``"raise"`` stops at a NaN or infinite training loss with
        :class:`NonFiniteLossError`; ``"skip"`` skips such batches, counted in
        :attr:`skipped_batches`.
    lossconfig
        Early-stopping settings per loss name (``{"recon_loss": {"patience": 30,
        "delta": 0.01}}``), over :attr:`defualt_lcfg` for the others. ``None``
        (default): STEP's table (:data:`STEP_LOSSCONFIG`: ``recon_loss``,
        ``kl_loss``, ``cl_loss``, ``gate_loss``), which STEP's callers expect;
        ``{}``: every loss gets the default settings.
    call_form
        How a graph loss call (``call_func`` or an overridden
        :meth:`handle_ginput_tuple`) is called: ``"step"``, STEP's
        ``(input_tuple, dataset, ind, step)`` with global node ids;
        ``"stepgraph"``, ``(batch, ind, step)`` with local positions; ``"auto"``
        (default): STEP's when its second parameter is named ``dataset``.
    per_hop
        Pass the batch's per-hop node and edge counts to the model's loss
        (``num_sampled_nodes_per_hop``, ``num_sampled_edges_per_hop``: layer-wise
        trimming). ``None`` (default): when the method names those parameters.
    callbacks
        :class:`~stepgraph.train.callbacks.Callback` instances called at fixed
        points of every fit (their states are saved in ``last.pt``). A
        :class:`~stepgraph.train.checkpointing.ModelCheckpoint` among them
        replaces the default one (lowest ``val_total`` in ``checkpoint_dir``);
        an :class:`EarlyStopping` with a ``monitor`` stops on that value.

    Attributes
    ----------
    model : torch.nn.Module
        The model being trained.
    optimizer : torch.optim.Optimizer or None
        Set by :meth:`init_optimizer` (called with defaults on first training).
    lr_scheduler : torch.optim.lr_scheduler.LRScheduler or None
        Set by :meth:`set_lr_scheduler`; stepped once per epoch.
    stopping : EarlyStoppingGroup
        Decides when to stop; :attr:`early_stopping`, :attr:`lossconfig` and
        :attr:`defualt_lcfg` are its monitors and settings.
    checkpoints : ModelCheckpoint
        The owner of the checkpoint files (their names, every write) and of
        the best weights.
    callbacks : list
        The callbacks given to the constructor but a ``ModelCheckpoint``, which
        is :attr:`checkpoints` (a list you may extend).
    loop_state : LoopState or None
        The progress of the current (or last) fit: ``epoch``, ``epochs``, ``step``.
    strategy : Strategy
        How the run is spread over processes
        (:class:`~stepgraph.train.strategies.SingleDeviceStrategy` or
        :class:`~stepgraph.train.strategies.DDPStrategy`).
    history : list[dict]
        Per epoch of the last run: ``epoch``, train and ``val_`` losses (means
        per sample: each batch weighs its number of samples, where STEP
        averages the per-batch means), ``lr``.
    device : torch.device
        Where batches are moved.
    seed : int or None
        The seed every training call starts from (``None``: no seeding).
    use_earlystop : bool
        STEP's switch: when false no monitors are built and every path trains
        all its epochs.
    skipped_batches : int
        Batches skipped in the last run under ``on_nonfinite="skip"``.
    interrupted : bool
        Whether the last run was stopped by ``KeyboardInterrupt`` (it wrote
        ``interrupted.pt``).
    run_identity : dict or None
        What makes this run the same run (plain values by name, e.g. the
        input's shape, the graph and split settings, the seed); saved in every
        training state, and a ``resume_from`` state saved with another identity
        is refused, naming the setting that changed (see
        :class:`~stepgraph.train.checkpointing.TrainingCheckpoint`). ``None``
        (default): not recorded, not checked.

    Examples
    --------
    >>> trainer = Trainer(model)                                           # doctest: +SKIP
    >>> trainer.init_optimizer(lr=1e-3)                                    # doctest: +SKIP
    >>> train_loader, valid_loader = Trainer.make_loaders(dataset, 256)    # doctest: +SKIP
    >>> trainer.train_batch(epochs=20, loaders=(train_loader, valid_loader))  # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str | torch.device | None = None,
        checkpoint_dir: str | Path | None = None,
        seed: int | None = None,
        grad_clip: float | None = None,
        accumulate_grad_batches: int = 1,
        stop_on: str = "all",
        restore_best: bool | None = None,
        use_earlystop: bool = True,
        progress: bool = True,
        trace_func: Callable[[str], Any] = print,
        checkpoint_every: int = 1,
        on_nonfinite: str = "raise",
        distributed: bool | None = None,
        find_unused_parameters: bool = False,
        precision: str | int = "32",
        callbacks: Iterable[Any] = (),
        lossconfig: Mapping[str, Mapping[str, Any]] | None = None,
        call_form: str = "auto",
        per_hop: bool | None = None,
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got model of type {type(model).__name__}")
        check_choice(on_nonfinite, "on_nonfinite", NONFINITE_POLICIES)
        self.precision = PRECISIONS.get(str(precision))
        if self.precision is None:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got precision={precision!r}")
        checkpoint_every = cast(int, check_int(checkpoint_every, "checkpoint_every", minimum=0))
        self.seed = check_int(seed, "seed", allow_none=True)
        self.grad_clip = check_number(grad_clip, "grad_clip", positive=True, allow_none=True)
        self.accumulate_grad_batches = cast(
            int, check_int(accumulate_grad_batches, "accumulate_grad_batches", minimum=1)
        )
        self._accumulated = 0  # backward passes since the last optimizer step
        self.lr_scheduler_interval = "epoch"
        self.stopping = EarlyStoppingGroup(stop_on)
        table = STEP_LOSSCONFIG if lossconfig is None else lossconfig
        if not isinstance(table, Mapping) or not all(isinstance(v, Mapping) for v in table.values()):
            raise TypeError(f"lossconfig must map loss names to EarlyStopping settings, got lossconfig={lossconfig!r}")
        self.stopping.lossconfig = {k: dict(v) for k, v in table.items()}
        self.call_form = check_choice(call_form, "call_form", CALL_FORMS)
        if per_hop is not None and not isinstance(per_hop, bool):
            raise TypeError(f"per_hop must be True, False or None, got per_hop={per_hop!r}")
        self.per_hop = per_hop
        self.stopping.default_config.update(STEP_DEFAULT_LCFG)
        self.strategy: Strategy = make_strategy(distributed, device, model, find_unused_parameters)
        if self.strategy.lockstep and on_nonfinite == "skip":
            raise ValueError(
                "on_nonfinite must be 'raise' in distributed training (a batch skipped on "
                "one rank would leave the others waiting), got on_nonfinite='skip'"
            )
        self.device = self.strategy.device
        self.model = model.to(self.device)
        self._restore_best = restore_best
        self.use_earlystop = bool(use_earlystop)
        self.progress = progress and self.strategy.is_main
        self.trace_func = trace_func if self.strategy.is_main else (lambda message: None)
        self.stopping.trace_func = self.trace_func
        self.on_nonfinite = on_nonfinite
        self.callbacks = list(CallbackList(callbacks))  # checks each item
        for i, callback in enumerate(self.callbacks):
            if isinstance(callback, EarlyStopping) and callback.monitor is None:
                raise ValueError(
                    f"callbacks[{i}] is an EarlyStopping without monitor=; name the logged value it watches "
                    "(e.g. monitor='val_loss'), or set per-loss settings with lossconfig"
                )
        given = [c for c in self.callbacks if isinstance(c, ModelCheckpoint)]
        if len(given) > 1:
            raise ValueError(f"callbacks holds {len(given)} ModelCheckpoint objects; the one owner of files is one")
        if given:
            if checkpoint_dir is not None and given[0].dirpath != Path(checkpoint_dir):
                raise ValueError(
                    f"checkpoint_dir={str(checkpoint_dir)!r} and the ModelCheckpoint's dirpath "
                    f"{str(given[0].dirpath)!r} differ; give one of them"
                )
            if checkpoint_every != 1:
                raise ValueError(
                    f"checkpoint_every={checkpoint_every} is the default ModelCheckpoint's; with your own, "
                    "give it every= instead"
                )
            self.callbacks.remove(given[0])
            self.checkpoints = given[0]
            self.checkpoints.write = self.strategy.is_main
        else:
            self.checkpoints = ModelCheckpoint(checkpoint_dir, every=checkpoint_every, write=self.strategy.is_main)
        self.loop_state: LoopState | None = None
        self._stop_request: str | None = None
        self._fit_callback_list: CallbackList | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler = None
        self._graph_dataset = None
        self._active_feed: feeds.Feed | None = None
        self.run_identity: dict[str, Any] | None = None
        self._reset_run()

    def _reset_run(self) -> None:
        self._stop_request = None
        self.skipped_batches = 0
        self.interrupted = False
        self.history: list[dict[str, float]] = []
        self.stopping.reset()
        self.checkpoints.new_fit()
        self._loss_names: set[str] = set()
        self.discard_accumulated()

    def discard_accumulated(self) -> None:
        """Forget the gradients of an unfinished accumulation window (an interrupted or failed fit)."""
        self._accumulated = 0
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------ settings
    distributed = property(
        lambda self: self.strategy.is_distributed, doc="Whether training is data-parallel over several processes."
    )
    net = property(
        lambda self: self.model, doc="The user's model (:attr:`model` is never wrapped; DDP wrapping is internal)."
    )
    stop_on = property(lambda self: self.stopping.stop_on, doc="The early-stopping rule.")

    @property
    def restore_best(self) -> bool:
        """Whether the best weights are loaded at the end of training (by default
        when :attr:`use_earlystop` is on).
        """
        return self.use_earlystop if self._restore_best is None else bool(self._restore_best)

    @restore_best.setter
    def restore_best(self, value: bool | None) -> None:
        self._restore_best = value

    stop_reason = property(
        lambda self: self._stop_request or self.stopping.stop_reason,
        doc="Why the last run stopped early, in words (``None`` if it did not).",
    )

    def request_stop(self, reason: str) -> None:
        """Stop the fit at the end of this epoch (for callbacks), saying why in :attr:`stop_reason`.

        Parameters
        ----------
        reason
            Why, in words; the trainer reports it when the fit stops.
        """
        if not isinstance(reason, str) or not reason:
            raise TypeError(f"reason must be a non-empty string, got reason={reason!r}")
        if self._stop_request is None:
            self._stop_request = reason

    @property
    def stop_requested(self) -> bool:
        """Whether a callback asked the current fit to stop (:meth:`request_stop`)."""
        return self._stop_request is not None

    def fit_callbacks(self, writer=None, writer_every: str = "epoch") -> CallbackList:
        """The callbacks of one fit, in the order they run: the ``writer``'s
        :class:`~stepgraph.train.loggers.ScalarWriter`, the user's :attr:`callbacks`,
        the checkpoints (:attr:`checkpoints`) and the LR scheduler's step.

        Parameters
        ----------
        writer
            Anything with ``add_scalar(tag, value, step)``, or ``None``.
        writer_every
            ``"epoch"`` or ``"step"`` (see :class:`~stepgraph.train.loggers.ScalarWriter`).
        """
        from stepgraph.train.loggers import ScalarWriter

        front = [] if writer is None else [ScalarWriter(writer, writer_every)]
        return CallbackList([*front, *self.callbacks, self.checkpoints, LRSchedulerStep()])

    @property
    def early_stopping(self) -> dict[str, EarlyStopping]:
        """The early-stopping monitors, keyed ``val_<loss>``."""
        return self.stopping.monitors

    @early_stopping.setter
    def early_stopping(self, monitors: dict[str, EarlyStopping]) -> None:
        self.stopping.monitors = dict(monitors)

    @property
    def lossconfig(self) -> dict[str, dict]:
        """Per-loss :class:`EarlyStopping` settings, keyed by loss name (with or without ``val_``)."""
        return self.stopping.lossconfig

    @lossconfig.setter
    def lossconfig(self, value: dict[str, dict]) -> None:
        self.stopping.lossconfig = value

    @property
    def defualt_lcfg(self) -> dict[str, Any]:
        """Settings of the losses not in :attr:`lossconfig` (STEP's spelling)."""
        return self.stopping.default_config

    @defualt_lcfg.setter
    def defualt_lcfg(self, value: dict[str, Any]) -> None:
        self.stopping.default_config = value

    default_lcfg = defualt_lcfg

    checkpoint_dir = property(
        lambda self: self.checkpoints.dirpath,
        doc="Folder of ``best.pt``, ``last.pt`` and ``interrupted.pt``; ``None``: no files.",
    )
    best = property(
        lambda self: self.checkpoints.best,
        doc="The best weights of the current (or last) fit (a :class:`~stepgraph.train.checkpointing.BestWeights`).",
    )

    @property
    def checkpoint_every(self) -> int:
        """Write ``last.pt`` every this many epochs (and at the end); 0 never does."""
        return self.checkpoints.every

    @checkpoint_every.setter
    def checkpoint_every(self, value: int) -> None:
        self.checkpoints.every = cast(int, check_int(value, "checkpoint_every", minimum=0))

    @property
    def active_feed(self) -> feeds.Feed | None:
        """The feed of the current (or last) fit."""
        return self._active_feed

    @active_feed.setter
    def active_feed(self, feed: feeds.Feed | None) -> None:
        self._active_feed = feed
        dataset = getattr(feed, "dataset", None)
        self.remember_graph_dataset(dataset)

    @property
    def graph_dataset(self):
        """The dataset serving node features to :meth:`handle_ginput_tuple`: that of the
        current (or last) graph fit, or the one last given to :meth:`validate_gloader`,
        :meth:`predict_gloader` or :meth:`predict_layerwise`; ``None`` until then (the
        graph paths then read the batches' own ``x``). STEP's memory of it is
        :class:`~stepgraph.train.step_adapter.GraphDatasetMemory`.
        """
        return self._graph_dataset

    def feed_context(self) -> feeds.FeedContext:
        """What the feeds of this trainer read (:class:`~stepgraph.train.feeds.FeedContext`):
        its strategy, device, seed and ``call_form``, its loss calls (:meth:`loss`,
        :meth:`handle_input_tuple`, :meth:`handle_ginput_tuple`), its ``validate_*``
        methods and :attr:`graph_dataset`. Built afresh at each call, so a subclass's
        overrides and a changed strategy are seen.
        """
        return feeds.FeedContext(
            strategy=self.strategy,
            device=self.device,
            seed=self.seed or 0,
            call_form=self.call_form,
            matrix_call=self.loss,
            tensor_call=self.handle_input_tuple,
            graph_batch_call=self.handle_ginput_tuple,
            validate_X=self.validate_X,
            validate_loader=self.validate_loader,
            validate_gloader=self.validate_gloader,
            training=lambda: self.model.training,
            graph_dataset=self.graph_dataset,
        )

    @property
    def input_names(self) -> tuple[str, ...] | None:
        """Names of the members of a tensor batch tuple, from the dataset mode of the current
        (or last) :meth:`train_batch`; ``None``: named by the tuple's length.
        """
        return getattr(self._active_feed, "input_names", None)

    def mode_switch_to_train(self) -> None:
        """Put the model in training mode."""
        self.model.train()

    def autocast(self):
        """The context of every forward pass: :func:`torch.autocast` to bfloat16 on
        :attr:`device` under ``precision="bf16-mixed"``, nothing under ``"32"``.
        """
        if self.precision == "bf16-mixed":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def init_optimizer(
        self,
        lr: float = 0.001,
        tune_lr: float = 0.0001,
        stage: int = 1,
        tune_batch_embedding: bool = True,
        *,
        optimizer: Any = None,
        params: Iterable | None = None,
        **optimizer_kwargs,
    ) -> torch.optim.Optimizer:
        """Create the optimizer (Adam by default); see :func:`~stepgraph.train.optim.build_optimizer`.

        Parameters
        ----------
        lr
            Learning rate of the (non-backbone) parameters.
        tune_lr
            Learning rate of the backbone in stage 2.
        stage
            1 (train all) or 2 (fine-tune the model's ``backbone_parameters()`` at ``tune_lr``).
        tune_batch_embedding
            Whether parameters named ``*batch_embedding*`` train (else frozen).
        optimizer
            An optimizer class (``torch.optim.AdamW``) or callable, built as
            ``optimizer(groups, lr=lr, **optimizer_kwargs)``; or a ready
            :class:`torch.optim.Optimizer` over this model's parameters, used as
            it is (``lr`` and the rest are then ignored). ``None``: Adam.
        params
            Your own parameter groups (a list of dicts, as torch's optimizers take
            them), in place of the stage's.
        **optimizer_kwargs
            Passed to the optimizer (``weight_decay=``, ``betas=``, ...).

        Examples
        --------
        >>> trainer.init_optimizer(lr=0.01, optimizer=torch.optim.AdamW, weight_decay=5e-4)  # doctest: +SKIP
        """
        if isinstance(optimizer, torch.optim.Optimizer):
            own = {id(p) for p in self.net.parameters()}
            stray = sum(1 for g in optimizer.param_groups for p in g["params"] if id(p) not in own)
            if stray:
                raise ValueError(
                    f"optimizer must be built on this trainer's model, got {stray} parameter(s) of another"
                )
            self.optimizer = optimizer
        else:
            self.optimizer = build_optimizer(
                self.net,
                lr,
                tune_lr,
                stage,
                tune_batch_embedding,
                optimizer=optimizer,
                params=params,
                **optimizer_kwargs,
            )
        self.lr_scheduler = None
        self._accumulated = 0
        self.strategy.parameters_changed()
        return self.optimizer

    def set_lr_scheduler(
        self,
        lr_scheduler=None,
        gamma: float = 0.1,
        *step_milestones: int,
        milestones: Iterable[int] = (),
        interval: str = "epoch",
    ):
        """Set the learning-rate scheduler, stepped once per epoch or once per optimizer step.

        Parameters
        ----------
        lr_scheduler
            A scheduler on :attr:`optimizer`, a callable building one from it, or
            ``None`` for ``MultiStepLR(milestones, gamma)``. A ``ReduceLROnPlateau``
            is stepped with the total validation loss (training loss without validation).
        gamma
            Decay factor (``MultiStepLR``).
        *step_milestones
            Milestones given positionally, as STEP's ``set_lr_scheduler(None, gamma, *milestones)``.
        milestones
            Epochs at which the learning rate decays (``MultiStepLR``).
        interval
            ``"epoch"`` (default, STEP's) or ``"step"``: after every optimizer step
            (Lightning's ``interval``), as a ``OneCycleLR`` sized in steps needs.
        """
        check_choice(interval, "interval", ("epoch", "step"))
        if self.optimizer is None:
            self.init_optimizer()
        assert self.optimizer is not None  # set by init_optimizer
        scheduler = build_scheduler(self.optimizer, lr_scheduler, gamma, [*step_milestones, *milestones])
        if interval == "step" and isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ValueError("interval must be 'epoch' for ReduceLROnPlateau, which steps on the validation total")
        self.lr_scheduler, self.lr_scheduler_interval = scheduler, interval
        return self.lr_scheduler

    # ------------------------------------------------------------ the core
    def update_model_params(
        self, loss_dict: Mapping[str, Any], epoch: int, step: int | None = None
    ) -> torch.Tensor | None:
        """Sum the losses (the tensors that carry a gradient, :func:`~stepgraph.train.meter.trained_losses`),
        back-propagate, clip and step the optimizer (every ``accumulate_grad_batches`` batches).

        Returns the detached total, or ``None`` when a non-finite batch was skipped;
        raises :class:`NonFiniteLossError` (naming the losses, ``epoch`` and ``step``)
        before the weights change otherwise.

        Parameters
        ----------
        loss_dict
            One batch's losses; the tensor values are summed (a dict without a
            tensor raises :class:`TypeError`).
        epoch
            The current epoch, named in the error of a non-finite loss.
        step
            The step within the epoch, named in that error too.
        """
        if self.optimizer is None:
            self.init_optimizer()
        assert self.optimizer is not None  # set by init_optimizer
        losses = trained_losses(tensor_losses(loss_dict))
        if not losses:
            raise TypeError(
                f"the loss dict holds no tensor to back-propagate; keys were {list(loss_dict)} "
                "(a loss is a scalar tensor computed from the model's parameters, with a gradient)"
            )
        total = cast(torch.Tensor, sum(losses.values()))  # a tensor: losses is not empty
        if total.numel() != 1:
            raise ValueError(f"losses must be scalars, got a total of shape {tuple(total.shape)}")
        if not bool(torch.isfinite(total)):
            if self.on_nonfinite == "skip":
                self.skipped_batches += 1
                return None
            values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            where = f"epoch {epoch}" + ("" if step is None else f", step {step}")
            last = self.checkpoints.last_path
            kept = f" (the last good state is in {last} if it was written)" if last is not None else ""
            raise NonFiniteLossError(
                f"non-finite training loss at {where}: {values}; the weights were not updated{kept}"
            )
        self._loss_names.update(losses)
        if self._accumulated == 0:
            self.optimizer.zero_grad(set_to_none=True)
        (total / self.accumulate_grad_batches if self.accumulate_grad_batches > 1 else total).backward()
        self.strategy.after_backward(self.model)
        self._accumulated += 1
        if self._accumulated >= self.accumulate_grad_batches:
            self.optimizer_step()
        return total.detach()

    def optimizer_step(self) -> None:
        """Clip, step the optimizer on the gradients accumulated so far (if any), and
        step a per-step scheduler (``set_lr_scheduler(..., interval="step")``).
        The epoch core calls it at the end of each epoch for batches left over by
        ``accumulate_grad_batches``.
        """
        if self._accumulated == 0 or self.optimizer is None:
            return
        if self._accumulated < self.accumulate_grad_batches:  # a short window: the mean of its batches
            scale = self.accumulate_grad_batches / self._accumulated
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self._accumulated = 0
        if self.lr_scheduler is not None and self.lr_scheduler_interval == "step":
            self.lr_scheduler.step()

    def cum_loss(
        self,
        loss_dict: Mapping[str, Any],
        total_loss_dict,
        use_earlystop: bool = False,
        n_batch: int = -1,
        n_epoch: int = -1,
        weight: float = 1.0,
    ):
        """Accumulate one batch's losses into the epoch's running means.

        Parameters
        ----------
        loss_dict
            The batch's losses.
        total_loss_dict
            A :class:`~stepgraph.LossMeter` (updated with ``weight``), or a plain
            dict (STEP's form): for ``n_batch == 0`` it becomes this batch's
            losses, otherwise the running mean in which this batch weighs
            ``1 / (n_batch + 1)``.
        use_earlystop
            Set up early stopping from these keys when not yet done.
        n_batch
            The 0-based index of the batch in the epoch (STEP's ``enumerate``
            index); required for the plain-dict form.
        n_epoch
            Current epoch (unused; STEP's signature).
        weight
            The batch's weight (its number of samples) for a ``LossMeter``.

        Returns
        -------
        LossMeter or dict
            ``total_loss_dict``, updated; the plain dict holds detached 0-d tensors.
        """
        if isinstance(total_loss_dict, LossMeter):
            total_loss_dict.update(loss_dict, weight)
        else:
            n_batch = cast(int, check_int(n_batch, "n_batch", minimum=0))
            running_mean_update(total_loss_dict, loss_dict, n_batch)
        if use_earlystop and self.use_earlystop and not self.early_stopping:
            self.setup_early_stopping(loss_dict)
        return total_loss_dict

    # ------------------------------------------------------ early stopping
    def begin_fit(self) -> None:
        """Start a new run: align the ranks' weights, seed the generators (when
        :attr:`seed` is set) and reset the monitors, history and stop reason.
        """
        self.strategy.begin_fit(self.model)
        if self.seed is not None:
            seed_everything(self.seed)
        self._reset_run()

    def setup_early_stopping(self, loss_dict: Mapping[str, Any]) -> dict[str, EarlyStopping]:
        """Create one :class:`EarlyStopping` per loss, named ``val_<loss>``, with settings
        from :attr:`lossconfig` over :attr:`defualt_lcfg` (one ``val_total`` monitor with
        ``stop_on="total"``); none when :attr:`use_earlystop` is off.

        Parameters
        ----------
        loss_dict
            Training losses (STEP's form: tensor values; logged numbers are
            skipped) or ``val_`` values: their names name the monitors. Once a
            training step has run, only the losses trained on (tensors with a
            gradient) get one; a metric is logged, not monitored.
        """
        if not self.use_earlystop:
            self.stopping.monitors = {}
            return self.stopping.monitors
        names = [
            k if k.startswith("val_") else f"val_{k}"
            for k, v in without_metadata(loss_dict).items()
            if k.startswith("val_") or isinstance(v, torch.Tensor)
        ]
        if self._loss_names:  # only the losses trained on so far get a monitor, not the logged metrics
            names = [n for n in names if n.removeprefix("val_") in self._loss_names]
        return self.stopping.setup(names)

    def check_early_stop(self, total_loss_dict: Mapping[str, float]) -> bool:
        """Feed the validation losses to the early-stopping monitors (:attr:`stopping`), and
        their total to the checkpoints (:attr:`checkpoints`, which keep the best weights) when
        those rank epochs by ``val_total`` (the default), so that an epoch loop of your own that
        calls this method keeps the best weights as STEP's do.

        Parameters
        ----------
        total_loss_dict
            The epoch's validation losses, ``{"val_<name>": value}``.

        Returns
        -------
        bool
            ``True`` when the :attr:`stop_on` rule is met.
        """
        values, total = self.stopping.monitored(total_loss_dict, self._loss_names)
        if not values:
            return False
        if self.checkpoints.monitor == "val_total":  # STEP's own epoch loops keep the best weights here too
            epoch = self.loop_state.epoch if self.loop_state is not None else len(self.history)
            self.checkpoints.rank(total, self.net, epoch)
        return self.use_earlystop and self.stopping.step(values, self.model if self.strategy.is_main else None)

    def restore_best_weights(self) -> bool:
        """Load the best weights of the last run (rank 0's, on every rank); return whether
        there were any.
        """
        written = self.strategy.gather(self.best.has_weights)[0]
        if written and self.strategy.is_main:
            self.best.restore(self.model, map_location=self.device)
        if written:
            self.strategy.broadcast_module(self.model)
        return written

    def format_loss_dict(
        self,
        loss_dict: Mapping[str, float],
        state: LoopState | MutableMapping[str, Any] | None,
        valid_loss_dict: Mapping[str, float] | None = None,
        endepoch: bool = False,
    ) -> str:
        """Progress-bar text: ``name=value`` per loss, validation as ``value/best``.

        Both of STEP's usages work: the text is written into ``state`` (training
        part in ``state["loss_dict"]``, validation part in ``state["validation"]``),
        as STEP does, and returned.

        Parameters
        ----------
        loss_dict
            Training losses.
        state
            The loop state, or any dict (``None``: nothing written).
        valid_loss_dict
            Validation losses, shown with the best value so far.
        endepoch
            Whether the epoch has ended (validation is only shown then).
        """
        text = ", ".join(f"{k}={float(cast(SupportsFloat, v)):.4f}" for k, v in without_metadata(loss_dict).items())
        validation = ""
        if valid_loss_dict and endepoch:
            parts = []
            for key, value in valid_loss_dict.items():
                es = self.early_stopping.get(key)
                best = es.best_score if es is not None and es.best_score is not None else value
                parts.append(f"{key}={float(value):.4f}/{float(best):.4f}")
            validation = ", ".join(parts)
        if state is not None:
            state["loss_dict"] = text
            if endepoch:
                state["validation"] = validation
        return ", ".join(t for t in (text, validation) if t)

    # ----------------------------------------------------- training state
    def _training_checkpoint(self) -> TrainingCheckpoint:
        # "path" is the feed's state (the key keeps files of format version 2 readable)
        components = {
            "model": self.net,
            "optimizer": self.optimizer,
            "lr_scheduler": self.lr_scheduler,
            "early_stopping": self.stopping,
            "best": self.best,
            "trainer": _RunRecord(self),
            "path": self.active_feed,
            "callbacks": self._fit_callback_list,
        }
        hints = {
            "model": "it was written for another model",
            "optimizer": "the optimizer differs from the saved one: call init_optimizer as in the interrupted run",
            "lr_scheduler": "call set_lr_scheduler as in the interrupted run before resuming",
            "path": "resume with the same training call and loaders",
            "callbacks": "resume with the same callbacks",
        }
        return TrainingCheckpoint(components, self.strategy, hints, identity=self.run_identity)

    @staticmethod
    def _training_progress(state: LoopState | Mapping[str, Any], completed: int, stopped: bool) -> dict[str, Any]:
        return {"epoch": completed, "step": state["step"], "stopped": bool(stopped)}

    def save_training_state(
        self, path, state: Mapping[str, Any], completed: int | None = None, stopped: bool = False, gather: bool = True
    ) -> Path:
        """Write the whole training state to ``path`` atomically (see :class:`TrainingCheckpoint`).

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
            Collect every rank's RNG state (a collective call); rank 0 alone writes.
        """
        epoch = state.epoch if isinstance(state, LoopState) else int(str(state["epoch"]).split("/")[0])
        progress = self._training_progress(state, epoch if completed is None else completed, stopped)
        return self.checkpoints.save(self._training_checkpoint(), path, progress, collective=gather)

    def load_training_state(self, path, state: LoopState) -> tuple[int, bool]:
        """Restore a state written by :meth:`save_training_state`, with the same model,
        optimizer set-up, scheduler and loaders as the run that wrote it.

        Parameters
        ----------
        path
            A ``last.pt`` or ``interrupted.pt`` (through ``resume_from=``).
        state
            The loop state to restore the epoch and step into.

        Returns
        -------
        completed, stopped
            The number of completed epochs and whether early stopping had fired.
        """
        if self.optimizer is None:
            self.init_optimizer()
        progress = self._training_checkpoint().load(path, map_location=self.device)
        self.discard_accumulated()
        self.interrupted = False
        state["epoch"], state["step"] = progress["epoch"], progress["step"]
        return progress["epoch"], progress["stopped"]

    # ---------------------------------------------------------- splitting
    def split_X(self, X, split_rate: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Random split of the rows of ``X``: ``(train_ind, valid_ind)``, sorted int64
        tensors; ``valid_ind`` is ``None`` when ``split_rate`` is 0. Every positive
        ``split_rate`` in [0, 1) gives at least one validation row. Seeded by
        :attr:`seed`; without one, drawn from NumPy's global generator (as STEP's
        ``train_test_split``), so ``np.random.seed`` makes it repeat.

        Parameters
        ----------
        X
            Anything with ``len()`` (a tensor or a dense array), samples in rows.
        split_rate
            The share of rows held out for validation.
        """
        n = X.shape[0] if hasattr(X, "shape") else len(X)
        seed = self.seed if self.seed is not None else int(np.random.randint(2**31))
        train_ind, valid_ind = random_split_indices(n, split_rate, seed=seed)
        if train_ind.size == 0:
            raise ValueError(f"split_rate must leave training rows, got split_rate={split_rate} for {n} rows")
        return torch.from_numpy(train_ind), (torch.from_numpy(valid_ind) if valid_ind.size else None)

    # ------------------------------------------------------- loss calls
    def loss(self, X, ind=None, **kwargs):
        """The loss call every default path goes through (override it in a subclass, as
        STEP's models do): ``model.loss(X, ind=ind, **kwargs)`` (without ``ind`` when
        it is ``None``).

        Parameters
        ----------
        X
            The model's input (the whole matrix, or one batch's).
        ind
            Rows the loss is computed on; all when ``None``.
        **kwargs
            Passed to ``model.loss``.
        """
        if ind is not None:
            kwargs["ind"] = ind
        return self.strategy.loss_forward(self.model, X, **kwargs)

    def handle_input_tuple(self, input_tuple):
        """Loss dict of one tensor batch, through :meth:`loss` (as in STEP).

        The tuple's members are named by the dataset's mode
        (:attr:`input_names`, from :meth:`train_batch`'s loader) or, without one, by
        its length in STEP's order: ``(x,)``, ``(x, batch_label)``, ``(x,
        class_label, batch_label)``, ``(x, rep, domains, batch_label)``; the
        call is ``self.loss(x, class_label=..., batch_label=...)``. A dict
        calls ``self.loss(**batch)``, a tensor ``self.loss(x)``.

        Parameters
        ----------
        input_tuple
            One batch of a tensor-batch loader (a tuple, a dict or a tensor),
            moved to :attr:`device` here.
        """
        batch = feeds.to_device(input_tuple, self.device)
        if isinstance(batch, torch.Tensor):
            return self.loss(batch)
        if isinstance(batch, Mapping):
            return self.loss(**batch)
        names = (
            self.input_names
            if self.input_names and len(self.input_names) == len(batch)
            else INPUT_NAMES.get(len(batch))
        )
        if names is None:
            raise ValueError(f"a batch tuple must hold 1 to {max(INPUT_NAMES)} items, got {len(batch)}")
        return self.loss(batch[0], **dict(zip(names[1:], batch[1:])))

    def handle_ginput_tuple(self, input_tuple, ind=None, step=None):
        """Loss dict of one ``NeighborLoader`` batch (stepgraph's form; STEP's spatial
        subclasses override it as ``handle_ginput_tuple(input_tuple, dataset, ind, step)``,
        which every graph method also calls, with any loader).

        Gathers the features of ``batch.n_id`` from :attr:`graph_dataset` (sparse
        rows densified per batch) and its batch labels (without a dataset: the
        batch's own ``x``, as a PyG ``Data`` holds them), and calls
        ``model.loss(x, ind=ind, edge_index=..., edge_weight=..., batch_label=...)``,
        plus the batch's other attributes that ``model.loss`` names as
        parameters (``y``, ``edge_attr``, ``train_mask``, ...), plus the batch's
        per-hop counts when ``per_hop`` says so (see
        :func:`~stepgraph.train.feeds.graph_inputs`).

        Parameters
        ----------
        input_tuple
            A batch from :class:`torch_geometric.loader.NeighborLoader`.
        ind
            Local positions of the loss nodes; the seeds (``0..batch_size-1``) when ``None``.
        step
            Step within the epoch (for subclasses that schedule by step).
        """
        if ind is None:
            ind = torch.arange(input_tuple.batch_size)
        loss = self.net.loss
        inputs = feeds.graph_inputs(
            input_tuple,
            self.graph_dataset,
            self.device,
            per_hop=feeds.takes_per_hop(loss, self.per_hop),
            method=loss,
        )
        return self.strategy.loss_forward(self.model, inputs.pop("x"), ind=ind.to(self.device), **inputs)

    handle_ginput_tuple.reads_neighbor_batches_only = True  # type: ignore[attr-defined]  # see feeds.graph_call

    # ------------------------------------------------------ training paths
    @train_loop_formatter(feed=feeds.TensorBatchFeed)
    def train_batch(self, state: LoopState, loaders, call_func: Callable | None = None) -> bool:
        """Train over tensor batches (call with ``epochs=``); see :class:`~stepgraph.train.feeds.TensorBatchFeed`.

        Parameters
        ----------
        epochs
            Epochs to train (STEP's ``state`` argument is supplied by the loop).
        loaders
            ``(train_loader, valid_loader)`` (``valid_loader`` may be ``None``) or one loader.
        call_func
            ``call_func(batch) -> loss_dict``; defaults to :meth:`handle_input_tuple`.
        writer, writer_every, resume_from
            The loop's keyword-only arguments: anything with ``add_scalar(tag, value,
            step)``, ``"epoch"`` or ``"step"`` logging, and a ``last.pt`` or
            ``interrupted.pt`` to resume from; see :func:`~stepgraph.train_loop_formatter`.
        """
        return run_epoch(self, state, self.active_feed, LossMeter(), self._loss_names)

    @train_loop_formatter(feed=feeds.MatrixFeed)
    def train(
        self, state: LoopState, X, train_ind=None, valid_ind=None, call_func: Callable | None = None, **kwargs
    ) -> bool:
        """Train one full-matrix step per epoch (call with ``epochs=``); see
        :class:`~stepgraph.train.feeds.MatrixFeed`.

        Parameters
        ----------
        epochs
            Epochs to train (STEP's ``state`` argument is supplied by the loop).
        X
            The whole input matrix (tensor or array), samples in rows.
        train_ind
            Rows to train on; all rows not in ``valid_ind`` when ``None``.
        valid_ind
            Rows to validate on (disjoint from ``train_ind``); no validation when ``None``.
        call_func
            ``call_func(X, ind=..., **kwargs) -> loss_dict``; defaults to :meth:`loss`.
        writer, writer_every, resume_from
            The loop's keyword-only arguments: anything with ``add_scalar(tag, value,
            step)``, ``"epoch"`` or ``"step"`` logging, and a ``last.pt`` or
            ``interrupted.pt`` to resume from; see :func:`~stepgraph.train_loop_formatter`.
        **kwargs
            Passed to the loss call.
        """
        return run_epoch(self, state, self.active_feed, LossMeter(), self._loss_names)

    @train_loop_formatter(feed=feeds.for_loader(feeds.NodeSamplingFeed))
    def train_node_sampler(
        self, state: LoopState, gloader, dataset=None, train_ind=None, valid_ind=None, call_func: Callable | None = None
    ) -> bool:
        """Train over sampled neighbourhoods (call with ``epochs=``); see
        :class:`~stepgraph.train.feeds.NodeSamplingFeed`; any other loader (a DGL
        loader, a list of subgraphs) is iterated as it is
        (:class:`~stepgraph.train.feeds.LoaderFeed`).

        Parameters
        ----------
        epochs
            Epochs to train (STEP's ``state`` argument is supplied by the loop).
        gloader
            A ``NeighborLoader`` with sampled fan-outs (:func:`~stepgraph.node_loaders`)
            or a ``(train_loader, valid_loader)`` pair; or any other graph loader.
        dataset
            The :class:`~stepgraph.BaseDataset` whose row ``i`` is graph node ``i``;
            :attr:`graph_dataset` (the last one used) when ``None``. With another
            loader, whatever its loss call reads (STEP's ``StDataset``).
        train_ind
            Seed nodes to train on; the loader's own seeds (less ``valid_ind``) when ``None``.
        valid_ind
            Seed nodes to validate on (a non-shuffled loader is derived).
        call_func
            ``call_func(batch, ind, step) -> loss_dict``; defaults to :meth:`handle_ginput_tuple`.
            A callable whose second parameter is named ``dataset`` is called in STEP's
            form ``(batch, dataset, ind, step)`` with ``ind`` as global node ids.
        writer, writer_every, resume_from
            The loop's keyword-only arguments: anything with ``add_scalar(tag, value,
            step)``, ``"epoch"`` or ``"step"`` logging, and a ``last.pt`` or
            ``interrupted.pt`` to resume from; see :func:`~stepgraph.train_loop_formatter`.
        """
        return run_epoch(self, state, self.active_feed, LossMeter(), self._loss_names)

    @train_loop_formatter(feed=feeds.for_loader(feeds.FullNeighbourhoodFeed))
    def train_graph_batch(
        self, state: LoopState, gloader, dataset=None, train_ind=None, valid_ind=None, call_func: Callable | None = None
    ) -> bool:
        """Train over full neighbourhoods, losses masked to ``train_ind`` (call with
        ``epochs=``); see :class:`~stepgraph.train.feeds.FullNeighbourhoodFeed`; any
        other loader is iterated as it is (:class:`~stepgraph.train.feeds.LoaderFeed`).

        Parameters
        ----------
        epochs
            Epochs to train (STEP's ``state`` argument is supplied by the loop).
        gloader
            A ``NeighborLoader`` with ``num_neighbors=[-1] * n_layers`` over all nodes
            (:func:`~stepgraph.graph_loader`), or any other graph loader.
        dataset
            The :class:`~stepgraph.BaseDataset` whose row ``i`` is graph node ``i``;
            :attr:`graph_dataset` (the last one used) when ``None``, so STEP's
            ``train_graph_batch(epochs, gloader, train_ind=..., valid_ind=...)`` works.
        train_ind
            Nodes whose losses train; all nodes not in ``valid_ind`` when ``None``.
        valid_ind
            Nodes whose losses validate (with their full neighbourhoods); none when ``None``.
        call_func
            ``call_func(batch, ind, step) -> loss_dict``; defaults to :meth:`handle_ginput_tuple`.
        writer, writer_every, resume_from
            The loop's keyword-only arguments: anything with ``add_scalar(tag, value,
            step)``, ``"epoch"`` or ``"step"`` logging, and a ``last.pt`` or
            ``interrupted.pt`` to resume from; see :func:`~stepgraph.train_loop_formatter`.
        """
        return run_epoch(self, state, self.active_feed, LossMeter(), self._loss_names)

    # ----------------------------------------------------------- validation
    def validate_loader(self, loader, call_func: Callable | None = None) -> dict[str, torch.Tensor]:
        """Mean losses over a loader of tensor batches in eval mode without gradients:
        ``{"val_<name>": mean}`` (0-d tensors, as in STEP), per sample (each batch weighs
        its size; STEP averages the per-batch means).

        Parameters
        ----------
        loader
            A loader of tensor batches (the validation loader of :meth:`make_loaders`).
        call_func
            ``call_func(batch) -> loss_dict``; defaults to :meth:`handle_input_tuple`.
        """
        call = feeds.on_device(call_func, self.device) if call_func is not None else self.handle_input_tuple
        return _as_tensors(evaluate(self, loader, feeds.tensor_loss_call(call)))

    def validate_X(self, X, ind=None, call_func: Callable | None = None, **kwargs) -> dict[str, torch.Tensor]:
        """Losses of the full-matrix path on rows ``ind`` (all when ``None``) in eval mode:
        ``{"val_<name>": value}`` (0-d tensors). In a data-parallel run each rank computes
        its share.

        Parameters
        ----------
        X
            The whole input matrix, samples in rows.
        ind
            Rows to validate on; all when ``None``.
        call_func
            ``call_func(X, ind=..., **kwargs) -> loss_dict``; defaults to :meth:`loss`.
        **kwargs
            Passed to the loss call.
        """
        X = feeds.to_device(torch.as_tensor(X), self.device)
        ind = torch.arange(X.shape[0]) if ind is None else as_index(ind, "ind", X.shape[0])
        share = self.strategy.shard(ind, 0, self.seed or 0, shuffle=False, pad=False)
        call = feeds.matrix_loss_call(X, call_func or self.loss, kwargs, self.device)
        return _as_tensors(evaluate(self, [share] if share.numel() else [], call))

    def validate_gloader(
        self, gloader, valid_ind=None, dataset=None, call_func: Callable | None = None
    ) -> dict[str, torch.Tensor]:
        """Mean losses over a graph loader in eval mode without gradients.

        Parameters
        ----------
        gloader
            The loader to evaluate: a ``NeighborLoader`` (losses on its seed nodes), or
            any other graph loader, iterated as it is (see
            :class:`~stepgraph.train.feeds.LoaderFeed`).
        valid_ind
            Restrict the losses to seed nodes in ``valid_ind``; all seeds when ``None``.
            With another loader, passed to the loss call as ``ind`` (global ids).
        dataset
            The dataset serving node features; defaults to :attr:`graph_dataset`.
        call_func
            ``call_func(batch, ind, step) -> loss_dict`` (or STEP's form, see
            :meth:`train_node_sampler`).

        Returns
        -------
        dict
            ``{"val_<name>": mean}`` (0-d tensors), weighted by the number of loss
            nodes (a mean per node, where STEP averages the per-batch means).
        """
        self.remember_graph_dataset(dataset)
        if not feeds.is_neighbor_loader(gloader):
            context = self.feed_context()
            return _as_tensors(evaluate(self, *feeds.loader_validation(context, gloader, valid_ind, call_func)))
        mask = feeds.node_mask(valid_ind, "valid_ind", gloader.data.num_nodes)
        call = call_func or self.handle_ginput_tuple
        if call_func is not None and not steps_form(call_func, self.call_form):
            call = feeds.on_device(call_func, self.device)  # as in training: your call gets the batch on the device
        call = feeds.graph_call(call, self.graph_dataset, self.call_form)
        return _as_tensors(evaluate(self, gloader, feeds.graph_loss_call(self.feed_context(), mask, call)))

    def test(self, loader, call_func: Callable | None = None, dataset=None, test_ind=None) -> dict[str, float]:
        """Mean losses and metrics over a test loader, in eval mode without gradients,
        with ``test_`` keys (Lightning's ``test``).

        Parameters
        ----------
        loader
            A ``NeighborLoader`` (losses on its seed nodes), a loader of tensor
            batches (as :meth:`train_batch` takes: batches that are tensors or
            tuples of tensors), or any other graph loader.
        call_func
            The loss call, as in the matching training method; the model's own
            loss call when ``None``.
        dataset
            The dataset serving node features (graph loaders); ``None``: the
            remembered one, else the batches' own ``x``.
        test_ind
            Restrict the losses to these seed nodes (graph loaders).

        Returns
        -------
        dict
            ``{"test_<name>": mean}``: every loss and logged value of the loss
            dict, a mean per sample.
        """
        if not feeds.holds_tensor_batches(loader):
            out = self.validate_gloader(loader, valid_ind=test_ind, dataset=dataset, call_func=call_func)
        else:
            out = self.validate_loader(loader, call_func=call_func)
        return {"test_" + key.removeprefix("val_"): float(value) for key, value in out.items()}

    def predict(self, loader, func: Callable | None = None, method: str = "forward", dataset=None):
        """The model's outputs over any loader, in eval mode without gradients (Lightning's
        ``predict``).

        A ``NeighborLoader`` gives one row per graph node (:meth:`predict_gloader`).
        Any other loader gives the outputs of its batches, concatenated when
        they are tensors (else a list). Batches are moved to the trainer's
        device; the outputs come back on the CPU.

        Parameters
        ----------
        loader
            A ``NeighborLoader``, a loader of tensor batches, a list of PyG
            ``Data``, or any iterable of batches.
        func
            ``func(batch) -> output``; ``None``: ``model.<method>`` of the batch:
            ``(x, edge_index)`` of a PyG batch, the members of a tuple, or the
            tensor itself.
        method
            Name of the model's method (``"encode"`` is the default of
            :meth:`predict_gloader`; here ``"forward"``).
        dataset
            The dataset serving node features to a ``NeighborLoader``; ``None``:
            the remembered one, else the batches' own ``x``.
        """
        if feeds.is_neighbor_loader(loader):
            if func is not None:
                raise TypeError(
                    "func is for loaders other than a NeighborLoader; a NeighborLoader's rows come from "
                    "model.<method>(x, edge_index, ...): pass method= instead"
                )
            return self.predict_gloader(loader, dataset, method=method)
        model_method = getattr(self.net, method, None)
        if func is None and not callable(model_method):
            raise AttributeError(f"method must name a method of the model, got method={method!r}")

        def call(batch):
            if func is not None:
                return func(batch)
            if hasattr(batch, "edge_index") and hasattr(batch, "x"):
                return model_method(batch.x, batch.edge_index)
            return model_method(*batch) if isinstance(batch, (tuple, list)) else model_method(batch)

        was_training, outputs = self.model.training, []
        self.model.eval()
        try:
            with torch.no_grad(), self.autocast():
                for batch in feeds.loader_batches(loader):
                    out = call(feeds.batch_to(batch, self.device))
                    outputs.append(out.detach().cpu() if isinstance(out, torch.Tensor) else out)
        finally:
            self.model.train(was_training)
        if outputs and all(isinstance(o, torch.Tensor) for o in outputs):
            return _full_precision(torch.cat(outputs))
        return outputs

    def predict_gloader(self, gloader, dataset=None, method: str = "encode") -> torch.Tensor:
        """``model.<method>(x, edge_index, edge_weight=..., batch_label=...)`` for every
        seed node of a ``NeighborLoader``, in eval mode without gradients.

        Parameters
        ----------
        gloader
            The loader; its seed nodes are predicted (from their full neighbourhoods
            with :func:`~stepgraph.graph_loader`).
        dataset
            The dataset serving node features; defaults to :attr:`graph_dataset`.
        method
            Name of the model's method.

        Returns
        -------
        torch.Tensor
            One row per graph node, on the CPU; rows of nodes never a seed are zero.
        """
        dataset = self.remember_graph_dataset(dataset)  # None: the batches' own x
        func = getattr(self.net, method, None)
        if not callable(func):
            raise AttributeError(f"method must name a method of the model, got method={method!r}")
        with self.autocast():
            return _full_precision(feeds.predict_nodes(self.model, func, gloader, dataset, self.device))

    def predict_layerwise(
        self, graph, dataset=None, method: str = "encode", chunk_size: int = layerwise.DEFAULT_CHUNK_SIZE
    ) -> torch.Tensor:
        """``model.<method>`` for every node of a graph, one layer for every node at a time.

        Each layer runs once over all nodes, in chunks of ``chunk_size`` nodes,
        from the previous layer's outputs: every edge is read once per layer,
        where :meth:`predict_gloader` gathers each batch's whole multi-hop
        neighbourhood. The result is the model's on the whole graph at once.
        The model opts in with ``model.layerwise(method)`` (see
        :mod:`stepgraph.train.layerwise`; :class:`~stepgraph.models.GraphAutoencoder`
        does); for a model without it, ``graph`` must be a full-neighbourhood
        ``NeighborLoader`` (:func:`~stepgraph.graph_loader`), which
        :meth:`predict_gloader` then iterates.

        Parameters
        ----------
        graph
            A :class:`torch_geometric.data.Data` (e.g. from :func:`stepgraph.to_pyg`)
            or a ``NeighborLoader`` over it (its ``data`` is read).
        dataset
            The dataset whose row ``i`` is graph node ``i``; defaults to :attr:`graph_dataset`.
        method
            Name of the model's method.
        chunk_size
            Nodes computed per step.

        Returns
        -------
        torch.Tensor
            One row per graph node, on the CPU, in eval mode, without gradients.
        """
        dataset = self.remember_graph_dataset(dataset)  # None: the graph's own x
        plan = layerwise.layerwise_plan(self.net, method)
        loader = feeds.is_neighbor_loader(graph)
        if plan is None and _pyg_inference_serves(self.net, method, graph.data if loader else graph):
            return self._pyg_inference(graph.data if loader else graph, dataset, chunk_size)
        if plan is None:
            if not loader:
                raise TypeError(
                    f"the model of type {type(self.net).__name__} has no layerwise({method!r}) "
                    "plan: pass a full-neighbourhood NeighborLoader (stepgraph.graph_loader) "
                    "as graph, which predict_gloader iterates"
                )
            return self.predict_gloader(graph, dataset, method=method)
        data = graph.data if loader else graph
        with self.autocast():
            return _full_precision(
                layerwise.predict_layerwise(
                    self.model,
                    plan,
                    data,
                    dataset,
                    self.device,
                    chunk_size,
                    progress=self.progress,
                    non_blocking=self.device.type == "cuda",
                )
            )

    def _pyg_inference(self, data, dataset, chunk_size: int) -> torch.Tensor:
        """PyG's own layer-wise ``inference`` (``BasicGNN``: GCN, GraphSAGE, GAT, GIN, ...)
        over full 1-hop neighbourhoods of ``chunk_size`` seeds (built-in sampler without pyg-lib).
        """
        from stepgraph.data.loaders import graph_loader

        if dataset is not None:  # the dataset's rows as the graph's features
            data = data.clone()
            data.x = dataset.features(torch.arange(len(dataset)))
        if getattr(data, "x", None) is None:
            raise ValueError("dataset must be given when the graph has no node features (data.x is None)")
        was_training = self.model.training
        self.model.eval()
        try:
            with self.autocast():
                out = self.net.inference(graph_loader(data, n_layers=1, batch_size=chunk_size), device=self.device)
        finally:
            self.model.train(was_training)
        return _full_precision(out.cpu())

    @staticmethod
    def make_loaders(
        dataset, batch_size: int, split_rate: float = 0.2, shuffle: bool = True, obs_key: str | None = None, **kwargs
    ):
        """Training and validation loaders of tensor batches (a static method, as in STEP).

        Parameters
        ----------
        dataset
            A :class:`~stepgraph.BaseDataset` (or any map-style dataset).
        batch_size
            Samples per batch.
        split_rate
            The share of samples held out for validation.
        shuffle
            Shuffle the training loader every epoch.
        obs_key
            An ``obs`` column to stratify the split by.
        **kwargs
            Passed to :func:`stepgraph.data.loaders.make_loaders` (``seed=`` among them).
        """
        return _make_loaders(dataset, batch_size, split_rate, shuffle, obs_key, **kwargs)


def _pyg_inference_serves(model: torch.nn.Module, method: str, data) -> bool:
    """Whether PyG's layer-wise ``BasicGNN.inference`` computes ``model.<method>`` on ``data``:
    a ``BasicGNN`` (GCN, GraphSAGE, GAT, GIN, ...) whose ``jk`` is ``None`` or ``"last"``, asked for
    its forward pass (``method`` ``"forward"``, ``"inference"``, or a name it lacks, such as the
    default ``"encode"``), on a graph without edge weights or attributes (``inference`` passes
    only ``edge_index`` to its layers).
    """
    from torch_geometric.nn.models.basic_gnn import BasicGNN

    return (
        isinstance(model, BasicGNN)
        and getattr(model, "jk_mode", None) in (None, "last")
        and (method in ("forward", "inference") or not hasattr(model, method))
        and getattr(data, "edge_weight", None) is None
        and getattr(data, "edge_attr", None) is None
    )


class _RunRecord:
    """The trainer's own run record as a checkpoint component."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        t = self.trainer
        return {
            "history": list(t.history),
            "loss_names": sorted(t._loss_names),
            "skipped_batches": t.skipped_batches,
            "stop_request": t._stop_request,
            "lr_scheduler_interval": t.lr_scheduler_interval,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        t = self.trainer
        t.history, t._loss_names = list(state["history"]), set(state["loss_names"])
        t.skipped_batches = state["skipped_batches"]
        t._stop_request = state.get("stop_request")
        saved = state.get("lr_scheduler_interval", "epoch")
        if t.lr_scheduler is not None and saved != t.lr_scheduler_interval:
            raise ValueError(
                f"the saved run stepped its LR scheduler per {saved} and this one per {t.lr_scheduler_interval}: "
                f"call set_lr_scheduler(..., interval={saved!r}) as in the interrupted run before resuming"
            )
