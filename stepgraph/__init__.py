"""stepgraph: train graph neural networks on spatial transcriptomics data.

stepgraph builds the spatial neighbour graph of an :class:`anndata.AnnData`,
serves mini-batches to a model through PyTorch Geometric's ``NeighborLoader``
and runs the training loop (loss accumulation, validation, early stopping,
checkpoints) through one shared core. Its :class:`Trainer` implements the public
API of the STEP project's trainer.
"""

import importlib


def _version() -> str:
    """The installed distribution's version: the git tag it was built from (setuptools-scm)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stepgraph")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0.0.0+unknown"


__version__ = _version()

#: Where each public name lives. The names are imported on first use (PEP 562), so
#: that ``import stepgraph`` (and the ``stepgraph`` command, before it parses its
#: arguments) starts without loading torch: a Ctrl-C at start-up is then the
#: command's, which answers it in one line.
_EXPORTS = {
    "BaseDataset": "stepgraph.data.dataset",
    "MaskedDataset": "stepgraph.data.dataset",
    "graph_loader": "stepgraph.data.loaders",
    "make_loaders": "stepgraph.data.loaders",
    "node_loaders": "stepgraph.data.loaders",
    "category_random_split": "stepgraph.data.split",
    "spatial_graph": "stepgraph.graph",
    "to_pyg": "stepgraph.graph",
    "synthetic_tissue": "stepgraph.synthetic",
    "EarlyStopping": "stepgraph.train.early_stopping",
    "train_loop_formatter": "stepgraph.train.loop",
    "LossMeter": "stepgraph.train.meter",
    "seed_everything": "stepgraph.train.rng",
    "NonFiniteLossError": "stepgraph.train.trainer",
    "Trainer": "stepgraph.train.trainer",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("__"):  # a subpackage: stepgraph.train, stepgraph.graph, ...
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "BaseDataset",
    "EarlyStopping",
    "LossMeter",
    "MaskedDataset",
    "NonFiniteLossError",
    "Trainer",
    "category_random_split",
    "graph_loader",
    "make_loaders",
    "node_loaders",
    "seed_everything",
    "spatial_graph",
    "synthetic_tissue",
    "to_pyg",
    "train_loop_formatter",
    "__version__",
]
