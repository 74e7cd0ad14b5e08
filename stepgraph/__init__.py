"""stepgraph: train graph neural networks on spatial transcriptomics data.

stepgraph builds the spatial neighbour graph of an :class:`anndata.AnnData`,
serves mini-batches to a model through PyTorch Geometric's ``NeighborLoader``
and runs the training loop (loss accumulation, validation, early stopping,
checkpoints) through one shared core. Its :class:`Trainer` implements the public
API of the STEP project's trainer.
"""

__version__ = "0.1.0"

from stepgraph.data.dataset import BaseDataset, MaskedDataset
from stepgraph.data.loaders import graph_loader, make_loaders, node_loaders
from stepgraph.data.split import category_random_split
from stepgraph.graph import spatial_graph, to_pyg
from stepgraph.synthetic import synthetic_tissue
from stepgraph.train.early_stopping import EarlyStopping
from stepgraph.train.loop import train_loop_formatter
from stepgraph.train.meter import LossMeter
from stepgraph.train.rng import seed_everything
from stepgraph.train.trainer import NonFiniteLossError, Trainer

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
