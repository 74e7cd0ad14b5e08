"""Ways to turn the pipeline's embedding into domains, on every tissue of a panel.

Trains the default pipeline once per tissue and seed, then clusters several
variants of its embedding with the pipeline's own Gaussian mixture, so that a
candidate default is measured on every tissue before it goes in:

- ``default``: the embedding averaged once over the radius graph (the pipeline);
- ``mean15``: the Gaussian-weighted mean of the embedding over the 15 nearest
  neighbours (:func:`~stepgraph.graph.ops.gaussian_knn_kernel`);
- ``banksy-l0.8``: BANKSY's blocks of the embedding (the cell, its 15-neighbour
  mean and its gradient, lambda 0.8: :func:`~stepgraph.pipeline.neighborhood.neighborhood_features`);
- ``with-input``: the default beside the model's own smoothed input, each
  block scaled to unit mean squared norm (what the model adds, and what it takes away).

Scores are the ARI (with several sections, the joint ARI and the mean ARI
within each). The tissues and their keys are read as ``stepgraph bench
domains`` reads them (:func:`~stepgraph.bench.domains.panel_tissues`).

    python benchmarks/domain_variants.py ../shared/data/real/ [--seeds 0,1,2]

Writes benchmarks/results/domain_variants.{json,md}.
"""

from __future__ import annotations

import tempfile
from unittest import mock

import anndata as ad
import numpy as np
from _common import ari_scores, over_panel, panel_parser

from stepgraph.graph.ops import gaussian_knn_kernel, smooth_over_graph
from stepgraph.graph.spatial import get_coordinates, section_codes
from stepgraph.pipeline import PipelineConfig, run_pipeline
from stepgraph.pipeline import run as pipeline_run
from stepgraph.pipeline.config import EMBEDDING_KEY
from stepgraph.pipeline.domains import cluster_domains
from stepgraph.pipeline.neighborhood import neighborhood_features


def _unit(block: np.ndarray) -> np.ndarray:
    block = block - block.mean(axis=0)
    return block / np.sqrt((block**2).sum(axis=1).mean())


def variants(tissue: dict, seed: int) -> list[dict]:
    """The rows of one tissue and seed (see the module docstring)."""
    adata = ad.read_h5ad(tissue["path"])
    batch_key, truth_key = tissue["batch_key"], tissue["truth_key"]
    captured = {}
    model_input = pipeline_run._model_input

    def keep_input(adata_, counts, config):  # the features the model reads, kept for "with-input"
        dataset, features = model_input(adata_, counts, config)
        captured["x"] = np.asarray(dataset.X)
        return dataset, features

    config = PipelineConfig(batch_key=batch_key, truth_key=truth_key, seed=seed, progress=False)
    with mock.patch.object(pipeline_run, "_model_input", keep_input), tempfile.TemporaryDirectory() as out:
        run_pipeline(adata, out, config)
    graph = adata.obsp["spatial_connectivities"]
    codes, names = section_codes(adata, batch_key)
    xy = get_coordinates(adata, tissue["spatial_key"])
    latent = adata.obsm[EMBEDDING_KEY]
    default = smooth_over_graph(latent, graph, config.smooth)
    embeddings = {
        "default": default,
        "mean15": gaussian_knn_kernel(xy, codes, 15) @ latent,
        "banksy-l0.8": neighborhood_features(latent, xy, codes, 15, 0.8, n_components=None),
        "with-input": np.hstack([_unit(default), _unit(smooth_over_graph(captured["x"], graph, config.smooth))]),
    }
    truth = adata.obs[truth_key]
    known = truth.notna().to_numpy()
    n_domains = int(truth[known].nunique())
    options = config.cluster_options()
    rows = []
    for name, embedding in embeddings.items():
        labels = cluster_domains(np.asarray(embedding), n_domains, **options)
        row = {"tissue": tissue["path"].rsplit("/", 1)[-1], "seed": seed, "variant": name}
        row.update(ari_scores(truth, labels, codes, len(names)))
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = panel_parser(__doc__, "domain_variants")
    parser.add_argument("--seeds", default="0,1,2", help="seeds, comma separated")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    over_panel(
        args,
        lambda tissue: [row for seed in seeds for row in variants(tissue, seed)],
        ["tissue", "seed", "variant", "ari", "per-section ari"],
    )


if __name__ == "__main__":
    main()
