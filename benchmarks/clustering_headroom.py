"""Where the domains are lost: the embedding or its clustering?

Trains the default pipeline on an annotated tissue (one run per seed) and
clusters its embedding (smoothed as the pipeline smooths it) several ways,
reporting the ARI (per section when there are several, as ``stepgraph bench
domains``) and the Gaussian mixture's mean log-likelihood per cell:

- ``gmm k-means xN``: the pipeline's mixture (one shared covariance), the most
  likely of N fits from k-means starts (N = 5, 10, 50), each stopped at
  scikit-learn's tolerance; ``converged``: the pipeline's default, whose most
  likely start then runs on to the pipeline's ``gmm_tol``;
- ``gmm from truth, converged``: the same mixture started at the true domains' means. A
  higher ARI with a *lower* likelihood than the k-means fits means the
  mixture prefers the wrong partition: more starts cannot fix it;
- ``lda (held out)``: linear discriminant analysis fitted on the true labels
  of half the sections (of a random half of the cells for one section),
  scored on the rest: how much of the domains a linear map of the embedding
  carries, an upper bound for clustering it.

    python benchmarks/clustering_headroom.py FILE.h5ad --truth-key domain [--batch-key section] [--seeds 0,1,2]

e.g. on ``../shared/data/real/dlpfc_donor3_4sections.h5ad --batch-key section``.
Writes benchmarks/results/clustering_headroom.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import anndata as ad
import numpy as np
import torch
from _common import RESULTS, report_rows
from threadpoolctl import threadpool_limits

from stepgraph.graph.ops import smooth_over_graph
from stepgraph.graph.spatial import section_codes
from stepgraph.pipeline import PipelineConfig, run_pipeline
from stepgraph.pipeline.config import EMBEDDING_KEY
from stepgraph.pipeline.domains import adjusted_rand_index, fit_gmm


def _score(truth, labels, sections, known) -> float:
    """ARI of ``labels``: the mean within each section when there are several."""
    codes = np.unique(sections[known])  # the sections scored
    if len(np.unique(sections)) == 1:
        return adjusted_rand_index(truth[known], labels[known])
    return float(
        np.mean([adjusted_rand_index(truth[known & (sections == c)], labels[known & (sections == c)]) for c in codes])
    )


def headroom(adata, truth_key: str, batch_key: str | None, seed: int) -> list[dict]:
    """The rows of one seed (see the module docstring)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    config = PipelineConfig(batch_key=batch_key, truth_key=truth_key, seed=seed, progress=False)
    with tempfile.TemporaryDirectory() as out:
        run_pipeline(adata, out, config)
    embedding = smooth_over_graph(adata.obsm[EMBEDDING_KEY], adata.obsp["spatial_connectivities"], config.smooth)
    sections = section_codes(adata, batch_key)[0]
    truth = adata.obs[truth_key].astype(str).to_numpy()
    known = adata.obs[truth_key].notna().to_numpy()
    domains = np.unique(truth[known])
    rows = []

    def row(method, labels, model=None, scored=known):
        rows.append(
            {
                "seed": seed,
                "method": method,
                "ari": round(_score(truth, labels, sections, scored), 3),
                "log-likelihood": "" if model is None else round(float(model.score(embedding)), 3),
            }
        )

    options = {name: value for name, value in config.cluster_options().items() if name not in ("method", "n_init")}
    for n_init, tol in ((5, None), (10, None), (10, options.pop("tol")), (50, None)):
        model = fit_gmm(embedding, len(domains), n_init=n_init, tol=tol, **options)
        row(f"gmm k-means x{n_init}" + (", converged" if tol else ""), model.predict(embedding), model)
    means = np.stack([embedding[known & (truth == d)].mean(axis=0) for d in domains])
    model = fit_gmm(embedding, len(domains), n_init=1, means_init=means, **options)
    row("gmm from truth, converged", model.predict(embedding), model)
    codes = np.unique(sections)
    if len(codes) > 1:
        fit_rows = np.isin(sections, codes[: len(codes) // 2])
    else:
        fit_rows = np.random.default_rng(seed).random(len(truth)) < 0.5
    lda = LinearDiscriminantAnalysis().fit(embedding[known & fit_rows], truth[known & fit_rows])
    row("lda (held out)", lda.predict(embedding), scored=known & ~fit_rows)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="annotated .h5ad (raw counts in X)")
    parser.add_argument("--truth-key", required=True, help="obs column of the true domains")
    parser.add_argument("--batch-key", default=None, help="obs column of the sections")
    parser.add_argument("--seeds", default="0,1,2", help="seeds, comma separated")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--out", default=str(RESULTS / "clustering_headroom"), help="OUT.json and OUT.md")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(args.threads)
    rows, start = [], time.perf_counter()
    with threadpool_limits(args.threads):
        for seed in (int(s) for s in args.seeds.split(",")):
            rows += headroom(ad.read_h5ad(args.input), args.truth_key, args.batch_key, seed)
    report_rows(
        args.out,
        rows,
        ["seed", "method", "ari", "log-likelihood"],
        {"input": args.input, "threads": args.threads, "seconds": time.perf_counter() - start},
    )


if __name__ == "__main__":
    main()
