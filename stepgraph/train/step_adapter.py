"""What exists only for STEP's callers, in one place.

The engine itself switches behaviour by explicit arguments. STEP's code relies
on conventions, which the :class:`~stepgraph.Trainer` facade keeps as the
defaults of those arguments, all defined here:

- **loss-name patience** (:data:`STEP_LOSSCONFIG`): STEP stops a loss named
  ``recon_loss``, ``kl_loss``, ... on its own patience and delta. The Trainer's
  ``lossconfig=None`` means this table; ``lossconfig={}`` gives every loss the
  same patience.
- **STEP's call form** (:func:`steps_form`): a graph loss call whose second
  parameter is named ``dataset`` is called as STEP's ``(batch, dataset, ind,
  step)`` with global ids. The Trainer's ``call_form="step"`` or
  ``"stepgraph"`` says it instead.
- **per-hop counts** (:func:`names_per_hop`): a model method that names
  ``num_sampled_nodes_per_hop`` and ``num_sampled_edges_per_hop`` receives them.
  The Trainer's ``per_hop=True`` or ``False`` says it instead.
- **the remembered dataset** (:class:`GraphDatasetMemory`): STEP calls
  ``train_graph_batch``, ``validate_gloader`` and ``predict_gloader`` without
  the dataset after a first call with it; the Trainer remembers the last one.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

__all__ = [
    "STEP_LOSSCONFIG",
    "STEP_DEFAULT_LCFG",
    "CALL_FORMS",
    "PER_HOP_INPUTS",
    "steps_form",
    "names_per_hop",
    "GraphDatasetMemory",
]

#: STEP's per-loss early-stopping settings (``Trainer.lossconfig``) and its default.
STEP_LOSSCONFIG = {
    "recon_loss": {"patience": 30, "delta": 1e-2},
    "kl_loss": {"patience": 10, "delta": 1e-3},
    "cl_loss": {"patience": 20, "delta": 1e-4},
    "gate_loss": {"patience": 15, "delta": 1e-3},
}
STEP_DEFAULT_LCFG = {"patience": 15, "delta": 1e-3}

#: How a graph loss call is called (the Trainer's ``call_form``): told by its parameters' names
#: (``"auto"``), or always STEP's ``(input_tuple, dataset, ind, step)``, or always ``(batch, ind, step)``.
CALL_FORMS = ("auto", "step", "stepgraph")

#: The per-hop counts a model's method may take (parameter name: the batch attribute), to trim
#: each layer to what the next reads.
PER_HOP_INPUTS = {"num_sampled_nodes_per_hop": "num_sampled_nodes", "num_sampled_edges_per_hop": "num_sampled_edges"}


def steps_form(call: Callable, form: str = "auto") -> bool:
    """Whether ``call`` is called in STEP's form ``(input_tuple, dataset, ind, step)``:
    as ``form`` says, or, with ``"auto"``, when its second parameter is named ``dataset``.
    """
    if form != "auto":
        return form == "step"
    try:
        names = list(inspect.signature(call).parameters)
    except (TypeError, ValueError):  # a builtin or C callable: stepgraph's form
        return False
    return len(names) >= 2 and names[1] == "dataset"


@functools.lru_cache(maxsize=64)
def _names_per_hop(func) -> bool:
    try:
        return all(name in inspect.signature(func).parameters for name in PER_HOP_INPUTS)
    except (TypeError, ValueError):
        return False


def names_per_hop(method: Callable) -> bool:
    """Whether a model's method names both parameters of :data:`PER_HOP_INPUTS`."""
    return _names_per_hop(getattr(method, "__func__", method))


class GraphDatasetMemory:
    """STEP's remembered graph dataset, for a class that trains on graphs.

    :attr:`graph_dataset` is the dataset of the current (or last) graph fit, or
    the one last given to a ``validate_gloader`` / ``predict_*`` call; a call
    without one uses it.
    """

    _graph_dataset: Any = None

    @property
    def graph_dataset(self):
        """The dataset serving node features to ``handle_ginput_tuple``: that of the
        current (or last) graph fit, or the one last given to ``validate_gloader`` /
        ``predict_gloader`` / ``predict_layerwise``.
        """
        return self._graph_dataset

    def remember_graph_dataset(self, dataset) -> Any:
        """Remember ``dataset`` when it is given; return the dataset to use (it, or the last one).

        Parameters
        ----------
        dataset
            The dataset of a call, or ``None`` (the call had none).
        """
        if dataset is not None:
            self._graph_dataset = dataset
        return self._graph_dataset
