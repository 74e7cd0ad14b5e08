"""Domains from several training seeds at once, on every tissue of a panel.

The pipeline's seed spread comes from the model's training, not from the
clustering (docs/benchmarks.md, seed-stable clustering). This script trains
the default pipeline with seeds 0 .. N-1 on each tissue, keeps each seed's
smoothed embedding, and scores:

- ``single``: each seed's own domains (the pipeline as it is);
- ``concat-K``: the embeddings of K seeds side by side (each scaled to unit
  mean squared norm) clustered once by the pipeline's mixture;
- ``vote-K``: the domains of K seeds, matched to the first one's by the
  Hungarian assignment on their contingency table, and voted (ties go to the
  first seed).

The K-seed groups are disjoint where possible (seeds 0-2, 3-5) and then
interleaved (0, 2, 4 and 1, 3, 5), so that their spread can be read against
single seeds'. Scores are the ARI (with several sections, also the mean ARI
within each).

    python benchmarks/seed_consensus.py ../shared/data/real/ [--n-seeds 6] [--k 3]

Writes benchmarks/results/seed_consensus.{json,md}.
"""

from __future__ import annotations

import tempfile
import time

import anndata as ad
import numpy as np
from _common import ari_scores, over_panel, panel_parser
from scipy.optimize import linear_sum_assignment

from stepgraph.graph.ops import smooth_over_graph
from stepgraph.graph.spatial import section_codes
from stepgraph.pipeline import PipelineConfig, run_pipeline
from stepgraph.pipeline.config import EMBEDDING_KEY
from stepgraph.pipeline.domains import cluster_domains


def _unit(block: np.ndarray) -> np.ndarray:
    block = block - block.mean(axis=0)
    return block / np.sqrt((block**2).sum(axis=1).mean())


def _matched(reference: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    table = np.zeros((n, n), dtype=np.int64)
    np.add.at(table, (labels, reference), 1)
    rows, cols = linear_sum_assignment(-table)
    mapping = np.empty(n, dtype=np.int64)
    mapping[rows] = cols
    return mapping[labels]


def vote(labelings: list[np.ndarray], n: int) -> np.ndarray:
    """Majority vote of labelings matched to the first; ties go to the first."""
    reference = labelings[0]
    matched = [reference] + [_matched(reference, lab, n) for lab in labelings[1:]]
    counts = np.zeros((len(reference), n), dtype=np.int64)
    for lab in matched:
        counts[np.arange(len(lab)), lab] += 1
    best = counts.max(axis=1)
    return np.where(counts[np.arange(len(reference)), reference] == best, reference, counts.argmax(axis=1))


def groups(n_seeds: int, k: int) -> list[tuple[int, ...]]:
    seeds = list(range(n_seeds))
    out = [tuple(seeds[i : i + k]) for i in range(0, n_seeds - k + 1, k)]
    out += [tuple(seeds[s::2][:k]) for s in (0, 1) if len(seeds[s::2]) >= k]
    return list(dict.fromkeys(out))


def tissue_rows(tissue: dict, n_seeds: int, k: int) -> list[dict]:
    adata = ad.read_h5ad(tissue["path"])
    name = tissue["path"].rsplit("/", 1)[-1]
    truth = adata.obs[tissue["truth_key"]]
    n_domains = int(truth.dropna().nunique())
    codes, names = section_codes(adata, tissue["batch_key"])
    embeddings, labels, seconds = {}, {}, {}
    for seed in range(n_seeds):
        config = PipelineConfig(batch_key=tissue["batch_key"], truth_key=tissue["truth_key"], seed=seed, progress=False)
        copy = adata.copy()
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            run_pipeline(copy, out, config)
        seconds[seed] = time.perf_counter() - start
        graph = copy.obsp["spatial_connectivities"]
        embeddings[seed] = smooth_over_graph(copy.obsm[EMBEDDING_KEY], graph, config.smooth)
        labels[seed] = copy.obs["stepgraph_domain"].cat.codes.to_numpy().astype(np.int64)
        options = config.cluster_options()

    def score(variant, seeds, lab, secs):
        row = {"tissue": name, "variant": variant, "seeds": ",".join(map(str, seeds)), "seconds": round(secs, 1)}
        return {**row, **ari_scores(truth, lab, codes, len(names))}

    rows = [score("single", (s,), labels[s], seconds[s]) for s in range(n_seeds)]
    for group in groups(n_seeds, k):
        start = time.perf_counter()
        stacked = np.hstack([_unit(embeddings[s]) for s in group])
        options = {**options, "seed": group[0]}
        concat = cluster_domains(stacked, n_domains, **options)
        rows.append(score(f"concat-{k}", group, concat, time.perf_counter() - start + sum(seconds[s] for s in group)))
        rows.append(score(f"vote-{k}", group, vote([labels[s] for s in group], n_domains), 0.0))
    print(rows, flush=True)
    return rows


def main(argv=None) -> None:
    parser = panel_parser(__doc__, "seed_consensus")
    parser.add_argument("--n-seeds", type=int, default=6, help="training seeds 0 .. N-1")
    parser.add_argument("--k", type=int, default=3, help="seeds per consensus")
    args = parser.parse_args(argv)
    over_panel(
        args,
        lambda tissue: tissue_rows(tissue, args.n_seeds, args.k),
        ["tissue", "variant", "seeds", "ari", "per-section ari", "seconds"],
    )


if __name__ == "__main__":
    main()
