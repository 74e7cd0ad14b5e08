"""The settings of the reference pipeline: every default, each with its reason.

:class:`PipelineConfig` is the one source of the pipeline's defaults; the
options of ``stepgraph train`` are generated from its fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PipelineConfig", "EMBEDDING_KEY", "DOMAIN_KEY"]

EMBEDDING_KEY = "X_stepgraph"
DOMAIN_KEY = "stepgraph_domain"


@dataclass
class PipelineConfig:
    """Settings of :func:`run_pipeline` (the CLI options of ``stepgraph train``).

    The defaults, each for a reason that holds for Visium spots and for
    single-cell imaging panels alike (none is tuned to one tissue):

    - ``n_top_genes=3000``: highly variable genes only above 3,000 genes; a
      targeted panel (tens to hundreds of genes) was chosen by hand and is
      kept whole.
    - ``n_pcs=20``: the input is 20 principal components of per-gene
      z-scores, fitted on neighbourhood means (the axes of spatially coherent
      variation), then averaged over each neighbourhood (BANKSY's
      neighbour features); see :class:`~stepgraph.pipeline.preprocess.ExpressionFeatures`.
    - ``method="radius"`` with ``radius=None``: cells closer than
      ``graph_scale=1.2`` times the median distance to the
      ``n_neighbors=6``-th nearest neighbour. In the data's own units, it is
      the first ring of a Visium lattice (6 spots) and about 8 cells at
      irregular positions; unlike a fixed k it does not reach across holes
      and tissue edges.
    - ``batch_key``: sections are never joined; a section embedding is
      learnt only when there are several sections.
    - ``conv="gat"``, ``activation="elu"``: attention over the neighbours
      (STAGATE), so a cell at a domain boundary can weigh its own side.
    - ``smooth=1``: the embedding is averaged once over each neighbourhood
      before clustering (domains are contiguous).
    - ``cluster="gmm"``: a Gaussian mixture with one shared covariance
      (mclust's EEE, as STAGATE and GraphST), best of 5 starts.
    - ``refine=False``: the neighbour-majority relabelling changed the ARI on
      DLPFC by less than 0.005, so it is off (``--refine`` turns it on).

    Checkpoint settings: ``init_weights`` is a file of model weights to start
    from (a ``state_dict`` such as ``best.pt``, or a training state such as
    ``last.pt``, whose model weights are used); ``resume_from`` is a training
    state (``checkpoints/last.pt`` of an earlier run with the same settings)
    to continue exactly where it stopped; ``trust_checkpoint`` loads those
    files in full (see :func:`~stepgraph.train.checkpointing.load_checkpoint`),
    only for files from a source you trust.
    """

    spatial_key: str = "spatial"
    batch_key: str | None = None
    layer_key: str | None = None
    n_top_genes: int = 3000
    n_pcs: int = 20
    method: str = "radius"
    n_neighbors: int = 6
    radius: float | None = None
    graph_scale: float = 1.2
    epochs: int = 50
    batch_size: int = 1024
    fanout: list[int] = field(default_factory=lambda: [10, 5])
    hidden_dim: int = 64
    latent_dim: int = 16
    conv: str = "gat"
    activation: str = "elu"
    lr: float = 0.003
    split_rate: float = 0.1
    patience: int = 5
    smooth: int = 1
    cluster: str = "gmm"
    refine: bool = False
    n_domains: int | None = None
    truth_key: str | None = None
    seed: int = 0
    device: str = "cpu"
    backend: str = "builtin"
    progress: bool = True
    init_weights: str | None = None
    resume_from: str | None = None
    trust_checkpoint: bool = False
    backed: bool = False


