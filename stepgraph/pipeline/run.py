"""The reference pipeline behind ``stepgraph demo`` and ``stepgraph train``.

AnnData -> spatial graph -> input features (counts scaled to the cells' median
total and log1p, HVG, centred or z-scored genes, 50 components of each cell,
then BANKSY's cell, neighbourhood-mean and gradient blocks, see
:mod:`~stepgraph.pipeline.neighborhood`; with ``features="expression"`` the
components themselves: see :data:`~stepgraph.pipeline.config.RECIPES`) -> node-sampled training of
:class:`~stepgraph.models.GraphAutoencoder` (validation split, early
stopping, best checkpoint) -> embedding of every cell -> smoothed embedding ->
Gaussian-mixture domains -> outputs in a folder. The defaults and their
reasons are in :class:`~stepgraph.pipeline.config.PipelineConfig`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from stepgraph._validation import first_nonfinite
from stepgraph.data.dataset import BaseDataset, expression_matrix
from stepgraph.data.loaders import node_loaders
from stepgraph.data.ondisk import is_on_disk
from stepgraph.data.split import random_split_indices
from stepgraph.graph import spatial_graph, to_pyg
from stepgraph.graph.ops import median_neighbor_distance, smooth_over_graph
from stepgraph.graph.spatial import get_coordinates, section_codes
from stepgraph.models import GraphAutoencoder
from stepgraph.pipeline.config import DOMAIN_KEY, EMBEDDING_KEY, PipelineConfig
from stepgraph.pipeline.domains import (
    adjusted_rand_index,
    cluster_domains,
    normalized_mutual_info,
    refine_domains,
)
from stepgraph.pipeline.figures import save_domain_figure, save_embedding_figure
from stepgraph.pipeline.integration import (
    IntegrationWarning,
    cluster_per_section,
    harmonize,
    integration_report,
)
from stepgraph.pipeline.neighborhood import neighborhood_features
from stepgraph.pipeline.outputs import (
    ADATA,
    CHECKPOINTS,
    EMBEDDING_FIGURE,
    FIGURE,
    HISTORY_CSV,
    save_history,
    write_adata,
    write_output,
    write_summary,
)
from stepgraph.pipeline.preprocess import ExpressionFeatures
from stepgraph.pipeline.stages import StageLog
from stepgraph.train.checkpointing import load_checkpoint, trusted_checkpoints
from stepgraph.train.distributed import init_distributed, is_main_process
from stepgraph.train.trainer import Trainer

__all__ = ["run_pipeline"]


def _initial_weights(model: torch.nn.Module, path: str | Path, trusted: bool) -> None:
    """Load the weights of ``path`` (a ``state_dict`` or a training state) into ``model``."""
    state = load_checkpoint(path, trusted=trusted)
    if isinstance(state, dict) and state.get("format") == "stepgraph-training-state":
        state = state.get("model")
    if not isinstance(state, dict):
        raise ValueError(f"init_weights={str(path)!r} does not hold model weights (a state_dict)")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise ValueError(f"init_weights={str(path)!r} does not hold weights of this model: {detail}") from None


def _model_input(adata, counts, config: PipelineConfig) -> tuple[BaseDataset, ExpressionFeatures]:
    """The dataset the model reads, and the fitted transform.

    Each cell's features are its :class:`~stepgraph.pipeline.preprocess.ExpressionFeatures`,
    whose components are fitted on neighbourhood means (the axes of
    variation between domains), averaged ``config.feature_smooth`` times
    over the cell and its graph neighbours; plus the section when there are
    several. With ``config.features="neighborhood"`` the components are those of the cells
    themselves, and each cell's input is
    :func:`~stepgraph.pipeline.neighborhood.neighborhood_features` of them (BANKSY's cell, mean
    and gradient blocks). ``config`` is a resolved one (:meth:`PipelineConfig.resolved`).
    With ``config.backed``, ``X`` is read from disk in chunks of rows, never
    whole. Needs the spatial graph in ``adata.obsp``.
    """
    graph = adata.obsp["spatial_connectivities"]
    codes, names = section_codes(adata, config.batch_key)
    sections = codes if len(names) > 1 and config.scale_per_section else None  # centred (scaled) per section
    fit_over = None if config.features == "neighborhood" else graph  # components of the cells themselves
    features = ExpressionFeatures(**config.feature_options()).fit(counts, fit_over, sections)
    x = features.transform(counts, sections)
    bad = first_nonfinite(x)  # an on-disk X is checked here, as it is read
    if bad is not None:
        source = "adata.X" if config.layer_key is None else f"adata.layers[{config.layer_key!r}]"
        raise ValueError(
            f"{source} holds NaN or infinite values in {bad.n_rows} cell(s); the first is obs "
            f"{adata.obs_names[bad.row]!r} (row {bad.row})"
        )
    x = smooth_over_graph(x, graph, config.feature_smooth).astype(np.float32)
    if config.features == "neighborhood":
        x = neighborhood_features(
            x,
            get_coordinates(adata, config.spatial_key),
            codes,
            n_neighbors=config.neighborhood_k,
            lam=config.neighborhood_lambda,
            n_components=config.neighborhood_components,
            seed=config.seed,
        )
    # one section needs no section embedding, whether or not batch_key names it
    several = config.batch_key is not None and adata.obs[config.batch_key].nunique(dropna=False) > 1
    batch_key = config.batch_key if several else None
    obs = adata.obs[[batch_key]] if batch_key else None
    return BaseDataset(ad.AnnData(X=x, obs=obs), batch_key=batch_key), features


#: The settings that make a run the same run: a resume that changes one is refused (epochs may grow).
IDENTITY_FIELDS = (
    "spatial_key",
    "batch_key",
    "layer_key",
    "scale_per_section",
    "scaling",
    "n_top_genes",
    "n_pcs",
    "feature_max_cells",
    "feature_clip",
    "feature_smooth",
    "features",
    "target_sum",
    "neighborhood_k",
    "neighborhood_lambda",
    "neighborhood_components",
    "method",
    "n_neighbors",
    "radius",
    "graph_scale",
    "batch_size",
    "fanout",
    "hidden_dim",
    "latent_dim",
    "conv",
    "activation",
    "lr",
    "split_rate",
    "patience",
    "delta",
    "seed",
    "backend",
)


def run_identity(adata, config: PipelineConfig) -> dict:
    """What makes a pipeline run the same run: the input's shape and a hash of its
    ``obs_names`` and ``var_names``, and every setting of :data:`IDENTITY_FIELDS`
    (graph, features, split, seed, batch size, model, optimiser, early
    stopping). Plain values, saved in every training state.
    """
    import hashlib

    digest = hashlib.sha256()
    for names in (adata.obs_names, adata.var_names):
        digest.update(pd.util.hash_pandas_object(pd.Index(names), index=False).to_numpy().tobytes())
        digest.update(b"|")
    settings = {name: getattr(config, name) for name in IDENTITY_FIELDS}
    return {"input_shape": [int(adata.n_obs), int(adata.n_vars)], "input_names": digest.hexdigest(), **settings}


def _graph_radius(adata, config: PipelineConfig) -> float | None:
    """The radius of the spatial graph: ``config.radius``, or, for
    ``method="radius"``, ``config.graph_scale`` times the median distance from
    a cell to its ``config.n_neighbors``-th nearest neighbour (see
    :class:`PipelineConfig`).
    """
    if config.radius is not None or config.method != "radius":
        return config.radius
    coordinates = get_coordinates(adata, config.spatial_key)  # checked: finite, 2-D or 3-D
    sections = section_codes(adata, config.batch_key)[0]  # checked: no missing section
    return config.graph_scale * median_neighbor_distance(coordinates, sections, k=config.n_neighbors)


def run_pipeline(
    adata: ad.AnnData, out_dir: str | Path, config: PipelineConfig | None = None, stages: StageLog | None = None
) -> dict:
    """Train the reference model on ``adata`` and write every output to ``out_dir``.

    ``adata`` gains the documented keys only: the graph (``obsp``/``uns``
    from :func:`~stepgraph.graph.spatial_graph`), ``obsm["X_stepgraph"]`` (the
    embedding) and ``obs["stepgraph_domain"]`` (the domains). Its ``X``
    is not modified: the model reads features computed from it (see
    :class:`~stepgraph.pipeline.preprocess.ExpressionFeatures`); with
    ``config.backed``, ``X`` is read from disk in chunks of rows to compute
    them, so it is never loaded whole.

    Parameters
    ----------
    adata
        Counts in ``X`` (or ``layers[config.layer_key]``), coordinates in
        ``obsm[config.spatial_key]``.
    out_dir
        Folder for ``adata.h5ad``, ``checkpoints/best.pt``, ``history.csv``,
        ``history.json``, ``figure.png`` and ``summary.json``.
    config
        Settings; defaults to :class:`PipelineConfig` (its ``init_weights``,
        ``resume_from`` and ``trust_checkpoint`` start from a checkpoint).
    stages
        A :class:`~stepgraph.pipeline.stages.StageLog` to add the stages to (the CLI
        passes one that holds the reading of the file); a new one when ``None``.
        Its rows (seconds and peak memory of graph, each epoch, embedding,
        clustering, write) go to ``summary["stages"]``.

    Returns
    -------
    dict
        The summary written to ``summary.json``: epochs run, whether early
        stopping fired, the best validation loss, the ARI (when
        ``config.truth_key`` is set), the wall time and the output paths.
    """
    config = config or PipelineConfig()
    stages = stages if stages is not None else StageLog()
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    counts = expression_matrix(adata, config.layer_key)  # numbers (finite in memory), cells and genes
    config = config.resolved(counts.shape[1])  # the input and encoder of a transcriptome or of a panel
    if config.backed and not (adata.isbacked or is_on_disk(counts)):
        raise ValueError(
            "config.backed=True needs a backed AnnData, e.g. "
            "anndata.read_h5ad(path, backed='r') or stepgraph.data.readers.read_anndata(zarr_path, "
            "backed=True); got one held in memory"
        )
    with stages.stage("graph"):
        spatial_graph(
            adata,
            method=config.method,
            n_neighbors=config.n_neighbors,
            radius=_graph_radius(adata, config),
            spatial_key=config.spatial_key,
            batch_key=config.batch_key,
            progress=config.progress,
        )
        # the loaders slice every attribute of the graph per batch: keep what the model reads
        # (edges; their weights for GCN), not the distances, coordinates or sections
        data = to_pyg(adata, pos=False, edge_weight="connectivities" if config.conv == "gcn" else None)
        del data.edge_attr
    with stages.stage("features"):
        dataset, features = _model_input(adata, counts, config)

    train_ind, valid_ind = random_split_indices(adata.n_obs, config.split_rate, seed=config.seed)
    train_loader, valid_loader = node_loaders(
        data,
        config.fanout,
        batch_size=min(config.batch_size, len(train_ind)),
        train_ind=train_ind,
        valid_ind=valid_ind if len(valid_ind) else None,
        seed=config.seed,
        backend=config.backend,
        dataset=dataset,  # each mini-batch's features are gathered by the loader
    )

    model = GraphAutoencoder(
        dataset.n_vars,
        hidden_dim=config.hidden_dim,
        latent_dim=config.latent_dim,
        n_layers=len(config.fanout),
        conv=config.conv,
        n_batches=dataset.n_batches,
        activation=config.activation,
    )
    if config.init_weights is not None:
        _initial_weights(model, config.init_weights, config.trust_checkpoint)
    init_distributed(timeout=config.dist_timeout)  # under torchrun: no rank waits forever for another
    trainer = Trainer(
        model,
        device=config.device,
        checkpoint_dir=out_dir / CHECKPOINTS,
        seed=config.seed,
        progress=config.progress,
        precision=config.precision,
        callbacks=[stages.epoch_timer()],  # one stage row per training epoch
        lossconfig={},  # the pipeline's own patience for every loss, not STEP's per-loss table
    )
    trainer.run_identity = run_identity(adata, config)  # a resume with other settings is refused
    trainer.defualt_lcfg.update(patience=config.patience, delta=config.delta)
    trainer.init_optimizer(lr=config.lr)
    with trusted_checkpoints(config.trust_checkpoint):
        epochs = config.epochs_for(len(train_ind))  # --epochs, or sized to the tissue
        stopped = trainer.train_node_sampler(
            epochs=epochs,
            gloader=(train_loader, valid_loader),
            dataset=dataset,
            resume_from=config.resume_from,
        )
    if getattr(trainer, "interrupted", False):  # Ctrl-C: the state is saved, no outputs
        raise KeyboardInterrupt

    with stages.stage("embedding"):
        # one layer for every cell at a time, each edge read once per layer (the reference
        # model's layer-wise plan), not each batch's whole 2-hop neighbourhood
        embedding = trainer.predict_layerwise(data, dataset).numpy()
        adata.obsm[EMBEDDING_KEY] = embedding
    with stages.stage("clustering"):
        n_domains = config.n_domains
        if n_domains is None and config.truth_key:
            n_domains = adata.obs[config.truth_key].nunique()
        elif n_domains is None:
            n_domains = config.n_domains_default
        graph = adata.obsp["spatial_connectivities"]
        sections, names = section_codes(adata, config.batch_key)
        several = len(names) > 1
        if several and config.harmony:
            embedding = harmonize(embedding, sections, seed=config.seed)
            adata.obsm[EMBEDDING_KEY + "_harmony"] = embedding
        smoothed = smooth_over_graph(embedding, graph, config.smooth)
        categories = [f"domain{i}" for i in range(n_domains)]
        if several and config.domains_per_section:
            labels = cluster_per_section(smoothed, sections, n_domains, **config.cluster_options())
            categories = [f"{name}:{domain}" for name in names for domain in categories]
        else:
            labels = cluster_domains(smoothed, n_domains, **config.cluster_options())
        if config.refine:
            labels = refine_domains(labels, graph)
        adata.obs[DOMAIN_KEY] = pd.Categorical.from_codes(labels, categories=categories)
        integration = None
        if several:  # what the integration did: mixing, domains per section, a warning
            integration = integration_report(
                smoothed,
                adata.obs[DOMAIN_KEY],
                sections,
                names,
                seed=config.seed,
                per_section=config.domains_per_section,
            )
            if integration["warning"]:
                warnings.warn(integration["warning"], IntegrationWarning, stacklevel=2)
        truth = adata.obs[config.truth_key] if config.truth_key else None
        ari = adjusted_rand_index(truth, labels) if truth is not None else None
        nmi = normalized_mutual_info(truth, labels) if truth is not None else None

    main = is_main_process()  # under torchrun, rank 0 alone writes the outputs
    with stages.stage("write"):
        if main:
            save_history(trainer.history, out_dir)
            write_adata(adata, out_dir / ADATA)
        figure = (
            main
            and write_output(
                out_dir / FIGURE,
                lambda tmp: save_domain_figure(
                    adata, tmp, config.spatial_key, config.batch_key, config.truth_key, history=trainer.history, ari=ari
                ),
            )
            is not None
        )
        embedding_figure = (
            main
            and several
            and write_output(
                out_dir / EMBEDDING_FIGURE,
                lambda tmp: save_embedding_figure(
                    smoothed,
                    sections,
                    names,
                    adata.obs[DOMAIN_KEY],
                    tmp,
                    seed=config.seed,
                    truth=adata.obs[config.truth_key] if config.truth_key else None,
                ),
            )
            is not None
        )
    best = trainer.best.path if trainer.best is not None and trainer.best.checkpoint_written else None
    summary = {
        "n_obs": adata.n_obs,
        "epochs_run": len(trainer.history),
        "epochs_max": epochs,
        "early_stopped": bool(stopped),
        "best_val_loss": None if trainer.best is None else trainer.best.best_score,
        "n_domains": n_domains,
        "features": {"genes": len(features.genes), "components": dataset.n_vars},
        "ari": ari,
        "nmi": nmi,
        "seconds": time.perf_counter() - start,
        "outputs": {
            "adata": str(out_dir / ADATA),
            "checkpoint": None if best is None else str(best),
            "history": str(out_dir / HISTORY_CSV),
            "figure": str(out_dir / FIGURE) if figure else None,
            "embedding_figure": str(out_dir / EMBEDDING_FIGURE) if embedding_figure else None,
        },
        "integration": integration,
        "config": asdict(config),
        "stages": stages.rows,
    }
    if main:
        write_summary(summary, out_dir)
    return summary
