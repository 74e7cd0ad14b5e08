"""How much the domains depend on the clustering's seed, for several ways of starting the mixture.

For every tissue of a panel, the pipeline's untrained input (its features
averaged over each neighbourhood, :func:`~stepgraph.pipeline.baselines.untrained_pipeline_domains`,
seed 0) is clustered by the Gaussian mixture with seeds 0-4, so that only the
clustering's seed changes. Variants (``--variants``):

- ``starts10``: the default, 10 k-means starts, each fitted on every cell;
- ``starts50``: 50 such starts;
- ``screened``: 30 starts screened on 5,000 cells, the 3 most likely refined
  on every cell (``gmm_screen_rows=5000``: :func:`~stepgraph.pipeline.domains.fit_gmm`).

Per tissue and variant: the ARI of each seed, its spread (max - min), the mean
log-likelihood per cell of each fit, and the seconds per fit (1 thread).
``--synthetic-rows N`` adds a synthetic tissue of N cells (a mixture of 10
Gaussian domains in 16 dimensions, the size of the pipeline's embedding) to
time each variant at scale.

    python benchmarks/clustering_seeds.py ../shared/data/real/ --synthetic-rows 1000000

Writes benchmarks/results/clustering_seeds.{json,md}.
"""

from __future__ import annotations

import argparse
import time
import warnings

import anndata as ad
import numpy as np
from _common import RESULTS, report_rows
from threadpoolctl import threadpool_limits

from stepgraph.bench.domains import panel_tissues
from stepgraph.pipeline import PipelineConfig
from stepgraph.pipeline.baselines import untrained_pipeline_domains
from stepgraph.pipeline.domains import adjusted_rand_index, fit_gmm

VARIANTS = {
    "starts10": {},
    "starts50": {"n_init": 50},
    "screened": {"n_init": 30, "screen_rows": 5_000, "n_refine": 3},
}


def tissues(args):
    """``(name, truth, embedding)`` per tissue: the panel's untrained inputs, then the synthetic one."""
    for tissue in panel_tissues(args.inputs) if args.inputs else []:
        adata = ad.read_h5ad(tissue["path"])
        truth = adata.obs[tissue["truth_key"]].astype(str).to_numpy()
        n_domains = len(np.unique(truth[truth != "nan"]))
        config = PipelineConfig(batch_key=tissue["batch_key"], spatial_key=tissue["spatial_key"])
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, embedding = untrained_pipeline_domains(adata, n_domains, seed=0, config=config, return_embedding=True)
        yield tissue["path"].split("/")[-1], truth, embedding
    if args.synthetic_rows:
        rng = np.random.default_rng(0)
        truth = rng.integers(0, 10, size=args.synthetic_rows)
        embedding = rng.normal(scale=2.5, size=(10, 16))[truth] + rng.normal(size=(args.synthetic_rows, 16))
        yield f"synthetic {args.synthetic_rows:,} cells", truth.astype(str), embedding.astype(np.float32)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", help="annotated .h5ad files or folders (as stepgraph bench domains)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="clustering seeds, comma separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {sorted(VARIANTS)}")
    parser.add_argument("--synthetic-rows", type=int, default=0, help="cells of a synthetic tissue to time (0: none)")
    parser.add_argument("--out", default=str(RESULTS / "clustering_seeds"), help="output path without extension")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for name, truth, embedding in tissues(args):
        known = truth != "nan"
        n_domains = len(np.unique(truth[known]))
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for variant in args.variants.split(","):
                aris, likelihoods, start = [], [], time.perf_counter()
                for seed in seeds:
                    gmm = fit_gmm(embedding, n_domains, seed=seed, **VARIANTS[variant])
                    aris.append(adjusted_rand_index(truth[known], gmm.predict(embedding)[known]))
                    likelihoods.append(float(gmm.score(embedding)))
                row = {
                    "tissue": name,
                    "variant": variant,
                    "ARI per seed": " ".join(f"{a:.3f}" for a in aris),
                    "spread": max(aris) - min(aris),
                    "log-likelihood per seed": " ".join(f"{v:.3f}" for v in likelihoods),
                    "s/fit": (time.perf_counter() - start) / len(seeds),
                }
                print(row, flush=True)
                rows.append(row)
    columns = ["tissue", "variant", "ARI per seed", "spread", "log-likelihood per seed", "s/fit"]
    report_rows(args.out, rows, columns, {"seeds": seeds})


if __name__ == "__main__":
    main()
