"""Where the pipeline's seed spread comes from: the model's initial weights, or the clustering.

For every tissue of a panel and every seed, the default pipeline is trained twice:

- ``default``: as ``stepgraph train`` runs it (the seed sets the split, the batch
  order, the model's initial weights and the mixture's starts);
- ``fixed-init``: the same, but the model's initial weights are drawn from one
  generator seeded with ``--init-seed`` whatever the run's seed, so that only the
  split, the batch order and the mixture follow the seed.

The default run's embedding is then clustered again with the mixture's seeds
``0``, ``1`` and ``2`` (``cluster-seed-N``) and with 50 starts (``gmm-50-starts``):
how much of a run's ARI is the luck of its clustering. Scores are the ARI (with
several sections, the joint ARI and the mean ARI within each); the tissues and
their keys are read as ``stepgraph bench domains`` reads them.

    python benchmarks/seed_modes.py ../shared/data/real/dlpfc151510_drsc500.h5ad --seeds 0,1,2,3,4,5

Writes benchmarks/results/seed_modes.{json,md}.
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from unittest import mock

import anndata as ad
import torch
from _common import ari_scores, over_panel, panel_parser

from stepgraph.graph.ops import smooth_over_graph
from stepgraph.graph.spatial import section_codes
from stepgraph.pipeline import PipelineConfig, run_pipeline
from stepgraph.pipeline import run as pipeline_run
from stepgraph.pipeline.config import DOMAIN_KEY, EMBEDDING_KEY
from stepgraph.pipeline.domains import cluster_domains


def _trained(tissue: dict, seed: int, init_seed: int | None):
    """The AnnData after a default pipeline run, and its config; with ``init_seed``, the
    model's initial weights come from a generator seeded with it."""
    adata = ad.read_h5ad(tissue["path"])
    n_domains = int(adata.obs[tissue["truth_key"]].nunique())
    config = PipelineConfig(batch_key=tissue["batch_key"], n_domains=n_domains, seed=seed, progress=False)
    model_class = pipeline_run.GraphAutoencoder

    def fixed_init(*args, **kwargs):
        with torch.random.fork_rng():  # the run's own random stream goes on as without this
            torch.manual_seed(init_seed)
            return model_class(*args, **kwargs)

    patch = mock.patch.object(pipeline_run, "GraphAutoencoder", fixed_init) if init_seed is not None else nullcontext()
    with patch, tempfile.TemporaryDirectory() as out:
        run_pipeline(adata, out, config)
    return adata, config


def tissue_rows(tissue: dict, seeds: list[int], init_seed: int) -> list[dict]:
    """The rows of one tissue (see the module docstring)."""
    name = tissue["path"].rsplit("/", 1)[-1]
    rows = []
    for seed in seeds:
        adata, config = _trained(tissue, seed, None)
        smoothed = smooth_over_graph(adata.obsm[EMBEDDING_KEY], adata.obsp["spatial_connectivities"], config.smooth)
        options = config.cluster_options()
        labels = {"default": adata.obs[DOMAIN_KEY].cat.codes.to_numpy()}
        for cluster_seed in (0, 1, 2):
            labels[f"cluster-seed-{cluster_seed}"] = cluster_domains(
                smoothed, config.n_domains, **{**options, "seed": cluster_seed}
            )
        labels["gmm-50-starts"] = cluster_domains(smoothed, config.n_domains, **{**options, "n_init": 50})
        labels["fixed-init"] = _trained(tissue, seed, init_seed)[0].obs[DOMAIN_KEY].cat.codes.to_numpy()
        truth = adata.obs[tissue["truth_key"]]
        codes, names = section_codes(adata, tissue["batch_key"])
        for variant, codes_of_run in labels.items():
            scores = ari_scores(truth, codes_of_run, codes, len(names))
            rows.append({"tissue": name, "seed": seed, "variant": variant, **scores})
    return rows


def main(argv=None) -> None:
    parser = panel_parser(__doc__, "seed_modes")
    parser.add_argument("--seeds", default="0,1,2,3,4,5", help="seeds, comma separated")
    parser.add_argument("--init-seed", type=int, default=1234, help="the seed of the fixed initial weights")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    over_panel(
        args,
        lambda tissue: tissue_rows(tissue, seeds, args.init_seed),
        ["tissue", "seed", "variant", "ari", "per-section ari"],
    )


if __name__ == "__main__":
    main()
