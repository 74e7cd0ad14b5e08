"""Spatial-domain benchmark: stepgraph's pipeline against two training-free
baselines on any annotated ``.h5ad``, side by side, over several seeds.

With several sections (``batch_key``) each run is scored three ways: the ARI
of the joint domains over all cells, the ARI within each section (and their
mean), and how well the sections mix in the embedding that was clustered
(:func:`~stepgraph.pipeline.integration.section_mixing`).

Each (method, seed) runs in a fresh process (``spawn``), so its peak memory
is its own: the reported peak is the resident set of a process that imported
stepgraph, read the file and ran only that method. Time is the method's wall
time, reading excluded. Used by ``stepgraph bench domains`` and
``benchmarks/domains.py``.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from stepgraph.bench.environment import environment

__all__ = ["DOMAIN_METHODS", "run_domain_benchmark", "domain_table"]

#: Method name -> what it is, as printed in the table.
DOMAIN_METHODS = {
    "stepgraph": "stepgraph train (default pipeline)",
    "neighbor_mean": "neighbour-mean baseline (6-NN, 2 hops, PCA 30, k-means)",
    "pca_kmeans": "non-spatial baseline (PCA 30, k-means)",
    "untrained": "the pipeline without its model (its smoothed input features, same mixture)",
}


def _one_run(path: str, method: str, seed: int, truth_key: str, batch_key: str | None, spatial_key: str,
             threads: int, pipeline_options: dict) -> dict:
    """Run one method once in this (fresh) process; return its scores."""
    import tempfile

    import anndata as ad
    import torch
    from threadpoolctl import threadpool_limits

    from stepgraph.graph.spatial import section_codes
    from stepgraph.pipeline import DOMAIN_KEY, EMBEDDING_KEY, PipelineConfig, run_pipeline
    from stepgraph.pipeline.baselines import (
        neighbor_mean_domains,
        pca_kmeans_domains,
        untrained_pipeline_domains,
    )
    from stepgraph.pipeline.domains import adjusted_rand_index, normalized_mutual_info
    from stepgraph.pipeline.integration import section_mixing
    from stepgraph.pipeline.stages import peak_rss_mb

    torch.set_num_threads(threads)
    adata = ad.read_h5ad(path)
    truth = adata.obs[truth_key]
    known = truth.notna().to_numpy()
    n_domains = int(truth[known].nunique())
    sections, names = section_codes(adata, batch_key)
    mixing = None
    with threadpool_limits(threads):
        start = time.perf_counter()
        if method == "stepgraph":
            with tempfile.TemporaryDirectory() as out:
                config = PipelineConfig(spatial_key=spatial_key, batch_key=batch_key, n_domains=n_domains,
                                        seed=seed, progress=False, **pipeline_options)
                summary = run_pipeline(adata, out, config)
            labels, embedding = adata.obs[DOMAIN_KEY].to_numpy(), adata.obsm[EMBEDDING_KEY]
            mixing = (summary.get("integration") or {}).get("mixing")  # of the embedding it clustered
        elif method == "neighbor_mean":
            labels, embedding = neighbor_mean_domains(adata, n_domains, seed=seed, spatial_key=spatial_key,
                                                      batch_key=batch_key, return_embedding=True)
        elif method == "untrained":
            config = PipelineConfig(spatial_key=spatial_key, batch_key=batch_key, **pipeline_options)
            labels, embedding = untrained_pipeline_domains(adata, n_domains, seed=seed, config=config,
                                                           return_embedding=True)
        else:
            labels, embedding = pca_kmeans_domains(adata, n_domains, seed=seed, return_embedding=True)
        seconds = time.perf_counter() - start
    labels = np.asarray(labels)
    record = {"method": method, "seed": seed, "seconds": seconds,
              "ari": adjusted_rand_index(truth[known], labels[known]),
              "nmi": normalized_mutual_info(truth[known], labels[known]),
              "peak_rss_mib": peak_rss_mb(resettable=False)}
    if len(names) > 1:
        each = [adjusted_rand_index(truth[part], labels[part])
                for part in ((sections == code) & known for code in range(len(names)))]  # per section
        record.update(ari_sections=dict(zip(map(str, names), each, strict=True)),
                      ari_per_section=float(np.mean(each)),
                      mixing=mixing if mixing is not None else section_mixing(embedding, sections, seed=seed))
    return record


def _summary(runs: list[dict], key: str) -> dict:
    values = np.array([r[key] for r in runs], dtype=np.float64)
    return {"median": float(np.median(values)), "min": float(values.min()), "max": float(values.max())}


def run_domain_benchmark(path: str | Path, truth_key: str, batch_key: str | None = None,
                         spatial_key: str = "spatial", seeds=(0, 1, 2), methods=None, threads: int = 1,
                         pipeline_options: dict | None = None) -> dict:
    """Score every method of :data:`DOMAIN_METHODS` on one annotated file.

    Parameters
    ----------
    path
        An ``.h5ad`` with raw counts in ``X`` and coordinates in ``obsm[spatial_key]``.
    truth_key
        ``obs`` column of the true domains; cells where it is missing are
        left out of the scores; its number of categories is the number of
        clusters asked of every method.
    batch_key
        ``obs`` column of the sections, passed to the spatial methods.
    spatial_key
        ``obsm`` key of the coordinates.
    seeds
        One run per seed and method.
    methods
        Names from :data:`DOMAIN_METHODS` (default: all).
    threads
        Torch and BLAS threads of each run.
    pipeline_options
        Extra :class:`~stepgraph.pipeline.PipelineConfig` fields for the
        stepgraph and untrained runs (e.g. ``{"epochs": 20}``).

    Returns
    -------
    dict
        ``runs`` (one record per method and seed), ``summary`` (per method:
        median, min and max of ARI, NMI, seconds and peak RSS; with several
        sections also of ``ari_per_section``, the mean over sections of the
        ARI within each, and ``mixing``, the sections' mixing in the
        clustered embedding), the inputs and the machine. With several
        sections, ``ari`` is the ARI of the joint domains over all cells and
        each run also holds ``ari_sections`` (ARI per section).
    """
    import anndata as ad

    methods = list(DOMAIN_METHODS) if methods is None else list(methods)
    unknown = [m for m in methods if m not in DOMAIN_METHODS]
    if unknown:
        raise ValueError(f"methods must be among {list(DOMAIN_METHODS)}, got {unknown}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    adata = ad.read_h5ad(path, backed="r")
    for option, key, where in (("truth_key", truth_key, adata.obs.columns),
                               ("batch_key", batch_key, adata.obs.columns),
                               ("spatial_key", spatial_key, list(adata.obsm.keys()))):
        if key is not None and key not in where:
            raise ValueError(f"{option}={key!r} is not in the file; available: {list(where)}")
    shape = adata.shape
    adata.file.close()

    runs = []
    context = get_context("spawn")
    for method in methods:
        for seed in seeds:
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                runs.append(pool.submit(_one_run, str(path), method, seed, truth_key, batch_key, spatial_key,
                                        threads, pipeline_options or {}).result())
    keys = ("ari", "nmi", "seconds", "peak_rss_mib") + (("ari_per_section", "mixing") if "mixing" in runs[0] else ())
    summary = {m: {k: _summary([r for r in runs if r["method"] == m], k) for k in keys} for m in methods}
    return {"file": str(path), "shape": list(shape), "truth_key": truth_key, "batch_key": batch_key,
            "seeds": seeds, "threads": threads, "pipeline_options": pipeline_options or {},
            "machine": environment(threads),
            "runs": runs, "summary": summary}


def domain_table(result: dict) -> str:
    """The benchmark's summary as a markdown table (median [min, max] over seeds)."""
    def cell(stats, fmt):
        return f"{stats['median']:{fmt}} [{stats['min']:{fmt}}, {stats['max']:{fmt}}]"

    sections = "mixing" in next(iter(result["summary"].values()))
    if sections:  # several sections: the joint ARI, the ARI within each section, the mixing
        lines = ["| method | joint ARI | per-section ARI | mixing | NMI | time (s) | peak RSS (MiB) |",
                 "|---|---|---|---|---|---|---|"]
    else:
        lines = ["| method | ARI | NMI | time (s) | peak RSS (MiB) |", "|---|---|---|---|---|"]
    for method, stats in result["summary"].items():
        extra = (f" {cell(stats['ari_per_section'], '.3f')} | {cell(stats['mixing'], '.3f')} |"
                 if sections else "")
        lines.append(f"| {DOMAIN_METHODS[method]} | {cell(stats['ari'], '.3f')} |{extra} "
                     f"{cell(stats['nmi'], '.3f')} | {cell(stats['seconds'], '.1f')} "
                     f"| {stats['peak_rss_mib']['median']:.0f} |")
    return "\n".join(lines)


def write_results(result: dict, out: str | Path) -> tuple[Path, Path]:
    """Write ``result`` as ``<out>.json`` and its table as ``<out>.md``; return both paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.write_text(json.dumps(result, indent=1))
    md_path.write_text(f"{Path(result['file']).name}, seeds {result['seeds']}, "
                       f"{result['threads']} thread(s) per run\n\n{domain_table(result)}\n")
    return json_path, md_path
